"""The `http` check against real Tornado upstreams and raw listeners on loopback."""

import asyncio
import json
import logging
import time

import pytest

from hacheck import __version__
from hacheck.checks import http
from hacheck.checks.base import Target, run_check
from hacheck.config import Config
from tests.checks.upstreams import checking, http_upstream, silent_listener, tcp_server
from tests.conftest import unused_port


def local(port: int) -> Target:
    return Target("127.0.0.1", port)


@pytest.mark.parametrize("code", [200, 204, 404, 500, 503])
@pytest.mark.gen_test
async def test_upstream_code_and_body_are_the_answer(code):
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), f"status/{code}", context)
    assert result.code == code
    assert result.message == ("" if code == 204 else f"status {code}")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.gen_test
async def test_upstream_is_reached_by_address_or_by_name(host):
    # An address is used as it is; a name is looked up (in a thread) first.
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(Target(host, upstream.port), "status/200", context)
    assert (result.code, result.message) == (200, "status 200")


@pytest.mark.gen_test
async def test_name_that_does_not_resolve_is_599_saying_so():
    with checking() as context:
        result = await run_check(http.check, Target("no-such-host.invalid", 80), "health", context)
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert result.message.startswith("Cannot resolve host no-such-host.invalid"), result.message


@pytest.mark.gen_test
async def test_redirect_is_the_answer_not_followed():
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), "status/301", context)
    assert (result.code, result.message) == (301, "status 301")
    assert upstream.requests == ["/status/301"]  # /moved-here never fetched


@pytest.mark.gen_test
async def test_path_and_query_string_are_passed_on():
    async with http_upstream() as upstream:
        with checking(query_string="verbose=1&x=a%20b") as context:
            with_query = await http.check(local(upstream.port), "health/deep", context)
        with checking() as context:
            without_query = await http.check(local(upstream.port), "health", context)
    assert with_query.code == 200
    assert json.loads(with_query.message)["uri"] == "/health/deep?verbose=1&x=a%20b"
    assert json.loads(without_query.message)["uri"] == "/health"


@pytest.mark.gen_test
async def test_empty_query_asks_for_the_root():
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), "", context)
    assert json.loads(result.message)["uri"] == "/"


@pytest.mark.gen_test
async def test_user_agent_names_hastate_and_version():
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), "ua", context)
    assert json.loads(result.message)["headers"]["User-Agent"] == f"hastate {__version__}"


@pytest.mark.gen_test
async def test_host_header_is_copied_whatever_its_case():
    async with http_upstream() as upstream:
        with checking(headers={"host": "svc.example.com", "X-Other": "not copied"}) as context:
            copied = await http.check(local(upstream.port), "h", context)
        with checking() as context:
            default = await http.check(local(upstream.port), "h", context)
    copied_headers = json.loads(copied.message)["headers"]
    assert copied_headers["Host"] == "svc.example.com"
    assert "X-Other" not in copied_headers
    # HAProxy sends no Host: the upstream then sees its own address.
    assert json.loads(default.message)["headers"]["Host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.gen_test
async def test_configured_headers_to_copy():
    config = Config(http_headers_to_copy=("X-Request-Tag", "x-absent"))
    incoming = {"X-REQUEST-TAG": "blue", "Host": "svc.example.com", "X-Other": "no"}
    async with http_upstream() as upstream:
        with checking(config, headers=incoming) as context:
            result = await http.check(local(upstream.port), "h", context)
    seen = json.loads(result.message)["headers"]
    assert seen["X-Request-Tag"] == "blue"
    assert seen["Host"] == f"127.0.0.1:{upstream.port}"  # Host is no longer in the list
    assert "X-Other" not in seen and "X-Absent" not in seen


@pytest.mark.gen_test
async def test_service_name_header_carries_the_service():
    async with http_upstream() as upstream:
        with checking(Config(service_name_header="X-Service-Name"), service="billing") as context:
            named = await http.check(local(upstream.port), "h", context)
        with checking(service="billing") as context:
            unnamed = await http.check(local(upstream.port), "h", context)
    assert json.loads(named.message)["headers"]["X-Service-Name"] == "billing"
    assert "X-Service-Name" not in json.loads(unnamed.message)["headers"]


@pytest.mark.gen_test
async def test_gzip_answer_is_decompressed():
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), "gzip", context)
    assert (result.code, result.message) == (200, "healthy " * 100)


