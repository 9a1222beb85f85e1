"""The ``-n`` supervisor through real processes: restarts and their limit, a worker's start-up error,
overlapping reloads, and one read of the configuration file per reload."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import children, port_open, require_command, tool_argv, tool_env, unused_port
from tests.conftest import wait_until as shared_wait_until

WAIT = 30  # generous: other helpers load this 2-core machine


def wait_until(condition, what: str, timeout: float = WAIT):
    """The shared wait, with this module's longer default."""
    return shared_wait_until(condition, what, timeout)


def lines_with(daemon, text: str) -> list:
    return [line for line in daemon.output().splitlines() if text in line]


def status(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def serving_workers(daemon, count: int) -> set:
    """The worker pids once ``count`` of them run and each has answered /status."""
    def all_answer():
        workers = children(daemon.pid)
        if len(workers) != count:
            return None
        seen = {status(daemon.port)["pid"] for _ in range(10 * count)}
        return workers if seen == workers else None
    return wait_until(all_answer, f"{count} workers answering")


def kill_workers_and_take_the_port(daemon, workers: set) -> socket.socket:
    """With the supervisor held (SIGSTOP), kill every worker and listen on the port without SO_REUSEPORT:
    no worker started afterwards can bind it. Returns the foreign listener; the supervisor runs again."""
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not port_open(daemon.port, timeout=0.2), "the workers' port to close")
        foreign = socket.socket()
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("0.0.0.0", daemon.port))
        foreign.listen(8)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    return foreign


