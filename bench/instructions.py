#!/usr/bin/env python3
"""Instructions per request, hacheck against the Tornado ceiling, counted by valgrind (callgrind).

Requests per second on a shared or virtual machine move by 10-15% between
identical runs, which hides any change of a few percent. The number of
instructions a server executes per request does not move (0.2% between
runs): this script runs the bare Tornado application of ``bench/run.py`` and
hacheck under ``valgrind --tool=callgrind``, sends each the same requests,
and prints instructions per request and their ratio. It counts the process's
own instructions only (not the kernel's work for its system calls, nor cache
misses), so it complements ``bench/run.py``; it does not replace it.

    python3 bench/instructions.py                  # spool, cached http and spool with send-state's header,
                                                   # keep-alive and close
    python3 bench/instructions.py --requests 500   # quicker

Needs valgrind (Debian package ``valgrind``); takes a few minutes.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: its helper servers and process handling)

REPO_ROOT = Path(__file__).resolve().parent.parent


# What HAProxy's http-check send-state adds to each check (the load balancers' view records it).
SEND_STATE = ("X-Haproxy-Server-State: UP; address=127.0.0.1; port={port}; name=be_bench/srv1; node=lb1; "
              "weight=1/1; scur=0/0; qcur=0\r\n")


async def send_requests(port: int, path: str, count: int, connections: int, close: bool,
                        extra_headers: str = "") -> None:
    """``count`` GETs of ``path`` over ``connections`` connections (a new one per request with ``close``)."""
    headers = "Host: bench\r\n" + extra_headers + ("Connection: close\r\n" if close else "")
    request = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
    remaining = iter(range(count))

    async def one_connection() -> None:
        reader = writer = None
        for _ in remaining:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status_line = await bench.read_answer(reader)
            if not status_line.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{path}: {status_line!r}")
            if close:
                await reader.read()
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*[one_connection() for _ in range(connections)])


def instructions_per_request(processes: bench.Processes, argv: list, port: int, path: str, args,
                             close: bool, extra_headers: str = "") -> float:
    """Start ``argv`` under callgrind with counting off, warm it up, count ``args.requests`` requests."""
    output = tempfile.mktemp(prefix="callgrind-", dir=processes.workdir)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = processes.start(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={output}"] + argv, env=env)
    started = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
            break
        except OSError:
            if time.monotonic() - started > 300:
                raise RuntimeError(f"{argv[1]} did not answer under valgrind within 300 s") from None
            time.sleep(0.5)
    asyncio.run(send_requests(port, path, 300, args.connections, close, extra_headers))  # warm-up, not counted
    subprocess.run(["callgrind_control", "--instr=on", str(process.pid)], check=True, capture_output=True)
    asyncio.run(send_requests(port, path, args.requests, args.connections, close, extra_headers))
    subprocess.run(["callgrind_control", "--instr=off", str(process.pid)], check=True, capture_output=True)
    process.terminate()
    process.wait(60)
    total = 0
    for name in os.listdir(processes.workdir):
        if name.startswith(os.path.basename(output)):
            with open(os.path.join(processes.workdir, name)) as counts:
                for line in counts:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
    return total / args.requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per measurement")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"instructions: {tool} is not installed (apt-get install valgrind)")
    processes = bench.Processes()
    try:
        upstream_port = bench.free_port()
        processes.helper("upstream", upstream_port)
        config = os.path.join(processes.workdir, "hacheck.yaml")
        with open(config, "w") as config_file:
            config_file.write("cache_time: 3600\n")
        rows = []
        for mode, close in (("keep-alive", False), ("close", True)):
            port = bench.free_port()
            ceiling = instructions_per_request(
                processes, [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--serve-bare", str(port)],
                port, "/", args, close)
            for name, path, extra_headers in (
                    ("spool check", f"/spool/bench/{upstream_port}/", ""),
                    ("cached http check", f"/http/bench/{upstream_port}/health", ""),
                    ("spool, send-state", f"/spool/bench/{upstream_port}/", SEND_STATE.format(port=upstream_port))):
                port = bench.free_port()
                hacheck = instructions_per_request(
                    processes, [sys.executable, str(REPO_ROOT / "bin" / "hacheck"), "-p", str(port),
                                "--spool-root", os.path.join(processes.workdir, "spool"), "-c", config],
                    port, path, args, close, extra_headers)
                rows.append((name, mode, ceiling, hacheck))
                print(f"{name:<18} {mode:<10} ceiling {ceiling:>9.0f}  hacheck {hacheck:>9.0f} instructions/request"
                      f"  ratio {ceiling / hacheck:.3f}", flush=True)
    finally:
        processes.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
