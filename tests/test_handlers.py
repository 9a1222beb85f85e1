"""The HTTP API (docs/daemon.md, "Checking a service") through a real Tornado server, against real upstreams."""

import asyncio
import json
import os
import time

import pytest

from hacheck import __version__
from hacheck.activity import Activity
from hacheck.config import Config
from hacheck.web.app import make_app
from tests.checks.upstreams import accepting, full_backlog_listener, http_upstream, silent_listener, tls_server_context
from tests.conftest import FakeClock, unused_port

OWN_IP = "192.0.2.77"  # stands in for this machine's own address


@pytest.fixture
def clock():
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def app(request, spool, clock):
    marker = request.node.get_closest_marker("hacheck_config")
    config = Config(**(marker.kwargs if marker else {}))
    application = make_app(config, spool, activity=Activity(clock=clock), own_ips=frozenset({OWN_IP}))
    yield application
    application.settings["hacheck_state"].close()


@pytest.fixture
def get(http_client, base_url):
    async def fetch(path, method="GET", headers=None, body=None):
        return await http_client.fetch(base_url + path, method=method, headers=headers, body=body,
                                       raise_error=False, follow_redirects=False,
                                       allow_nonstandard_methods=True)
    return fetch


def text(response) -> str:
    return response.body.decode() if response.body else ""


# --- routes ---------------------------------------------------------------------


@pytest.mark.gen_test
async def test_tcp_without_query_and_with_query(get):
    async with accepting() as port:
        for path in (f"/tcp/web/{port}", f"/tcp/web/{port}/ignored"):
            response = await get(path)
            assert response.code == 200, text(response)
            assert text(response).startswith("Connected in ")


@pytest.mark.gen_test
async def test_http_needs_the_trailing_query(get):
    async with http_upstream() as upstream:
        assert (await get(f"/http/web/{upstream.port}")).code == 404
        response = await get(f"/http/web/{upstream.port}/")
        assert response.code == 200
        assert json.loads(text(response))["uri"] == "/"


@pytest.mark.parametrize("path", ["/nothing", "/", "/gopher/web/80/x", "/spool/web/eighty", "/spool/we%20b/80",
                                  "/spool/web", "/status/nope"])
@pytest.mark.gen_test
async def test_unknown_paths_are_404(get, path):
    assert (await get(path)).code == 404


@pytest.mark.gen_test
async def test_service_names_with_dots_dashes_underscores(get):
    response = await get("/spool/my.web_service-2/80/x")
    assert response.code == 200
    assert text(response) == ""


@pytest.mark.parametrize("name", [".", ".."])
@pytest.mark.gen_test
async def test_dot_names_are_refused(get, spool, name):
    response = await get(f"/spool/{name}/80")
    assert response.code == 400
    assert "Invalid service name" in text(response)


@pytest.mark.gen_test
async def test_port_above_65535_is_400(get):
    response = await get("/tcp/web/65536")
    assert response.code == 400
    assert "65536" in text(response) and "65535" in text(response)


@pytest.mark.gen_test
async def test_head_is_answered_like_get(get, spool):
    assert (await get("/spool/web/80", method="HEAD")).code == 200
    spool.down("web", reason="maintenance")
    assert (await get("/spool/web/80", method="HEAD")).code == 503


# --- spool (step 3) -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_spool_down_message_has_since_until_and_reason(get, spool):
    spool.down("web", reason="deploying", expiration=4102444800.5, creation=1700000000.25)
    response = await get("/spool/web/80")
    assert response.code == 503
    assert text(response) == "Service web in down state since 1700000000.250000 until 4102444800.500000: deploying"


@pytest.mark.gen_test
async def test_spool_down_message_without_optional_parts(get, spool):
    with open(os.path.join(spool.root, "web"), "w") as legacy:  # an old plain-text file
        legacy.write("")
    response = await get("/spool/web/80")
    assert (response.code, text(response)) == (503, "Service web in down state")


@pytest.mark.parametrize("entry, port, matched", [
    (("all", None), 80, "all"),
    (("web", None), 80, "web"),
    (("web", 80), 80, "web"),
])
@pytest.mark.gen_test
async def test_spool_lookup_order(get, spool, entry, port, matched):
    name, entry_port = entry
    spool.down(name, reason="r", port=entry_port)
    response = await get(f"/spool/web/{port}")
    assert response.code == 503
    assert text(response).startswith(f"Service {matched} in down state")


