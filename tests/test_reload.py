"""Reload (SIGHUP) and ``hacheck --check-config``, through the real daemon and the real command."""

import http.client
import os
import resource
import signal
import socket
import subprocess
import time

import pytest
import yaml

from tests.conftest import http_request, tool_argv, tool_env
from tests.e2e.support import threaded_upstream

WAIT = 20  # generous: other helpers load this 2-core machine


def write_config(path, **keys):
    path.write_text(yaml.safe_dump(keys))


def wait_for_line(read, text: str, count: int = 1) -> list:
    """The lines of ``read()`` that contain ``text``, once there are ``count`` of them."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = [line for line in read().splitlines() if text in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def children(pid: int) -> set:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return {int(child) for child in listing.read().split()}


def post_down(port: int) -> int:
    return http_request(port, "/spool/posted/0/x", method="POST", body="status=down&reason=r",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})[0]


def test_a_changed_config_applies_to_the_next_request_on_an_open_connection(hacheck_daemon, tmp_path):
    config, first_log, moved_log = tmp_path / "hacheck.yaml", tmp_path / "first.log", tmp_path / "moved.log"
    write_config(config, cache_time=60, http_headers_to_copy=["Host"], log_path=str(first_log))
    with threaded_upstream() as (upstream_port, upstream):
        daemon = hacheck_daemon(config=str(config))
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=WAIT)

        def check():
            connection.request("GET", f"/http/web/{upstream_port}/health", headers={"X-Team": "blue"})
            response = connection.getresponse()
            return response.status, response.read()

        assert check() == (200, b"healthy")
        assert check() == (200, b"healthy")
        assert len(upstream.requests) == 1  # cached for 60 s
        assert "X-Team" not in upstream.requests[0][1]
        client_address = connection.sock.getsockname()

        write_config(config, cache_time=0, http_headers_to_copy=["Host", "X-Team"], log_path=str(moved_log))
        os.kill(daemon.pid, signal.SIGHUP)
        assert wait_for_line(lambda: moved_log.read_text() if moved_log.exists() else "", "reloaded")

        assert check() == (200, b"healthy")
        assert check() == (200, b"healthy")
        assert connection.sock.getsockname() == client_address  # the same keep-alive connection
        assert len(upstream.requests) == 3  # no cache any more, and the header is copied
        assert upstream.requests[-1][1]["X-Team"] == "blue"
        connection.close()
        assert daemon.get("/status")[0] == 200  # still listening
        reload_line, = [line for line in moved_log.read_text().splitlines() if "reloaded" in line]
        assert "cache_time" in reload_line and "http_headers_to_copy" in reload_line
        assert "reloaded" not in first_log.read_text()
        assert daemon.stop() == 0


def test_a_reload_keeps_the_cache_and_names_the_keys_that_need_a_restart(hacheck_daemon, tmp_path):
    config = tmp_path / "hacheck.yaml"
    write_config(config, cache_time=60, allow_remote_spool_changes=False)
    with threaded_upstream() as (upstream_port, upstream):
        daemon = hacheck_daemon(config=str(config))
        assert daemon.get(f"/http/web/{upstream_port}/health")[0] == 200
        assert post_down(daemon.port) == 403
        write_config(config, cache_time=60, allow_remote_spool_changes=True, metrics_per_service=True)
        os.kill(daemon.pid, signal.SIGHUP)
        line, = wait_for_line(daemon.output, "reloaded")
        assert "changed allow_remote_spool_changes" in line
        assert "kept until a restart: metrics_per_service" in line
        assert post_down(daemon.port) == 200
        assert daemon.get(f"/http/web/{upstream_port}/health")[0] == 200
        assert len(upstream.requests) == 1  # the cache survived the reload
        assert daemon.stop() == 0


def test_an_invalid_config_keeps_the_running_one_and_logs_one_line(hacheck_daemon, tmp_path):
    config = tmp_path / "hacheck.yaml"
    write_config(config, allow_remote_spool_changes=True)
    daemon = hacheck_daemon(config=str(config))
    config.write_text("allow_remote_spool_changes: false\ncache_time: soon\n")
    os.kill(daemon.pid, signal.SIGHUP)
    lines = wait_for_line(daemon.output, "reload")
    assert len(lines) == 1
    assert "ERROR" in lines[0] and "'cache_time'" in lines[0] and str(config) in lines[0]
    assert daemon.process.poll() is None
    assert post_down(daemon.port) == 200  # the running configuration still allows it
    assert daemon.stop() == 0


def notifications(sock: socket.socket, until: bytes) -> list:
    """Messages received on the fake NOTIFY_SOCKET up to the first one containing ``until``."""
    received = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096)
        except socket.timeout:
            continue
        received.append(dict(line.split("=", 1) for line in message.decode().split("\n")))
        if until in message:
            return received
    pytest.fail(f"no {until!r} in {received}")


@pytest.mark.parametrize("workers", [1, 2])
def test_reloads_are_reported_to_systemd(hacheck_daemon, tmp_path, workers):
    config = tmp_path / "hacheck.yaml"
    write_config(config, cache_time=5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.settimeout(0.5)
        daemon = hacheck_daemon(config=str(config), args=["-n", str(workers)],
                                env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifications(notify_socket, b"READY=1")[-1]["READY"] == "1"

        write_config(config, cache_time=1)
        os.kill(daemon.pid, signal.SIGHUP)
        reloading, ready = notifications(notify_socket, b"READY=1")
        assert reloading["RELOADING"] == "1"
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_usec - int(reloading["MONOTONIC_USEC"]) < WAIT * 1_000_000
        assert ready["READY"] == "1" and ready["STATUS"].startswith(f"reloaded {config}: changed cache_time")

        config.write_text("cache_time: soon\n")
        os.kill(daemon.pid, signal.SIGHUP)
        reloading, ready = notifications(notify_socket, b"READY=1")
        assert reloading["RELOADING"] == "1"
        assert ready["STATUS"].startswith("reload failed") and "'cache_time'" in ready["STATUS"]
        assert daemon.stop() == 0


def test_every_worker_reloads(hacheck_daemon, tmp_path):
    config, first_log, moved_log = tmp_path / "hacheck.yaml", tmp_path / "first.log", tmp_path / "moved.log"
    write_config(config, log_path=str(first_log))
    daemon = hacheck_daemon(config=str(config), args=["-n", "2"])
    assert len(wait_for_line(first_log.read_text, "listening on", 2)) == 2  # both workers are ready
    workers = children(daemon.pid)
    assert len(workers) == 2
    assert post_down(daemon.port) == 403
    write_config(config, log_path=str(moved_log), allow_remote_spool_changes=True)
    os.kill(daemon.pid, signal.SIGHUP)
    assert wait_for_line(lambda: moved_log.read_text() if moved_log.exists() else "", "all 2 workers reloaded")
    reloaded_pids = {int(line.split()[2]) for line in moved_log.read_text().splitlines() if "reloaded" in line}
    assert reloaded_pids == workers | {daemon.pid}
    # Each request on a new connection, whichever worker takes it: the new configuration everywhere.
    assert {post_down(daemon.port) for _ in range(20)} == {200}
    assert daemon.stop() == 0


# --- hacheck --check-config ------------------------------------------------------------------


def check_config(*args, **env):
    result = subprocess.run(tool_argv("hacheck") + ["--check-config", *args], capture_output=True, text=True,
                            timeout=30, env=tool_env(**env), stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


def test_check_config_accepts_a_valid_file_in_one_line(tmp_path):
    config = tmp_path / "hacheck.yaml"
    config.write_text(f"cache_time: 3\nlog_path: {tmp_path}/hacheck.log\nsome_old_key: 1\n")
    code, out, err = check_config("-c", str(config))
    assert (code, err, len(out)) == (0, [], 1)
    assert str(config) in out[0] and "valid" in out[0] and "some_old_key" in out[0]
    assert check_config()[:2] == (0, ["hacheck: no configuration file (defaults): configuration is valid"])


def hard_open_files_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


@pytest.mark.parametrize("content, key", [
    ("cache_time: soon\n", "'cache_time'"),
    ("log_path: {tmp}/missing-dir/hacheck.log\n", "'log_path'"),
    ("rlimit_nofile: {above_hard}\n", "'rlimit_nofile'"),
    ("cache_time: [1\n", "not a valid YAML file"),
])
def test_check_config_refuses_an_invalid_file_in_one_line(tmp_path, content, key):
    if "above_hard" in content and hard_open_files_limit() is None:
        pytest.skip("no hard limit on open files here")
    config = tmp_path / "hacheck.yaml"
    config.write_text(content.format(tmp=tmp_path, above_hard=(hard_open_files_limit() or 0) + 1))
    code, out, err = check_config("-c", str(config))
    assert (code, out, len(err)) == (1, [], 1)
    assert key in err[0] and str(config) in err[0]


def test_check_config_as_execreload_reports_a_refused_file_as_the_services_full_status(tmp_path):
    """The unit's ExecReload runs --check-config with $NOTIFY_SOCKET (NotifyAccess=exec): a refusal is the status."""
    config = tmp_path / ("a-rather-long-directory-name-as-sites-have-them" * 2) / "hacheck.yaml"
    config.parent.mkdir()
    config.write_text("cache_time: soon\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.settimeout(WAIT)
        code, out, err = check_config("-c", str(config), NOTIFY_SOCKET=str(tmp_path / "notify"))
        assert (code, out, len(err)) == (1, [], 1)
        message = notify_socket.recv(4096).decode()
        # Only the status: no READY=1 or RELOADING=1 from a process that is not the daemon.
        assert message == f"STATUS=reload failed, running configuration kept: {err[0].removeprefix('hacheck: ')}"
        assert message.endswith(f"{config}: key 'cache_time': expected a number of seconds, got 'soon'"), message

        config.write_text("cache_time: 3\n")
        assert check_config("-c", str(config), NOTIFY_SOCKET=str(tmp_path / "notify"))[0] == 0
        notify_socket.settimeout(0.5)
        with pytest.raises(socket.timeout):  # a valid file: the daemon's own reload reports the outcome
            notify_socket.recv(4096)


def test_stopping_is_bounded_by_the_reloaded_healthcheck_timeout(hacheck_daemon, tmp_path):
    config = tmp_path / "hacheck.yaml"
    write_config(config, healthcheck_timeout=60)
    with threaded_upstream() as (upstream_port, upstream):
        upstream.delay = 30
        daemon = hacheck_daemon(config=str(config))
        write_config(config, healthcheck_timeout=1)
        os.kill(daemon.pid, signal.SIGHUP)
        assert wait_for_line(daemon.output, "reloaded")
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as connection:
            connection.sendall(f"GET /http/web/{upstream_port}/slow HTTP/1.0\r\n\r\n".encode())
            deadline = time.monotonic() + WAIT
            while not upstream.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert upstream.requests, "the check never reached the upstream"
            stopped_at = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            # The check in flight ends with the new timeout and is answered before the process exits.
            assert connection.makefile("rb").readline().startswith(b"HTTP/1.1 503")
            daemon.process.wait(WAIT)
        assert time.monotonic() - stopped_at < 10  # healthcheck_timeout + at most 6 s, not 60 s
        assert daemon.process.returncode == 0
