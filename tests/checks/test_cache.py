import asyncio
import os

import pytest

from hacheck.checks.cache import CheckCache
from tests.conftest import FakeClock


def counting_check(result="ok", delay=0.0):
    calls = []

    async def run():
        calls.append(1)
        if delay:
            await asyncio.sleep(delay)
        return f"{result}-{len(calls)}"

    return run, calls


@pytest.mark.gen_test
async def test_concurrent_identical_checks_share_one_run():
    cache = CheckCache(ttl=10)
    run, calls = counting_check(delay=0.05)
    results = await asyncio.gather(*[cache.get_or_run("key", run) for _ in range(1000)])
    assert len(calls) == 1
    assert set(results) == {"ok-1"}
    assert cache.counters["misses"] == 1
    assert cache.counters["coalesced"] == 999
    assert cache.counters["sets"] == 1


@pytest.mark.gen_test
async def test_cached_value_is_served_until_ttl_then_rerun():
    clock = FakeClock()
    cache = CheckCache(ttl=10, clock=clock)
    run, calls = counting_check()
    assert await cache.get_or_run("key", run) == "ok-1"
    clock.now += 9.9
    assert await cache.get_or_run("key", run) == "ok-1"
    assert cache.counters["hits"] == 1
    clock.now += 0.2
    assert await cache.get_or_run("key", run) == "ok-2"
    assert cache.counters["expirations"] == 1
    assert cache.counters["gets"] == 3


@pytest.mark.gen_test
async def test_bypass_runs_fresh_and_stores_result():
    cache = CheckCache(ttl=10)
    run, calls = counting_check()
    assert await cache.get_or_run("key", run) == "ok-1"
    assert await cache.get_or_run("key", run, bypass=True) == "ok-2"
    assert await cache.get_or_run("key", run) == "ok-2"
    assert len(calls) == 2


@pytest.mark.gen_test
async def test_distinct_keys_are_evicted_once_expired():
    clock = FakeClock()
    cache = CheckCache(ttl=5, clock=clock)
    run, _ = counting_check()
    for index in range(10000):
        await cache.get_or_run(("tcp", index), run)
    assert len(cache) == 10000
    clock.now += 6
    await cache.get_or_run("another", run)
    assert len(cache) == 1
    assert cache.counters["expirations"] == 10000


@pytest.mark.gen_test
async def test_zero_ttl_stores_nothing_but_still_coalesces():
    cache = CheckCache(ttl=0)
    run, calls = counting_check(delay=0.02)
    await asyncio.gather(*[cache.get_or_run("key", run) for _ in range(10)])
    assert len(calls) == 1
    await cache.get_or_run("key", run)
    assert len(calls) == 2
    assert len(cache) == 0


@pytest.mark.gen_test
async def test_a_caller_that_goes_away_does_not_cancel_the_shared_check():
    cache = CheckCache(ttl=10)
    run, calls = counting_check(delay=0.05)
    first = asyncio.ensure_future(cache.get_or_run("key", run))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get_or_run("key", run))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "ok-1"
    assert len(calls) == 1


@pytest.mark.gen_test
async def test_cache_keeps_working_after_a_burst_of_distinct_keys_expires():
    clock = FakeClock()
    cache = CheckCache(ttl=10, clock=clock)

    async def value_of(key):
        return f"value-{key}"

    for key in range(5000):
        assert await cache.get_or_run(key, lambda key=key: value_of(key)) == f"value-{key}"
    assert len(cache) == 5000
    clock.now += 5
    assert await cache.get_or_run("late", lambda: value_of("late")) == "value-late"
    clock.now += 6  # the burst has expired, "late" has not
    run, calls = counting_check()
    assert await cache.get_or_run("new", run) == "ok-1"
    assert len(cache) == 2
    assert cache.counters["expirations"] == 5000
    assert await cache.get_or_run("late", run) == "value-late"
    assert await cache.get_or_run("new", run) == "ok-1"
    assert len(calls) == 1


class Answer:
    """A value with ``is_verdict``, as check results have."""

    def __init__(self, text, is_verdict=True):
        self.text, self.is_verdict = text, is_verdict