def test_workers_that_cannot_bind_make_the_supervisor_exit_non_zero_with_one_line(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    foreign = kill_workers_and_take_the_port(daemon, serving_workers(daemon, 2))
    with foreign:
        try:
            code = daemon.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the supervisor went on restarting workers:\n{daemon.output()}") from None
    assert code == 1
    reasons = lines_with(daemon, "restart_limit_burst")
    assert len(reasons) == 1, daemon.output()
    assert "worker exits within 10 s, more than restart_limit_burst (5); stopping" in reasons[0]
    assert lines_with(daemon, "cannot listen on")  # each failed worker said why


def test_a_workers_start_up_error_reaches_the_log(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"], config={"rlimit_nofile": 14}, wait=False)
    assert daemon.process.wait(WAIT) == 1
    output = daemon.output()
    assert "Too many open files" in output, output
    assert len(lines_with(daemon, "could not start (exit code 1); stopping")) == 1, output


def test_a_stop_after_a_recovered_failure_exits_0(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"], config={"restart_limit_burst": 100})
    foreign = kill_workers_and_take_the_port(daemon, serving_workers(daemon, 2))
    with foreign:
        wait_until(lambda: len(lines_with(daemon, "cannot listen on")) >= 3, "replacements that cannot bind")
    serving_workers(daemon, 2)
    assert daemon.stop() == 0, daemon.output()


def reload_lines(daemon) -> list:
    return [line for line in lines_with(daemon, f" {daemon.pid} ") if "reload" in line]


def notifications(sock: socket.socket) -> list:
    """The messages waiting on the fake NOTIFY_SOCKET, as dicts."""
    received = []
    while True:
        try:
            message = sock.recv(4096)
        except BlockingIOError:
            return received
        received.append(dict(line.split("=", 1) for line in message.decode().split("\n")))


def test_overlapping_reloads_run_one_after_another_and_every_worker_ends_on_the_last(hacheck_daemon, tmp_path):
    config = tmp_path / "hacheck.yaml"
    config.write_text(yaml.safe_dump({"cache_max_entries": 1000}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.setblocking(False)
        daemon = hacheck_daemon(args=["-n", "2"], config=str(config), env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        held_reloads_agree(daemon, config, notify_socket)
    assert daemon.stop() == 0


def held_reloads_agree(daemon, config: Path, notify_socket: socket.socket) -> None:
    """10 SIGHUPs 20 ms apart while one worker is held by SIGSTOP: every line and READY=1 tells the truth."""
    workers = serving_workers(daemon, 2)
    held = min(workers)
    os.kill(held, signal.SIGSTOP)
    try:
        for number in range(1, 11):
            config.write_text(yaml.safe_dump({"cache_max_entries": 1000 + number}))
            os.kill(daemon.pid, signal.SIGHUP)
            time.sleep(0.02)
        time.sleep(1)
    finally:
        os.kill(held, signal.SIGCONT)

    def agreed():
        seen = {}
        for _ in range(40):
            answer = status(daemon.port)
            seen[answer["pid"]] = (answer["config_generation"], answer["cache"]["max_entries"])
            if set(seen) == workers:
                break
        values = set(seen.values())
        return values if set(seen) == workers and len(values) == 1 and (1010 in {v[1] for v in values}) else None
    ((generation, _),) = wait_until(agreed, "both workers on the last configuration")
    assert children(daemon.pid) == workers
    wait_until(lambda: reload_lines(daemon) and f"generation {generation})" in reload_lines(daemon)[-1],
               "the supervisor's line for the last reload")
    lines = reload_lines(daemon)
    assert lines and all("reloaded" in line and "reload failed" not in line for line in lines), lines
    for line in lines:
        counts = re.search(r"; (all (\d+)|only (\d+) of (\d+)) workers reloaded", line)
        assert counts, line
        took, asked = (int(counts[2]), int(counts[2])) if counts[2] else (int(counts[3]), int(counts[4]))
        assert took <= asked <= 2, line
    assert lines[-1].endswith(f"all 2 workers reloaded (configuration generation {generation})"), lines
    assert generation == 1 + len(lines)
    # systemd hears each reload begin and end, in turn, with the log line as its status.
    received = []

    def all_told():
        received.extend(notifications(notify_socket))
        return sum(1 for message in received if message.get("STATUS", "").startswith("reloaded")) >= len(lines)
    wait_until(all_told, "READY=1 after the last reload", timeout=1)
    messages = [message for message in received if "RELOADING" in message or
                message.get("STATUS", "").startswith("reloaded")]
    assert [("RELOADING" in message) for message in messages] == [True, False] * len(lines), messages
    assert [message["STATUS"] for message in messages[1::2]] == [line.split("hacheck: ", 1)[1] for line in lines]


def config_opens(trace: Path, config: Path) -> int:
    return sum(1 for line in trace.read_text().splitlines() if "open" in line and f'"{config}"' in line)


def start_traced(tmp_path: Path, config: Path, output: Path, trace: Path, notify_socket: socket.socket):
    """``hacheck -n 4`` under strace (its own process group), ready (READY=1 on ``notify_socket``: the
    supervisor knows all 4 workers ready, so a reload reaches every one): (strace, hacheck pid).
    Started again on another port when the one picked was taken meanwhile (another test's connection)."""
    strace = require_command("strace")
    for _ in range(3):
        argv = [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace), *tool_argv("hacheck"),
                "-n", "4", "-c", str(config), "-p", str(unused_port()), "-B", "127.0.0.1",
                "--spool-root", str(tmp_path / "spool")]
        with open(output, "wb") as out:
            tracer = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=tool_env(NOTIFY_SOCKET=notify_socket.getsockname()),
                                      start_new_session=True)
        told = []
        try:
            (pid,) = wait_until(lambda started=tracer: children(started.pid), "hacheck under strace")
            wait_until(lambda started=tracer, told=told: started.poll() is not None or
                       told.extend(notifications(notify_socket)) or any(m.get("READY") == "1" for m in told),
                       "4 workers ready")
        except BaseException:
            os.killpg(tracer.pid, signal.SIGKILL)
            tracer.wait()
            raise
        if tracer.poll() is None:
            return tracer, pid
        assert "Address already in use" in output.read_text(), output.read_text()
    raise AssertionError("no free port in 3 attempts")


def test_one_read_of_the_configuration_file_per_reload(tmp_path):
    config, trace, output = tmp_path / "hacheck.yaml", tmp_path / "trace", tmp_path / "output"
    config.write_text("cache_time: 1\n")
    notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket.bind(str(tmp_path / "notify"))
    notify_socket.setblocking(False)
    tracer, pid = start_traced(tmp_path, config, output, trace, notify_socket)
    try:
        for reload in range(1, 4):
            config.write_text(f"cache_time: {reload + 1}\n")
            os.kill(pid, signal.SIGHUP)
            wait_until(lambda done=reload: output.read_text().count("all 4 workers reloaded") == done,
                       f"reload {reload}")
        assert config_opens(trace, config) == 1 + 3, output.read_text()
        os.kill(pid, signal.SIGTERM)
        assert tracer.wait(WAIT) == 0
    finally:
        notify_socket.close()
        if tracer.poll() is None:
            os.killpg(tracer.pid, signal.SIGKILL)
            tracer.wait()