@pytest.mark.gen_test
async def test_all_wins_over_the_service(get, spool):
    spool.down("web", reason="service")
    spool.down("all", reason="everything")
    assert text(await get("/spool/web/80")).endswith(": everything")


@pytest.mark.gen_test
async def test_port_downtime_leaves_other_ports_up(get, spool):
    spool.down("web", reason="r", port=81)
    assert (await get("/spool/web/80")).code == 200
    assert (await get("/spool/web/81")).code == 503


@pytest.mark.gen_test
async def test_expired_downtime_is_up(get, spool):
    spool.down("web", reason="r", expiration=time.time() - 5)
    assert (await get("/spool/web/80")).code == 200


@pytest.mark.gen_test
async def test_spool_answers_before_any_protocol_check(get, spool):
    async with http_upstream() as upstream:
        spool.down("web", reason="maintenance")
        response = await get(f"/http/web/{upstream.port}/health")
        assert response.code == 503
        assert "maintenance" in text(response)
        assert upstream.requests == []


@pytest.mark.gen_test
async def test_spool_is_never_cached(get, spool):
    async with http_upstream() as upstream:
        path = f"/http/web/{upstream.port}/health"
        assert (await get(path)).code == 200
        spool.down("web", reason="now")
        assert (await get(path)).code == 503
        spool.up("web")
        assert (await get(path)).code == 200
        assert len(upstream.requests) == 1  # the protocol result itself was cached


# --- target (step 2) ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_server_state_port_replaces_url_port(get):
    async with http_upstream() as upstream:
        state = f"UP 2/3; address=127.0.0.1; port={upstream.port}; name=bck/srv2; node=lb1; weight=1/2; scur=13/22"
        response = await get(f"/http/web/{unused_port()}/health", headers={"X-Haproxy-Server-State": state})
        assert response.code == 200
        assert upstream.requests == ["/health"]


@pytest.mark.gen_test
async def test_server_state_address_becomes_host_and_header_name_case_does_not_matter(get):
    async with accepting("127.0.0.2") as port:
        # nothing listens on 127.0.0.1:port, so only the header's address can answer
        headers = {"x-haproxy-server-state": f"UP 1/1; address=127.0.0.2; port={port}; name=b/s"}
        response = await get(f"/tcp/web/{unused_port()}", headers=headers)
        assert response.code == 200, text(response)


@pytest.mark.parametrize("state", ["UP 2/3", "garbage;;;", "UP; port=abc; address=", "UP; port=99999",
                                   "UP; address=not a host!"])
@pytest.mark.gen_test
async def test_server_state_without_usable_fields_changes_nothing(get, state):
    async with accepting() as port:
        response = await get(f"/tcp/web/{port}", headers={"X-Haproxy-Server-State": state})
        assert response.code == 200, text(response)


@pytest.mark.gen_test
async def test_nerve_check_ip_gives_host(get):
    async with accepting("127.0.0.2") as port:
        assert (await get(f"/tcp/web/{port}", headers={"X-Nerve-Check-IP": "127.0.0.2"})).code == 200
        # without the header the check goes to 127.0.0.1, where nothing listens on that port
        assert (await get(f"/tcp/web/{port}", headers={"Pragma": "no-cache"})).code == 503


@pytest.mark.gen_test
async def test_malformed_nerve_header_is_400(get):
    response = await get("/tcp/web/80", headers={"X-Nerve-Check-IP": "no such/host"})
    assert response.code == 400
    assert "X-Nerve-Check-IP" in text(response)


@pytest.mark.gen_test
async def test_own_ip_means_localhost(get, spool):
    async with accepting() as port:
        response = await get(f"/tcp/web/{port}", headers={"X-Nerve-Check-IP": OWN_IP})
        assert response.code == 200, text(response)
        # and the spool key is the local one, not web:<own ip>:<port>
        spool.down("web", reason="local", port=port)
        response = await get(f"/tcp/web/{port}", headers={"X-Nerve-Check-IP": OWN_IP})
        assert response.code == 503


@pytest.mark.gen_test
async def test_remote_host_uses_host_port_spool_entry(get, spool):
    spool.down("web", reason="that host only", port=80, host="127.0.0.2")
    assert (await get("/spool/web/80", headers={"X-Nerve-Check-IP": "127.0.0.2"})).code == 503
    assert (await get("/spool/web/80")).code == 200
    assert (await get("/spool/web/80", headers={"X-Nerve-Check-IP": "127.0.0.3"})).code == 200


