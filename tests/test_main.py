"""The ``hacheck`` command as a real process: flags, configuration errors, logging, limits, spool root."""

import json
import os
import re
import socket
import stat
import subprocess
import time

import pytest

from hacheck import __version__
from tests.conftest import http_request, importable, port_open, require, start_hacheck, tool_argv, tool_env, unused_port


def run_hacheck(*args, timeout=30):
    return subprocess.run(tool_argv("hacheck") + list(args), capture_output=True, text=True, timeout=timeout,
                          env=tool_env(), stdin=subprocess.DEVNULL)


def non_loopback_ip():
    """This machine's address on its default route, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_version():
    result = run_hacheck("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hacheck {__version__}"


def test_help_names_every_flag():
    result = run_hacheck("--help")
    assert result.returncode == 0
    for flag in ("--config-file", "--port", "--bind-address", "--spool-root", "--num-procs", "--verbose", "--version"):
        assert flag in result.stdout
    for default in ("3333", "0.0.0.0", "/var/spool/hacheck"):
        assert default in result.stdout


@pytest.mark.parametrize("args", [["-p", "http"], ["-p", "70000"], ["-n", "0"], ["--bogus"]])
def test_bad_flags_are_usage_errors(args):
    result = run_hacheck(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key, value", [("cache_time", "soon"), ("max_clients", "many"),
                                        ("allow_remote_spool_changes", "'maybe'")])
def test_wrong_type_in_config_is_one_line_naming_key_and_file(tmp_path, key, value):
    config = tmp_path / "bad.yaml"
    config.write_text(f"{key}: {value}\n")
    result = run_hacheck("-c", str(config), "-p", str(unused_port()), "--spool-root", str(tmp_path / "spool"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and str(config) in lines[0]


def test_missing_config_file_is_an_error(tmp_path):
    result = run_hacheck("-c", str(tmp_path / "absent.yaml"), "-p", str(unused_port()))
    assert result.returncode == 1
    assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr


def test_unknown_config_key_is_a_warning_and_the_daemon_runs(hacheck_daemon):
    daemon = hacheck_daemon(config={"cache_time": 1, "some_old_key": True})
    assert daemon.get("/spool/web/80")[0] == 200
    assert daemon.stop() == 0
    assert re.search(r"WARNING.*some_old_key", daemon.output())


def test_empty_config_file_is_fine(hacheck_daemon, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    daemon = hacheck_daemon(config=str(empty))
    assert daemon.get("/status")[0] == 200


def test_repeated_ports_all_answer(hacheck_daemon):
    second = unused_port()
    daemon = hacheck_daemon(args=["-p", str(second)])
    assert daemon.get("/spool/web/80")[0] == 200
    assert http_request(second, "/spool/web/80")[0] == 200


def test_bind_address(hacheck_daemon):
    other = non_loopback_ip()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    daemon = hacheck_daemon(args=["-B", "127.0.0.1"])
    assert daemon.get("/status")[0] == 200
    assert not port_open(daemon.port, other)
    everywhere = hacheck_daemon()  # default 0.0.0.0
    assert http_request(everywhere.port, "/status", host=other)[0] == 200


def test_bind_address_on_a_loopback_alias(hacheck_daemon):
    daemon = hacheck_daemon(args=["-B", "127.0.0.2"], ready_host="127.0.0.2")
    assert http_request(daemon.port, "/spool/web/80", host="127.0.0.2")[0] == 200
    assert not port_open(daemon.port, "127.0.0.1")


def test_mutornadomon_served_to_localhost_only(hacheck_daemon):
    require(importable("mutornadomon"), "mutornadomon (and its import of mock) is not installed")
    daemon = hacheck_daemon()
    for _ in range(3):
        assert daemon.get("/spool/web/80")[0] == 200
    status, body, _ = daemon.get("/mutornadomon")
    assert status == 200
    assert "process" in body
    counters = json.loads(body)["counters"]
    # The three checks (and the readiness probe) are counted, as loopback requests.
    assert counters["requests"] >= 3 and counters["localhost_requests"] >= 3
    assert counters["callbacks_processed"] > 0
    other = non_loopback_ip()
    if other is not None:
        assert http_request(daemon.port, "/mutornadomon", host=other)[0] == 403


def test_spool_root_is_created_0750(hacheck_daemon, tmp_path):
    root = tmp_path / "deep" / "spool"
    daemon = hacheck_daemon(spool_root=str(root))
    assert daemon.get("/spool/web/80")[0] == 200
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o750


def test_unusable_spool_root_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = run_hacheck("-p", str(unused_port()), "--spool-root", str(not_a_dir / "spool"))
    assert result.returncode == 1
    assert str(not_a_dir) in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_hacheck("-p", str(port), "-B", "127.0.0.1", "--spool-root", str(tmp_path / "spool"))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


# --- logging -------------------------------------------------------------------------


def access_lines(text):
    return [line for line in text.splitlines() if "GET /spool/web/80" in line]


def test_verbose_logs_one_access_line_per_request(hacheck_daemon):
    daemon = hacheck_daemon(args=["-v"])
    for _ in range(3):
        daemon.get("/spool/web/80")
    assert daemon.stop() == 0
    assert len(access_lines(daemon.output())) == 3
    assert "DEBUG" in daemon.output()


def test_without_verbose_no_access_log(hacheck_daemon):
    daemon = hacheck_daemon()
    daemon.get("/spool/web/80")
    daemon.get("/nothing-here")
    daemon.stop()
    assert access_lines(daemon.output()) == []
    assert "/nothing-here" not in daemon.output()


@pytest.mark.parametrize("destination", ["stdout", "stderr"])
def test_log_path_stdout_or_stderr(tmp_path, destination):
    port = unused_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"log_path: {destination}\n")
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        process = subprocess.Popen(tool_argv("hacheck") + ["-c", str(config), "-p", str(port), "-B", "127.0.0.1",
                                                           "--spool-root", str(tmp_path / "spool")],
                                   stdout=out, stderr=err, env=tool_env())
        try:
            deadline = time.monotonic() + 20
            while not port_open(port) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            process.terminate()
            assert process.wait(20) == 0
    written = {name: (tmp_path / name).read_text() for name in ("out", "err")}
    other = "err" if destination == "stdout" else "out"
    assert "listening" in written[destination[3:]]
    assert "listening" not in written[other]


def test_log_file_is_reopened_after_rename(hacheck_daemon, tmp_path):
    log_file = tmp_path / "hacheck.log"
    daemon = hacheck_daemon(config={"log_path": str(log_file)}, args=["-v"])
    daemon.get("/spool/web/80")
    # Tornado writes the access line just after sending the answer: wait for it before rotating.
    deadline = time.monotonic() + 10
    while not access_lines(log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    rotated = tmp_path / "hacheck.log.1"
    os.rename(log_file, rotated)
    daemon.get("/spool/web/80")
    daemon.get("/spool/web/80")
    daemon.stop()
    assert len(access_lines(rotated.read_text())) == 1
    assert len(access_lines(log_file.read_text())) == 2
    assert "stopped" in log_file.read_text()


def test_unwritable_log_path_is_a_clear_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"log_path: {tmp_path}/missing-dir/hacheck.log\n")
    result = run_hacheck("-c", str(config), "-p", str(unused_port()))
    assert result.returncode == 1
    assert "missing-dir" in result.stderr and "Traceback" not in result.stderr


# --- rlimit_nofile ---------------------------------------------------------------------


def open_files_limits(pid):
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise AssertionError("no open files line")


def test_rlimit_nofile_max(hacheck_daemon):
    daemon = hacheck_daemon(config={"rlimit_nofile": "max"})
    soft, hard = open_files_limits(daemon.pid)
    assert soft == hard


def test_rlimit_nofile_number(hacheck_daemon):
    daemon = hacheck_daemon(config={"rlimit_nofile": 512})
    assert open_files_limits(daemon.pid)[0] == "512"


def test_rlimit_nofile_above_hard_limit_is_an_error(tmp_path):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    config = tmp_path / "c.yaml"
    config.write_text(f"rlimit_nofile: {hard + 1}\n")
    result = run_hacheck("-c", str(config), "-p", str(unused_port()), "--spool-root", str(tmp_path / "s"))
    assert result.returncode == 1
    assert "rlimit_nofile" in result.stderr and str(config) in result.stderr


# --- systemd readiness -----------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ready_notification_after_listening(tmp_path, workers):
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(notify_path)
        notify_socket.settimeout(20)
        daemon = start_hacheck(tmp_path, args=["-n", workers], wait=False, env={"NOTIFY_SOCKET": notify_path})
        try:
            message = notify_socket.recv(4096).split(b"\n")
            assert message[0] == b"READY=1" and message[1].startswith(b"STATUS=")
            assert daemon.get("/status")[0] == 200  # ready means already listening
        finally:
            assert daemon.stop() == 0


def test_start_up_error_is_printed_once_after_the_config_warnings(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("cach_time: 3\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_hacheck("-c", str(config), "-p", str(port), "-B", "127.0.0.1",
                             "--spool-root", str(tmp_path / "spool"))
    assert result.returncode == 1
    assert "unknown configuration key 'cach_time' ignored (did you mean 'cache_time'?)" in result.stderr
    assert result.stderr.count(f"cannot listen on 127.0.0.1:{port}") == 1, result.stderr
