"""The haproxy check against a real HAProxy whose stats page shows one backend up and one down."""

import pytest
import tornado.web

from hacheck.checks import haproxy
from hacheck.checks.base import Target, run_check
from tests.checks.conftest import haproxy_with_stats
from tests.conftest import unused_port


@pytest.fixture(scope="module")
def haproxy_stats(tmp_path_factory):
    """A real HAProxy: stats at ``/``, backend ``web_up`` on a live listener, ``web_down`` on a closed port."""
    with haproxy_with_stats(tmp_path_factory.mktemp("haproxy"), "/") as stats_port:
        yield Target("127.0.0.1", stats_port)


@pytest.mark.gen_test
async def test_a_backend_that_is_up(haproxy_stats, make_context):
    result = await run_check(haproxy.check, haproxy_stats, "", make_context(service="web_up"))
    assert (result.code, result.message) == (200, "web_up is UP")


@pytest.mark.gen_test
async def test_a_backend_that_is_down(haproxy_stats, make_context):
    result = await run_check(haproxy.check, haproxy_stats, "", make_context(service="web_down"))
    assert (result.code, result.message) == (500, "web_down is DOWN")


@pytest.mark.gen_test
async def test_a_service_haproxy_does_not_know(haproxy_stats, make_context):
    result = await run_check(haproxy.check, haproxy_stats, "", make_context(service="web_unknown"))
    assert (result.code, result.message) == (500, "web_unknown is not found")


@pytest.mark.gen_test
async def test_closed_port_is_599_as_for_an_http_check(closed_port, make_context):
    """No answer records 599 (the daemon answers 503), as uber/hacheck's check did."""
    result = await run_check(haproxy.check, closed_port, "", make_context(service="web_up"))
    assert result.code == 599
    assert "refused" in result.message


async def check_against_page(make_context, code: int, body: bytes):
    """The check's result against a stats page answering ``code`` with ``body``."""
    class Page(tornado.web.RequestHandler):
        def get(self):
            self.set_status(code)
            if code in (301, 302):
                self.set_header("Location", "/elsewhere")
            self.write(body)

    port = unused_port()
    server = tornado.web.Application([(r"/.*", Page)]).listen(port, address="127.0.0.1")
    try:
        return await run_check(haproxy.check, Target("127.0.0.1", port), "", make_context(service="web_up"))
    finally:
        server.stop()


@pytest.mark.gen_test
@pytest.mark.parametrize("code, body, expected_code, expected_message", [
    (200, b"<html>hello</html>", 500, "not HAProxy stats CSV"),
    # uber/hacheck/tests/test_checker.py: a 500 with no body stays 500; NUL bytes are 599.
    (500, b"", 500, "answered 500 Internal Server Error"),
    (200, b"\x00\x00", 599, "is not text"),
    (200, b"\xff\xfe# pxname,svname,status\n", 599, "is not text"),
    (404, b"no stats here", 404, "answered 404 Not Found"),
    # A redirect is a pass for HAProxy: it must not be passed on.
    (301, b"", 503, "answered 301 Moved Permanently"),
])
async def test_a_stats_page_that_fails(make_context, code, body, expected_code, expected_message):
    result = await check_against_page(make_context, code, body)
    assert result.code == expected_code
    assert expected_message in result.message


@pytest.mark.gen_test
async def test_a_hung_server_costs_at_most_the_timeout(hang_probe):
    await hang_probe(haproxy.check, expected_code=599)
