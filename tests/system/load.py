"""A bounded HTTP load: N connections in turn, each request on a new connection.

Run inside the container's network (``nsenter -t PID -n python3 load.py ...``).
Runs until SIGTERM or ``--max-seconds``, then prints one JSON line: requests,
failed, and the failures by kind. A new connection per request is what HAProxy
does for every check: a refused or reset connection during a restart counts.
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

    paths = [args.paths[i % len(args.paths)] for i in range(args.connections)]
    started = time.monotonic()
    await asyncio.gather(*(connection(path) for path in paths))
    return {"requests": done[0], "failed": sum(failures.values()), "failures": dict(failures),
            "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between one connection's requests")
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