# --- protocol check and status mapping (step 4) ---------------------------------------


@pytest.mark.parametrize("code", [200, 301, 404, 500, 503])
@pytest.mark.gen_test
async def test_upstream_code_and_body_are_the_answer(get, code):
    async with http_upstream() as upstream:
        response = await get(f"/http/web/{upstream.port}/status/{code}")
        assert response.code == code
        assert text(response) == f"status {code}"


@pytest.mark.gen_test
async def test_204_has_no_body(get):
    async with http_upstream() as upstream:
        response = await get(f"/http/web/{upstream.port}/status/204")
        assert response.code == 204
        assert response.body == b""


@pytest.mark.gen_test
async def test_unknown_code_answers_503_but_is_recorded_as_is(get):
    async with http_upstream() as upstream:
        response = await get(f"/http/web/{upstream.port}/status/599")
        assert response.code == 503
        assert text(response) == "status 599"
        recent = json.loads(text(await get("/recent")))
        assert recent["seen_services"][0][1]["code"] == 599


@pytest.mark.gen_test
async def test_query_string_and_user_agent_and_copied_host_reach_upstream(get):
    async with http_upstream() as upstream:
        response = await get(f"/http/web/{upstream.port}/health?deep=1&x=y", headers={"Host": "web.example"})
        echoed = json.loads(text(response))
        assert echoed["uri"] == "/health?deep=1&x=y"
        assert echoed["headers"]["User-Agent"] == f"hastate {__version__}"
        assert echoed["headers"]["Host"] == "web.example"


@pytest.mark.hacheck_config(http_headers_to_copy=["X-Trace"])
@pytest.mark.gen_test
async def test_http_headers_to_copy(get):
    async with http_upstream() as upstream:
        echoed = json.loads(text(await get(f"/http/web/{upstream.port}/h",
                                           headers={"X-Trace": "abc", "Host": "web.example"})))
        assert echoed["headers"]["X-Trace"] == "abc"
        assert echoed["headers"]["Host"] != "web.example"


@pytest.mark.gen_test
async def test_https_with_self_signed_certificate(get, tmp_path):
    async with http_upstream(tls_server_context(tmp_path)) as upstream:
        response = await get(f"/https/web/{upstream.port}/status/200")
        assert (response.code, text(response)) == (200, "status 200")


@pytest.mark.gen_test
async def test_refused_connection_is_503_at_once(get):
    port = unused_port()
    started = time.monotonic()
    for path in (f"/tcp/web/{port}", f"/http/web/{port}/"):
        response = await get(path)
        assert response.code == 503
        assert "refused" in text(response).lower()
    assert time.monotonic() - started < 3


@pytest.mark.hacheck_config(healthcheck_timeout=0.5)
@pytest.mark.gen_test
async def test_healthcheck_timeout(get):
    with silent_listener() as port:
        started = time.monotonic()
        response = await get(f"/http/web/{port}/")
        assert response.code == 503
        assert "timed out" in text(response)
        assert time.monotonic() - started < 5


@pytest.mark.hacheck_config(healthcheck_timeout=0.5)
@pytest.mark.gen_test
async def test_tcp_connect_that_hangs_times_out(get):
    with full_backlog_listener() as port:
        response = await get(f"/tcp/web/{port}")
        assert response.code == 503
        assert text(response) in ("Connection timed out after 0.50s", "Check timed out after 0.50s")


@pytest.mark.hacheck_config(max_clients=1, cache_time=0)
@pytest.mark.gen_test(timeout=20)
async def test_max_clients_bounds_outbound_requests(get):
    async with http_upstream() as upstream:
        responses = await asyncio.gather(*(get(f"/http/web/{upstream.port}/slow?n={n}") for n in range(3)))
        assert [r.code for r in responses] == [200, 200, 200]
        assert upstream.max_in_flight == 1


# --- cache (2.2) --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_results_are_cached_and_counted(get):
    async with http_upstream() as upstream:
        for _ in range(3):
            assert (await get(f"/http/web/{upstream.port}/h")).code == 200
        assert len(upstream.requests) == 1
        cache = json.loads(text(await get("/status")))["cache"]
        assert (cache["gets"], cache["hits"], cache["misses"], cache["sets"]) == (3, 2, 1, 1)
        assert cache["expirations"] == 0


