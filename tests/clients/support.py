"""What real clients send, captured once and replayed byte for byte.

A client's request forms live in ``captures/`` (how they were captured:
``captures/README.md``). Where the client is installed, a test captures the
form again from the real client (a tiny listener on loopback records what it
sends) and checks it against the stored bytes; every test replays the stored
bytes to a real hacheck daemon.

What varies from one capture to the next is stored as a marker:
``@SERVER_PORT@`` for the checked server's port (in the URL and in HAProxy's
``send-state`` header) and ``@HACHECK_PORT@`` for hacheck's own port (in a
client's ``Host``). HAProxy's ``send-state`` counters are compared as
``*`` (``canonical``).

Re-capture every stored form (after a change of client version or of a form):
``python3 -m tests.clients.support``.
"""

import contextlib
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest

from tests.conftest import raw_exchange, require_command, unused_port
from tests.e2e.haproxy_support import defaults_section, run_haproxy
from tests.e2e.support import CountingListener, operator_tool

CAPTURES = Path(__file__).resolve().parent / "captures"
SERVER_PORT = "@SERVER_PORT@"
HACHECK_PORT = "@HACHECK_PORT@"
# HAProxy's node name in send-state; set in the capture's configuration so it does not vary.
HAPROXY_NODE = "capture-lb"
CAPTURE_DEADLINE = 15.0
MAX_HEAD_BYTES = 65536


@dataclass(frozen=True)
class Form:
    """One way a client is configured to ask hacheck, and the file its captured request is stored in."""

    name: str  # file stem in captures/
    source: str  # the client's repository and file the form comes from, or HAProxy's manual
    backend_lines: str = ""  # for HAProxy: the backend's check lines, {server_port} where the port goes
    server_options: str = ""  # for HAProxy: what the client puts on each server line besides the check port

    @property
    def path(self) -> Path:
        return CAPTURES / f"{self.name}.http"

    def stored(self) -> bytes:
        return self.path.read_bytes()

    def request(self, server_port: int, hacheck_port: int = 0) -> bytes:
        """The stored bytes with the markers replaced by this run's ports."""
        return (self.stored().replace(SERVER_PORT.encode(), str(server_port).encode())
                .replace(HACHECK_PORT.encode(), str(hacheck_port).encode()))


def with_markers(raw: bytes, server_port: int, hacheck_port: Optional[int] = None) -> bytes:
    """A captured request with its ports turned into markers."""
    marked = re.sub(rb"(?<![0-9])%d(?![0-9])" % server_port, SERVER_PORT.encode(), raw)
    if hacheck_port is not None:
        marked = re.sub(rb"(?<![0-9])%d(?![0-9])" % hacheck_port, HACHECK_PORT.encode(), marked)
    return marked


_STATE_LINE = re.compile(rb"(?im)^(x-haproxy-server-state:)[^\r\n]*$")
_STATE_FIELD = re.compile(rb"(;\s*(?:scur|qcur|weight|throttle)=)[^;\r\n]*")


def canonical(request: bytes) -> bytes:
    """``request`` with the values that change between checks (send-state's state and counters) as ``*``."""
    def state(match):
        value = match.group(0)
        name, _, fields = value.partition(b":")
        head, sep, rest = fields.partition(b";")
        return name + b": *" + sep + _STATE_FIELD.sub(rb"\1*", rest)
    return _STATE_LINE.sub(state, request)


class RecordingListener(CountingListener):
    """A loopback TCP listener (thread) that records each request head and answers ``200 OK``."""

    def __init__(self):
        super().__init__()
        self.requests: List[bytes] = []

    def handle(self, connection: socket.socket) -> None:
        with connection:
            head = _read_head(connection)
            if head:
                self.requests.append(head)
                try:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                except OSError:
                    pass

    def first(self, timeout: float = CAPTURE_DEADLINE) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.requests:
            if time.monotonic() > deadline:
                raise AssertionError(f"no request reached the listener on port {self.port} within {timeout}s")
            time.sleep(0.02)
        return self.requests[0]


def _read_head(connection: socket.socket) -> bytes:
    connection.settimeout(5)
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
            chunk = connection.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:
        pass
    return head


def haproxy_backend(form: Form, server_port: int, check_port: int) -> str:
    """The backend ``form.name`` with one server ``srv`` on ``server_port``, checked on ``check_port``."""
    lines = form.backend_lines.format(server_port=server_port).replace("\n", "\n    ")
    return (f"backend {form.name}\n    {lines}\n    server srv 127.0.0.1:{server_port} check port {check_port} "
            f"{form.server_options} inter 200ms fall 2 rise 2\n")


def haproxy_sections(backends: Iterable[str], mode: str = "http") -> str:
    return defaults_section(mode) + "\n" + "\n".join(backends)


