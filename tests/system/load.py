"""A bounded HTTP load: N connections in turn, each request on a new connection, and M kept alive.

Run inside the container's network (``nsenter -t PID -n python3 load.py ...``).
Runs until SIGTERM or ``--max-seconds``, then prints one JSON line: requests,
failed, and the failures by kind. A new connection per request is what HAProxy
does for every check: a refused or reset connection during a restart counts.
``--keep-alive M`` adds M clients that send HTTP/1.1 requests one after another
on one connection, opening a new one only when an answer says
``Connection: close`` (a monitoring agent, HAProxy with connection reuse): a
request sent on a kept-alive connection and never answered counts.
"""

import argparse
import asyncio
import json
import signal
import time
from collections import Counter


async def one_request(port: int, path: str, timeout: float) -> str:
    """'' when the answer is a 200, else what went wrong."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError) as err:
        return f"connect: {type(err).__name__}"
    try:
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError) as err:
        return f"answer: {type(err).__name__}"
    finally:
        writer.close()
    status = answer.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
        return f"status: {status[:60].decode('latin-1')!r}"
    return ""


async def read_answer(reader: asyncio.StreamReader) -> tuple:
    """(status line, whether the server closes the connection after it) of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers.get(b"connection") == b"close"


class KeptAlive:
    """One client's connection, kept between its requests."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.reader = self.writer = None

    async def request(self, path: str) -> str:
        """'' when the answer is a 200, else what went wrong."""
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self.timeout)
            except (OSError, asyncio.TimeoutError) as err:
                return f"keep-alive connect: {type(err).__name__}"
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: load\r\n\r\n".encode())
            status, closing = await asyncio.wait_for(read_answer(self.reader), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            self.close()
            return f"keep-alive answer: {type(err).__name__}"
        if closing:
            self.close()
        if status.split(b" ")[1:2] != [b"200"]:
            return f"keep-alive status: {status[:60].decode('latin-1')!r}"
        return ""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(args) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(args.max_seconds, stop.set)
    failures: Counter = Counter()
    done = [0]

    async def connection(path: str) -> None:
        while not stop.is_set():
            error = await one_request(args.port, path, args.timeout)
            done[0] += 1
            if error:
                failures[f"{path} {error}"] += 1
            await asyncio.sleep(args.pause)

    async def kept_alive(path: str) -> None:
        client = KeptAlive(args.port, args.timeout)
        while not stop.is_set():
            error = await client.request(path)
            done[0] += 1
            if error:
                failures[f"{path} {error}"] += 1
            await asyncio.sleep(args.pause)
        client.close()

    paths = [args.paths[i % len(args.paths)] for i in range(args.connections + args.keep_alive)]
    started = time.monotonic()
    await asyncio.gather(*(connection(path) for path in paths[:args.connections]),
                         *(kept_alive(path) for path in paths[args.connections:]))
    return {"requests": done[0], "failed": sum(failures.values()), "failures": dict(failures),
            "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--keep-alive", type=int, default=0, help="clients keeping their connection alive")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between one connection's requests")
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
