"""The `tcp` check against real loopback listeners, and run_check's timeout."""

import asyncio
import re
import time

import pytest

from hacheck.checks import tcp
from hacheck.checks.base import CheckFailed, Target, run_check
from hacheck.config import Config
from tests.checks.upstreams import checking, full_backlog_listener, silent_listener, tcp_server
from tests.conftest import unused_port


def local(port: int) -> Target:
    return Target("127.0.0.1", port)


@pytest.mark.gen_test
async def test_listening_port_is_up_and_query_is_ignored():
    with silent_listener() as port, checking() as context:
        plain = await tcp.check(local(port), "", context)
        with_query = await tcp.check(local(port), "anything/at/all", context)
    for result in (plain, with_query):
        assert result.code == 200
        assert re.fullmatch(r"Connected in \d+\.\d\ds", result.message)


@pytest.mark.gen_test
async def test_connection_is_closed_cleanly():
    peer_saw_eof = asyncio.Event()

    async def wait_for_eof(reader, writer):
        if await reader.read() == b"":
            peer_saw_eof.set()
        writer.close()

    async with tcp_server(wait_for_eof) as port:
        with checking() as context:
            result = await tcp.check(local(port), "", context)
        await asyncio.wait_for(peer_saw_eof.wait(), 2)
    assert result.code == 200


@pytest.mark.gen_test
async def test_refused_port_is_503_at_once():
    port = unused_port()
    with checking(Config(healthcheck_timeout=5)) as context:
        started = time.monotonic()
        result = await run_check(tcp.check, local(port), "", context)
        elapsed = time.monotonic() - started
        with pytest.raises(CheckFailed):  # the check itself raises; run_check answers
            await tcp.check(local(port), "", context)
    assert (result.code, result.message) == (503, f"Connection refused by 127.0.0.1:{port}")
    assert elapsed < 2


@pytest.mark.gen_test
async def test_connect_that_hangs_times_out_with_503():
    with full_backlog_listener() as port, checking(Config(healthcheck_timeout=0.5)) as context:
        started = time.monotonic()
        result = await run_check(tcp.check, local(port), "", context)
        elapsed = time.monotonic() - started
    assert result.code == 503
    assert result.message in ("Connection timed out after 0.50s", "Check timed out after 0.50s")
    assert 0.4 < elapsed < 3


@pytest.mark.gen_test
async def test_default_timeout_message_matches_the_original():
    with full_backlog_listener() as port, checking(Config(healthcheck_timeout=0.3)) as context:
        with pytest.raises(CheckFailed) as failed:
            await tcp.check(local(port), "", context)
    assert (failed.value.result.code, failed.value.result.message) == (503, "Connection timed out after 0.30s")


@pytest.mark.gen_test
async def test_run_check_bounds_a_check_that_hangs():
    async def hangs(target, query, context):
        await asyncio.sleep(60)

    with checking(Config(healthcheck_timeout=0.3)) as context:
        started = time.monotonic()
        result = await run_check(hangs, local(1), "", context)
        elapsed = time.monotonic() - started
    assert (result.code, result.message) == (503, "Check timed out after 0.30s")
    assert 0.25 < elapsed < 2
