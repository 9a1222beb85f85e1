"""A restart answers every request already sent, on every connection, kept-alive ones too.

As systemd restarts a socket-activated hacheck: one listening socket held by the
test, handed to a daemon; SIGTERM; the next daemon gets the same socket. Clients
that keep their connections alive (HTTP/1.1, as a monitoring agent or a load
balancer with connection reuse does) send all along. The stopping daemon answers
a request that arrives on a kept-alive connection with ``Connection: close`` and
closes it after, and closes an idle connection without destroying an answer
already sent, so no client loses a request.
"""

import http.client
import threading
import time

from tests.conftest import listening_socket, start_hacheck

CLIENTS = 12
RESTARTS = 3


class KeepAliveClient(threading.Thread):
    """Sends GETs on one HTTP/1.1 connection, opening a new one only when the server asked to close."""

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.answered = 0
        self.closed_by_server = 0
        self.failures = []

    def run(self) -> None:
        connection = None
        while not self.stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                connection.request("GET", "/spool/web/0/status")
                response = connection.getresponse()
                body = response.read()
                if (response.status, body) != (200, b""):
                    self.failures.append(f"{response.status} {body[:80]!r}")
                self.answered += 1
                if response.will_close:  # the server said Connection: close
                    self.closed_by_server += 1
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as err:
                self.failures.append(f"{time.time():.3f} {type(err).__name__}: {err}")
                connection.close()
                connection = None
            time.sleep(0.005)
        if connection is not None:
            connection.close()


def test_restarts_lose_no_request_on_kept_alive_connections(tmp_path):
    listener = listening_socket()
    spool_root = str(tmp_path / "spool")
    daemon = start_hacheck(tmp_path, handed=[(listener, "http")], spool_root=spool_root)
    stop = threading.Event()
    clients = [KeepAliveClient(daemon.port, stop) for _ in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        for _ in range(RESTARTS):
            time.sleep(1.0)
            assert daemon.stop() == 0, daemon.output()
            daemon = start_hacheck(tmp_path, handed=[(listener, "http")], spool_root=spool_root)
        time.sleep(1.0)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
        daemon.stop()
        listener.close()
    failures = [failure for client in clients for failure in client.failures]
    answered = sum(client.answered for client in clients)
    assert failures == [], f"{len(failures)} of {answered + len(failures)} requests failed: {failures[:5]}"
    assert answered > 200
    # Every client was told to reconnect at each stop, rather than finding its connection closed.
    assert all(client.closed_by_server >= 1 for client in clients)
