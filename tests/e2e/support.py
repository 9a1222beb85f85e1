"""Helpers for tests that drive the hacheck process from plain code: a threaded upstream, the operator tools."""

import contextlib
import http.server
import subprocess
import threading
import time
from typing import Iterator

from tests.conftest import tool_argv, tool_env


class UpstreamState:
    def __init__(self):
        self.code = 200
        self.body = b"healthy"
        self.delay = 0.0
        self.requests = []
        # When set, only a request with this Host header is answered ``code``; any other gets 503.
        self.only_host = None
        # Requests being answered now, and the most at once, by path (with its query string).
        self.in_flight = {}
        self.max_in_flight = {}
        # The most requests at once, whatever their paths.
        self.max_in_flight_total = 0
        self._lock = threading.Lock()

    def arrived(self, path: str) -> None:
        with self._lock:
            self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.max_in_flight[path] = max(self.max_in_flight.get(path, 0), self.in_flight[path])
            self.max_in_flight_total = max(self.max_in_flight_total, sum(self.in_flight.values()))

    def left(self, path: str) -> None:
        with self._lock:
            self.in_flight[path] -= 1


def _handler_class(state: UpstreamState):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append((self.path, dict(self.headers)))
            state.arrived(self.path)
            try:
                if state.delay:
                    time.sleep(state.delay)
            finally:
                state.left(self.path)
            code = state.code
            if state.only_host is not None and self.headers.get("Host") != state.only_host:
                code = 503
            self.send_response(code)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args):
            pass
    return Handler


@contextlib.contextmanager
def threaded_upstream(host: str = "127.0.0.1") -> Iterator[tuple]:
    """Yields (port, state); change ``state.code``/``body``/``delay`` to change the answers."""
    state = UpstreamState()
    server = http.server.ThreadingHTTPServer((host, 0), _handler_class(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def ask_agent(port: int, line: bytes) -> bytes:
    """Send ``line`` to the agent port; its one-line answer (with the newline)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def operator_tool(name, spool_root, *args):
    """Run the real operator tool ``name`` (``hadown``, ``haup``, ...) on ``spool_root``; returns its output."""
    result = subprocess.run(tool_argv(name) + ["--spool-root", spool_root] + list(args),
                            capture_output=True, text=True, timeout=30, env=tool_env(SUDO_USER="tester"))
    assert result.returncode == 0, f"{name} {args} exited {result.returncode}: {result.stderr}"
    return result.stdout


class CountingListener:
    """A TCP listener (thread) that accepts and closes connections, counting them; ``with`` starts and stops it."""

    def __init__(self, host: str = "127.0.0.1"):
        import socket

        self.host = host
        self.connections = 0
        self._socket = socket.create_server((host, 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:  # timeout: look at the stop flag again
                continue
            self.connections += 1
            self.handle(connection)

    def handle(self, connection) -> None:
        """What is done with an accepted connection: here, close it at once."""
        connection.close()

    def count(self, expected: int, timeout: float = 5.0) -> int:
        """The number of connections once it reaches ``expected`` or ``timeout`` passes.

        A client sees its connection open before this thread accepts it, so poll; asking for
        0 waits a moment for any straggler to be accepted.
        """
        deadline = time.monotonic() + (0.5 if expected == 0 else timeout)
        while time.monotonic() < deadline and (expected == 0 or self.connections < expected):
            time.sleep(0.02)
        return self.connections

    def __enter__(self) -> "CountingListener":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()