@pytest.mark.gen_test
async def test_pragma_no_cache_bypasses_and_stores(get):
    async with http_upstream() as upstream:
        path = f"/http/web/{upstream.port}/h"
        await get(path)
        await get(path, headers={"Pragma": "no-cache"})
        assert len(upstream.requests) == 2
        await get(path)
        assert len(upstream.requests) == 2


@pytest.mark.gen_test
async def test_query_string_port_and_query_are_part_of_the_key(get):
    async with http_upstream() as upstream:
        await get(f"/http/web/{upstream.port}/h")
        await get(f"/http/web/{upstream.port}/h?a=1")
        await get(f"/http/web/{upstream.port}/other")
        assert len(upstream.requests) == 3


@pytest.mark.gen_test
async def test_service_name_is_not_part_of_the_key_by_default(get):
    async with http_upstream() as upstream:
        await get(f"/http/one/{upstream.port}/h")
        await get(f"/http/two/{upstream.port}/h")
        assert len(upstream.requests) == 1


@pytest.mark.hacheck_config(service_name_header="X-Service-Name")
@pytest.mark.gen_test
async def test_service_name_header_sends_name_and_joins_the_key(get):
    async with http_upstream() as upstream:
        one = json.loads(text(await get(f"/http/one/{upstream.port}/h")))
        two = json.loads(text(await get(f"/http/two/{upstream.port}/h")))
        assert (one["headers"]["X-Service-Name"], two["headers"]["X-Service-Name"]) == ("one", "two")
        assert len(upstream.requests) == 2


@pytest.mark.gen_test
async def test_concurrent_identical_checks_share_one_upstream_request(get):
    async with http_upstream() as upstream:
        responses = await asyncio.gather(*(get(f"/http/web/{upstream.port}/slow") for _ in range(8)))
        assert {r.code for r in responses} == {200}
        assert upstream.max_in_flight == 1
        cache = json.loads(text(await get("/status")))["cache"]
        assert (cache["misses"], cache["coalesced"]) == (1, 7)


@pytest.mark.hacheck_config(cache_time=0.3)
@pytest.mark.gen_test
async def test_cache_entries_expire(get):
    async with http_upstream() as upstream:
        await get(f"/http/web/{upstream.port}/h")
        await asyncio.sleep(0.5)
        await get(f"/http/web/{upstream.port}/h")
        assert len(upstream.requests) == 2
        assert json.loads(text(await get("/status")))["cache"]["expirations"] >= 1


# --- activity and status endpoints (steps 1, 5; 2.3) --------------------------------------


@pytest.mark.gen_test
async def test_status_keys(get):
    status = json.loads(text(await get("/status")))
    assert set(status["cache"]) >= {"gets", "hits", "misses", "sets", "expirations"}
    assert status["uptime"] >= 0
    assert status["outbound_request_queue_size"] == 0
    assert status["version"] == __version__


@pytest.mark.gen_test
async def test_status_count_per_service_and_client(get, spool):
    await get("/spool/web/80")
    await get("/spool/web/81")
    await get("/spool/db/3306")
    counts = json.loads(text(await get("/status/count")))
    assert counts == {"service_access_counts": {"web": {"127.0.0.1": 2}, "db": {"127.0.0.1": 1}}}


@pytest.mark.gen_test
async def test_recent_lists_seen_services_with_last_status(get, spool, clock):
    await get("/spool/web/80")
    spool.down("db", reason="r")
    await get("/spool/db/3306")
    recent = json.loads(text(await get("/recent")))
    assert recent == {
        "seen_services": [
            ["db", {"code": 503, "remote_ip": "127.0.0.1", "ts": clock.now}],
            ["web", {"code": 200, "remote_ip": "127.0.0.1", "ts": clock.now}],
        ],
        "threshold_seconds": 600,
    }


@pytest.mark.gen_test
async def test_recent_threshold(get, clock):
    await get("/spool/old/80")
    clock.now += 700
    await get("/spool/new/80")
    assert [s for s, _ in json.loads(text(await get("/recent")))["seen_services"]] == ["new"]
    wide = json.loads(text(await get("/recent?threshold=800")))
    assert [s for s, _ in wide["seen_services"]] == ["new", "old"]
    assert wide["threshold_seconds"] == 800
    assert (await get("/recent?threshold=soon")).code == 400


