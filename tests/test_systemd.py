"""systemd readiness (sd_notify): hacheck says READY=1 only once it accepts connections.

``Type=notify`` in debian/hacheck.service makes ``systemctl start`` wait for
that message, so HAProxy started after hacheck never sees refused checks.
"""

import logging
import socket
import subprocess
import time
import uuid

import pytest

from hacheck.process import systemd
from tests.conftest import port_open, tool_argv, tool_env, unused_port

READY_TIMEOUT = 30  # generous: other helpers load this 2-core machine


def bind_notify_socket(address: str) -> socket.socket:
    """A Unix datagram socket like the one systemd hands a Type=notify service."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(READY_TIMEOUT)
    return sock


def test_notify_without_notify_socket_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_sends_to_a_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with bind_notify_socket(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_notify_sends_to_an_abstract_socket(monkeypatch):
    name = f"hacheck-test-{uuid.uuid4().hex}"
    with bind_notify_socket("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=checking\nREADY=1") is True
        assert sock.recv(4096) == b"STATUS=checking\nREADY=1"


def test_notify_to_a_missing_socket_warns_and_returns_false(tmp_path, monkeypatch, caplog):
    missing = str(tmp_path / "nobody-listens")
    monkeypatch.setenv("NOTIFY_SOCKET", missing)
    with caplog.at_level(logging.WARNING, logger="hacheck.process.systemd"):
        assert systemd.notify("READY=1") is False
    assert missing in caplog.text


def start_daemon(tmp_path, spool_root, notify_address, ports, num_procs=1):
    argv = tool_argv("hacheck") + ["--spool-root", spool_root, "-B", "127.0.0.1", "-n", str(num_procs)]
    for port in ports:
        argv += ["-p", str(port)]
    log = open(tmp_path / "hacheck.log", "wb")
    process = subprocess.Popen(
        argv, env=tool_env(NOTIFY_SOCKET=notify_address),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def stop_daemon(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_ready(sock: socket.socket, process, tmp_path) -> bytes:
    """The first notification carrying READY=1; fails with the daemon's log when none comes."""
    deadline = time.monotonic() + READY_TIMEOUT
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096)
        except socket.timeout:
            if process.poll() is not None:
                break  # exited without notifying: no point in waiting
            continue
        if b"READY=1" in message.split(b"\n"):
            return message
    log = (tmp_path / "hacheck.log").read_text(errors="replace")
    pytest.fail(f"no READY=1 from hacheck (exit code {process.poll()}); its log:\n{log}")


@pytest.mark.parametrize("abstract, num_procs", [(False, 1), (True, 1), (False, 2)],
                         ids=["path-socket", "abstract-socket", "two-workers"])
def test_daemon_notifies_ready_only_once_it_accepts_connections(tmp_path, spool_root, abstract, num_procs):
    ports = [unused_port(), unused_port()]
    if abstract:
        name = f"hacheck-test-{uuid.uuid4().hex}"
        bind_address, notify_address = "\0" + name, "@" + name
    else:
        bind_address = notify_address = str(tmp_path / "notify")
    with bind_notify_socket(bind_address) as sock:
        process = start_daemon(tmp_path, spool_root, notify_address, ports, num_procs)
        try:
            wait_for_ready(sock, process, tmp_path)
            # Checked right away: at READY=1 every port must already accept.
            accepting = {port: port_open(port) for port in ports}
            assert process.poll() is None, "hacheck exited after READY=1"
            assert accepting == {port: True for port in ports}
        finally:
            stop_daemon(process)


def test_daemon_that_cannot_bind_never_notifies_ready(tmp_path, spool_root):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy_port = taken.getsockname()[1]
        path = str(tmp_path / "notify")
        with bind_notify_socket(path) as sock:
            process = start_daemon(tmp_path, spool_root, path, [busy_port])
            try:
                exit_code = process.wait(timeout=READY_TIMEOUT)
            except subprocess.TimeoutExpired:
                stop_daemon(process)
                pytest.fail("hacheck kept running on a port it could not bind")
            assert exit_code != 0
            sock.settimeout(0.5)
            messages = []
            try:
                while True:
                    messages.append(sock.recv(4096))
            except socket.timeout:
                pass
            assert not any(b"READY=1" in message.split(b"\n") for message in messages)
