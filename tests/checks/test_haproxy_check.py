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
async def test_closed_port_is_503(closed_port, make_context):
    result = await run_check(haproxy.check, closed_port, "", make_context(service="web_up"))
    assert result.code == 503
    assert "refused" in result.message


@pytest.mark.gen_test
async def test_a_page_that_is_not_stats_csv(make_context, io_loop):
    class NotStats(tornado.web.RequestHandler):
        def get(self):
            self.write("<html>hello</html>")

    port = unused_port()
    server = tornado.web.Application([(r"/.*", NotStats)]).listen(port, address="127.0.0.1")
    try:
        result = await run_check(haproxy.check, Target("127.0.0.1", port), "", make_context(service="web_up"))
    finally:
        server.stop()
    assert result.code == 500
    assert "not HAProxy stats CSV" in result.message


@pytest.mark.gen_test
async def test_a_hung_server_costs_at_most_the_timeout(hang_probe):
    await hang_probe(haproxy.check)
