#!/usr/bin/env python3
"""Benchmark hacheck against the Tornado ceiling, in one run, on this machine.

Starts a bare Tornado application (every GET answers an empty 200: what
Tornado itself costs per request), a fast upstream service, and hacheck with a
temporary spool and config; loads each with wrk, with keep-alive and with
``Connection: close`` (HAProxy opens a connection per check), and prints the
figures with their ratio to the ceiling measured in the same run. Also
measures -n 1 against -n 2, coalescing of concurrent cold checks, memory
before and after many distinct check keys, and start-up time.

    python3 bench/run.py                 # the full run (a few minutes)
    python3 bench/run.py --tiny          # a smoke run of a few seconds

Absolute numbers vary from machine to machine; the ratios are what count.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent

# Targets from the performance issue; the ratios are to the bare-Tornado ceiling.
TARGETS = {
    "ratio_cached_http": 0.85,
    "ratio_spool": 0.85,
    "scaling_n2_over_n1": 1.5,
    "coalesced_upstream_requests": 1,
    "rss_growth_after_expiry_mb": 20.0,
}


# ---------------------------------------------------------------- helper servers

def serve_bare(port: int) -> None:
    """The ceiling: a Tornado application that answers every GET with an empty 200."""
    import tornado.ioloop
    import tornado.web

    class Empty(tornado.web.RequestHandler):
        def get(self, *_):
            pass

    tornado.web.Application([(r"/.*", Empty)]).listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


def serve_upstream(port: int) -> None:
    """A fast upstream for http and tcp checks; ``/slow/...`` answers after 0.5 s.

    ``/__count?prefix=/slow`` tells how many requests reached paths with that prefix.
    """
    import tornado.ioloop
    import tornado.web

    seen = {}

    class Count(tornado.web.RequestHandler):
        def get(self):
            prefix = self.get_argument("prefix", "/")
            self.write({"count": sum(n for path, n in seen.items() if path.startswith(prefix))})

    class Upstream(tornado.web.RequestHandler):
        async def get(self, *_):
            seen[self.request.path] = seen.get(self.request.path, 0) + 1
            if self.request.path.startswith("/slow"):
                await asyncio.sleep(0.5)
            self.write("ok")

    tornado.web.Application([(r"/__count", Count), (r"/.*", Upstream)]).listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(port: int, path: str = "/", timeout: float = 20.0) -> float:
    """Poll until an HTTP GET gets any answer; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return time.monotonic() - started
        except urllib.error.HTTPError:
            return time.monotonic() - started
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"nothing answered on port {port} within {timeout}s")


class Processes:
    """Every process the benchmark starts, stopped together at the end."""

    def __init__(self):
        self.running = []
        self.workdir = tempfile.mkdtemp(prefix="hacheck-bench-")

    def start(self, argv, env=None) -> subprocess.Popen:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        self.running.append(process)
        return process

    def helper(self, role: str, port: int) -> subprocess.Popen:
        process = self.start([sys.executable, __file__, f"--serve-{role}", str(port)])
        wait_until_answering(port)
        return process

    def hacheck(self, name: str, cache_time: float, workers: int = 1, settings: str = "max_clients: 100\n"):
        """Start hacheck; returns (process, port, seconds from exec to first answer).

        ``settings`` is the configuration file's text besides ``cache_time``.
        """
        port = free_port()
        spool = os.path.join(self.workdir, f"spool-{name}")
        config = os.path.join(self.workdir, f"{name}.yaml")
        with open(config, "w") as config_file:
            config_file.write(f"cache_time: {cache_time}\n{settings}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, str(REPO_ROOT / "bin" / "hacheck"), "-p", str(port),
                "--spool-root", spool, "-c", config, "-n", str(workers)]
        started = time.monotonic()
        process = self.start(argv, env=env)
        wait_until_answering(port, "/status")
        return process, port, time.monotonic() - started

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


def cpu_plan(pin: bool) -> Optional[dict]:
    """Which CPU the servers and which the load generator run on, or None (not pinned).

    On a small machine the scheduler now and then puts wrk and the server on
    the same CPU; pinning each to its own steadies the ratios and treats the
    ceiling and hacheck alike.
    """
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {"server": cpus[-1], "load": cpus[0], "all": set(cpus)}


