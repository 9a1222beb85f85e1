"""Socket activation: hacheck serves the listening sockets systemd hands it (LISTEN_FDS), and a
restart while systemd holds them refuses no connection."""

import os
import re
import socket
import threading
import time

import pytest

from hacheck.process import systemd
from tests.conftest import http_request, listening_socket, port_open, unused_port

AGENT_QUESTION = b"web\n"


def ask_agent(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(AGENT_QUESTION)
        return connection.makefile("rb").readline()


def socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def held_socket_inodes(pid: int) -> set:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(int(match.group(1)))
    return inodes


def children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_the_handed_http_and_agent_sockets(hacheck_daemon, workers):
    with listening_socket() as http_socket, listening_socket() as agent_socket:
        daemon = hacheck_daemon(handed=[(http_socket, "http"), (agent_socket, "agent")],
                                args=["-n", str(workers)])
        assert daemon.get("/spool/web/80")[:2] == (200, "")
        assert ask_agent(agent_socket.getsockname()[1]) == b"up ready\n"
        assert "sockets from systemd" in daemon.output()
        if workers > 1:
            # The workers serve the very sockets handed over (no port of their own).
            shared = {socket_inode(http_socket), socket_inode(agent_socket)}
            # The first worker answers while the supervisor may still be starting the next one.
            deadline = time.monotonic() + 10
            while len(children(daemon.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            worker_pids = children(daemon.pid)
            assert len(worker_pids) == workers
            for pid in worker_pids:
                assert shared <= held_socket_inodes(pid)
        assert daemon.stop() == 0


def test_an_unnamed_socket_is_http_and_wins_over_p(hacheck_daemon):
    flag_port = unused_port()
    with listening_socket() as http_socket:
        daemon = hacheck_daemon(handed=[(http_socket, "")], args=["-p", str(flag_port)])
        assert daemon.get("/spool/web/80")[0] == 200
        assert not port_open(flag_port)
        lines = [line for line in daemon.output().splitlines() if f"-p {flag_port} not bound" in line]
        assert len(lines) == 1, daemon.output()


def test_a_restart_with_the_socket_held_refuses_no_connection(hacheck_daemon):
    """Connections made while no hacheck runs wait in the held socket and are answered by the next one."""
    with listening_socket() as held:
        port = held.getsockname()[1]
        first = hacheck_daemon(handed=[(held, "http")])
        failures, answered, done = [], [], threading.Event()

        def keep_asking() -> None:
            while not done.is_set():
                try:
                    answered.append(http_request(port, "/spool/web/80", timeout=20)[0])
                except OSError as err:
                    failures.append(repr(err))

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            assert first.stop() == 0
            # No hacheck runs now: these connect (the socket is held) and wait for an answer.
            waiting = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(5)]
            for connection in waiting:
                connection.sendall(b"GET /spool/web/80 HTTP/1.0\r\n\r\n")
            second = hacheck_daemon(handed=[(held, "http")])
            for connection in waiting:
                with connection:
                    assert connection.makefile("rb").readline().startswith(b"HTTP/1.1 200")
            assert second.get("/spool/web/80")[0] == 200
        finally:
            done.set()
            asker.join(30)
        assert failures == []
        assert answered and set(answered) == {200}


def test_sockets_meant_for_another_process_are_left_alone():
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    assert not systemd.listen_sockets(environ)
    assert environ == {}  # a child of hacheck's must not take them for its own either


def test_bad_listen_fds_is_one_line():
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "three"}
    with pytest.raises(systemd.SocketActivationError, match="LISTEN_FDS='three'"):
        systemd.listen_sockets(environ)
