"""Fixtures for the protocol checks: contexts, scripted and silent TCP servers, hang probes, a real HAProxy."""

import asyncio
import contextlib
import csv
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from typing import Callable, List, Optional

import pytest

from hacheck.checks.base import CheckContext, SharedResources, Target, run_check
from hacheck.config import Config
from tests.conftest import port_open, require_command, unused_port

# A check against a server that never answers must end within the timeout; this much
# slack covers a busy 2-core machine without hiding a check that waits twice as long.
HUNG_TIMEOUT = 0.5
HUNG_SLACK = 1.0


@pytest.fixture
def make_context():
    """Build a ``CheckContext`` from config keys; its shared resources are closed after the test."""
    made: List[SharedResources] = []

    def build(service: str = "svc", query_string: str = "", **config_keys) -> CheckContext:
        config = Config(**config_keys)
        resources = SharedResources(config)
        made.append(resources)
        return CheckContext(service, config, resources, query_string=query_string, headers={})

    yield build
    for resources in made:
        resources.close()


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


class ScriptedServer:
    """A real TCP server on loopback that sends ``greeting`` and answers lines with ``answer(line)``.

    ``answer`` returns the bytes to send back, None to stay silent, or ``HANG_UP``
    to close the connection. With ``drip``, it sends those bytes every 0.1 s after
    the greeting, forever. With none of these it accepts connections and never
    says a word.
    """

    HANG_UP = object()

    def __init__(
        self,
        greeting: bytes = b"",
        answer: Optional[Callable[[bytes], object]] = None,
        drip: bytes = b"",
    ):
        greeting_bytes, answer_line, drip_bytes = greeting, answer, drip

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    if greeting_bytes:
                        self.wfile.write(greeting_bytes)
                    while drip_bytes:  # a server that is alive but never finishes a sentence
                        self.wfile.write(drip_bytes)
                        time.sleep(0.1)
                    for line in self.rfile:
                        reply = answer_line(line) if answer_line else None
                        if reply is ScriptedServer.HANG_UP:
                            return
                        if reply:
                            self.wfile.write(reply)
                except OSError:
                    pass

        self.server = _ThreadingServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.target = Target("127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_server():
    """Factory for ``ScriptedServer``s, all shut down after the test."""
    servers: List[ScriptedServer] = []

    def start(greeting: bytes = b"", answer=None, drip: bytes = b"") -> ScriptedServer:
        server = ScriptedServer(greeting, answer, drip)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def silent_server(scripted_server) -> ScriptedServer:
    """Accepts connections, reads whatever comes, and never answers."""
    return scripted_server()


@pytest.fixture
def closed_port() -> Target:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return Target("127.0.0.1", port)


async def loop_gaps_while(awaitable) -> tuple:
    """Await ``awaitable`` while a ticker measures the event loop; returns (result, longest gap in s).

    A check that blocks the loop (a synchronous driver called directly) shows up as a long gap.
    """
    longest = 0.0
    done = asyncio.Event()

    async def tick():
        nonlocal longest
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    try:
        result = await awaitable
    finally:
        done.set()
        await ticker
    return result, longest


@pytest.fixture
def hang_probe(make_context, silent_server):
    """Run ``check`` against a server that never answers, with a small healthcheck_timeout.

    Asserts the result is ``expected_code`` (503; 599 for checks that record "no answer" so)
    within the timeout (plus slack) and that the event loop kept running meanwhile; returns the
    result for further assertions.
    """

    async def probe(check, query: str = "", expected_code: int = 503, **config_keys):
        context = make_context(healthcheck_timeout=HUNG_TIMEOUT, **config_keys)
        started = time.monotonic()
        result, longest_gap = await loop_gaps_while(run_check(check, silent_server.target, query, context))
        elapsed = time.monotonic() - started
        assert result.code == expected_code, result
        assert elapsed < HUNG_TIMEOUT + HUNG_SLACK, f"took {elapsed:.2f}s"
        assert elapsed >= HUNG_TIMEOUT * 0.8, f"gave up after {elapsed:.2f}s without an answer or refusal"
        assert longest_gap < 0.3, f"event loop blocked for {longest_gap:.2f}s"
        return result

    return probe


def _backend_statuses(stats_url: str) -> dict:
    with urllib.request.urlopen(stats_url, timeout=2) as response:
        lines = response.read().decode().removeprefix("# ").splitlines()
    return {row["pxname"]: row["status"] for row in csv.DictReader(lines) if row["svname"] == "BACKEND"}


@contextlib.contextmanager
def haproxy_with_stats(workdir, stats_uri: str):
    """A real HAProxy with its stats page at ``stats_uri``, backend ``web_up`` on a live listener and
    ``web_down`` on a closed port; yields the stats port once both backends have settled."""
    binary = require_command("haproxy")
    stats_port, closed = unused_port(), unused_port()
    live = ScriptedServer()  # accepts connections: enough for HAProxy's TCP health check
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n"
        "  maxconn 100\n"
        "defaults\n"
        "  mode http\n"
        "  timeout connect 1s\n"
        "  timeout client 5s\n"
        "  timeout server 5s\n"
        "listen stats\n"
        f"  bind 127.0.0.1:{stats_port}\n"
        "  stats enable\n"
        f"  stats uri {stats_uri}\n"
        "backend web_up\n"
        f"  server live 127.0.0.1:{live.port} check inter 100ms fall 1 rise 1\n"
        "backend web_down\n"
        f"  server gone 127.0.0.1:{closed} check inter 100ms fall 1 rise 1\n"
    )
    log = workdir / "haproxy.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    stats_url = f"http://127.0.0.1:{stats_port}{stats_uri.rstrip('/')}/;csv"
    try:
        # Servers start UP; wait until the health checks have settled both backends.
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            statuses = _backend_statuses(stats_url) if port_open(stats_port, timeout=0.2) else {}
            if statuses.get("web_up") == "UP" and statuses.get("web_down") == "DOWN":
                break
            assert time.monotonic() < deadline, f"backends did not settle: {statuses}"
            time.sleep(0.1)
        yield stats_port
    finally:
        process.terminate()
        process.wait(10)
        live.close()
