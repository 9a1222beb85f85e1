"""``GET /metrics``: scraped with prometheus_client's own parser while real requests move the numbers.

In-process tests run the application on a real Tornado server against real
upstreams; the end-to-end tests run the real ``hacheck`` (one worker, and two
workers whose numbers must add up in every scrape) with the real operator tools.
"""

import asyncio
import contextlib
import os
import signal
import time

import pytest
import tornado.web
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from hacheck.checks.cache import CheckCache
from hacheck.config import Config, ConfigError
from hacheck.web.app import make_app
from hacheck.web.handlers import ROUTE_NAMES
from tests.checks.upstreams import accepting
from tests.conftest import FakeClock, children, http_request, wait_until
from tests.e2e.support import operator_tool, threaded_upstream

# --- reading a scrape ---------------------------------------------------------------


def parse(text: str) -> list:
    """Every sample of a scrape as (name, labels dict, value)."""
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def total(samples: list, name: str, **labels) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(value for sample_name, sample_labels, value in samples
               if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()))


def label_values(samples: list, label: str) -> set:
    return {sample_labels[label] for _, sample_labels, _ in samples if label in sample_labels}


# --- in-process: the application on a real Tornado server ---------------------------


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def app(request, spool, clock):
    marker = request.node.get_closest_marker("hacheck_config")
    config = Config(**(marker.kwargs if marker else {}))
    application = make_app(config, spool, cache=CheckCache(config.cache_time, clock=clock))
    yield application
    application.settings["hacheck_state"].close()


@pytest.fixture
def get(http_client, base_url):
    async def fetch(path, headers=None):
        return await http_client.fetch(base_url + path, headers=headers, raise_error=False,
                                       follow_redirects=False)
    return fetch


@pytest.fixture
def scrape(get):
    async def fetch_samples():
        response = await get("/metrics")
        assert response.code == 200
        return parse(response.body.decode())
    return fetch_samples


class GatedHandler(tornado.web.RequestHandler):
    """Answers 200 once the test opens the gate, so a check stays in flight as long as needed."""

    def initialize(self, gate: asyncio.Event, arrived: asyncio.Event) -> None:
        self.gate, self.arrived = gate, arrived

    async def get(self):
        self.arrived.set()
        await self.gate.wait()
        self.write("opened")


@contextlib.asynccontextmanager
async def gated_upstream():
    """Yields (port, gate, arrived): requests wait until ``gate`` is set; ``arrived`` is set by the first."""
    gate, arrived = asyncio.Event(), asyncio.Event()
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([(r"/.*", GatedHandler, {"gate": gate, "arrived": arrived})]))
    server.add_sockets([sock])
    try:
        yield port, gate, arrived
    finally:
        gate.set()
        server.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 2)


