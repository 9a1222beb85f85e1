"""End to end: what an operator sees for the small things (issue 16) through the real daemon and tools.

One daemon (remote spool changes on, an agent port) serves most tests; the
ones that need another start (-B twice, mutornadomon's dependency missing) start their own.
"""

import json
import os
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacheck.checks import REGISTRY
from hacheck.spool import Spool
from hacheck.web.handlers import ROUTE_NAMES
from tests.conftest import REPO_ROOT, http_request, importable, require, start_hacheck, tool_argv, tool_env, unused_port
from tests.e2e.support import ask_agent, operator_tool

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("operator-details")
    agent_port = unused_port()
    running = start_hacheck(tmp_path, config={"allow_remote_spool_changes": True, "healthcheck_timeout": 0.5},
                            args=["-A", str(agent_port)])
    running.agent_port = agent_port
    try:
        yield running
    finally:
        running.stop()


def last_status(daemon, service: str):
    seen = dict((name, last) for name, last in json.loads(daemon.get("/recent")[1])["seen_services"])
    return seen[service]


def halist_json(daemon) -> dict:
    result = subprocess.run(tool_argv("halist") + ["--json", "-p", str(daemon.port)], capture_output=True,
                            text=True, timeout=30, env=tool_env())
    assert (result.returncode, result.stderr) == (0, ""), result
    return {record["service"]: record["last_response"] for record in map(json.loads, result.stdout.splitlines())}


def samples(daemon, name: str) -> dict:
    """``{labels as a sorted tuple: value}`` of the samples called ``name`` in a scrape."""
    found = {}
    for family in text_string_to_metric_families(daemon.get("/metrics")[1]):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


# ---------------------------------------------------------------- 1: expirations over POST /spool

def test_post_spool_expiration_takes_durations_and_past_times(daemon):
    before = time.time()
    assert daemon.get("/spool/posted/0/x", method="POST", headers=FORM,
                      body="status=down&reason=r&expiration=30m")[:2] == (200, "")
    expiration = Spool(daemon.spool_root).read("posted").expiration
    assert before + 1800 - 1 <= expiration <= time.time() + 1800 + 1
    assert daemon.get("/spool/posted/80")[0] == 503

    past = int(time.time()) - 60  # a late maintenance script: written, already over
    assert daemon.get("/spool/posted/0/x", method="POST", headers=FORM,
                      body=f"status=down&reason=r&expiration={past}")[:2] == (200, "")
    assert Spool(daemon.spool_root).read("posted").expiration == past
    assert daemon.get("/spool/posted/80")[:2] == (200, "")

    status, body, _ = daemon.get("/spool/posted/0/x", method="POST", headers=FORM,
                                 body="status=down&reason=r&expiration=3600")
    assert (status, body) == (400, "expiration 3600 (1970-01-01 01:00:00 UTC) is in the past; "
                                   "for a duration write a unit, e.g. 3600s\n")


# ---------------------------------------------------------------- 2: 599 as the last status

def test_http_check_without_an_answer_records_599_and_answers_503(daemon):
    refused = unused_port()
    status, body, _ = daemon.get(f"/http/refused/{refused}/health")
    assert (status, body) == (503, f"Connection refused by 127.0.0.1:{refused}")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        status, body, _ = daemon.get(f"/http/silent/{silent.getsockname()[1]}/health")
    assert status == 503 and "timed out after 0.50s" in body
    assert last_status(daemon, "refused")["code"] == 599
    assert last_status(daemon, "silent")["code"] == 599
    listed = halist_json(daemon)
    assert listed["refused"]["code"] == 599 and listed["silent"]["code"] == 599


# ---------------------------------------------------------------- 3: names hadown refuses

def test_names_no_check_can_match_are_refused_and_older_files_still_count(daemon):
    result = subprocess.run(tool_argv("hadown") + ["--spool-root", daemon.spool_root, "-r", "x", "web app"],
                            capture_output=True, text=True, timeout=30, env=tool_env())
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "hadown: error: invalid service name 'web app': use only letters, digits, '.', '_' " \
                            "and '-'\n"
    downtimes = samples(daemon, "hacheck_downtimes")[(("kind", "service"), ("state", "down"))]
    with open(os.path.join(daemon.spool_root, "old name"), "w") as older:  # written by an older hadown
        older.write('{"reason": "old", "expiration": null, "creation": 1.0}')
    try:
        assert samples(daemon, "hacheck_downtimes")[(("kind", "service"), ("state", "down"))] == downtimes + 1
        assert "DOWN\tinf\told name\told" in operator_tool("hashowdowned", daemon.spool_root)
    finally:
        operator_tool("haup", daemon.spool_root, "old name")