@pytest.mark.gen_test
async def test_body_that_is_not_utf8_is_replaced_not_fatal():
    async with http_upstream() as upstream:
        with checking() as context:
            result = await http.check(local(upstream.port), "bytes", context)
    assert (result.code, result.message) == (200, "ok \ufffd\ufffd end")


@pytest.mark.gen_test
async def test_refused_port_is_599_at_once():
    port = unused_port()
    with checking(Config(healthcheck_timeout=5)) as context:
        started = time.monotonic()
        result = await run_check(http.check, local(port), "health", context)
        elapsed = time.monotonic() - started
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert result.message == f"Connection refused by 127.0.0.1:{port}"
    assert elapsed < 2


@pytest.mark.gen_test
async def test_silent_upstream_times_out_with_599():
    with silent_listener() as port, checking(Config(healthcheck_timeout=0.5)) as context:
        started = time.monotonic()
        result = await http.check(local(port), "health", context)
        elapsed = time.monotonic() - started
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert result.message == f"Request to http://127.0.0.1:{port}/health timed out after 0.50s"
    assert 0.4 < elapsed < 3


@pytest.mark.gen_test
async def test_silent_upstream_through_run_check_says_timed_out(caplog):
    with silent_listener() as port, checking(Config(healthcheck_timeout=0.5)) as context:
        started = time.monotonic()
        result = await run_check(http.check, local(port), "health", context)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.3)  # Tornado's own timeout for the fetch fires meanwhile
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert "timed out after 0.50s" in result.message
    assert 0.4 < elapsed < 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.gen_test
async def test_upstream_hanging_up_without_answer_is_599():
    async def hang_up(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with tcp_server(hang_up) as port:
        with checking(Config(healthcheck_timeout=5)) as context:
            result = await http.check(local(port), "health", context)
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert result.message.startswith(f"Connection closed by 127.0.0.1:{port} before a complete answer")


@pytest.mark.gen_test
async def test_garbage_answer_is_599_with_a_reason():
    async def babble(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    # Tornado 6.6 fails the fetch at once; 6.2 (Debian bookworm) only at the timeout.
    async with tcp_server(babble) as port:
        with checking(Config(healthcheck_timeout=1.5)) as context:
            started = time.monotonic()
            result = await run_check(http.check, local(port), "health", context)
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in result.message or "timed out" in result.message


@pytest.mark.gen_test
async def test_endless_body_is_cut_off_at_once():
    async with http_upstream() as upstream:
        with checking(Config(healthcheck_timeout=5)) as context:
            started = time.monotonic()
            result = await http.check(local(upstream.port), "endless", context)
            elapsed = time.monotonic() - started
        for _ in range(50):  # the upstream notices the hang-up on its next write
            if upstream.hung_up:
                break
            await asyncio.sleep(0.05)
    assert result.code == 599  # no answer: recorded 599, answered 503
    url = f"http://127.0.0.1:{upstream.port}/endless"
    assert result.message == f"Answer from {url} is larger than 64 KiB; stopped reading it"
    assert elapsed < 3
    assert upstream.hung_up


@pytest.mark.gen_test
async def test_body_just_under_the_limit_passes(tmp_path):
    async def big(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = b"a" * Config().max_upstream_body_bytes
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async with tcp_server(big) as port:
        with checking() as context:
            result = await http.check(local(port), "big", context)
    assert result.code == 200
    assert len(result.message) == Config().max_upstream_body_bytes


@pytest.mark.gen_test(timeout=20)
async def test_max_clients_bounds_concurrent_requests():
    async with http_upstream() as upstream:
        with checking(Config(max_clients=2)) as context:
            results = await asyncio.gather(
                *(http.check(local(upstream.port), "slow", context) for _ in range(6))
            )
    assert [r.code for r in results] == [200] * 6
    assert upstream.max_in_flight == 2


def test_url_escapes_only_what_a_path_cannot_hold():
    target = Target("127.0.0.1", 80)
    assert http.upstream_url("http", target, "a b/é?", "") == "http://127.0.0.1:80/a%20b/%C3%A9%3F"
    assert http.upstream_url("http", target, "ok%20already/x;y=1", "q=1") == "http://127.0.0.1:80/ok%20already/x;y=1?q=1"
    assert http.upstream_url("https", Target("::1", 8443), "h", "") == "https://[::1]:8443/h"
