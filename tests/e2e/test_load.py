"""Load: 10,000 client connections open at once against the real daemon (``rlimit_nofile: max``).

Every request is answered or cleanly refused (a refused or reset connection);
a hang, a 500 or a crash fails. Afterwards the daemon's open file descriptors
are back where they started.
"""

import asyncio
import time

import pytest

from tests.e2e.misbehaving_support import open_fds, raise_open_files_limit
from tests.e2e.support import operator_tool

CONNECTIONS = 10_000
# Opening is spread a little (1000 per 50 ms) so the kernel's accept queue is
# not the thing under test; all connections are still open together.
OPEN_BATCH, OPEN_PAUSE = 1000, 0.05
ANSWER_TIMEOUT = 40.0


async def open_all(port: int, count: int):
    """Open ``count`` connections; returns (list of (reader, writer) or error name)."""
    async def connect():
        try:
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            return "hang"
        except OSError as err:
            return type(err).__name__

    tasks = []
    for start in range(0, count, OPEN_BATCH):
        tasks += [asyncio.ensure_future(connect()) for _ in range(min(OPEN_BATCH, count - start))]
        await asyncio.sleep(OPEN_PAUSE)
    return await asyncio.gather(*tasks)


async def ask(connection, path: str):
    """Send one HTTP/1.0 GET on an open connection; (status, body) or (None, error name)."""
    if isinstance(connection, str):
        return None, connection
    reader, writer = connection
    try:
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT)
    except asyncio.TimeoutError:
        return None, "hang"
    except OSError as err:
        return None, type(err).__name__
    finally:
        writer.close()
    if not answer:
        return None, "closed without an answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None, f"not HTTP: {answer[:60]!r}"
    return int(parts[1]), body


async def load(port: int) -> tuple:
    connections = await open_all(port, CONNECTIONS)
    opened = sum(1 for c in connections if not isinstance(c, str))
    # Half the services are down, so both answers are exercised.
    paths = [f"/spool/load-{n % 10}/{8000 + n % 10}" for n in range(CONNECTIONS)]
    answers = await asyncio.gather(*(ask(c, p) for c, p in zip(connections, paths)))
    return opened, paths, answers


def wait_for_fds(pid: int, baseline: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    now = open_fds(pid)
    while now > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
        now = open_fds(pid)
    return now


@pytest.mark.timeout(120)
def test_ten_thousand_concurrent_connections(hacheck_daemon):
    raise_open_files_limit(CONNECTIONS + 1000)
    daemon = hacheck_daemon(config={"rlimit_nofile": "max"})
    for n in range(0, 10, 2):
        operator_tool("hadown", daemon.spool_root, "-r", "load test", f"load-{n}")
    assert daemon.get("/spool/load-1/8001")[0] == 200
    baseline = open_fds(daemon.pid)

    started = time.monotonic()
    opened, paths, answers = asyncio.run(load(daemon.port))
    elapsed = time.monotonic() - started

    assert daemon.process.poll() is None, f"hacheck died under load:\n{daemon.output()}"
    clean_refusals = ("ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError")
    unclean = {}
    answered = 0
    for path, (status, body) in zip(paths, answers):
        if status is None:
            if body not in clean_refusals:
                unclean[body] = unclean.get(body, 0) + 1
            continue
        answered += 1
        down = int(path.split("/")[2].split("-")[1]) % 2 == 0
        if down:
            assert status == 503 and b"in down state" in body and b"load test" in body, (path, status, body)
        else:
            assert (status, body) == (200, b""), (path, status, body)
    assert unclean == {}, f"requests neither answered nor cleanly refused: {unclean}"
    # On loopback with a large enough limit nothing should even be refused.
    assert answered >= CONNECTIONS * 0.99, f"only {answered} of {CONNECTIONS} answered ({opened} opened)"
    assert elapsed < 60

    after = wait_for_fds(daemon.pid, baseline)
    assert after <= baseline, f"daemon holds {after} open files after the load, {baseline} before"
    assert daemon.get("/spool/load-1/8001")[0] == 200
    assert "Traceback" not in daemon.output()
    assert " ERROR " not in daemon.output()