# ---------------------------------------------------------------- 4: what a wrong URL says

def test_wrong_urls_say_what_is_wrong(daemon):
    status, body, _ = daemon.get("/foo/web/80")
    assert status == 404
    assert body == f"Not found: unknown protocol 'foo'; the protocols are {', '.join(sorted(ROUTE_NAMES))}\n"
    assert REGISTRY["http"].query_required
    status, body, _ = daemon.get("/http/web/8081")
    assert (status, body) == (404, "Not found: http checks need the trailing /<query>: "
                                   "/http/<service>/<port>/<query>, e.g. /http/web/8081/ for the upstream's "
                                   "root page\n")
    status, body, _ = daemon.get("/nothing/here")
    assert status == 404 and "may be left out except for http and https" in body


# ---------------------------------------------------------------- 9: agent requests are counted

def test_agent_requests_are_counted_like_http_checks(daemon):
    assert ask_agent(daemon.agent_port, b"agented:80\n") == b"up ready\n"
    operator_tool("hadown", daemon.spool_root, "-r", "deploy", "agented")
    assert ask_agent(daemon.agent_port, b"agented\n") == b"maint #deploy\n"
    assert ask_agent(daemon.agent_port, b"not a service!\n").startswith(b"#hacheck: invalid request")

    last = last_status(daemon, "agented")
    assert (last["code"], last["remote_ip"]) == (503, "127.0.0.1")
    counts = json.loads(daemon.get("/status/count")[1])["service_access_counts"]
    assert counts["agented"] == {"127.0.0.1": 2}
    assert halist_json(daemon)["agented"]["code"] == 503
    requests = samples(daemon, "hacheck_requests_total")
    assert requests[(("code", "200"), ("protocol", "agent"))] >= 1
    assert requests[(("code", "503"), ("protocol", "agent"))] >= 1
    assert requests[(("code", "400"), ("protocol", "agent"))] >= 1


# 6 (the spool root unreadable): tests/e2e/test_unreadable_spool.py


# ---------------------------------------------------------------- 7, 10, 4: -B twice, _created, mutornadomon

def test_two_bind_addresses_and_created_times(tmp_path):
    if not socket.has_ipv6 or not _can_bind("::1"):
        pytest.skip("no IPv6 loopback here")
    daemon = start_hacheck(tmp_path, args=["-B", "127.0.0.1", "-B", "::1"])
    try:
        assert http_request(daemon.port, "/spool/web/80", host="::1")[:2] == (200, "")
        checked_at = time.time()
        time.sleep(1.5)
        created = samples(daemon, "hacheck_requests_created")[(("code", "200"), ("protocol", "spool"))]
        assert checked_at - 1 <= created <= checked_at + 0.5  # when counted first, not when scraped
    finally:
        daemon.stop()
    assert "listening on 127.0.0.1,::1 port" in daemon.output()


def test_mutornadomon_without_psutil_is_not_served_saying_so(tmp_path):
    # It needs mutornadomon installed (.ci/run installs it; README's pip install does not).
    require(importable("mutornadomon"), "mutornadomon is not installed (pip install --no-deps mutornadomon "
                                        "psutil mock six): this test hides its psutil")
    # psutil that cannot be imported, as on a machine where mutornadomon was installed without it.
    shadow = tmp_path / "no-psutil"
    shadow.mkdir()
    (shadow / "psutil.py").write_text("raise ModuleNotFoundError(\"No module named 'psutil'\", name='psutil')\n")
    daemon = start_hacheck(tmp_path, env={"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(shadow)])})
    try:
        status, body, _ = daemon.get("/mutornadomon")
        assert status == 404
        assert body.startswith("Not found: /mutornadomon is not served: the mutornadomon package is installed "
                               "but cannot be imported: module psutil is missing")
    finally:
        daemon.stop()
    assert "WARNING hacheck.web.tornado_stats: /mutornadomon is not served" in daemon.output()


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind((address, 0))
        return True
    except OSError:
        return False
