"""A stop answers the connections already accepted, so a restart behind systemd's socket fails no check.

Before, a connection accepted just before SIGTERM whose request had not
arrived yet was closed without an answer (HAProxy: a failed check).
"""

import signal
import socket
import time

WAIT = 20  # generous: other helpers load this 2-core machine


def read_answer(reader) -> bytes:
    """The status line of one HTTP answer, its headers and body consumed."""
    status = reader.readline()
    length = 0
    for line in iter(reader.readline, b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        assert line, "the connection closed in the middle of an answer"
    reader.read(length)
    return status


def test_a_request_on_a_connection_accepted_before_the_stop_is_answered(hacheck_daemon):
    daemon = hacheck_daemon()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as connection:
        reader = connection.makefile("rb")
        # A first answer proves the connection is accepted; HTTP/1.1 keeps it open.
        connection.sendall(b"GET /spool/web/1/ HTTP/1.1\r\nHost: hacheck\r\n\r\n")
        assert read_answer(reader).startswith(b"HTTP/1.1 200")
        daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WAIT
        while "stopping" not in daemon.output() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "stopping" in daemon.output()
        connection.sendall(b"GET /spool/web/1/ HTTP/1.1\r\nHost: hacheck\r\nConnection: close\r\n\r\n")
        assert read_answer(reader).startswith(b"HTTP/1.1 200")
    assert daemon.process.wait(WAIT) == 0
