"""What every load balancer thinks, with three real HAProxys and a real hacheck (``-n 2``).

lb1 and lb2 check every 200 ms, lb3 every 1.2 s, each with ``http-check send-state`` and
``fall 2 rise 2`` (tests/e2e/lb_support.py). Each check carries HAProxy's state from before its own
answer, so after ``hadown`` the checks say UP, UP 1/2, then DOWN: ``hadown --wait`` can only
return one interval after HAProxy went DOWN, and these tests check that it never returns before
every HAProxy's ``show stat`` says so. The load balancers, the upstream and the daemon are shared by
the module; each test starts with ``web`` up everywhere.
"""

import time

import pytest

from tests.conftest import http_request, start_hacheck, wait_until
from tests.e2e.lb_support import (
    BACKEND,
    FAST_INTER,
    NODES,
    SERVER,
    SERVICE,
    SLOW_INTER,
    HoldingUpstream,
    StatusWatcher,
    entries_by_node,
    lb_entries,
    lb_series,
    load_balancers,
    run_tool,
    send_forged_reports,
    start_tool,
    state_text,
    wait_for_reports,
    wait_lines,
)

WINDOW = 3.0  # lb_view_window: a killed load balancer leaves the view this long after its last check
MAX_ENTRIES = 100  # lb_view_max_entries
# From hadown/haup --wait's change until the check that confirms it reaches the tool, at most: the first
# check within one interval says the old state, the second starts HAProxy's change, the third carries
# it; then the daemon's workers share it (0.2 s) and the tool polls (0.25 s).
CONFIRM_SLACK = 1.5


class Setup:
    def __init__(self, daemon, upstream, fleet):
        self.daemon, self.upstream, self.fleet = daemon, upstream, fleet


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with HoldingUpstream() as upstream:
        daemon = start_hacheck(tmp_path_factory.mktemp("daemon"), args=["-n", "2"],
                               config={"lb_view_window": WINDOW, "lb_view_max_entries": MAX_ENTRIES})
        try:
            with load_balancers(tmp_path_factory.mktemp("lb"), daemon.port, upstream.port) as fleet:
                yield Setup(daemon, upstream, fleet)
        finally:
            daemon.stop()


@pytest.fixture
def lbs(setup):
    """The shared setup with ``web`` up: every HAProxy shows UP and last reported plain UP."""
    result = run_tool(setup.daemon, "haup", SERVICE)
    assert result.returncode == 0, result.stderr
    setup.fleet.wait_all("UP")
    wait_for_reports(setup.daemon, state="UP")
    return setup


def finish(process):
    """(exit code, stdout, stderr, time.monotonic() when it ended)."""
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr, time.monotonic()


def test_the_view_lists_every_load_balancer_as_its_show_stat_says(lbs):
    with lbs.fleet["lb1"].connect():  # one session through lb1: scur 1 there, 0 on the others
        wait_until(lambda: lbs.fleet["lb1"].row()["scur"] == "1", "lb1's show stat to count the connection")
        time.sleep(SLOW_INTER + 0.5)  # every node has checked since
        entries = wait_until(lambda: entries_by_node(lbs.daemon).get("lb1", {}).get("scur") == 1
                             and entries_by_node(lbs.daemon), "lb1 to report scur 1")
        rows = {node: lbs.fleet[node].row() for node in NODES}
        listed = run_tool(lbs.daemon, "hastatus", "--lb", SERVICE)
        scraped = http_request(lbs.daemon.port, "/metrics")[1]

    assert set(entries) == set(NODES)
    now = time.time()
    for node, entry in entries.items():
        row = rows[node]
        assert (entry["backend"], entry["server"]) == (row["pxname"], row["svname"]) == (BACKEND, SERVER)
        assert (state_text(entry), entry["scur"], entry["qcur"]) == (row["status"], int(row["scur"]),
                                                                     int(row["qcur"])), node
        assert entry["weight"] == f"{row['weight']}/{row['weight']}"  # one server: its weight of the backend's
        assert (entry["service"], entry["port"], entry["host"]) == (SERVICE, lbs.upstream.port, None)
        assert now - WINDOW <= entry["seen"] <= now
    assert [entry["scur"] for _, entry in sorted(entries.items())] == [1, 0, 0]

    assert (listed.returncode, listed.stderr) == (0, "")
    assert [line.split("\t")[:4] for line in listed.stdout.splitlines()] == [
        [node, f"{BACKEND}/{SERVER}", "UP", scur] for node, scur in (("lb1", "1"), ("lb2", "0"), ("lb3", "0"))]
    series = lb_series(scraped)
    for node, scur in (("lb1", 1), ("lb2", 0), ("lb3", 0)):
        assert series[("hacheck_lb_server_up", node, BACKEND, SERVER)] == 1
        assert series[("hacheck_lb_server_sessions", node, BACKEND, SERVER)] == scur


