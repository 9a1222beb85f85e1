"""Helpers for the reliability tests: misbehaving upstreams, a latency probe in its own process,
many concurrent raw HTTP requests, and raising this process's open files limit."""

import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional, Tuple

from tests.conftest import require

# --- misbehaving upstreams ---------------------------------------------------------


class MisbehavingUpstreams:
    """Raw TCP servers on 127.0.0.1, one per way of misbehaving; ``ports[name]``.

    silent: accepts, reads the request, never answers.
    endless: a 200 whose body never ends (until the client hangs up).
    hangup: starts a 200 with a body it never finishes, then closes.
    garbage: answers with something that is not HTTP and keeps the connection open.
    """

    KINDS = ("silent", "endless", "hangup", "garbage")

    def __init__(self):
        self.ports = {}
        self.accepted = dict.fromkeys(self.KINDS, 0)
        self.open_now = dict.fromkeys(self.KINDS, 0)
        self.max_open = dict.fromkeys(self.KINDS, 0)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._servers = []

    async def _serve(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted[kind] += 1
        self.open_now[kind] += 1
        self.max_open[kind] = max(self.max_open[kind], self.open_now[kind])
        try:
            await reader.readuntil(b"\r\n\r\n")
            if kind == "silent":
                await reader.read()  # until the client gives up and closes
            elif kind == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                chunk = b"x" * 16384
                while True:
                    writer.write(chunk)
                    await writer.drain()
            elif kind == "hangup":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhealthy but")
                await writer.drain()
            elif kind == "garbage":
                writer.write(b"\x00\xffSSH-2.0-not-http \x1b[31m\r\n\r\n")
                await writer.drain()
                await reader.read()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the client left, or the test is over (CancelledError: stop() ends what is left)
        finally:
            self.open_now[kind] -= 1
            writer.close()

    async def _start(self) -> None:
        for kind in self.KINDS:
            server = await asyncio.start_server(
                lambda r, w, kind=kind: self._serve(kind, r, w), "127.0.0.1", 0, backlog=2048)
            self._servers.append(server)
            self.ports[kind] = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    @contextlib.contextmanager
    def running(self) -> Iterator["MisbehavingUpstreams"]:
        """Serve from an event loop in a thread of its own."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        self._loop = loop
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


# --- many concurrent raw requests ---------------------------------------------------


async def raw_get(port: int, path: str, timeout: float) -> Tuple[Optional[int], bytes, float, Optional[str]]:
    """One HTTP/1.0 GET; returns (status or None, body, seconds, error or None).

    A refused or reset connection is reported as an error string; a request
    that gets no complete answer within ``timeout`` is the error ``"hang"``.
    """
    started = time.monotonic()
    writer = None
    try:
        async def exchange():
            nonlocal writer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            return await reader.read()
        answer = await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        return None, b"", time.monotonic() - started, "hang"
    except OSError as err:
        return None, b"", time.monotonic() - started, type(err).__name__
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None, answer, elapsed, "no HTTP answer"
    return int(parts[1]), body, elapsed, None


async def many_gets(port: int, paths: List[str], timeout: float, batch: int = 250,
                    pause: float = 0.0) -> list:
    """GET every path at once (opening connections ``batch`` at a time); the results in order."""
    tasks = []
    for start in range(0, len(paths), batch):
        tasks += [asyncio.ensure_future(raw_get(port, path, timeout)) for path in paths[start:start + batch]]
        await asyncio.sleep(pause)
    return await asyncio.gather(*tasks)


# --- a latency probe in its own process ----------------------------------------------

_PROBE_SOURCE = r"""
import http.client, json, select, sys, time
port, path, interval = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def ask():
    started = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return time.monotonic() - started, response.status, body.decode("utf-8", "replace")
ask()  # connect and warm up
print("ready", flush=True)
samples = []
while True:
    readable, _, _ = select.select([sys.stdin], [], [], interval)
    if readable:
        break
    samples.append(ask())
print(json.dumps(samples), flush=True)
"""


class LatencyProbe:
    """A separate process asking ``path`` over one kept-alive connection every ``interval`` seconds.

    It runs outside the test process so the test's own work cannot delay it;
    ``stop()`` returns [(seconds, status, body), ...].
    """

    def __init__(self, port: int, path: str, interval: float = 0.02):
        self.process = subprocess.Popen([sys.executable, "-c", _PROBE_SOURCE, str(port), path, str(interval)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"latency probe did not start: {line!r}"

    def stop(self) -> list:
        self.process.stdin.write("stop\n")
        self.process.stdin.close()
        out = self.process.stdout.read()
        self.process.wait(30)
        return json.loads(out)


# --- limits -------------------------------------------------------------------------


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; skip (fail in CI) when below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    require(target >= needed, f"the open files hard limit {hard} is below the {needed} this test needs")
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def open_fds(pid: int) -> int:
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))
