"""What the ported suites share: markers for deliberate differences, tools, a daemon per module."""

import asyncio
import contextlib
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import tornado.web

from tests.conftest import REPO_ROOT, tool_argv, tool_env, unused_port

COMPATIBILITY = REPO_ROOT / "docs" / "compatibility.md"

def _anchors(markdown: str) -> set:
    """GitHub's anchors for the headings of a Markdown text."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", markdown, re.M)}


def deliberate(anchor: str):
    """The marker of a case we answer differently on purpose, as docs/compatibility.md#``anchor`` explains.

    Strict: should the case start passing, the suite fails, and the page or the code is wrong.
    """
    if anchor not in _anchors(COMPATIBILITY.read_text(encoding="utf-8")):
        raise AssertionError(f"docs/compatibility.md has no section #{anchor}")
    return pytest.mark.xfail(strict=True, reason=f"docs/compatibility.md#{anchor}")


# Where uber's line and Yelp's disagree (spool format, 503 body, DOWN lines): we follow Yelp's.
ORIGINALS_DISAGREE = "where-the-two-originals-disagree"


class Tools:
    """The real tools from bin/ on one spool root; ``run`` returns the finished process."""

    def __init__(self, spool_root: str, user: str = "testyuser"):
        self.root = spool_root
        self.user = user

    def run(self, tool: str, *args: str, env=None, spool: bool = True) -> subprocess.CompletedProcess:
        argv = tool_argv(tool) + (["--spool-root", self.root] if spool else []) + list(args)
        environment = tool_env(SUDO_USER=self.user, SSH_USER=self.user, HACHECK_NONHUMANS_FILE="/dev/null")
        environment.update(env or {})
        return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=60)

    def ok(self, tool: str, *args: str) -> str:
        """Run a tool that must succeed; its stdout."""
        result = self.run(tool, *args)
        assert result.returncode == 0, f"{tool} {args}: exit {result.returncode}: {result.stderr}"
        return result.stdout

    def file(self, name: str) -> Path:
        return Path(self.root) / name


class ScriptServer:
    """A TCP server (thread) that runs ``handle(connection)`` for each connection, then closes it."""

    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    self.handle(connection)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@contextlib.contextmanager
def script_server(handle):
    """A ``ScriptServer`` for the ``with`` block; yields its port."""
    server = ScriptServer(handle)
    try:
        yield server.port
    finally:
        server.close()


@contextlib.contextmanager
def tornado_upstream(routes, ssl_options=None, settings=None):
    """Serve ``routes`` from a Tornado application (with ``settings``) in its own thread and IOLoop;
    yields the port."""
    port = unused_port()
    started, stop = threading.Event(), None

    def serve():
        nonlocal stop
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = loop.create_future()
        application = tornado.web.Application(routes, **(settings or {}))
        server = application.listen(port, address="127.0.0.1", ssl_options=ssl_options)
        started.set()
        loop.run_until_complete(stop)
        server.stop()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port
    finally:
        loop = stop.get_loop()
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