@pytest.mark.gen_test
async def test_seen_is_recorded_even_when_the_check_is_refused(get):
    await get(f"/tcp/web/{unused_port()}")
    recent = json.loads(text(await get("/recent")))["seen_services"]
    assert recent[0][0] == "web" and recent[0][1]["code"] == 503


# --- POST /spool ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_remote_spool_changes_refused_by_default(get, spool):
    response = await get("/spool/web/0/x", method="POST", body="status=down&reason=no")
    assert response.code == 403
    assert spool.read("web") is None


@pytest.mark.hacheck_config(allow_remote_spool_changes=True)
@pytest.mark.gen_test
async def test_remote_spool_down_and_up(get, spool):
    body = "status=down&reason=deploy&expiration=4102444800&creation=1700000000"
    assert (await get("/spool/web/0/x", method="POST", body=body)).code == 200
    assert spool.read("web").reason == "deploy"
    assert spool.read("web").expiration == 4102444800.0
    assert spool.read("web").creation == 1700000000.0
    assert (await get("/spool/web/80")).code == 503
    assert (await get("/spool/web/0/x", method="POST", body="status=up")).code == 200
    assert spool.read("web") is None
    assert (await get("/spool/web/80")).code == 200


@pytest.mark.hacheck_config(allow_remote_spool_changes=True)
@pytest.mark.gen_test
async def test_remote_spool_port(get, spool):
    assert (await get("/spool/web/8080/x", method="POST", body="status=down&reason=p")).code == 200
    assert spool.read("web", port=8080).reason == "p"
    assert spool.read("web") is None


@pytest.mark.hacheck_config(allow_remote_spool_changes=True)
@pytest.mark.parametrize("body", ["status=sideways", "", "status=down&expiration=tomorrow"])
@pytest.mark.gen_test
async def test_remote_spool_bad_fields_are_400(get, spool, body):
    assert (await get("/spool/web/0/x", method="POST", body=body)).code == 400
    assert spool.entries() == []


@pytest.mark.gen_test
async def test_post_to_a_check_route_is_405(get):
    assert (await get("/tcp/web/80", method="POST", body="status=down")).code == 405


@pytest.mark.hacheck_config(max_clients=1, cache_time=0)
@pytest.mark.gen_test(timeout=20)
async def test_status_shows_outbound_requests_waiting_for_a_slot(get):
    async with http_upstream() as upstream:
        checks = [asyncio.ensure_future(get(f"/http/web/{upstream.port}/slow?n={n}")) for n in range(3)]
        waiting = set()
        while not all(check.done() for check in checks):
            waiting.add(json.loads(text(await get("/status")))["outbound_request_queue_size"])
            await asyncio.sleep(0.01)
        assert max(waiting) == 2  # one request out, two waiting for the single slot
        await asyncio.gather(*checks)
        assert json.loads(text(await get("/status")))["outbound_request_queue_size"] == 0


@pytest.mark.gen_test
async def test_mutornadomon_is_not_served_unless_enabled(get):
    assert (await get("/mutornadomon")).code == 404


@pytest.mark.parametrize("address, allowed", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                              ("192.0.2.5", False), ("10.0.0.1", False), ("garbage", False)])
def test_mutornadomon_filter_lets_only_loopback_in(address, allowed):
    from types import SimpleNamespace

    from hacheck.web.tornado_stats import is_localhost

    assert is_localhost(SimpleNamespace(remote_ip=address)) is allowed


# --- answers that are not the service's verdict (never cached) ------------------------------


async def behind_two_hung_checks(get, hung_port, path):
    """``path`` asked while a single slot (healthcheck_timeout 0.5 s) is held by hung checks.

    The first holds it from 0 to 0.5 s, the second (asked at 0.3 s) from 0.5 to 1 s: ``path``,
    asked at 0.35 s, waits behind them past its own timeout. Returns its answer and the hung ones.
    """
    hung = [asyncio.ensure_future(get(f"/http/hung/{hung_port}/first"))]
    await asyncio.sleep(0.3)
    hung.append(asyncio.ensure_future(get(f"/http/hung/{hung_port}/second")))
    await asyncio.sleep(0.05)
    return await get(path), hung


