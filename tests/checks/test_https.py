"""The `https` check against a real Tornado TLS server with a self-signed certificate."""

import json
import time

import pytest

from hacheck import __version__
from hacheck.checks import https
from hacheck.checks.base import Target, run_check
from hacheck.config import Config
from tests.checks.upstreams import checking, http_upstream, silent_listener, tcp_server, tls_server_context
from tests.conftest import unused_port


def local(port: int) -> Target:
    return Target("127.0.0.1", port)


@pytest.mark.gen_test
async def test_self_signed_upstream_answers_with_its_code_and_body(tmp_path):
    async with http_upstream(tls_server_context(tmp_path)) as upstream:
        with checking(Config(service_name_header="X-Service-Name"), service="shop",
                      query_string="deep=1", headers={"HOST": "shop.example.com"}) as context:
            echoed = await https.check(local(upstream.port), "health", context)
            failing = await https.check(local(upstream.port), "status/500", context)
            redirect = await https.check(local(upstream.port), "status/302", context)
    assert echoed.code == 200
    seen = json.loads(echoed.message)
    assert seen["uri"] == "/health?deep=1"
    assert seen["headers"]["User-Agent"] == f"hastate {__version__}"
    assert seen["headers"]["Host"] == "shop.example.com"
    assert seen["headers"]["X-Service-Name"] == "shop"
    assert (failing.code, failing.message) == (500, "status 500")
    assert (redirect.code, redirect.message) == (302, "status 302")
    assert upstream.requests == ["/health?deep=1", "/status/500?deep=1", "/status/302?deep=1"]


@pytest.mark.gen_test
async def test_plain_http_upstream_is_599_naming_tls():
    async def plain_http(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with tcp_server(plain_http) as port:
        with checking(Config(healthcheck_timeout=3)) as context:
            result = await run_check(https.check, local(port), "health", context)
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert result.message.startswith(f"TLS error talking to 127.0.0.1:{port}")


@pytest.mark.gen_test
async def test_refused_port_is_599_at_once():
    port = unused_port()
    with checking(Config(healthcheck_timeout=5)) as context:
        started = time.monotonic()
        result = await run_check(https.check, local(port), "health", context)
        elapsed = time.monotonic() - started
    assert (result.code, result.message) == (599, f"Connection refused by 127.0.0.1:{port}")
    assert elapsed < 2


@pytest.mark.gen_test
async def test_silent_upstream_times_out_during_handshake():
    with silent_listener() as port, checking(Config(healthcheck_timeout=0.5)) as context:
        started = time.monotonic()
        result = await run_check(https.check, local(port), "health", context)
        elapsed = time.monotonic() - started
    assert result.code == 599  # no answer: recorded 599, answered 503
    assert "timed out after 0.50s" in result.message
    assert 0.4 < elapsed < 3
