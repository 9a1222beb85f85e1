#!/usr/bin/env python3
"""A thousand hung checks arriving in the same millisecond: how long a spool check waits meanwhile.

The reliability test (tests/e2e/test_misbehaving.py) holds 1000 checks of a
silent upstream in flight together, arriving over two seconds the way HAProxy
spreads its checks, and asserts that every spool check meanwhile answers
within 50 ms. This script measures the harsher case the test leaves out: all
1000 requests reach the server in one burst. One event loop must read, parse
and start a thousand requests and open a thousand upstream connections before
it can look at anything else, so the figure that matters is how hacheck
compares with the least any Tornado server does for the same burst.

The ceiling here is a bare Tornado application whose handler fetches the same
silent upstream with Tornado's HTTP client (same timeout, same max_clients) and
answers anything else with an empty 200. A probe in its own process asks each
server for a cheap answer (hacheck: a spool check) over a kept-alive connection
every 20 ms; the script prints the slowest probe answer of each burst.

    python3 bench/burst.py              # 5 bursts each, by turns (about a minute)
    python3 bench/burst.py --rounds 1   # quicker
"""

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: process handling)

PROBE_INTERVAL = 0.02


def serve_silent(port: int) -> None:
    """An upstream that accepts, reads and never answers (until the client hangs up)."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(hang, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def serve_fetching(port: int, timeout: float, max_clients: int) -> None:
    """The ceiling: /http/<service>/<port>/<query> fetches the upstream, anything else is an empty 200."""
    import tornado.httpclient
    import tornado.web

    class Fetch(tornado.web.RequestHandler):
        def initialize(self, client: tornado.httpclient.AsyncHTTPClient) -> None:
            self.client = client

        async def get(self, upstream_port: str, query: str) -> None:
            try:
                response = await self.client.fetch(f"http://127.0.0.1:{upstream_port}/{query}",
                                                   connect_timeout=timeout, request_timeout=timeout,
                                                   raise_error=False)
                self.set_status(response.code)
            except (tornado.httpclient.HTTPClientError, OSError):
                self.set_status(503)

    class Empty(tornado.web.RequestHandler):
        def get(self, *_) -> None:
            pass

    async def main() -> None:
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=max_clients)
        application = tornado.web.Application([(r"/http/[^/]*/(\d+)/(.*)", Fetch, {"client": client}),
                                               (r"/.*", Empty)])
        application.listen(port, "127.0.0.1", backlog=4096)
        await asyncio.Event().wait()

    asyncio.run(main())


def probe(port: int, path: str) -> None:
    """Ask ``path`` every PROBE_INTERVAL over one connection until stdin closes; print the samples as JSON."""
    import http.client
    import select

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ask() -> list:
        started = time.monotonic()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return [started, time.monotonic() - started, response.status]

    ask()
    print("ready", flush=True)
    samples = []
    while not select.select([sys.stdin], [], [], PROBE_INTERVAL)[0]:
        samples.append(ask())
    print(json.dumps(samples), flush=True)


async def burst(port: int, paths: list, timeout: float) -> list:
    """Connect once per path, then send every request in the same moment; (status, seconds after sending) of each."""
    connections = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in paths])
    for (_, writer), path in zip(connections, paths):
        writer.write(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())

    sent_at = time.monotonic()

    async def status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple:
        try:
            answer = await asyncio.wait_for(reader.read(), timeout)
        except asyncio.TimeoutError:
            return 0, timeout
        finally:
            writer.close()
        parts = answer.split(b" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return code, time.monotonic() - sent_at

    return await asyncio.gather(*[status(reader, writer) for reader, writer in connections])


def measure(port: int, probe_path: str, upstream_port: int, checks: int, timeout: float, round_number: int) -> dict:
    """One burst against the server on ``port`` with the probe running; the slowest probe answers."""
    watcher = subprocess.Popen([sys.executable, __file__, "--probe", str(port), probe_path],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if watcher.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the probe of port {port} did not start")
    time.sleep(0.3)
    burst_started = time.monotonic()  # connecting is part of the burst the probe sees
    # Fresh keys each round: every check is a cold cache miss and its own upstream connection.
    paths = [f"/http/burst/{upstream_port}/r{round_number}-{n}" for n in range(checks)]
    answers = asyncio.run(burst(port, paths, timeout + 10))
    statuses = [code for code, _ in answers]
    time.sleep(0.2)
    watcher.stdin.close()
    samples = json.loads(watcher.stdout.read())
    watcher.wait(10)
    during = [seconds for started, seconds, _ in samples if started >= burst_started - PROBE_INTERVAL]
    arrival = [seconds for started, seconds, _ in samples
               if burst_started - PROBE_INTERVAL <= started < burst_started + 1.0]
    return {
        "slowest_ms": round(max(during) * 1000, 1),
        "slowest_while_arriving_ms": round(max(arrival) * 1000, 1),
        "samples": len(during),
        "probe_not_200": sum(1 for _, _, code in samples if code != 200),
        "answers_503": statuses.count(503),
        "other_answers": len(statuses) - statuses.count(503),
        "first_answer_s": round(min(seconds for _, seconds in answers), 2),
        "last_answer_s": round(max(seconds for _, seconds in answers), 2),
    }


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args) -> dict:
    raise_open_files_limit()
    processes = bench.Processes()
    try:
        upstream_port, ceiling_port = bench.free_port(), bench.free_port()
        processes.start([sys.executable, __file__, "--serve-silent", str(upstream_port)])
        processes.start([sys.executable, __file__, "--serve-fetching", str(ceiling_port),
                         "--timeout", str(args.timeout), "--checks", str(args.checks)])
        bench.wait_until_answering(ceiling_port)
        # Every check of the burst goes to one upstream from one client: the per-target and per-client
        # bounds are opened as wide as max_clients, so that all of them are sent as the ceiling sends them.
        config = (f"healthcheck_timeout: {args.timeout}\nmax_clients: {args.checks}\nrlimit_nofile: max\n"
                  f"max_checks_per_target: {args.checks}\nmax_checks_per_client: {args.checks}\n")
        _, hacheck_port, _ = processes.hacheck("burst", cache_time=args.timeout, workers=args.workers,
                                               settings=config)
        urllib.request.urlopen(f"http://127.0.0.1:{hacheck_port}/spool/probe/80").read()
        servers = {"bare Tornado + client": (ceiling_port, "/"), "hacheck": (hacheck_port, "/spool/probe/80")}
        rounds = {name: [] for name in servers}
        for round_number in range(args.rounds):
            order = list(servers.items())
            if round_number % 2 == 1:
                order.reverse()  # by turns, so that a drift of the machine favours neither
            for name, (port, probe_path) in order:
                rounds[name].append(measure(port, probe_path, upstream_port, args.checks, args.timeout,
                                            round_number))
    finally:
        processes.stop_all()
    results = {"checks": args.checks, "timeout_s": args.timeout, "hacheck_workers": args.workers, "rounds": rounds,
               "median_slowest_ms": {}}
    for name, measured in rounds.items():
        results["median_slowest_ms"][name] = statistics.median(m["slowest_ms"] for m in measured)
    ceiling, hacheck = (results["median_slowest_ms"][name] for name in servers)
    results["hacheck_over_ceiling"] = round(hacheck / ceiling, 2)
    return results


def print_table(results: dict) -> None:
    print(f"{results['checks']} checks of a silent upstream sent at once, timeout {results['timeout_s']} s, "
          f"hacheck -n {results['hacheck_workers']}; the slowest probe answer during each burst:")
    print(f"{'server':<24} {'round':>5} {'slowest ms':>10} {'arriving ms':>11} {'samples':>7} "
          f"{'503s':>5} {'other':>5} {'answered after s':>16}")
    for name, measured in results["rounds"].items():
        for number, m in enumerate(measured):
            print(f"{name:<24} {number:>5} {m['slowest_ms']:>10.1f} {m['slowest_while_arriving_ms']:>11.1f} "
                  f"{m['samples']:>7} {m['answers_503']:>5} {m['other_answers']:>5} "
                  f"{m['first_answer_s']:>7.2f}-{m['last_answer_s']:<8.2f}")
    for name, median in results["median_slowest_ms"].items():
        print(f"median slowest, {name}: {median:.1f} ms")
    print(f"hacheck / ceiling: {results['hacheck_over_ceiling']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=1000, help="hung checks per burst (default 1000)")
    parser.add_argument("--timeout", type=float, default=3.0, help="healthcheck_timeout in seconds (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per server (default 5)")
    parser.add_argument("--workers", type=int, default=1, help="hacheck's -n (default 1; the ceiling has one)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve-silent", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-fetching", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_silent:
        serve_silent(args.serve_silent)
    elif args.serve_fetching:
        serve_fetching(args.serve_fetching, args.timeout, args.checks)
    elif args.probe:
        probe(int(args.probe[0]), args.probe[1])
    else:
        results = run(args)
        print_table(results)
        if args.json:
            with open(args.json, "w") as output:
                json.dump(results, output, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
