"""The haproxy check against a real HAProxy whose stats page shows one backend up and one down."""

import csv
import subprocess
import time
import urllib.request

import pytest
import tornado.web

from hacheck.checks import haproxy
from hacheck.checks.base import Target, run_check
from tests.checks.conftest import ScriptedServer
from tests.conftest import port_open, require_command, unused_port


def backend_statuses(stats_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/;csv", timeout=2) as response:
        lines = response.read().decode().removeprefix("# ").splitlines()
    return {row["pxname"]: row["status"] for row in csv.DictReader(lines) if row["svname"] == "BACKEND"}


@pytest.fixture(scope="module")
def haproxy_stats(tmp_path_factory):
    """A real HAProxy: stats at ``/``, backend ``web_up`` on a live listener, ``web_down`` on a closed port."""
    binary = require_command("haproxy")
    workdir = tmp_path_factory.mktemp("haproxy")
    stats_port, closed = unused_port(), unused_port()
    live = ScriptedServer()  # accepts connections: enough for HAProxy's TCP health check
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n"
        "  maxconn 100\n"
        "defaults\n"
        "  mode http\n"
        "  timeout connect 1s\n"
        "  timeout client 5s\n"
        "  timeout server 5s\n"
        "listen stats\n"
        f"  bind 127.0.0.1:{stats_port}\n"
        "  stats enable\n"
        "  stats uri /\n"
        "backend web_up\n"
        f"  server live 127.0.0.1:{live.port} check inter 100ms fall 1 rise 1\n"
        "backend web_down\n"
        f"  server gone 127.0.0.1:{closed} check inter 100ms fall 1 rise 1\n"
    )
    log = workdir / "haproxy.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # Servers start UP; wait until the health checks have settled both backends.
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            statuses = backend_statuses(stats_port) if port_open(stats_port, timeout=0.2) else {}
            if statuses.get("web_up") == "UP" and statuses.get("web_down") == "DOWN":
                break
            assert time.monotonic() < deadline, f"backends did not settle: {statuses}"
            time.sleep(0.1)
        yield Target("127.0.0.1", stats_port)
    finally:
        process.terminate()
        process.wait(10)
        live.close()


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
