"""Draining downtimes (issue 8): the spool's state field, 404 on check routes, POST status=drain, -S, the tools."""

import json
import os
import subprocess

import pytest

from hacheck.config import Config
from hacheck.spool import STATE_DRAIN, Downtime, Spool, parse_downtime
from hacheck.web.app import make_app
from tests.checks.upstreams import accepting, http_upstream
from tests.conftest import tool_argv, tool_env, unused_port

NOW = 1_700_000_000.0


def record(spool, name):
    with open(os.path.join(spool.root, name)) as spool_file:
        return json.load(spool_file)


# --- the spool ------------------------------------------------------------------------


def test_drain_is_written_with_state_and_down_without(spool):
    spool.down("web", reason="slowly", state="drain", now=NOW)
    spool.down("db", reason="now", now=NOW)
    assert record(spool, "web") == {"reason": "slowly", "expiration": None, "creation": NOW, "state": "drain"}
    # Older readers see exactly the record they know: a downtime.
    assert record(spool, "db") == {"reason": "now", "expiration": None, "creation": NOW}
    assert spool.read("web").is_drain and spool.read("web").state == "drain"
    assert not spool.read("db").is_drain and spool.read("db").state == "down"


@pytest.mark.parametrize("content, state", [
    (b'{"reason": "r", "state": "drain"}', "drain"),
    (b'{"reason": "r", "state": "down"}', "down"),
    (b'{"reason": "r", "state": "DRAIN"}', "down"),
    (b'{"reason": "r", "state": "sideways"}', "down"),
    (b'{"reason": "r", "state": ["drain"]}', "down"),
    (b'{"reason": "r"}', "down"),
    (b"drain", "down"),  # a legacy file whose reason happens to be "drain"
])
def test_only_an_explicit_drain_drains(content, state):
    assert parse_downtime(content).state == state


def test_bad_state_is_refused(spool):
    with pytest.raises(ValueError, match="invalid downtime state"):
        spool.down("web", reason="r", state="sideways")
    assert spool.entries() == []


def test_renewal_keeps_creation_only_for_the_same_state(spool):
    spool.down("web", reason="r", state="drain", now=NOW)
    spool.down("web", reason="r", state="drain", expiration=NOW + 600, now=NOW + 10)
    assert spool.read("web").creation == NOW
    spool.down("web", reason="r", now=NOW + 20)  # drain turned into a hard down: a new downtime
    assert spool.read("web") == Downtime(reason="r", creation=NOW + 20, state="down")


@pytest.mark.parametrize("drained, downed", [("all", "web:80"), ("web:80", "all"), ("web", "web:80"),
                                             ("web:80", "web")])
def test_a_hard_down_wins_over_a_drain_wherever_it_is(spool, drained, downed):
    def write(entry, state):
        name, _, port = entry.partition(":")
        spool.down(name, reason=entry, port=int(port) if port else None, state=state)
    write(drained, "drain")
    write(downed, "down")
    matched, downtime = spool.find_downtime("web", port=80)
    assert (matched, downtime.reason, downtime.state) == (downed.partition(":")[0], downed, "down")


def test_first_drain_is_reported_when_nothing_cuts(spool):
    spool.down("web", reason="service", state="drain")
    spool.down("web", reason="port", port=80, state="drain")
    assert spool.find_downtime("web", port=80)[1].reason == "service"
    assert spool.find_downtime("db", port=80) is None


# --- the HTTP API ---------------------------------------------------------------------


@pytest.fixture
def app(request, spool):
    marker = request.node.get_closest_marker("hacheck_config")
    keys = dict(marker.kwargs) if marker else {}
    spool_on_http = keys.pop("spool_on_http", True)
    application = make_app(Config(**keys), spool, spool_on_http=spool_on_http)
    yield application
    application.settings["hacheck_state"].close()


@pytest.fixture
def get(http_client, base_url):
    async def fetch(path, method="GET", body=None):
        return await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                       follow_redirects=False)
    return fetch