def pin(pids, cpus) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------- wrk

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _latency_ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, duration: float, connections: int, threads: int = 1, close: bool = False,
            server_pid: Optional[int] = None, cpu: Optional[int] = None) -> dict:
    """Load ``url`` with wrk; requests/s, p50 and p99 in ms, and errors (socket errors + non-2xx/3xx).

    With ``server_pid``, also the server's CPU time per request, which other
    load on a shared machine disturbs far less than requests per second.
    With ``cpu``, wrk runs on that CPU only.
    """
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    argv = ["wrk", "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s"]
    if close:
        argv += ["-H", "Connection: close"]
    on_cpu = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    output = subprocess.run(argv + [url], capture_output=True, text=True, check=True, preexec_fn=on_cpu).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for percent in ("50", "99"):
        match = re.search(rf"^\s+{percent}%\s+(\S+)", output, re.M)
        figures[f"p{percent}_ms"] = round(_latency_ms(match.group(1)), 3) if match else None
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    figures["errors"] = errors
    figures["requests"] = int(re.search(r"(\d+) requests in", output).group(1))
    if server_pid:
        cpu_used = cpu_seconds(server_pid) - cpu_before
        figures["cpu_us_per_request"] = round(cpu_used * 1e6 / max(1, figures["requests"]), 1)
    return figures


def median_figures(runs: list) -> dict:
    """The median of each figure over repeated runs; errors and requests are summed (none may be lost)."""
    figures = {}
    for name in runs[0]:
        values = [run[name] for run in runs if run[name] is not None]
        if name in ("errors", "requests"):
            figures[name] = sum(values)
        elif values:
            figures[name] = round(statistics.median(values), 3)
        else:
            figures[name] = None
    figures["rounds"] = len(runs)
    for name in ("ratio", "cpu_ratio"):
        if name in runs[0]:
            figures[f"{name}_per_round"] = [round(run[name], 3) for run in runs]
    return figures


# ---------------------------------------------------------------- measurements

async def fire_concurrently(port: int, path: str, count: int) -> list:
    """Open ``count`` connections, then send a GET on each at once; returns the status codes."""
    connections = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in range(count)])
    request = f"GET {path} HTTP/1.0\r\n\r\n".encode()
    for _, writer in connections:
        writer.write(request)

    async def answer(reader, writer) -> int:
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        writer.close()
        return int(status_line.split()[1])

    return await asyncio.gather(*[answer(reader, writer) for reader, writer in connections])


