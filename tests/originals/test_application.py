"""Yelp/hacheck/tests/test_application.py and uber/hacheck/tests/test_application.py, black-box.

The originals ran the application in-process with mocked checkers and spool; here a real
``hacheck`` answers real requests, with real upstreams and a real spool behind it.
"""

import json
import re
import socket
import time

import pytest

from tests.conftest import http_request
from tests.e2e.support import CountingListener, operator_tool, threaded_upstream
from tests.originals.support import deliberate, script_server

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_status(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_status and uber (same; uber without the queue)."""
    code, body, headers = http_request(module_daemon.port, "/status")
    assert code == 200
    assert headers["Content-Type"] == "application/json; charset=UTF-8"
    result = json.loads(body)
    assert result["uptime"] > 0.0
    assert result["outbound_request_queue_size"] == 0


def test_status_count(hacheck_daemon):
    """Yelp/hacheck/tests/test_application.py::test_status_count and uber (same)."""
    daemon = hacheck_daemon()
    code, body, headers = daemon.get("/status/count")
    assert headers["Content-Type"] == "application/json; charset=UTF-8"
    assert json.loads(body) == {"service_access_counts": {}}
    assert daemon.get("/spool/foo/1/status")[:2] == (200, "")  # an up service: the empty reason
    assert json.loads(daemon.get("/status/count")[1]) == {"service_access_counts": {"foo": {"127.0.0.1": 1}}}


def test_routing(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_routing and uber (same): /http/... reaches an
    HTTP check with its query, /tcp/... without one reaches a TCP check."""
    with threaded_upstream() as (port, upstream):
        assert module_daemon.get(f"/http/routed_http/{port}/status")[0] == 200
        assert [path for path, _ in upstream.requests] == ["/status"]
    with CountingListener() as listener:
        assert module_daemon.get(f"/tcp/routed_tcp/{listener.port}")[0] == 200
        assert listener.count(1) == 1


def write_downtime(spool_root, service, reason, creation=None, expiration=None):
    with open(f"{spool_root}/{service}", "w") as spool_file:
        json.dump({"reason": reason, "creation": creation, "expiration": expiration}, spool_file)


def test_spool_checker(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_spool_checker and uber (same): the 503 body
    with and without a reason; Yelp's adds since and until (uber's never had them)."""
    root = module_daemon.spool_root
    assert module_daemon.get("/spool/checked/1/status")[:2] == (200, "")
    write_downtime(root, "checked", "")
    assert module_daemon.get("/spool/checked/1/status")[:2] == (503, "Service checked in down state")
    write_downtime(root, "checked", "just because")
    assert module_daemon.get("/spool/checked/1/status")[:2] == (503, "Service checked in down state: just because")
    write_downtime(root, "checked", "reason", creation=4, expiration=9876543210)
    code, body, _ = module_daemon.get("/spool/checked/1/status")
    assert code == 503
    assert re.fullmatch(r"Service checked in down state since 4\.0+ until 9876543210\.0+: reason", body), body
    operator_tool("haup", root, "checked")


def test_any_failure_fails_all(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_calls_all_checkers, ::test_any_failure_fails_all_first,
    ::test_any_failure_fails_all_second and uber (same): the spool is asked first, then the check;
    the first that fails is the answer, else the last one's body with 200."""
    root = module_daemon.spool_root
    with threaded_upstream() as (port, upstream):
        upstream.body = b"OK2"
        assert module_daemon.get(f"/http/chain/{port}/status")[:2] == (200, "OK2")
        operator_tool("hadown", root, "-r", "NOK1", "chain")
        code, body, _ = module_daemon.get(f"/http/chain/{port}/status", headers={"Pragma": "no-cache"})
        assert code == 503 and body.endswith(": NOK1")
        operator_tool("haup", root, "chain")
        upstream.code, upstream.body = 404, b"NOK2"
        assert module_daemon.get(f"/http/chain/{port}/status", headers={"Pragma": "no-cache"})[:2] == (404, "NOK2")


def test_weird_code(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_weird_code and uber (same): a code HTTP does
    not define is answered 503."""
    def answer_weirdly(connection):
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 600 Weird\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
                           b"this code is weird")

    with script_server(answer_weirdly) as port:
        assert module_daemon.get(f"/http/uncached-weird-code/{port}/status")[0] == 503


def test_no_content(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_no_content: a 204 is passed on."""
    with threaded_upstream() as (port, upstream):
        upstream.code, upstream.body = 204, b""
        assert module_daemon.get(f"/http/no-content/{port}/status")[0] == 204


@pytest.fixture
def upstream_on_127_0_0_2():
    with threaded_upstream(host="127.0.0.2") as (port, upstream):
        yield port, upstream


def test_haproxy_server_state(module_daemon, upstream_on_127_0_0_2):
    """Yelp/hacheck/tests/test_application.py::test_haproxy_server_state: X-Haproxy-Server-State's
    address and port are the ones checked."""
    port, upstream = upstream_on_127_0_0_2
    state = f"UP 2/3; address=127.0.0.2; port={port}; name=bck/srv2; node=lb1; weight=1/2; scur=13/22; qcur=0"
    assert module_daemon.get("/http/state_foo/1/status", headers={"X-Haproxy-Server-State": state})[0] == 200
    assert [path for path, _ in upstream.requests] == ["/status"]


def test_nerve_header(module_daemon, upstream_on_127_0_0_2):
    """Yelp/hacheck/tests/test_application.py::test_nerve_header: X-Nerve-Check-IP is the host
    checked, on the URL's port."""
    port, upstream = upstream_on_127_0_0_2
    assert module_daemon.get(f"/http/nerve_foo/{port}/status", headers={"X-Nerve-Check-IP": "127.0.0.2"})[0] == 200
    assert [path for path, _ in upstream.requests] == ["/status"]


def test_matches_host_ip(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_matches_host_ip: X-Nerve-Check-IP naming this
    machine's own address checks 127.0.0.1."""
    own = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    with threaded_upstream() as (port, upstream):
        assert module_daemon.get(f"/http/own_foo/{port}/status", headers={"X-Nerve-Check-IP": own})[0] == 200
        assert len(upstream.requests) == 1


def test_old_haproxy_server_state_ignored(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_old_haproxy_server_state_ignored: a state
    header without address and port (older HAProxy) leaves the URL's port on 127.0.0.1."""
    state = "UP 2/3; name=bck/srv2; node=lb1; weight=1/2; scur=13/22; qcur=0"
    with threaded_upstream() as (port, upstream):
        assert module_daemon.get(f"/http/old_state/{port}/status", headers={"X-Haproxy-Server-State": state})[0] == 200
        assert len(upstream.requests) == 1


def test_option_parsing(tmp_path, hacheck_daemon):
    """Yelp/hacheck/tests/test_application.py::test_option_parsing and uber (same): ``-c`` (its
    cache_time 100) and ``--spool-root`` are what the daemon runs with."""
    spool_root = str(tmp_path / "foo")
    daemon = hacheck_daemon(config={"cache_time": 100.0}, spool_root=spool_root)
    operator_tool("hadown", spool_root, "-r", "here", "optioned")
    assert daemon.get("/spool/optioned/1/status")[0] == 503
    with threaded_upstream() as (port, upstream):
        upstream.body = b"first"
        assert daemon.get(f"/http/cached/{port}/status")[1] == "first"
        upstream.body = b"second"
        assert daemon.get(f"/http/cached/{port}/status")[1] == "first"


def test_show_recent(hacheck_daemon):
    """Yelp/hacheck/tests/test_application.py::test_show_recent and uber (same)."""
    daemon = hacheck_daemon()
    assert daemon.get("/spool/foo/1/status")[0] == 200
    for query, threshold in (("", 600), ("?threshold=20", 20)):
        recent = json.loads(daemon.get(f"/recent{query}")[1])
        assert recent["threshold_seconds"] == threshold
        [[service, last]] = recent["seen_services"]
        assert service == "foo" and set(last) == {"code", "ts", "remote_ip"}
        assert (last["code"], last["remote_ip"]) == (200, "127.0.0.1")
        assert abs(last["ts"] - time.time()) < 60


def test_remote_spool_check_forbidden(hacheck_daemon):
    """Yelp/hacheck/tests/test_application.py::test_remote_spool_check_forbidden."""
    daemon = hacheck_daemon()
    assert daemon.get("/spool/foo/1/status", method="POST", headers=FORM, body="")[0] == 403


def test_spool_post(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_spool_post: up on port 0 is the whole service;
    down with a reason on port 1234; with an expiration and a creation."""
    root = module_daemon.spool_root
    operator_tool("hadown", root, "posted")
    assert module_daemon.get("/spool/posted/0/status", method="POST", headers=FORM, body="status=up")[0] == 200
    assert module_daemon.get("/spool/posted/1/status")[0] == 200
    body = "status=down&reason=because"
    assert module_daemon.get("/spool/posted/1234/status", method="POST", headers=FORM, body=body)[0] == 200
    with open(f"{root}/posted:1234") as spool_file:
        record = json.load(spool_file)
    assert (record["reason"], record["expiration"]) == ("because", None)
    body = "status=down&reason=because&expiration=9876543210&creation=2"
    assert module_daemon.get("/spool/posted/1234/status", method="POST", headers=FORM, body=body)[0] == 200
    with open(f"{root}/posted:1234") as spool_file:
        record = json.load(spool_file)
    assert (record["expiration"], record["creation"]) == (9876543210, 2)
    operator_tool("haup", root, "-P", "1234", "posted")


@deliberate("an-expiration-before-2001-is-refused")
def test_spool_post_expiration_in_1970(module_daemon):
    """Yelp/hacheck/tests/test_application.py::test_spool_post, its last request: expiration=1."""
    body = "status=down&reason=because&expiration=1&creation=2"
    try:
        assert module_daemon.get("/spool/posted70/1234/status", method="POST", headers=FORM, body=body)[0] == 200
    finally:
        operator_tool("haup", module_daemon.spool_root, "-P", "1234", "posted70")