@pytest.mark.gen_test
async def test_bypass_joins_the_check_in_flight_instead_of_starting_another():
    cache = CheckCache(ttl=10)
    run, calls = counting_check(delay=0.05)
    first = asyncio.ensure_future(cache.get_or_run("key", run))
    await asyncio.sleep(0)
    results = await asyncio.gather(*[cache.get_or_run("key", run, bypass=True) for _ in range(20)])
    assert await first == "ok-1"
    assert set(results) == {"ok-1"}
    assert len(calls) == 1
    # Once nothing is in flight, a bypass runs a fresh check and stores it.
    assert await cache.get_or_run("key", run, bypass=True) == "ok-2"
    assert await cache.get_or_run("key", run) == "ok-2"


@pytest.mark.gen_test
async def test_an_answer_that_is_not_a_verdict_is_shared_but_not_stored():
    cache = CheckCache(ttl=10)
    answers = iter([Answer("no slot", is_verdict=False), Answer("up")])

    async def run():
        await asyncio.sleep(0.01)
        return next(answers)

    shared = await asyncio.gather(*[cache.get_or_run("key", run) for _ in range(3)])
    assert {answer.text for answer in shared} == {"no slot"}
    assert len(cache) == 0 and cache.counters["not_stored"] == 1
    assert (await cache.get_or_run("key", run)).text == "up"
    assert (await cache.get_or_run("key", run)).text == "up"


@pytest.mark.gen_test
async def test_a_full_cache_lets_the_oldest_entries_go():
    cache = CheckCache(ttl=10, max_entries=3)
    run, calls = counting_check()
    for key in "abcde":
        await cache.get_or_run(key, run)
    assert len(cache) == 3 and cache.counters["evictions"] == 2
    for key in "cde":
        await cache.get_or_run(key, run)
    assert len(calls) == 5  # c, d and e came from the cache
    await cache.get_or_run("a", run)
    assert len(calls) == 6


def test_reconfigure_applies_a_smaller_bound_and_a_new_ttl():
    cache = CheckCache(ttl=10, max_entries=100)
    for key in range(10):
        cache.store(key, "value")
    cache.reconfigure(ttl=10, max_entries=4)
    assert len(cache) == 4 and cache.fresh(9) == "value" and cache.fresh(0) is None
    cache.reconfigure(ttl=5, max_entries=4)
    assert len(cache) == 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# A million distinct keys through a cache capped at 10,000 entries: RSS may grow by at most
# this much (the capped table and the allocator's slack; uncapped, it grows by about 300 MB).
MILLION_KEYS_RSS_BOUND = 60 * 1024 * 1024


def test_a_million_distinct_keys_stay_within_the_cap():
    cache = CheckCache(ttl=3600, max_entries=10000)
    before = rss_bytes()
    for n in range(1_000_000):
        cache.store(("http", "127.0.0.1", 8080, f"health/{n}", None, None, None), f"answer {n}")
    assert len(cache) == 10000
    assert cache.counters["evictions"] == 990_000
    assert cache.fresh(("http", "127.0.0.1", 8080, "health/999999", None, None, None)) == "answer 999999"
    assert rss_bytes() - before < MILLION_KEYS_RSS_BOUND


@pytest.mark.gen_test
async def test_clear_forgets_answers_and_does_not_store_a_check_from_before():
    cache = CheckCache(ttl=10)
    started = []

    async def run():
        started.append(1)
        label = f"run-{len(started)}"
        await asyncio.sleep(0.05)
        return label

    assert await cache.get_or_run("cached", run) == "run-1"
    before = asyncio.ensure_future(cache.get_or_run("in flight", run))
    await asyncio.sleep(0.01)
    cache.clear()  # a reload that changed what answers depend on
    after = await cache.get_or_run("in flight", run)  # does not join the check from before
    assert (await before, after) == ("run-2", "run-3")
    assert len(cache) == 1  # only the answer from after the clear
    assert await cache.get_or_run("in flight", run) == "run-3"
    assert await cache.get_or_run("cached", run) == "run-4"
