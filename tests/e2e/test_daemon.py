"""End to end: the real ``hacheck`` process with the real operator tools, workers, signals, raw requests."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from hacheck.spool import Spool
from tests.conftest import http_request, port_open, raw_exchange, tool_argv, tool_env
from tests.e2e.support import operator_tool, threaded_upstream


def test_hadown_and_haup_change_the_answer(hacheck_daemon):
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon()
        path = f"/http/web/{port}/health"
        assert daemon.get(path)[:2] == (200, "healthy")
        operator_tool("hadown", daemon.spool_root, "-r", "deploying", "web")
        status, body, _ = daemon.get(path)
        assert status == 503
        assert body.startswith("Service web in down state since ") and body.endswith(": deploying")
        operator_tool("haup", daemon.spool_root, "web")
        assert daemon.get(path)[:2] == (200, "healthy")


def test_haproxy_style_request_http10_lowercase_state_header(hacheck_daemon):
    """What HAProxy 2.6 sends: HTTP/1.0, no Host, ``x-haproxy-server-state`` in lower case."""
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon()
        request = (f"GET /http/web/1/health HTTP/1.0\r\n"
                   f"x-haproxy-server-state: UP 2/3; address=127.0.0.1; port={port}; name=be/srv1; "
                   f"node=lb1; weight=1/1; scur=0/1; qcur=0\r\n\r\n").encode()
        answer = raw_exchange(daemon.port, request, timeout=10)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"200", answer
        assert rest.endswith(b"healthy")
        assert [path for path, _ in upstream.requests] == ["/health"]


def test_remote_spool_post_end_to_end(hacheck_daemon):
    daemon = hacheck_daemon(config={"allow_remote_spool_changes": True})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert daemon.get("/spool/web/0/x", method="POST", body="status=down&reason=remote", headers=form)[0] == 200
    assert Spool(daemon.spool_root).read("web").reason == "remote"
    assert daemon.get("/spool/web/80")[0] == 503
    assert daemon.get("/spool/web/0/x", method="POST", body="status=up", headers=form)[0] == 200
    assert daemon.get("/spool/web/80")[0] == 200


def test_recent_and_counts_end_to_end(hacheck_daemon):
    daemon = hacheck_daemon()
    daemon.get("/spool/web/80")
    daemon.get("/tcp/db/1")
    recent = json.loads(daemon.get("/recent")[1])
    assert [name for name, _ in recent["seen_services"]] == ["db", "web"]
    assert recent["seen_services"][0][1]["code"] == 503
    counts = json.loads(daemon.get("/status/count")[1])["service_access_counts"]
    assert counts == {"web": {"127.0.0.1": 1}, "db": {"127.0.0.1": 1}}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_exit_cleanly(hacheck_daemon, signum):
    daemon = hacheck_daemon()
    assert daemon.stop(signum) == 0
    assert "Traceback" not in daemon.output()


def test_request_in_flight_finishes_after_sigterm(hacheck_daemon):
    with threaded_upstream() as (port, upstream):
        upstream.delay = 1.5
        daemon = hacheck_daemon()
        answers = []
        request = threading.Thread(target=lambda: answers.append(daemon.get(f"/http/web/{port}/slow")))
        request.start()
        deadline = time.monotonic() + 10
        while not upstream.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upstream.requests, "the check never reached the upstream"
        daemon.process.send_signal(signal.SIGTERM)
        # no new connections once stopping, while the check is still running
        deadline = time.monotonic() + 1.0
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                http_request(daemon.port, "/status", timeout=2)
                time.sleep(0.05)
            except OSError:
                refused = True
        assert refused
        assert not answers
        request.join(15)
        assert answers and answers[0][:2] == (200, "healthy")
        assert daemon.stop() == 0


def worker_pids(daemon, requests=60):
    return {json.loads(daemon.get("/status")[1])["pid"] for _ in range(requests)}


def alive(pid):
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return {int(child) for child in listing.read().split()}


def started_workers(daemon, count):
    """The worker pids once ``count`` of them run (the first answers before the last has started)."""
    deadline = time.monotonic() + 15
    while len(children(daemon.pid)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return children(daemon.pid)


def test_two_workers_share_the_port_and_are_restarted(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    workers = started_workers(daemon, 2)
    assert len(workers) == 2
    assert worker_pids(daemon) == workers  # both workers answer on the one port
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = children(daemon.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    replaced = children(daemon.pid)
    assert len(replaced) == 2 and victim not in replaced
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and worker_pids(daemon, 20) != replaced:
        time.sleep(0.1)
    assert worker_pids(daemon) == replaced
    assert daemon.stop() == 0
    assert not any(alive(pid) for pid in replaced)


def test_a_stop_while_workers_are_still_being_started_stops_them_all(hacheck_daemon):
    """SIGTERM at any moment of the -n start-up, even between a fork and the worker's own handlers,
    stops every worker: none is left running with the supervisor waiting for it."""
    hung = []
    for attempt in range(30):
        daemon = hacheck_daemon(args=["-n", "3"], wait=False)
        deadline = time.monotonic() + 20
        while not port_open(daemon.port, timeout=0.05) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep((attempt % 15) * 0.005)  # somewhere during the second and third worker's start
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(10)
        except subprocess.TimeoutExpired:
            hung.append(attempt)
            subprocess.run(["pkill", "-KILL", "-P", str(daemon.pid)], check=False)
            daemon.process.kill()
            daemon.process.wait()
    assert hung == [], f"the supervisor did not stop after SIGTERM in attempts {hung}"


def test_workers_see_the_same_spool(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    operator_tool("hadown", daemon.spool_root, "-r", "all workers", "web")
    assert {daemon.get("/spool/web/80")[0] for _ in range(20)} == {503}


def test_workers_stop_when_the_supervisor_is_killed(hacheck_daemon):
    daemon = hacheck_daemon(args=["-n", "2"])
    workers = started_workers(daemon, 2)
    assert len(workers) == 2
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def test_port_downtime_expiration_and_halist(hacheck_daemon):
    daemon = hacheck_daemon()
    expiration = time.time() + 3600
    operator_tool("hadown", daemon.spool_root, "-r", "one port", "-P", "8080", "-e", str(expiration), "web")
    status, body, _ = daemon.get("/spool/web/8080")
    assert status == 503
    assert body.startswith("Service web in down state since ")
    assert f" until {expiration:f}: one port" in body
    assert daemon.get("/spool/web/8081")[0] == 200
    listing = subprocess.run(tool_argv("halist") + ["-p", str(daemon.port)], capture_output=True, text=True,
                             timeout=30, env=tool_env())
    assert listing.returncode == 0, listing.stderr
    lines = dict(line.split(" last_response=", 1) for line in listing.stdout.splitlines())
    assert json.loads(lines["web"])["code"] == 200  # the last answer was the up port