def test_hadown_wait_returns_once_every_haproxy_shows_down_and_not_before_the_slowest(lbs):
    with StatusWatcher(lbs.fleet, "DOWN") as watcher:
        process = start_tool(lbs.daemon, "hadown", "--wait", "-r", "deploy 1234", SERVICE)
        code, stdout, stderr, ended = finish(process)
        at_exit = lbs.fleet.statuses()

    assert (code, stderr) == (0, "")
    assert at_exit == {node: "DOWN" for node in NODES}
    assert watcher.first["lb1"] < watcher.first["lb3"] <= ended  # the slow one went DOWN last
    assert ended - watcher.first["lb3"] < SLOW_INTER + CONFIRM_SLACK  # its next check confirmed it
    lines = wait_lines(stdout)
    assert {node: line[:3] for node, line in lines.items()} == {
        node: [f"{BACKEND}/{SERVER}", "DOWN", "0"] for node in NODES}
    assert float(lines["lb3"][3]) > float(lines["lb1"][3])


def test_haup_wait_returns_once_every_haproxy_shows_up_and_not_before_the_slowest(lbs):
    assert run_tool(lbs.daemon, "hadown", "--wait", "-r", "deploy 1234", SERVICE).returncode == 0

    with StatusWatcher(lbs.fleet, "UP") as watcher:
        process = start_tool(lbs.daemon, "haup", "--wait", SERVICE)
        code, stdout, stderr, ended = finish(process)
        at_exit = lbs.fleet.statuses()

    assert (code, stderr) == (0, "")
    assert at_exit == {node: "UP" for node in NODES}
    assert watcher.first["lb1"] < watcher.first["lb3"] <= ended
    assert ended - watcher.first["lb3"] < SLOW_INTER + CONFIRM_SLACK
    assert {node: line[:2] for node, line in wait_lines(stdout).items()} == {
        node: [f"{BACKEND}/{SERVER}", "UP"] for node in NODES}


def test_hadown_drain_wait_returns_once_every_haproxy_shows_nolb(lbs):
    with StatusWatcher(lbs.fleet, "NOLB") as watcher:
        process = start_tool(lbs.daemon, "hadown", "--drain", "--wait", "-r", "deploy 1234", SERVICE)
        code, stdout, stderr, ended = finish(process)
        at_exit = lbs.fleet.statuses()

    assert (code, stderr) == (0, "")
    assert at_exit == {node: "NOLB" for node in NODES}
    assert watcher.first["lb3"] <= ended
    assert {node: line[1] for node, line in wait_lines(stdout).items()} == {node: "NOLB" for node in NODES}


def test_a_timeout_shorter_than_the_slow_interval_names_the_slow_node_still_up(lbs):
    process = start_tool(lbs.daemon, "hadown", "--wait", "--timeout", "0.5", "-r", "deploy", SERVICE)
    code, stdout, stderr, _ = finish(process)
    lb3_at_exit = lbs.fleet["lb3"].status()

    assert code == 1
    # Two checks 1.2 s apart are needed before lb3 goes DOWN: it still routes traffic (UP or UP 1/2).
    assert lb3_at_exit.split()[0] == "UP"
    [line] = stderr.splitlines()
    assert "timed out after 0.5 s; still routing traffic: " in line and line.endswith("(the downtime is written)")
    assert f"lb3 {BACKEND}/{SERVER} (UP" in line
    assert "lb3" not in wait_lines(stdout)


