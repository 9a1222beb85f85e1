"""The redis, sentinel, redis-info and sentinel-info checks against a real Redis and a real sentinel."""

import json
import subprocess
import time

import pytest

from hacheck.checks import REGISTRY, redis, redis_info
from hacheck.checks.base import Target, run_check
from tests.conftest import port_open, require_command, require_port, unused_port

REDIS = Target("127.0.0.1", 6379)


@pytest.fixture
def local_redis() -> Target:
    require_port("Redis", 6379)
    return REDIS


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Target:
    """A real Redis Sentinel, started for these tests, monitoring the local Redis."""
    require_port("Redis", 6379)
    server = require_command("redis-server")
    workdir = tmp_path_factory.mktemp("sentinel")
    port = unused_port()
    config = workdir / "sentinel.conf"
    # Sentinel rewrites its own config file, so it lives in a directory of its own.
    config.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {workdir}\n"
        "sentinel monitor hacheck-test 127.0.0.1 6379 1\n"
        "sentinel down-after-milliseconds hacheck-test 60000\n"
    )
    process = subprocess.Popen(
        [server, str(config), "--sentinel", "--logfile", str(workdir / "sentinel.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(port, timeout=0.2):
            assert process.poll() is None, (workdir / "sentinel.log").read_text()
            assert time.monotonic() < deadline, "sentinel did not start listening"
            time.sleep(0.05)
        yield Target("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(10)


def test_registry_serves_both_names_from_each_module():
    assert REGISTRY["redis"].check is REGISTRY["sentinel"].check is redis.check
    assert REGISTRY["redis-info"].check is REGISTRY["sentinel-info"].check is redis_info.check


@pytest.mark.gen_test
async def test_redis_answers_pong(local_redis, make_context):
    result = await run_check(redis.check, local_redis, "", make_context())
    assert (result.code, result.message) == (200, "PONG")


@pytest.mark.gen_test
async def test_sentinel_answers_pong(sentinel, make_context):
    result = await run_check(REGISTRY["sentinel"].check, sentinel, "", make_context())
    assert (result.code, result.message) == (200, "PONG")


@pytest.mark.gen_test
async def test_closed_port_is_unavailable_at_once(closed_port, make_context):
    started = time.monotonic()
    result = await run_check(redis.check, closed_port, "", make_context())
    assert result.code == 503
    assert f"127.0.0.1:{closed_port.port}" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.gen_test
async def test_another_answer_to_ping_is_500_with_what_came_back(scripted_server, make_context):
    server = scripted_server(answer=lambda line: b"+PANG\r\n" if line.strip() == b"PING" else None)
    result = await run_check(redis.check, server.target, "", make_context())
    assert result.code == 500
    assert "PANG" in result.message


@pytest.mark.gen_test
async def test_an_error_reply_is_500_with_the_error(scripted_server, make_context):
    server = scripted_server(
        answer=lambda line: b"-NOAUTH Authentication required.\r\n" if line.strip() == b"PING" else None
    )
    result = await run_check(redis.check, server.target, "", make_context())
    assert result.code == 500
    assert "Authentication required" in result.message


@pytest.mark.gen_test
async def test_a_hung_server_costs_at_most_the_timeout(hang_probe):
    await hang_probe(redis.check)
    await hang_probe(redis_info.check)


@pytest.mark.gen_test
async def test_redis_info_without_query_is_every_field_as_json(local_redis, make_context):
    result = await run_check(redis_info.check, local_redis, "", make_context())
    assert result.code == 200
    fields = json.loads(result.message)
    assert fields["redis_mode"] == "standalone"
    assert fields["tcp_port"] == "6379"
    assert not any(name.startswith("#") for name in fields)


@pytest.mark.gen_test
async def test_redis_info_match_hit(local_redis, make_context):
    context = make_context(query_string="redis_mode=standalone&tcp_port=6379")
    result = await run_check(redis_info.check, local_redis, "match", context)
    assert (result.code, result.message) == (200, "Matched redis_mode=standalone, tcp_port=6379")


@pytest.mark.gen_test
async def test_redis_info_match_miss_names_what_it_found(local_redis, make_context):
    context = make_context(query_string="redis_mode=sentinel")
    result = await run_check(redis_info.check, local_redis, "match", context)
    assert (result.code, result.message) == (500, "redis_mode is 'standalone', not 'sentinel'")


@pytest.mark.gen_test
async def test_redis_info_match_on_a_missing_field(local_redis, make_context):
    context = make_context(query_string="no_such_field=1")
    result = await run_check(redis_info.check, local_redis, "match", context)
    assert (result.code, result.message) == (500, "no_such_field is not in INFO")


@pytest.mark.gen_test
async def test_sentinel_info_match_hit_and_miss(sentinel, make_context):
    check = REGISTRY["sentinel-info"].check
    hit = await run_check(check, sentinel, "match", make_context(query_string="redis_mode=sentinel"))
    assert (hit.code, hit.message) == (200, "Matched redis_mode=sentinel")
    miss = await run_check(check, sentinel, "match", make_context(query_string="sentinel_masters=2"))
    assert (miss.code, miss.message) == (500, "sentinel_masters is '1', not '2'")
    everything = await run_check(check, sentinel, "", make_context())
    assert json.loads(everything.message)["sentinel_masters"] == "1"


@pytest.mark.parametrize("query_string", ["", "role", "&&", "=master"])
@pytest.mark.gen_test
async def test_match_needs_a_field_and_value(query_string, make_context, closed_port):
    # Refused before any connection: even a closed port gives the usage error.
    result = await run_check(redis_info.check, closed_port, "match", make_context(query_string=query_string))
    assert result.code == 400
    assert "field=value" in result.message


@pytest.mark.gen_test
async def test_an_unknown_query_is_refused(make_context, closed_port):
    result = await run_check(redis_info.check, closed_port, "matches", make_context(query_string="role=master"))
    assert result.code == 400
    assert "'matches'" in result.message


@pytest.mark.gen_test
async def test_redis_info_closed_port_is_503(closed_port, make_context):
    result = await run_check(redis_info.check, closed_port, "match", make_context(query_string="role=master"))
    assert result.code == 503


@pytest.mark.gen_test
async def test_info_that_is_not_text_is_500(scripted_server, make_context):
    server = scripted_server(answer=lambda line: b":42\r\n" if line.strip() == b"INFO" else None)
    result = await run_check(redis_info.check, server.target, "", make_context())
    assert (result.code, result.message) == (500, "Expected INFO text, got 42")