@pytest.mark.hacheck_config(max_clients=1, healthcheck_timeout=0.5, max_checks_per_target=10)
@pytest.mark.gen_test(timeout=20)
async def test_no_free_outbound_slot_is_a_503_that_is_not_cached(get):
    async with http_upstream() as upstream:
        with silent_listener() as hung_port:
            response, hung = await behind_two_hung_checks(get, hung_port, f"/http/web/{upstream.port}/h")
            assert response.code == 503
            assert text(response) == (f"Check of 127.0.0.1:{upstream.port} not run: no free outbound connection "
                                      "(max_clients=1) within 0.50s\n")
            # Not the service's state: /recent has seen it, with no status yet.
            recent = json.loads(text(await get("/recent")))["seen_services"]
            assert ["web", None] in recent
            await asyncio.gather(*hung)
        assert upstream.requests == []
        response = await get(f"/http/web/{upstream.port}/h")
        assert (response.code, upstream.requests) == (200, ["/h"])
        # Neither this check nor the second hung one (which waited 0.2 s of its 0.5 s) was stored.
        cache = json.loads(text(await get("/status")))["cache"]
        assert cache["not_stored"] == 2


@pytest.mark.hacheck_config(max_checks_per_target=2, healthcheck_timeout=5)
@pytest.mark.gen_test(timeout=20)
async def test_checks_beyond_the_per_target_bound_wait_for_a_slot(get):
    async with http_upstream() as upstream:
        responses = await asyncio.gather(*(get(f"/http/web/{upstream.port}/slow?n={n}") for n in range(5)))
        assert [response.code for response in responses] == [200] * 5
        assert upstream.max_in_flight == 2


@pytest.mark.hacheck_config(max_checks_per_target=1, healthcheck_timeout=0.5)
@pytest.mark.gen_test(timeout=20)
async def test_a_check_that_waited_for_its_targets_bound_is_not_the_services_verdict(get):
    with silent_listener() as hung_port:
        first = asyncio.ensure_future(get(f"/http/hung/{hung_port}/first"))
        await asyncio.sleep(0.05)
        response = await get(f"/http/hung/{hung_port}/second")
        assert (await first).code == 503
    assert response.code == 503
    assert f"free check slot for 127.0.0.1:{hung_port} (max_checks_per_target=1)" in text(response)
    cache = json.loads(text(await get("/status")))["cache"]
    assert (cache["sets"], cache["not_stored"]) == (1, 1)  # the first one timed out on its own: a verdict


@pytest.mark.hacheck_config(max_checks_per_client=1, healthcheck_timeout=0.5)
@pytest.mark.gen_test(timeout=20)
async def test_a_client_over_its_bound_waits_then_is_refused_and_not_cached(get):
    async with http_upstream() as upstream:
        with silent_listener() as hung_port:
            response, hung = await behind_two_hung_checks(get, hung_port, f"/http/web/{upstream.port}/h")
            assert (response.code, text(response)) == (
                503, "Not checked: client 127.0.0.1 had 1 checks in flight for 0.50s (max_checks_per_client=1)\n")
            await asyncio.gather(*hung)
        assert upstream.requests == []
        assert (await get(f"/http/web/{upstream.port}/h")).code == 200  # the refusal was not cached


@pytest.mark.gen_test
async def test_hacheck_out_of_file_descriptors_is_a_503_that_is_not_cached(get):
    import resource

    async with accepting() as port:
        path = f"/tcp/web/{port}"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
        try:
            while True:  # take every descriptor left ...
                try:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            for _ in range(2):  # ... but the test client's socket and the one hacheck accepts
                os.close(fillers.pop())
            response = await get(path)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for descriptor in fillers:
                os.close(descriptor)
        assert response.code == 503
        assert "Too many open files" in text(response) and "the service was not asked" in text(response)
        assert (await get(path)).code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("condition", ["*", '"anything"', 'W/"da39a3ee5e6b4b0d3255bfef95601890afd80709"'])
async def test_a_conditional_request_never_gets_a_304(get, condition):
    """A health answer is never "not modified": a client (or a cache in between) asking
    If-None-Match gets the full answer, so no state change can hide behind a 304."""
    async with http_upstream() as upstream:
        for path in ("/spool/web/0/", f"/http/web/{upstream.port}/"):
            response = await get(path, headers={"If-None-Match": condition})
            assert response.code == 200, (path, response.code)
            assert "Etag" not in response.headers
