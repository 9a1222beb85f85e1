import asyncio

import pytest

from hacheck.cache import CheckCache
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
