#!/usr/bin/env python3
"""Soak hacheck: mixed checks at moderate load for a long time; RSS and open files must stay flat.

Starts a real ``hacheck`` from this checkout (temporary spool and config), a
fast HTTP upstream, a TCP listener, an upstream that never answers, and sends
a steady mix of spool, http, tcp and hanging checks, turning downtimes on and
off as it goes. Every ``--sample`` seconds it prints the daemon's resident
memory and open file descriptors; at the end the figures and their drift
(first sample against last).

    python3 bench/soak.py                   # 30 minutes (the by-hand run)
    python3 bench/soak.py --minutes 3       # a short run
"""

import argparse
import asyncio
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from hacheck.spool import Spool  # noqa: E402

SERVICES = [f"soak-{n}" for n in range(20)]


# ---------------------------------------------------------------- helper servers

class _Healthy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"healthy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_upstreams() -> dict:
    """A healthy HTTP upstream, a TCP port that accepts, and a port that accepts but never answers."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()

    def accept_and_close(listener):
        while True:
            connection, _ = listener.accept()
            connection.close()

    def accept_and_hold(listener, held):
        while True:
            connection, _ = listener.accept()
            held.append(connection)
            del held[:-200]  # keep the newest; the daemon gives up on them at its timeout anyway

    tcp = socket.create_server(("127.0.0.1", 0), backlog=1024)
    threading.Thread(target=accept_and_close, args=(tcp,), daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0), backlog=1024)
    threading.Thread(target=accept_and_hold, args=(silent, []), daemon=True).start()
    return {"http": web.server_address[1], "tcp": tcp.getsockname()[1], "silent": silent.getsockname()[1]}


def start_daemon(workdir: str, port: int) -> subprocess.Popen:
    config = Path(workdir) / "hacheck.yaml"
    config.write_text("cache_time: 1\nhealthcheck_timeout: 2\nmax_clients: 50\nrlimit_nofile: max\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bin" / "hacheck"), "-p", str(port), "-B", "127.0.0.1",
         "--spool-root", str(Path(workdir) / "spool"), "-c", str(config)],
        stdout=open(Path(workdir) / "hacheck.log", "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("hacheck did not start; see " + str(Path(workdir) / "hacheck.log"))


# ---------------------------------------------------------------- load

async def get(port: int, path: str, timeout: float = 10.0) -> str:
    """One GET on a new connection (as HAProxy does); the status code, or an error name."""
    writer = None
    try:
        async def exchange():
            nonlocal writer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            await writer.drain()
            return await reader.read()
        answer = await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        return "hang"
    except OSError as err:
        return type(err).__name__
    finally:
        if writer is not None:
            writer.close()
    parts = answer.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else "no answer"


def mixed_paths(ports: dict, n: int) -> str:
    """The n-th request of the mix: 40% spool, 30% http, 20% tcp, 10% a check that hangs to the timeout."""
    service = SERVICES[n % len(SERVICES)]
    kind = n % 10
    if kind < 4:
        return f"/spool/{service}/80"
    if kind < 7:
        return f"/http/{service}/{ports['http']}/health-{n % 50}"
    if kind < 9:
        return f"/tcp/{service}/{ports['tcp']}"
    return f"/http/{service}/{ports['silent']}/hang-{n % 20}"


def sample(pid: int) -> tuple:
    """(resident memory in KiB, open file descriptors) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def soak(port: int, pid: int, ports: dict, spool: Spool, seconds: float, rate: float,
               sample_every: float) -> tuple:
    outcomes = Counter()
    samples = []
    pending = set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_sample = started
    n = 0

    async def one(path: str) -> None:
        outcomes[await get(port, path)] += 1

    while loop.time() - started < seconds:
        now = loop.time()
        if now >= next_sample:
            rss, fds = sample(pid)
            samples.append((now - started, rss, fds))
            print(f"{now - started:8.0f}s  rss {rss / 1024:7.1f} MiB  fds {fds:5d}  "
                  f"requests {sum(outcomes.values()):8d}  in flight {len(pending):4d}", flush=True)
            next_sample += sample_every
        # Every 50th request toggles a downtime, some with an expiration.
        if n % 50 == 0:
            service = SERVICES[(n // 50) % len(SERVICES)]
            if spool.read(service) is None:
                spool.down(service, reason="soak", expiration=time.time() + 5 if n % 100 else None)
            else:
                spool.up(service)
        task = asyncio.ensure_future(one(mixed_paths(ports, n)))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
        await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*pending)
    await asyncio.sleep(3)  # let the daemon close what the last checks opened
    rss, fds = sample(pid)
    samples.append((loop.time() - started, rss, fds))
    print(f"{loop.time() - started:8.0f}s  rss {rss / 1024:7.1f} MiB  fds {fds:5d}  (after the load)")
    return samples, outcomes


def report(samples: list, outcomes: Counter, minutes: float, rate: float) -> None:
    first, last = samples[0], samples[-1]
    # The first sample is taken before any load; the drift that matters is from
    # the first sample under load (the second) to the last under load.
    loaded = samples[1:-1] or samples
    rss = [s[1] / 1024 for s in loaded]
    fds = [s[2] for s in loaded]
    print()
    total = sum(outcomes.values())
    print(f"soak: {minutes:g} min, asked for {rate:g} requests/s, got {total / (minutes * 60):.0f}/s "
          f"({total} requests)")
    print("answers: " + ", ".join(f"{key} {count}" for key, count in sorted(outcomes.items())))
    print(f"rss MiB: idle {first[1] / 1024:.1f}, under load min {min(rss):.1f} max {max(rss):.1f}, "
          f"first {rss[0]:.1f} last {rss[-1]:.1f}, drift {rss[-1] - rss[0]:+.1f}")
    print(f"open fds: idle {first[2]}, under load min {min(fds)} max {max(fds)}, "
          f"first {fds[0]} last {fds[-1]}, drift {fds[-1] - fds[0]:+d}; after the load {last[2]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    args = parser.parse_args()
    ports = start_upstreams()
    with tempfile.TemporaryDirectory(prefix="hacheck-soak-") as workdir:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        daemon = start_daemon(workdir, port)
        try:
            spool = Spool(str(Path(workdir) / "spool"))
            samples, outcomes = asyncio.run(
                soak(port, daemon.pid, ports, spool, args.minutes * 60, args.rate, args.sample))
            if daemon.poll() is not None:
                print(f"hacheck exited with {daemon.returncode} during the soak")
                return 1
            report(samples, outcomes, args.minutes, args.rate)
            errors = [line for line in (Path(workdir) / "hacheck.log").read_text(errors="replace").splitlines()
                      if " ERROR " in line or "Traceback" in line]
            print(f"daemon log lines at ERROR or with a traceback: {len(errors)}")
            for line in errors[:10]:
                print("  " + line)
        finally:
            daemon.terminate()
            daemon.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