def text(response) -> str:
    return response.body.decode() if response.body else ""


@pytest.mark.gen_test
async def test_draining_spool_route_is_404_with_a_drain_message(get, spool):
    spool.down("web", reason="draining for deploy", expiration=4102444800.5, creation=1700000000.25,
               state="drain")
    response = await get("/spool/web/80")
    assert response.code == 404
    assert text(response) == ("Service web in drain state since 1700000000.250000 until 4102444800.500000: "
                              "draining for deploy")


@pytest.mark.gen_test
async def test_draining_healthy_service_is_404_on_every_check_route(get, spool):
    spool.down("web", reason="d", state="drain")
    async with accepting() as tcp_port, http_upstream() as upstream:
        tcp = await get(f"/tcp/web/{tcp_port}")
        http = await get(f"/http/web/{upstream.port}/health")
    assert (tcp.code, text(tcp)) == (404, "Service web in drain state since " + text(tcp).split(" since ")[1])
    assert text(tcp).endswith(": d")
    assert (http.code, text(http)) == (404, text(tcp))
    assert upstream.requests  # the real check ran: a drain does not hide a dead service


@pytest.mark.gen_test
async def test_draining_service_that_fails_answers_its_failure(get, spool):
    """So HAProxy marks a dead draining server DOWN instead of keeping persistent connections on it."""
    spool.down("web", reason="d", state="drain")
    refused = await get(f"/tcp/web/{unused_port()}")
    assert refused.code == 503 and "drain" not in text(refused)
    async with http_upstream() as upstream:
        failing = await get(f"/http/web/{upstream.port}/status/500")
    assert (failing.code, text(failing)) == (500, "status 500")


@pytest.mark.gen_test
async def test_drain_is_per_port_and_down_still_cuts(get, spool):
    spool.down("web", reason="one port", port=81, state="drain")
    assert (await get("/spool/web/80")).code == 200
    assert (await get("/spool/web/81")).code == 404
    spool.down("all", reason="everything")
    response = await get("/spool/web/81")
    assert (response.code, text(response).startswith("Service all in down state")) == (503, True)


@pytest.mark.gen_test
async def test_recent_records_the_404(get, spool):
    spool.down("web", reason="d", state="drain")
    await get("/spool/web/80")
    recent = json.loads(text(await get("/recent")))
    assert recent["seen_services"][0][0] == "web"
    assert recent["seen_services"][0][1]["code"] == 404


@pytest.mark.hacheck_config(allow_remote_spool_changes=True)
@pytest.mark.gen_test
async def test_post_status_drain(get, spool):
    body = "status=drain&reason=rolling&expiration=4102444800"
    assert (await get("/spool/web/8080/x", method="POST", body=body)).code == 200
    downtime = spool.read("web", port=8080)
    assert (downtime.state, downtime.reason, downtime.expiration) == (STATE_DRAIN, "rolling", 4102444800.0)
    assert record(spool, "web:8080")["state"] == "drain"
    assert (await get("/spool/web/8080")).code == 404
    assert (await get("/spool/web/0/x", method="POST", body="status=down&reason=rolling")).code == 200
    assert (await get("/spool/web/8080")).code == 503
    assert (await get("/spool/web/8080/x", method="POST", body="status=up")).code == 200
    assert (await get("/spool/web/0/x", method="POST", body="status=up")).code == 200
    assert (await get("/spool/web/8080")).code == 200


@pytest.mark.hacheck_config(allow_remote_spool_changes=True)
@pytest.mark.gen_test
async def test_post_bad_status_names_drain(get, spool):
    response = await get("/spool/web/0/x", method="POST", body="status=draining")
    assert response.code == 400
    assert text(response) == "status must be 'up', 'down' or 'drain', got 'draining'\n"
    assert spool.entries() == []