@pytest.mark.gen_test
async def test_scrape_is_prometheus_text_with_every_family(get):
    response = await get("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.body.decode())}
    for name, kind in [("hacheck_requests", "counter"), ("hacheck_check_duration_seconds", "histogram"),
                       ("hacheck_outbound_requests_in_flight", "gauge"), ("hacheck_cache_hits", "counter"),
                       ("hacheck_cache_misses", "counter"), ("hacheck_cache_coalesced", "counter"),
                       ("hacheck_cache_sets", "counter"), ("hacheck_cache_expirations", "counter"),
                       ("hacheck_cache_entries", "gauge"), ("hacheck_downtimes", "gauge")]:
        assert families[name].type == kind, name
    samples = parse(response.body.decode())
    # Every protocol's histogram and in-flight gauge exist from the start, at zero.
    assert label_values(samples, "protocol") == set(ROUTE_NAMES)
    assert total(samples, "hacheck_check_duration_seconds_count") == 0
    assert {labels["kind"] for name, labels, _ in samples if name == "hacheck_downtimes"} == {
        "all", "service", "port", "host"}


@pytest.mark.gen_test
async def test_requests_are_counted_by_protocol_and_answered_code(get, scrape, spool):
    for _ in range(2):
        assert (await get("/spool/web/80")).code == 200
    spool.down("web", reason="deploying")
    assert (await get("/spool/web/80")).code == 503
    assert (await get("/spool/web/70000")).code == 400
    samples = await scrape()
    assert total(samples, "hacheck_requests_total", protocol="spool", code="200") == 2
    assert total(samples, "hacheck_requests_total", protocol="spool", code="503") == 1
    assert total(samples, "hacheck_requests_total", protocol="spool", code="400") == 1
    assert total(samples, "hacheck_requests_total") == 4  # the scrape itself is not a check


@pytest.mark.gen_test
async def test_unknown_protocols_and_other_paths_make_no_labels(get, scrape):
    for path in ("/gopher/web/80", "/nothing-here", "/status", "/recent"):
        await get(path)
    samples = await scrape()
    assert total(samples, "hacheck_requests_total") == 0
    assert label_values(samples, "protocol") == set(ROUTE_NAMES)
    assert "service" not in {label for _, labels, _ in samples for label in labels}


@pytest.mark.gen_test
async def test_repeat_is_a_cache_hit_and_only_the_real_check_is_timed(get, scrape):
    async with accepting() as port:
        for _ in range(3):
            assert (await get(f"/tcp/web/{port}")).code == 200
    samples = await scrape()
    assert total(samples, "hacheck_cache_misses_total") == 1
    assert total(samples, "hacheck_cache_hits_total") == 2
    assert total(samples, "hacheck_cache_sets_total") == 1
    assert total(samples, "hacheck_cache_entries") == 1
    assert total(samples, "hacheck_requests_total", protocol="tcp", code="200") == 3
    assert total(samples, "hacheck_check_duration_seconds_count", protocol="tcp") == 1
    assert total(samples, "hacheck_check_duration_seconds_count") == 1
    assert total(samples, "hacheck_check_duration_seconds_bucket", protocol="tcp", le="+Inf") == 1
    assert total(samples, "hacheck_check_duration_seconds_sum", protocol="tcp") > 0


@pytest.mark.gen_test
async def test_no_cache_pragma_runs_the_check_again(get, scrape):
    async with accepting() as port:
        await get(f"/tcp/web/{port}")
        await get(f"/tcp/web/{port}", headers={"Pragma": "no-cache"})
    samples = await scrape()
    assert total(samples, "hacheck_cache_misses_total") == 2
    assert total(samples, "hacheck_check_duration_seconds_count", protocol="tcp") == 2


@pytest.mark.gen_test
@pytest.mark.hacheck_config(cache_time=5)
async def test_expired_entries_leave_the_cache(get, scrape, clock):
    async with accepting() as port, accepting() as another_port:
        await get(f"/tcp/web/{port}")
        await get(f"/tcp/web/{another_port}")
        assert total(await scrape(), "hacheck_cache_entries") == 2
        clock.now += 6
        await get(f"/tcp/web/{port}")
    samples = await scrape()
    assert total(samples, "hacheck_cache_expirations_total") == 2
    assert total(samples, "hacheck_cache_entries") == 1
    assert total(samples, "hacheck_cache_misses_total") == 3


@pytest.mark.gen_test(timeout=30)
async def test_checks_in_flight_and_coalesced_waiters(get, scrape):
    async with gated_upstream() as (port, gate, arrived):
        path = f"/http/web/{port}/health"
        requests = [asyncio.ensure_future(get(path)) for _ in range(3)]
        await asyncio.wait_for(arrived.wait(), 10)
        deadline = time.monotonic() + 10
        samples = await scrape()
        while total(samples, "hacheck_cache_coalesced_total") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            samples = await scrape()
        assert not any(task.done() for task in requests)
        assert total(samples, "hacheck_cache_coalesced_total") == 2
        assert total(samples, "hacheck_outbound_requests_in_flight", protocol="http") == 1
        assert total(samples, "hacheck_outbound_requests_in_flight") == 1
        assert total(samples, "hacheck_cache_misses_total") == 1
        assert total(samples, "hacheck_check_duration_seconds_count") == 0  # not finished yet
        gate.set()
        responses = await asyncio.gather(*requests)
    assert [response.code for response in responses] == [200, 200, 200]
    samples = await scrape()
    assert total(samples, "hacheck_outbound_requests_in_flight") == 0
    assert total(samples, "hacheck_cache_coalesced_total") == 2
    assert total(samples, "hacheck_check_duration_seconds_count", protocol="http") == 1
    assert total(samples, "hacheck_requests_total", protocol="http", code="200") == 3


@pytest.mark.gen_test
async def test_failed_checks_are_counted_with_their_code(get, scrape, free_port):
    assert (await get(f"/tcp/web/{free_port}")).code == 503
    samples = await scrape()
    assert total(samples, "hacheck_requests_total", protocol="tcp", code="503") == 1
    assert total(samples, "hacheck_check_duration_seconds_count", protocol="tcp") == 1


@pytest.mark.gen_test
async def test_downtimes_by_kind_read_from_the_spool_at_scrape_time(get, scrape, spool):
    samples = await scrape()
    assert total(samples, "hacheck_downtimes") == 0
    spool.down("all", reason="machine")
    spool.down("web", reason="service")
    spool.down("db", reason="service")
    spool.down("web", reason="port", port=8080)
    spool.down("web", reason="host", port=8080, host="10.0.0.7")
    spool.down("old", reason="over", expiration=time.time() - 10)
    samples = await scrape()
    assert total(samples, "hacheck_downtimes", kind="all", state="down") == 1
    assert total(samples, "hacheck_downtimes", kind="service", state="down") == 2
    assert total(samples, "hacheck_downtimes", kind="port", state="down") == 1
    assert total(samples, "hacheck_downtimes", kind="host", state="down") == 1
    spool.up("db")
    spool.up("all")
    samples = await scrape()
    assert total(samples, "hacheck_downtimes", kind="service") == 1
    assert total(samples, "hacheck_downtimes", kind="all") == 0
    spool.down("api", reason="draining", state="drain")
    samples = await scrape()
    assert total(samples, "hacheck_downtimes", kind="service", state="drain") == 1
    assert total(samples, "hacheck_downtimes", kind="service", state="down") == 1


@pytest.mark.gen_test
async def test_no_per_service_labels_by_default(get, scrape):
    async with accepting() as port:
        await get(f"/tcp/web/{port}")
        await get("/spool/db/0")
    samples = await scrape()
    assert not label_values(samples, "service")


@pytest.mark.gen_test
@pytest.mark.hacheck_config(metrics_per_service=True)
async def test_metrics_per_service_adds_the_service_label(get, scrape):
    async with accepting() as port:
        await get(f"/tcp/web/{port}")
        await get(f"/tcp/web/{port}")
        await get("/spool/db/0")
    samples = await scrape()
    assert total(samples, "hacheck_requests_total", protocol="tcp", code="200", service="web") == 2
    assert total(samples, "hacheck_requests_total", protocol="spool", code="200", service="db") == 1
    assert total(samples, "hacheck_check_duration_seconds_count", protocol="tcp", service="web") == 1
    assert label_values(samples, "service") == {"web", "db"}
    # Gauges stay per protocol: no service label there.
    assert all("service" not in labels for name, labels, _ in samples
               if name in ("hacheck_outbound_requests_in_flight", "hacheck_cache_entries", "hacheck_downtimes"))


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_metrics_per_service_must_be_a_boolean(value):
    with pytest.raises(ConfigError, match="metrics_per_service"):
        Config.from_mapping({"metrics_per_service": value}, source="test.yaml")


def test_metrics_per_service_defaults_to_false():
    assert Config().metrics_per_service is False
    assert Config.from_mapping({"metrics_per_service": True})[0].metrics_per_service is True


# --- end to end: the real daemon --------------------------------------------------------


def scrape_daemon(daemon) -> list:
    status, body, headers = daemon.get("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    return parse(body)


def test_one_worker_with_the_real_tools(hacheck_daemon):
    # An inherited directory is ignored: one worker keeps its numbers in memory.
    daemon = hacheck_daemon(env={"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/hacheck-metrics"})
    with threaded_upstream() as (port, upstream):
        for _ in range(3):
            assert daemon.get(f"/http/web/{port}/health")[0] == 200
        samples = scrape_daemon(daemon)
        assert total(samples, "hacheck_requests_total", protocol="http", code="200") == 3
        assert total(samples, "hacheck_cache_hits_total") == 2
        assert total(samples, "hacheck_downtimes") == 0
        operator_tool("hadown", daemon.spool_root, "-r", "deploying", "web")
        operator_tool("hadown", daemon.spool_root, "-r", "one port", "-P", "8080", "db")
        assert daemon.get(f"/http/web/{port}/health")[0] == 503
        samples = scrape_daemon(daemon)
        assert total(samples, "hacheck_downtimes", kind="service", state="down") == 1
        assert total(samples, "hacheck_downtimes", kind="port", state="down") == 1
        assert total(samples, "hacheck_requests_total", protocol="http", code="503") == 1
        operator_tool("haup", daemon.spool_root, "web")
        assert total(scrape_daemon(daemon), "hacheck_downtimes", kind="service") == 0
    assert daemon.stop() == 0


def test_two_workers_add_up_in_every_scrape(hacheck_daemon, tmp_path):
    metrics_parent = tmp_path / "tmp"
    metrics_parent.mkdir()
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon(args=["-n", "2"], config={"cache_time": 300},
                                env={"TMPDIR": str(metrics_parent)})
        wait_until(lambda: len(children(daemon.pid)) == 2, what="two workers")
        # Two private directories: the workers' metrics, and their load balancers' reports (lb_view).
        private_dirs = sorted(metrics_parent.iterdir())
        assert [path.name.rsplit("-", 1)[0] for path in private_dirs] == ["hacheck-lb-view", "hacheck-metrics"]
        assert [oct(path.stat().st_mode & 0o777) for path in private_dirs] == ["0o700", "0o700"]
        checks = 40
        for _ in range(checks):
            assert http_request(daemon.port, f"/http/web/{port}/health")[0] == 200
            assert http_request(daemon.port, "/spool/web/80")[0] == 200
        # Each new connection may reach either worker, and so may each scrape: every one sees all of them.
        for _ in range(12):
            samples = scrape_daemon(daemon)
            assert total(samples, "hacheck_requests_total", protocol="http", code="200") == checks
            assert total(samples, "hacheck_requests_total", protocol="spool", code="200") == checks
            hits, misses = total(samples, "hacheck_cache_hits_total"), total(samples, "hacheck_cache_misses_total")
            assert hits + misses + total(samples, "hacheck_cache_coalesced_total") == checks
            # One check per worker, each worker's cache holding its own result: the sum is two.
            assert misses == 2 == len(upstream.requests)
            assert total(samples, "hacheck_cache_entries") == 2
            assert total(samples, "hacheck_check_duration_seconds_count", protocol="http") == 2
            assert total(samples, "hacheck_outbound_requests_in_flight") == 0
        operator_tool("hadown", daemon.spool_root, "-r", "all of it", "all")
        for _ in range(4):
            assert total(scrape_daemon(daemon), "hacheck_downtimes", kind="all") == 1

        # A worker killed outright: its counters still count, its cache gauge goes with it.
        workers = children(daemon.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(daemon.pid)) == 2 and victim not in children(daemon.pid),
                   what="a replacement worker")
        wait_until(lambda: total(scrape_daemon(daemon), "hacheck_cache_entries") == 1,
                   what="the dead worker's cache entries to leave the sum")
        for _ in range(6):
            samples = scrape_daemon(daemon)
            assert total(samples, "hacheck_requests_total", protocol="http", code="200") == checks
            assert total(samples, "hacheck_cache_entries") == 1
    assert daemon.stop() == 0
    assert list(metrics_parent.iterdir()) == []  # the supervisor removed its directories


def test_workers_remove_the_directory_when_the_supervisor_is_killed(hacheck_daemon, tmp_path):
    metrics_parent = tmp_path / "tmp"
    metrics_parent.mkdir()
    daemon = hacheck_daemon(args=["-n", "2"], env={"TMPDIR": str(metrics_parent)})
    workers = wait_until(lambda: len(children(daemon.pid)) == 2 and children(daemon.pid), what="two workers")
    assert len(list(metrics_parent.iterdir())) == 2  # metrics, and the load balancers' reports
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.process.wait()
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}/cwd") for pid in workers), what="the workers to stop")
    assert list(metrics_parent.iterdir()) == []