def capture_haproxy(tmp_path: Path, forms: List[Form]) -> Dict[str, bytes]:
    """The first check a real HAProxy sends for each form, with its ports as markers."""
    server_port = unused_port()  # never connected to: checks go to each listener's port
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(RecordingListener()) for _ in forms]
        sections = haproxy_sections(haproxy_backend(form, server_port, listener.port)
                                    for form, listener in zip(forms, listeners))
        with run_haproxy(tmp_path, sections, global_lines=f"node {HAPROXY_NODE}"):
            return {form.name: with_markers(listener.first(), server_port)
                    for form, listener in zip(forms, listeners)}


class UpstreamRecord:
    """What a ``tornado_upstream`` was asked: (path, headers) per request; ``code`` is what it answers."""

    def __init__(self):
        self.requests: List[tuple] = []
        self.code = 200
        self.body = "healthy"


@contextlib.contextmanager
def tornado_upstream(host: str = "127.0.0.1"):
    """A real Tornado application on ``host`` (its own thread and event loop); yields (port, record)."""
    import asyncio

    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    record = UpstreamRecord()

    class Health(tornado.web.RequestHandler):
        def get(self, *args):
            record.requests.append((self.request.path, dict(self.request.headers)))
            self.set_status(record.code)
            self.write(record.body)

    ready = threading.Event()
    running = {}

    async def serve() -> None:
        sockets = tornado.netutil.bind_sockets(0, host)
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/(.*)", Health)]))
        server.add_sockets(sockets)
        running.update(port=sockets[0].getsockname()[1], loop=asyncio.get_running_loop(), stop=asyncio.Event())
        ready.set()
        await running["stop"].wait()
        server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise AssertionError(f"the Tornado upstream did not start on {host}")
    try:
        yield running["port"], record
    finally:
        running["loop"].call_soon_threadsafe(running["stop"].set)
        thread.join(10)


def parse_answer(raw: bytes):
    """(status code, body text, lower-cased header names to values) of one HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"not an HTTP answer: {raw[:200]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), body.decode("utf-8", "replace"), headers


def replay(form: Form, hacheck_port: int, server_port: int):
    """Send ``form``'s stored bytes to hacheck as they are; its answer as ``parse_answer`` gives it."""
    return parse_answer(raw_exchange(hacheck_port, form.request(server_port, hacheck_port)))


def captured_by_haproxy(forms: List[Form]):
    """A module fixture: the requests a real HAProxy sends for ``forms`` (``capture_haproxy``)."""
    @pytest.fixture(scope="module")
    def captured(tmp_path_factory) -> Dict[str, bytes]:
        require_command("haproxy")
        return capture_haproxy(tmp_path_factory.mktemp("capture"), forms)
    return captured


def answered_then_down(form: Form, daemon, upstream_port: int) -> str:
    """Replay ``form``: 200; after ``hadown web``, hacheck's 503 with the reason. The 200's body."""
    code, healthy_body, _ = replay(form, daemon.port, upstream_port)
    assert code == 200, (form.name, healthy_body)
    operator_tool("hadown", daemon.spool_root, "-r", "deploying", "web")
    code, body, _ = replay(form, daemon.port, upstream_port)
    assert code == 503
    assert body.startswith("Service web in down state since ") and body.endswith(": deploying")
    return healthy_body


def haproxy_end_to_end(tmp_path: Path, forms: List[Form], daemon, upstream_port: int, mode: str = "http") -> None:
    """A real HAProxy with each form in front of ``daemon`` checking the upstream: UP; after ``hadown web``
    every server is DOWN with hacheck's 503; after ``haup web`` UP again."""
    sections = haproxy_sections((haproxy_backend(form, upstream_port, daemon.port) for form in forms), mode)
    with run_haproxy(tmp_path, sections) as lb:
        for form in forms:
            lb.wait_for(form.name, "srv", "UP", "L7OK")
        operator_tool("hadown", daemon.spool_root, "-r", "client test", "web")
        for form in forms:
            # "L7STS" exactly: while a check is running HAProxy shows "* L7STS" and a code of 0.
            row = lb.wait_for(form.name, "srv", "DOWN", "L7STS")
            assert row["check_code"] == "503", (form.name, row)
        operator_tool("haup", daemon.spool_root, "web")
        for form in forms:
            lb.wait_for(form.name, "srv", "UP", "L7OK")


def recapture_all() -> None:
    """Capture every stored form again from the real clients installed here and write the files."""
    from tests.clients import test_haproxy, test_nerve, test_synapse_tools

    with tempfile.TemporaryDirectory() as tmp:
        captured = capture_haproxy(Path(tmp), test_haproxy.FORMS + test_synapse_tools.FORMS)
        captured.update(test_nerve.capture_nerve(test_nerve.FORMS))
    for name, request in sorted(captured.items()):
        (CAPTURES / f"{name}.http").write_bytes(request)
        print(f"captured {name}.http ({len(request)} bytes)")


if __name__ == "__main__":
    recapture_all()