@pytest.mark.hacheck_config(spool_on_http=False)
@pytest.mark.gen_test
async def test_no_spool_on_http_reports_only_the_real_check(get, spool):
    spool.down("web", reason="down")
    spool.down("api", reason="drain", state="drain")
    async with accepting() as tcp_port, http_upstream() as upstream:
        assert (await get(f"/tcp/web/{tcp_port}")).code == 200
        assert (await get(f"/tcp/api/{tcp_port}")).code == 200
        assert (await get(f"/http/web/{upstream.port}/health")).code == 200
        assert (await get(f"/http/web/{upstream.port}/status/500")).code == 500
    assert (await get(f"/tcp/web/{unused_port()}")).code == 503
    # /spool has no real check: it keeps reporting the spool.
    assert (await get("/spool/web/80")).code == 503
    assert (await get("/spool/api/80")).code == 404


# --- the operator tools ---------------------------------------------------------------


def tool(name, spool_root, *args):
    return subprocess.run(tool_argv(name) + ["--spool-root", spool_root] + list(args), capture_output=True,
                          text=True, timeout=60, env=tool_env(SUDO_USER="tester"))


def test_hadown_drain_and_status_lines(spool_root):
    spool = Spool(spool_root)
    assert tool("hadown", spool_root, "--drain", "-r", "slowly", "web").returncode == 0
    assert tool("hadown", spool_root, "-r", "now", "db").returncode == 0
    assert tool("haupdown", spool_root, "-a", "down", "--drain", "-P", "8080", "api").returncode == 0
    assert spool.read("web").state == "drain" and spool.read("db").state == "down"
    assert spool.read("api", port=8080).reason == "tester"
    assert spool.read("api", port=8080).state == "drain"

    status = tool("hastatus", spool_root, "web", "db", "other")
    assert status.returncode == 1
    assert status.stdout == "DRAIN\tinf\tweb\tslowly\nDOWN\tinf\tdb\tnow\nUP\tother\n"
    assert tool("hastatus", spool_root, "-P", "8080", "api").stdout == "DRAIN\tinf\tapi::8080\ttester\n"

    listing = tool("hashowdowned", spool_root)
    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout == "DRAIN\tinf\tapi::8080\ttester\nDOWN\tinf\tdb\tnow\nDRAIN\tinf\tweb\tslowly\n"

    # Downing a draining service without --drain cuts it.
    assert tool("hadown", spool_root, "-r", "slowly", "web").returncode == 0
    assert tool("hastatus", spool_root, "web").stdout == "DOWN\tinf\tweb\tslowly\n"
    assert tool("haup", spool_root, "web", "db").returncode == 0
    assert tool("hastatus", spool_root, "web").stdout == "UP\tweb\n"


def test_json_gains_state(spool_root):
    tool("hadown", spool_root, "--drain", "-r", "slowly", "web")
    tool("hadown", spool_root, "-r", "now", "db")
    lines = [json.loads(line) for line in tool("hastatus", spool_root, "--json", "web", "db", "x").stdout.splitlines()]
    # "status" stays DOWN for a drain, so JSON readers that predate draining still see a downtime.
    assert [(line["status"], line["state"]) for line in lines] == [("DOWN", "drain"), ("DOWN", "down"), ("UP", None)]
    listing = [json.loads(line) for line in tool("hashowdowned", spool_root, "--json").stdout.splitlines()]
    assert [(line["service"], line["state"]) for line in listing] == [("db", "down"), ("web", "drain")]


@pytest.mark.parametrize("name, args", [("hastatus", ["web"]), ("haup", ["web"]), ("hashowdowned", []),
                                        ("halist", [])])
def test_drain_outside_down_is_a_usage_error(spool_root, name, args):
    result = tool(name, spool_root, "--drain", *args)
    assert result.returncode == 2
    assert "--drain only applies to down" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(spool_root) == []


def test_help_mentions_drain(spool_root):
    result = subprocess.run(tool_argv("hadown") + ["--help"], capture_output=True, text=True, timeout=60,
                            env=tool_env())
    assert result.returncode == 0
    assert "--drain" in result.stdout and "DRAIN<TAB>" in result.stdout