def measure_coalescing(hacheck_port: int, upstream_port: int, count: int) -> dict:
    path = f"/http/coalesce/{upstream_port}/slow/cold"
    before = status_of(hacheck_port).get("cache", {})
    codes = asyncio.run(fire_concurrently(hacheck_port, path, count))
    after = status_of(hacheck_port).get("cache", {})
    with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/__count?prefix=/slow/cold") as answer:
        upstream_requests = json.load(answer)["count"]
    non_200 = sum(1 for code in codes if code != 200)
    return {"concurrent_checks": count, "upstream_requests": upstream_requests,
            "coalesced": after.get("coalesced", 0) - before.get("coalesced", 0),
            "non_200_answers": non_200, "errors": non_200}


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP/1.1 answer (with a Content-Length) off ``reader``; returns its status line."""
    status_line = await reader.readline()
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status_line


async def request_distinct_keys(port: int, path_prefix: str, keys: int, connections: int = 32) -> int:
    """GET ``path_prefix + n`` for n in range(keys) over keep-alive connections; returns failures."""
    next_key = iter(range(keys))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for key in next_key:
            writer.write(f"GET {path_prefix}{key} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status_line = await read_answer(reader)
            if not status_line.startswith(b"HTTP/1.1 200"):
                failures += 1
        writer.close()

    await asyncio.gather(*[worker() for _ in range(connections)])
    return failures


def status_of(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status") as answer:
        return json.load(answer)


def measure_memory(processes: Processes, upstream_port: int, keys: int, cache_time: float) -> dict:
    """RSS at start, with ``keys`` distinct check keys cached, and after they all expired.

    ``cache_time`` must outlast the load, so that the cache holds every key at
    once (``cache_size_loaded`` tells whether it did).
    """
    process, port, _ = processes.hacheck("memory", cache_time=cache_time)
    urllib.request.urlopen(f"http://127.0.0.1:{port}/tcp/mem/{upstream_port}/warmup").read()
    start = rss_mb(process.pid)
    load_started = time.monotonic()
    failures = asyncio.run(request_distinct_keys(port, f"/tcp/mem/{upstream_port}/k", keys))
    load_seconds = time.monotonic() - load_started
    cache_size = status_of(port).get("cache", {}).get("size")
    loaded = rss_mb(process.pid)
    time.sleep(cache_time + 1)
    # Expired entries go as the cache is used; one request sweeps them.
    urllib.request.urlopen(f"http://127.0.0.1:{port}/tcp/mem/{upstream_port}/sweep").read()
    size_after = status_of(port).get("cache", {}).get("size")
    after = rss_mb(process.pid)
    return {"keys_requested": keys, "load_seconds": round(load_seconds, 1), "cache_time": cache_time,
            "cache_size_loaded": cache_size, "cache_size_after_expiry": size_after,
            "rss_start_mb": round(start, 1), "rss_loaded_mb": round(loaded, 1),
            "rss_after_expiry_mb": round(after, 1), "rss_growth_after_expiry_mb": round(after - start, 1),
            "errors": failures}


def run(args) -> dict:
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    processes = Processes()
    cpus = cpu_plan(args.pin)
    try:
        bare_port, upstream_port = free_port(), free_port()
        bare = processes.helper("bare", bare_port)
        processes.helper("upstream", upstream_port)
        cached, cached_port, startup = processes.hacheck("cached", cache_time=3600)
        uncached, uncached_port, _ = processes.hacheck("uncached", cache_time=0)

        scenarios = {
            "spool check": (cached, cached_port, f"/spool/bench/{upstream_port}/"),
            "cached http check": (cached, cached_port, f"/http/bench/{upstream_port}/health"),
            "cached tcp check": (cached, cached_port, f"/tcp/bench/{upstream_port}/"),
            "uncached http check": (uncached, uncached_port, f"/http/bench/{upstream_port}/health"),
        }
        results = {"ceiling": {}, "scenarios": {}}
        servers = {bare.pid, cached.pid, uncached.pid}
        if cpus:
            pin(servers, {cpus["server"]})
        # The machine may be shared and its speed drifts over seconds: each
        # scenario is measured next to a measurement of the ceiling (before it
        # in even rounds, after it in odd ones, so that a steady drift favours
        # neither), and its ratio is taken to that one; the figures reported
        # are the medians over the rounds (the ceiling's over all of its measurements).
        rounds = {"ceiling": {}, "scenarios": {}}
        for mode, close in (("keep-alive", False), ("close", True)):
            for round_number in range(args.rounds):
                for name, (server, port, path) in scenarios.items():
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read()  # warm the cache
                    order = [("ceiling", f"http://127.0.0.1:{bare_port}/", bare.pid),
                             ("scenario", f"http://127.0.0.1:{port}{path}", server.pid)]
                    if round_number % 2 == 1:
                        order.reverse()
                    measured = {role: run_wrk(url, args.duration, args.connections, close=close, server_pid=pid,
                                              cpu=cpus and cpus["load"])
                                for role, url, pid in order}
                    ceiling, figures = measured["ceiling"], measured["scenario"]
                    rounds["ceiling"].setdefault(mode, []).append(ceiling)
                    figures["ratio"] = figures["rps"] / ceiling["rps"]
                    figures["cpu_ratio"] = ceiling["cpu_us_per_request"] / max(0.1, figures["cpu_us_per_request"])
                    rounds["scenarios"].setdefault(name, {}).setdefault(mode, []).append(figures)
            results["ceiling"][mode] = median_figures(rounds["ceiling"][mode])
            for name in scenarios:
                results["scenarios"].setdefault(name, {})[mode] = median_figures(rounds["scenarios"][name][mode])
        if cpus:
            pin(servers, cpus["all"])  # the rest (two workers above all) may use every CPU
        _, two_workers_port, _ = processes.hacheck("two-workers", cache_time=3600, workers=2)
        scaling_rounds = {"n1": [], "n2": []}
        path = f"/http/bench/{upstream_port}/health"
        for _ in range(args.rounds):
            for label, port in (("n1", cached_port), ("n2", two_workers_port)):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read()
                scaling_rounds[label].append(run_wrk(f"http://127.0.0.1:{port}{path}", args.duration,
                                                     args.connections * 2, threads=2))
        scaling = {label: median_figures(runs) for label, runs in scaling_rounds.items()}
        scaling["ratio"] = round(scaling["n2"]["rps"] / scaling["n1"]["rps"], 3)
        results["scaling"] = scaling
        results["coalescing"] = measure_coalescing(cached_port, upstream_port, args.coalesce)
        results["memory"] = measure_memory(processes, upstream_port, args.keys, args.memory_cache_time)
        results["startup_seconds"] = round(startup, 3)
    finally:
        processes.stop_all()
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "duration_s": args.duration, "connections": args.connections, "rounds": args.rounds,
                          "pinned": cpus is not None,
                          "load_average": [round(load, 2) for load in os.getloadavg()]}
    results["targets"] = verdicts(results)
    return results


def verdicts(results: dict) -> dict:
    scenarios = results["scenarios"]
    every_error = [f["errors"] for s in scenarios.values() for f in s.values()]
    every_error += [results["ceiling"][mode]["errors"] for mode in results["ceiling"]]
    every_error += [results["scaling"][n]["errors"] for n in ("n1", "n2")]
    every_error += [results["coalescing"]["errors"], results["memory"]["errors"]]
    checks = {
        "cached http ratio >= 0.85 (both modes)":
            min(f["ratio"] for f in scenarios["cached http check"].values()) >= TARGETS["ratio_cached_http"],
        "spool ratio >= 0.85 (both modes)":
            min(f["ratio"] for f in scenarios["spool check"].values()) >= TARGETS["ratio_spool"],
        "-n 2 over -n 1 >= 1.5": results["scaling"]["ratio"] >= TARGETS["scaling_n2_over_n1"],
        "1 upstream request for the concurrent cold checks":
            results["coalescing"]["upstream_requests"] == TARGETS["coalesced_upstream_requests"],
        "RSS after expiry <= start + 20 MB":
            results["memory"]["rss_growth_after_expiry_mb"] <= TARGETS["rss_growth_after_expiry_mb"]
            and results["memory"]["cache_size_loaded"] >= results["memory"]["keys_requested"],
        "no failed requests": sum(every_error) == 0,
    }
    return {name: "met" if ok else "MISSED" for name, ok in checks.items()}


def print_table(results: dict) -> None:
    print(f"{'scenario':<22} {'mode':<11} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'ratio':>6} "
          f"{'cpu us/req':>10} {'cpu ratio':>9}")
    for mode, figures in results["ceiling"].items():
        print(f"{'bare Tornado ceiling':<22} {mode:<11} {figures['rps']:>9.0f} {figures['p50_ms']:>7.2f} "
              f"{figures['p99_ms']:>7.2f} {figures['errors']:>6} {1:>6.2f} {figures['cpu_us_per_request']:>10.0f} "
              f"{1:>9.2f}")
    for name, modes in results["scenarios"].items():
        for mode, figures in modes.items():
            print(f"{name:<22} {mode:<11} {figures['rps']:>9.0f} {figures['p50_ms']:>7.2f} "
                  f"{figures['p99_ms']:>7.2f} {figures['errors']:>6} {figures['ratio']:>6.2f} "
                  f"{figures['cpu_us_per_request']:>10.0f} {figures['cpu_ratio']:>9.2f}")
    scaling = results["scaling"]
    print(f"\nscaling: -n 1 {scaling['n1']['rps']:.0f} req/s, -n 2 {scaling['n2']['rps']:.0f} req/s, "
          f"ratio {scaling['ratio']:.2f}")
    coalescing = results["coalescing"]
    print(f"coalescing: {coalescing['concurrent_checks']} concurrent cold checks -> "
          f"{coalescing['upstream_requests']} upstream request(s) ({coalescing['coalesced']} joined the one "
          f"in flight, {coalescing['non_200_answers']} answers not 200)")
    memory = results["memory"]
    print(f"memory: RSS {memory['rss_start_mb']} MB at start, {memory['rss_loaded_mb']} MB after "
          f"{memory['keys_requested']} distinct keys in {memory['load_seconds']} s "
          f"(cache size {memory['cache_size_loaded']}), "
          f"{memory['rss_after_expiry_mb']} MB after expiry (cache size {memory['cache_size_after_expiry']})")
    print(f"start-up: {results['startup_seconds']:.3f} s from exec to the first answer")
    print("\ntargets:")
    for name, verdict in results["targets"].items():
        print(f"  {verdict:<7} {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds of load per measurement (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent wrk connections (default 32)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct check keys for the memory test")
    parser.add_argument("--rounds", type=int, default=5,
                        help="repeat each load this often and report medians (default 5)")
    parser.add_argument("--memory-cache-time", type=float, default=60,
                        help="cache_time of the memory test; must outlast loading the keys (default 60)")
    parser.add_argument("--coalesce", type=int, default=1000, help="concurrent identical cold checks")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the scheduler place servers and wrk (default: a CPU each for the ratio loads)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", default=str(REPO_ROOT / "bench" / "results.json"),
                        help="where to write the figures as JSON (default bench/results.json)")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.tiny:
        args.duration, args.connections, args.keys, args.coalesce = 1, 8, 2000, 50
        args.rounds, args.memory_cache_time = 1, 3
    results = run(args)
    print_table(results)
    with open(args.json, "w") as output:
        json.dump(results, output, indent=2)
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