def test_idle_waits_while_a_connection_through_lb1_is_open(lbs):
    lb1 = lbs.fleet["lb1"]
    connection = lb1.connect()
    try:
        wait_until(lambda: entries_by_node(lbs.daemon)["lb1"]["scur"] == 1, "lb1 to report the session")
        process = start_tool(lbs.daemon, "hadown", "--wait", "--idle", "-r", "deploy", SERVICE)
        lbs.fleet.wait_all("DOWN")
        wait_until(lambda: entries_by_node(lbs.daemon)["lb1"]["state"] == "DOWN", "lb1 to report DOWN")
        time.sleep(SLOW_INTER + CONFIRM_SLACK)  # lb3 has confirmed; lb1 reported DOWN with scur 1 a few times
        assert process.poll() is None, process.communicate()
        assert entries_by_node(lbs.daemon)["lb1"]["scur"] == 1
        assert lb1.row()["scur"] == "1"
    finally:
        closed = time.monotonic()
        connection.close()  # the upstream closes its side at once: the session ends

    code, stdout, stderr, ended = finish(process)
    assert (code, stderr) == (0, "")
    assert ended - closed < 2 * FAST_INTER + CONFIRM_SLACK
    assert lb1.row()["scur"] == "0"
    lines = wait_lines(stdout)
    assert {node: line[1:3] for node, line in lines.items()} == {node: ["DOWN", "0"] for node in NODES}
    assert float(lines["lb1"][3]) > SLOW_INTER  # confirmed only after the connection closed


def test_a_killed_load_balancer_leaves_the_view_after_the_window_and_then_does_not_block_wait(lbs):
    lb4 = lbs.fleet.start("lb4", FAST_INTER)
    lb4.wait_for("UP")
    wait_for_reports(lbs.daemon, ["lb4"], state="UP")
    lb4.kill()
    killed = time.monotonic()

    process = start_tool(lbs.daemon, "hadown", "--wait", "-r", "deploy", SERVICE)
    assert "lb4" in entries_by_node(lbs.daemon)  # still within the window
    code, stdout, stderr, ended = finish(process)

    assert code == 0, stderr
    assert stderr.strip() == f"hadown: note: lb4 {BACKEND}/{SERVER} has not reported for {WINDOW:g} s: " \
                             "no longer waited for"
    assert set(wait_lines(stdout)) == set(NODES)
    assert WINDOW - 0.5 <= ended - killed < WINDOW + CONFIRM_SLACK
    assert "lb4" not in entries_by_node(lbs.daemon)


def test_a_service_nobody_checks_exits_3(lbs):
    for tool, args in (("hadown", ("--wait", "-r", "deploy")), ("haup", ("--wait",))):
        result = run_tool(lbs.daemon, tool, *args, "nobody")
        assert (result.returncode, result.stdout) == (3, "")
        [line] = result.stderr.splitlines()
        assert "no load balancer has reported on nobody" in line and "http-check send-state" in line


def test_forged_node_names_leave_at_most_max_entries_and_the_real_nodes_come_back(lbs):
    codes = send_forged_reports(lbs.daemon.port, 20000)
    flooded = time.monotonic()
    assert len(codes) == 20000 and set(codes) == {200}

    for _ in range(6):  # either worker may answer: each must hold the bound
        entries = lb_entries(lbs.daemon)
        assert 0 < len(entries) <= MAX_ENTRIES
        assert any(entry["node"].startswith("forged-") for entry in entries)  # the flood was recorded
        names = [key[0] for key in lb_series(http_request(lbs.daemon.port, "/metrics")[1])]
        assert 0 < names.count("hacheck_lb_server_up") <= MAX_ENTRIES
        assert names.count("hacheck_lb_server_sessions") <= MAX_ENTRIES

    wait_for_reports(lbs.daemon, timeout=SLOW_INTER + CONFIRM_SLACK)
    assert time.monotonic() - flooded < SLOW_INTER + CONFIRM_SLACK + 1.0
