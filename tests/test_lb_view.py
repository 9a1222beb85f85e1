"""The load balancers' view (``/status/lb``, the ``hacheck_lb_server_*`` metrics) as a real daemon builds it
from the ``X-Haproxy-Server-State`` headers HAProxy's ``http-check send-state`` sends.

The headers here are written the way HAProxy 2.6 writes them (its ``httpchk_build_status_header``):
``UP 2/3; address=...; port=...; name=backend/server; node=...; weight=1/2; scur=13/22; qcur=0``.
"""

import json
import os
import signal
import socket
import time

import pytest

from hacheck.lb_view import PUBLISH_INTERVAL
from tests.conftest import children, http_request, wait_until
from tests.test_metrics import scrape_daemon, total

HEADER = "X-Haproxy-Server-State"


def server_state(state="UP", node="lb1", name="be_web/srv1", port=8080, scur="0/0", weight="1/1", qcur="0",
                 address="127.0.0.1"):
    return (f"{state}; address={address}; port={port}; name={name}; node={node}; weight={weight}; "
            f"scur={scur}; qcur={qcur}")


def report(daemon, service="web", url_port=8080, **fields):
    """One check as a load balancer sends it: /spool answers from the downtimes alone."""
    status, body, _ = daemon.get(f"/spool/{service}/{url_port}", headers={HEADER: server_state(**fields)})
    assert status == 200, body


def view(daemon, service=None):
    status, body, headers = daemon.get("/status/lb" + (f"?service={service}" if service else ""))
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def listed(daemon, service=None):
    return [(entry["node"], entry["backend"], entry["server"], entry["state"], entry["transition"])
            for entry in view(daemon, service)["load_balancers"]]


def test_a_report_is_listed_with_what_its_sender_said(hacheck_daemon):
    daemon = hacheck_daemon()
    assert view(daemon)["load_balancers"] == []
    before = time.time()
    # The header's port= names the port whose downtimes the check consults: the view keeps that one.
    report(daemon, url_port=3333, state="UP 2/3", port=8081, weight="1/2", scur="13/22", qcur="4")
    after = time.time()
    answer = view(daemon)
    assert answer["window_seconds"] == 60
    assert after <= answer["now"] <= time.time()
    (entry,) = answer["load_balancers"]
    seen = entry.pop("seen")
    assert before <= seen <= after
    assert entry == {"node": "lb1", "backend": "be_web", "server": "srv1", "service": "web", "port": 8081,
                     "host": None, "state": "UP", "transition": "2/3", "weight": "1/2", "scur": 13, "qcur": 4}


def test_the_last_report_of_each_sender_wins_and_a_service_can_be_asked_alone(hacheck_daemon):
    daemon = hacheck_daemon()
    report(daemon, node="lb1", state="UP")
    report(daemon, node="lb2", state="UP 1/2")
    report(daemon, node="lb1", state="DOWN")
    report(daemon, service="db", node="lb1", name="be_db/db1", state="DOWN 1/2")
    assert listed(daemon) == [("lb1", "be_db", "db1", "DOWN", "1/2"), ("lb1", "be_web", "srv1", "DOWN", None),
                              ("lb2", "be_web", "srv1", "UP", "1/2")]
    assert listed(daemon, "web") == [("lb1", "be_web", "srv1", "DOWN", None), ("lb2", "be_web", "srv1", "UP", "1/2")]
    assert listed(daemon, "nothing") == []
    # A check route records as /spool does, with the target the header names.
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        status, body, _ = daemon.get(f"/tcp/web/{port}", headers={HEADER: server_state(node="lb3", port=port)})
        assert status == 200, body
    (entry,) = [entry for entry in view(daemon)["load_balancers"] if entry["node"] == "lb3"]
    assert (entry["service"], entry["port"], entry["host"]) == ("web", port, None)


@pytest.mark.parametrize("header", [
    "address=127.0.0.1; port=8080; name=be_web/srv1; node=lb1",  # no state word
    "UP; address=127.0.0.1; port=8080; name=be_web/srv1",  # no node
    "UP; address=127.0.0.1; port=8080; name=be_web_srv1; node=lb1",  # a name without "/"
    "UP; name=be_web/srv1; node=lb1; node=lb2",  # two nodes
    "UP; name=be_web/srv1; node=" + "n" * 300,  # not a name HAProxy sends
    "UP 1/2/3; name=be_web/srv1; node=lb1",  # not a transition count
    "",
])
def test_a_header_that_is_not_a_report_is_left_out_and_the_check_answered(hacheck_daemon, header):
    daemon = hacheck_daemon()
    status, body, _ = daemon.get("/spool/web/8080", headers={HEADER: header})
    assert (status, body) == (200, "")
    assert view(daemon)["load_balancers"] == []
    report(daemon)  # and a good one after it is kept
    assert listed(daemon) == [("lb1", "be_web", "srv1", "UP", None)]


