"""The check runner without HTTP in front: cache hits, joining a check in flight, the per-client bound.

The upstream is a real Tornado server on loopback whose ``/held/...`` answers
wait until the test lets them go, so "in flight" is a state the test controls.
"""

import asyncio
import contextlib
import inspect
import logging
from typing import List

import pytest
import tornado.httputil
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from hacheck.checks.base import SharedResources, Target
from hacheck.checks.cache import CheckCache
from hacheck.checks.inflight import InFlightChecks
from hacheck.checks.runner import CheckRunner
from hacheck.config import Config
from hacheck.throttled_log import ThrottledLog


class HeldUpstream:
    """What the upstream saw, and the event its ``/held/...`` answers wait for."""

    def __init__(self) -> None:
        self.requests: List[str] = []
        self.release = asyncio.Event()


class HeldHandler(RequestHandler):
    def initialize(self, upstream: HeldUpstream) -> None:
        self.upstream = upstream

    async def get(self, name: str) -> None:
        self.upstream.requests.append(self.request.uri)
        await self.upstream.release.wait()
        self.write(f"{name} up")


class QuickHandler(HeldHandler):
    async def get(self, name: str) -> None:
        self.upstream.requests.append(self.request.uri)
        self.write(f"{name} up")


@contextlib.asynccontextmanager
async def held_upstream():
    sock, port = bind_unused_port()
    upstream = HeldUpstream()
    upstream.port = port
    server = HTTPServer(Application([(r"/held/(.*)", HeldHandler, {"upstream": upstream}),
                                     (r"/quick/(.*)", QuickHandler, {"upstream": upstream})]))
    server.add_sockets([sock])
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 2)


@contextlib.contextmanager
def runner_for(**config_keys):
    config = Config(**config_keys)
    resources = SharedResources(config)
    cache = CheckCache(config.cache_time)
    in_flight = InFlightChecks(lambda: config)
    warnings = ThrottledLog(logging.getLogger("tests.runner"), config.log_repeat_interval)
    try:
        yield CheckRunner(cache, in_flight, resources, None, warnings, lambda: config)
    finally:
        resources.close()


def headers(**values) -> tornado.httputil.HTTPHeaders:
    return tornado.httputil.HTTPHeaders({name.replace("_", "-"): value for name, value in values.items()})


async def check(runner: CheckRunner, port: int, query: str, client: str = "10.0.0.1", **header_values):
    """What a handler does: the synchronous lookup, then run or join when it found nothing."""
    asked = headers(**header_values)
    key, bypass, result = runner.cached("http", "web", Target("127.0.0.1", port), query, "", asked)
    if result is None:
        result = await runner.run_or_join("http", "web", Target("127.0.0.1", port), query, "", asked, client,
                                          key, bypass)
    return result


@pytest.mark.gen_test
async def test_a_cache_hit_is_answered_synchronously_without_asking_the_upstream():
    async with held_upstream() as upstream:
        with runner_for(cache_time=60) as runner:
            first = await check(runner, upstream.port, "quick/a")
            answer = runner.cached("http", "web", Target("127.0.0.1", upstream.port), "quick/a", "", headers())
    assert not inspect.isawaitable(answer)
    key, bypass, hit = answer
    assert (first.code, first.message) == (200, "a up")
    assert (bypass, hit.code, hit.message) == (False, 200, "a up")
    assert upstream.requests == ["/quick/a"]
    assert runner.cache.stats()["hits"] == 1


@pytest.mark.gen_test
async def test_pragma_no_cache_joins_the_check_in_flight_then_runs_a_fresh_one():
    async with held_upstream() as upstream:
        with runner_for(cache_time=60, healthcheck_timeout=5) as runner:
            plain = asyncio.ensure_future(check(runner, upstream.port, "held/b"))
            while not upstream.requests:
                await asyncio.sleep(0.01)
            key, bypass, result = runner.cached("http", "web", Target("127.0.0.1", upstream.port), "held/b", "",
                                                headers(Pragma="no-cache"))
            assert (bypass, result) == (True, None)
            joined = asyncio.ensure_future(check(runner, upstream.port, "held/b", client="10.0.0.2",
                                                 Pragma="no-cache"))
            await asyncio.sleep(0.05)
            assert runner.requests_in_flight == 2
            upstream.release.set()
            results = await asyncio.gather(plain, joined)
            assert upstream.requests == ["/held/b"]  # one check, two answers
            again = await check(runner, upstream.port, "held/b", Pragma="no-cache")
    assert [(r.code, r.message) for r in results] == [(200, "b up"), (200, "b up")]
    assert (again.code, again.message) == (200, "b up")
    assert upstream.requests == ["/held/b", "/held/b"]  # past the cache once nothing was in flight
    assert runner.requests_in_flight == 0
    assert runner.cache.stats()["coalesced"] == 1


@pytest.mark.gen_test
async def test_a_client_over_its_bound_is_refused_while_another_client_is_checked(caplog):
    timeout = 0.5
    async with held_upstream() as upstream:
        with runner_for(max_checks_per_client=1, healthcheck_timeout=timeout) as runner:
            # The flooding client's first check holds its one slot from 0 to 0.5 s, its second (asked at
            # 0.3 s) from 0.5 to 1 s: its third, asked at 0.35 s, waits past its own timeout.
            flood = [asyncio.ensure_future(check(runner, upstream.port, "held/0"))]
            other = await check(runner, upstream.port, "quick/other", client="10.0.0.9")
            assert (other.code, other.message) == (200, "other up")
            await asyncio.sleep(0.3)
            flood.append(asyncio.ensure_future(check(runner, upstream.port, "held/1")))
            await asyncio.sleep(0.05)
            with caplog.at_level(logging.WARNING, logger="tests.runner"):
                refused = await check(runner, upstream.port, "held/2")
            await asyncio.gather(*flood)
    assert (refused.code, refused.is_verdict) == (503, False)
    assert refused.message == (f"Not checked: client 10.0.0.1 had 1 checks in flight for {timeout:.2f}s "
                               "(max_checks_per_client=1)")
    assert sorted(upstream.requests) == ["/held/0", "/held/1", "/quick/other"]  # refused before any connection
    assert refused.message in caplog.text
    assert runner.cached("http", "web", Target("127.0.0.1", upstream.port), "held/2", "", headers())[2] is None
    assert runner.in_flight.stats() == {"checks": 0, "targets": 0, "clients": 0}