def test_reports_older_than_the_window_are_forgotten(hacheck_daemon):
    daemon = hacheck_daemon(config={"lb_view_window": 1.5})
    report(daemon, node="lb1")
    report(daemon, node="lb2")
    assert [entry[0] for entry in listed(daemon)] == ["lb1", "lb2"]
    time.sleep(0.8)
    report(daemon, node="lb2")
    wait_until(lambda: [entry[0] for entry in listed(daemon)] == ["lb2"], timeout=3,
               what="lb1's report to leave the window")
    wait_until(lambda: listed(daemon) == [], timeout=3, what="lb2's report to leave the window")


def test_at_most_lb_view_max_entries_are_kept_the_least_recent_going_first(hacheck_daemon):
    daemon = hacheck_daemon(config={"lb_view_max_entries": 5})
    for number in range(8):
        report(daemon, node=f"lb{number}")
    assert [entry[0] for entry in listed(daemon)] == ["lb3", "lb4", "lb5", "lb6", "lb7"]
    report(daemon, node="lb3", state="DOWN")  # reported again: now the most recent
    report(daemon, node="lb8")
    assert [entry[0] for entry in listed(daemon)] == ["lb3", "lb5", "lb6", "lb7", "lb8"]
    samples = scrape_daemon(daemon)
    assert len([name for name, _, _ in samples if name == "hacheck_lb_server_up"]) == 5
    # A reload that lowers the bound lets the least recently reported go at once.
    daemon.config_path.write_text("lb_view_max_entries: 2\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: [entry[0] for entry in listed(daemon)] == ["lb3", "lb8"], what="the reload")


def test_metrics_show_each_report(hacheck_daemon):
    daemon = hacheck_daemon()
    report(daemon, node="lb1", state="UP 1/2", scur="7/9")  # counting towards DOWN: still sent traffic
    report(daemon, node="lb2", state="DOWN", scur="0/9")
    report(daemon, node="lb3", state="NOLB", scur="2/9")
    samples = scrape_daemon(daemon)
    up = {labels["node"]: value for name, labels, value in samples if name == "hacheck_lb_server_up"}
    sessions = {labels["node"]: value for name, labels, value in samples if name == "hacheck_lb_server_sessions"}
    assert up == {"lb1": 1, "lb2": 0, "lb3": 0}
    assert sessions == {"lb1": 7, "lb2": 0, "lb3": 2}
    assert total(samples, "hacheck_lb_server_up", backend="be_web", server="srv1") == 1


def report_on_connections_of_their_own(daemon, count: int = 30) -> list:
    """``count`` load balancers report, each on a connection of its own (the kernel spreads them over the
    workers), until the view lists them all and every worker has shared what it received; returns their
    node names."""
    nodes = [f"lb{number:02}" for number in range(count)]
    for node in nodes:
        status, _, _ = http_request(daemon.port, "/spool/web/8080", headers={HEADER: server_state(node=node)})
        assert status == 200
    wait_until(lambda: [entry[0] for entry in listed(daemon)] == nodes, timeout=5, what="every report in the view")
    # A worker lists its own reports at once and shares them within PUBLISH_INTERVAL (the lag the view allows
    # between workers): the listing above may have come from a worker whose reports the other does not have yet.
    time.sleep(5 * PUBLISH_INTERVAL)
    return nodes


def test_two_workers_show_one_view(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    nodes = report_on_connections_of_their_own(daemon)
    # Whichever worker answers (a connection each), the same view: also when it received none of them.
    for _ in range(12):
        assert [entry[0] for entry in listed(daemon)] == nodes
        samples = scrape_daemon(daemon)
        assert sorted(labels["node"] for name, labels, _ in samples if name == "hacheck_lb_server_up") == nodes


def test_the_reports_a_killed_worker_received_stay_in_the_view(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    nodes = report_on_connections_of_their_own(daemon)
    victim = min(children(daemon.pid))
    os.kill(victim, signal.SIGKILL)  # it received about half of them
    wait_until(lambda: len(children(daemon.pid)) == 2 and victim not in children(daemon.pid),
               what="a replacement worker")
    # What the load balancers said is still what they said: the new worker and the old one both show it.
    for _ in range(12):
        assert [entry[0] for entry in listed(daemon)] == nodes
