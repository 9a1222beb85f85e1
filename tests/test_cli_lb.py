"""hastatus --lb and hadown/haup --wait against the real daemon, with test clients acting as load balancers.

Each ``LoadBalancer`` checks the daemon as HAProxy does with ``http-check send-state``: a GET of a
check route on a new connection, carrying ``X-Haproxy-Server-State`` with its node name, the
backend/server, its state and its sessions. By default it follows the answers the way HAProxy
does with ``fall 2 rise 2`` (each check carries the state from before its own answer: after a
downtime the checks say UP, UP 1/2, then DOWN); a test can force the state it sends instead, to
send what a real HAProxy sends only now and then (DOWN 1/2, UP 1/2 for a long time).
"""

import asyncio
import json
import os
import subprocess
import threading
import time
from typing import List, Optional, Tuple

import pytest
import tornado.web

from tests.conftest import http_request, tool_argv, tool_env, unused_port, wait_until

SERVER_STATE_HEADER = "X-Haproxy-Server-State"


class LoadBalancer:
    """One stand-in HAProxy checking ``service`` on ``port`` through the daemon's /spool route."""

    def __init__(self, daemon_port: int, node: str, service: str = "web", port: int = 8080,
                 backend: str = "be_web", server: str = "srv1", interval: float = 0.4, address: str = "127.0.0.1"):
        self.daemon_port, self.node, self.service, self.port = daemon_port, node, service, port
        self.address = address
        self.backend, self.server, self.interval = backend, server, interval
        self.fall = self.rise = 2
        self.up, self.streak = True, 0  # HAProxy's view: its state and the checks so far against it
        self.forced: Optional[str] = None  # a state to send instead of the one followed
        self.scur = 0
        self.sending = True
        self.sent: List[Tuple[float, str, int]] = []  # (time.monotonic(), state sent, answer code)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lb-{node}", daemon=True)

    def state(self) -> str:
        if self.forced is not None:
            return self.forced
        if self.streak == 0:
            return "UP" if self.up else "DOWN"
        return f"{'UP' if self.up else 'DOWN'} {self.streak}/{self.fall if self.up else self.rise}"

    def header(self, state: str) -> str:
        return (f"{state}; address={self.address}; port={self.port}; name={self.backend}/{self.server}; "
                f"node={self.node}; weight=1/1; scur={self.scur}/{self.scur}; qcur=0")

    def check(self) -> None:
        """One check, as HAProxy sends it: the state before the answer, then the answer moves it."""
        state = self.state()
        code = http_request(self.daemon_port, f"/spool/{self.service}/{self.port}",
                            headers={SERVER_STATE_HEADER: self.header(state)}, timeout=5)[0]
        self.sent.append((time.monotonic(), state, code))
        passed = code == 200
        if passed == self.up:
            self.streak = 0
        else:
            self.streak += 1
            if self.streak == (self.fall if self.up else self.rise):
                self.up, self.streak = passed, 0

    def start(self) -> "LoadBalancer":
        self.check()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if self.sending:
                self.check()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def first_sent(self, state: str, after: float = 0.0) -> float:
        """When this load balancer first sent ``state`` at ``after`` (time.monotonic()) or later."""
        return next(at for at, sent, _ in list(self.sent) if sent == state and at >= after)


@pytest.fixture
def load_balancers():
    """A factory of started ``LoadBalancer``s; every one is stopped after the test."""
    started = []

    def start(*args, **kwargs) -> LoadBalancer:
        balancer = LoadBalancer(*args, **kwargs).start()
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        balancer.stop()


def lb_view(daemon, query: str = "") -> dict:
    status, body, _ = http_request(daemon.port, f"/status/lb{query}")
    assert status == 200, body
    return json.loads(body)


def wait_for_nodes(daemon, *nodes: str) -> None:
    """Until three reads in a row (any worker answering) list every one of ``nodes``."""
    in_a_row = []

    def listed() -> bool:
        names = {entry["node"] for entry in lb_view(daemon)["load_balancers"]}
        in_a_row.append(set(nodes) <= names)
        return in_a_row[-3:] == [True] * 3

    wait_until(listed, f"the daemon to list {nodes}")


class Tool:
    """The tools run as subprocesses with a daemon's spool root and port."""

    def __init__(self, spool_root: str, port: int, tmp_path):
        self.spool_root, self.port = spool_root, port
        nonhumans = tmp_path / "nonhumans"
        nonhumans.write_text("")
        self.env = tool_env(HACHECK_NONHUMANS_FILE=str(nonhumans))

    def argv(self, tool: str, *args: str, port: Optional[int] = None) -> list:
        return tool_argv(tool) + ["--spool-root", self.spool_root, "-p", str(port or self.port), *args]

    def start(self, tool: str, *args: str, port: Optional[int] = None) -> subprocess.Popen:
        return subprocess.Popen(self.argv(tool, *args, port=port), env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, tool: str, *args: str, port: Optional[int] = None):
        return subprocess.run(self.argv(tool, *args, port=port), env=self.env, capture_output=True,
                              text=True, timeout=120)

    def spool_has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.spool_root, name))


def finish(process: subprocess.Popen) -> Tuple[int, str, str, float]:
    """(exit code, stdout, stderr, time.monotonic() when it ended)."""
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr, time.monotonic()


def wait_lines(stdout: str) -> dict:
    """hadown/haup --wait's lines by node: (backend/server, state, scur, seconds after the change)."""
    lines = {}
    for line in stdout.splitlines():
        node, server, state, scur, seconds = line.split("\t")
        lines[node] = (server, state, scur, float(seconds))
    return lines


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def daemon(hacheck_daemon):
    return hacheck_daemon()


@pytest.fixture
def tool(daemon, tmp_path):
    return Tool(daemon.spool_root, daemon.port, tmp_path)


# ---------------------------------------------------------------- hastatus --lb

def test_hastatus_lb_prints_each_report_and_json_the_daemons_entries(hacheck_daemon, tmp_path):
    daemon = hacheck_daemon(args=["-n", "2"])  # reports reach either worker; any worker lists them all
    tool = Tool(daemon.spool_root, daemon.port, tmp_path)
    for node, service, port, backend, state, scur in [("lb2", "web", 8080, "be_web", "UP 1/2", 0),
                                                       ("lb1", "web", 8080, "be_web", "UP", 3),
                                                       ("lb1", "api", 9090, "be_api", "DOWN", 0)]:
        balancer = LoadBalancer(daemon.port, node, service=service, port=port, backend=backend)
        balancer.forced, balancer.scur = state, scur
        balancer.check()
    wait_for_nodes(daemon, "lb1", "lb2")
    time.sleep(1.1)  # so that "seconds since its last check" is at least 1

    result = tool.run("hastatus", "--lb")
    assert (result.returncode, result.stderr) == (0, "")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:4] for row in rows] == [["lb1", "be_api/srv1", "DOWN", "0"], ["lb1", "be_web/srv1", "UP", "3"],
                                         ["lb2", "be_web/srv1", "UP 1/2", "0"]]
    assert all(1.0 <= float(row[4]) < 30 for row in rows), rows

    result = tool.run("hastatus", "--lb", "web")
    assert [line.split("\t")[:3] for line in result.stdout.splitlines()] == [
        ["lb1", "be_web/srv1", "UP"], ["lb2", "be_web/srv1", "UP 1/2"]]
    result = tool.run("hastatus", "--lb", "-P", "9090")
    assert [line.split("\t")[:3] for line in result.stdout.splitlines()] == [["lb1", "be_api/srv1", "DOWN"]]

    result = tool.run("hastatus", "--lb", "--json", "web")
    assert (result.returncode, result.stderr) == (0, "")
    assert [json.loads(line) for line in result.stdout.splitlines()] == \
        lb_view(daemon, "?service=web")["load_balancers"]
    assert [entry["node"] for entry in map(json.loads, result.stdout.splitlines())] == ["lb1", "lb2"]


def test_hastatus_lb_of_a_service_nobody_checks_and_without_a_daemon(daemon, tool):
    result = tool.run("hastatus", "--lb", "nobody")
    assert (result.returncode, result.stdout) == (0, "")
    line = one_error_line(result.stderr)
    assert "no load balancer has reported on nobody" in line and "http-check send-state" in line

    port = unused_port()
    result = tool.run("hastatus", "--lb", port=port)
    assert (result.returncode, result.stdout) == (1, "")
    assert f"cannot reach the hacheck daemon at http://127.0.0.1:{port}/status/lb" in one_error_line(result.stderr)


class CannedAnswer(tornado.web.RequestHandler):
    """What another server on the daemon's port answers, or an older daemon without the view."""

    def initialize(self, answer):
        self.answer = answer

    def get(self):
        self.set_status(self.answer["status"])
        self.write(self.answer["body"])


@pytest.mark.gen_test(timeout=60)
async def test_an_answer_that_is_not_the_view_is_one_error_line(spool_root, tmp_path):
    answer = {"status": 404, "body": "<html>404: Not Found</html>"}
    port = unused_port()
    server = tornado.web.Application([(r"/status/lb", CannedAnswer, {"answer": answer})]).listen(
        port, address="127.0.0.1")
    tool = Tool(spool_root, port, tmp_path)

    async def run(*argv):
        process = await asyncio.create_subprocess_exec(*tool.argv(*argv), env=tool.env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        return process.returncode, stdout.decode(), one_error_line(stderr.decode())

    try:
        code, stdout, line = await run("hastatus", "--lb")
        assert (code, stdout) == (1, "") and "answered HTTP 404" in line
        code, stdout, line = await run("hadown", "--wait", "-r", "deploy", "web")
        assert (code, stdout) == (1, "") and "answered HTTP 404" in line and line.endswith("the downtime is written")
        answer["status"] = 200
        for body in ("<html>not hacheck</html>", "[]", '{"load_balancers": {}}', '{"load_balancers": []}',
                     '{"load_balancers": [{"node": "lb1"}], "now": 1, "window_seconds": 60}',
                     '{"load_balancers": [], "now": "soon", "window_seconds": 60}'):
            answer["body"] = body
            code, stdout, line = await run("hastatus", "--lb")
            assert (code, stdout) == (1, "") and "did not answer with a /status/lb JSON document" in line, body
    finally:
        server.stop()


# ---------------------------------------------------------------- hadown --wait

def test_down_wait_returns_once_every_load_balancer_reported_a_state_other_than_up(
        hacheck_daemon, tmp_path, load_balancers):
    daemon = hacheck_daemon(args=["-n", "2"])
    tool = Tool(daemon.spool_root, daemon.port, tmp_path)
    lb1 = load_balancers(daemon.port, "lb1")
    lb2 = load_balancers(daemon.port, "lb2", server="srv2", interval=0.8)  # the slower one
    lb3 = load_balancers(daemon.port, "lb3", server="srv3")
    lb3.forced = "DOWN"  # down already before the downtime: that report must not count
    lb3.check()
    lb3.sending = False
    wait_for_nodes(daemon, "lb1", "lb2", "lb3")

    process = tool.start("hadown", "--wait", "-r", "deploy", "web")
    wait_until(lambda: tool.spool_has("web"), "hadown to write the downtime")
    changed = time.monotonic()
    time.sleep(1.5)
    assert process.poll() is None  # lb3 has not checked since the change
    lb3.sending = True
    code, stdout, stderr, ended = finish(process)

    assert (code, stderr) == (0, "")
    lines = wait_lines(stdout)
    assert {node: line[:2] for node, line in lines.items()} == {
        "lb1": ("be_web/srv1", "DOWN"), "lb2": ("be_web/srv2", "DOWN"), "lb3": ("be_web/srv3", "DOWN")}
    assert lines["lb3"][3] >= 1.4
    for balancer in (lb1, lb2):
        # Their checks said UP, then UP 1/2 (still routing traffic), then DOWN: only that one counted.
        assert balancer.first_sent("UP 1/2", after=changed) < balancer.first_sent("DOWN", after=changed) < ended
        assert lines[balancer.node][3] >= 0.0
    assert lb3.first_sent("DOWN", after=changed + 1.5) < ended
    assert tool.spool_has("web")


def test_down_wait_idle_waits_until_the_sessions_are_gone(daemon, tool, load_balancers):
    lb1 = load_balancers(daemon.port, "lb1")
    lb1.scur = 2
    process = tool.start("hadown", "--wait", "--idle", "-r", "deploy", "web")
    wait_until(lambda: tool.spool_has("web"), "hadown to write the downtime")
    changed = time.monotonic()
    wait_until(lambda: any(at > changed and state == "DOWN" for at, state, _ in lb1.sent), "lb1 to say DOWN")
    time.sleep(1.0)
    assert process.poll() is None  # DOWN, but 2 sessions still open
    lb1.scur = 0
    idle = time.monotonic()
    code, stdout, stderr, ended = finish(process)
    assert (code, stderr) == (0, "")
    assert wait_lines(stdout)["lb1"][:3] == ("be_web/srv1", "DOWN", "0")
    assert idle < ended < idle + 5


def test_down_wait_timeout_names_what_still_routes_traffic(daemon, tool, load_balancers):
    load_balancers(daemon.port, "lb1")
    lb2 = load_balancers(daemon.port, "lb2", server="srv2")
    lb2.forced = "UP 1/2"  # one failed check short of DOWN, for ever: still routing traffic
    started = time.monotonic()
    result = tool.run("hadown", "--wait", "--timeout", "3", "-r", "deploy", "web")
    took = time.monotonic() - started
    assert result.returncode == 1, result
    assert 3 <= took < 15
    assert list(wait_lines(result.stdout)) == ["lb1"]
    line = one_error_line(result.stderr)
    assert line.startswith("hadown: error: timed out after 3 s; still routing traffic: lb2 be_web/srv2 (UP 1/2, ")
    assert "lb1" not in line and line.endswith("(the downtime is written)")
    assert tool.spool_has("web")


def test_down_wait_narrowed_by_port(daemon, tool, load_balancers):
    lb1 = load_balancers(daemon.port, "lb1", port=8080)
    lb2 = load_balancers(daemon.port, "lb2", port=8081, server="srv2")
    result = tool.run("hadown", "--wait", "--timeout", "30", "-P", "8080", "-r", "deploy", "web")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert {node: line[1] for node, line in wait_lines(result.stdout).items()} == {"lb1": "DOWN"}
    assert not lb1.up and lb2.up and lb2.state() == "UP"


def test_down_wait_narrowed_by_host_and_port(daemon, tool, load_balancers):
    # Two servers on one port, on two hosts (send-state's address=): -H takes the one on that host only.
    here = load_balancers(daemon.port, "lb1", port=8080)
    there = load_balancers(daemon.port, "lb2", port=8080, server="srv2", address="192.0.2.10")
    result = tool.run("hadown", "--wait", "--timeout", "30", "-P", "8080", "-H", "192.0.2.10", "-r", "deploy", "web")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert {node: line[:2] for node, line in wait_lines(result.stdout).items()} == {"lb2": ("be_web/srv2", "DOWN")}
    assert not there.up and here.up and here.state() == "UP"


def test_wait_exits_3_when_no_load_balancer_reports(daemon, tool, load_balancers):
    result = tool.run("hadown", "--wait", "-r", "deploy", "web")
    assert (result.returncode, result.stdout) == (3, "")
    line = one_error_line(result.stderr)
    assert "no load balancer has reported on web" in line and "'http-check send-state'" in line
    assert line.endswith("(the downtime is written)") and tool.spool_has("web")
    result = tool.run("haup", "--wait", "web")
    assert (result.returncode, result.stdout) == (3, "")
    assert one_error_line(result.stderr).endswith("(the downtime is removed)") and not tool.spool_has("web")

    load_balancers(daemon.port, "lb1")
    result = tool.run("hadown", "--wait", "-r", "deploy", "web", "api")
    assert (result.returncode, result.stdout) == (3, "")
    assert "no load balancer has reported on api in" in one_error_line(result.stderr)
    result = tool.run("hadown", "--wait", "-P", "9999", "-r", "deploy", "web")
    assert (result.returncode, result.stdout) == (3, "")
    assert "no load balancer has reported on web (port 9999) in" in one_error_line(result.stderr)


def test_wait_without_a_daemon_says_the_change_is_made(daemon, tool):
    port = unused_port()
    result = tool.run("hadown", "--wait", "-r", "deploy", "web", port=port)
    assert (result.returncode, result.stdout) == (1, "")
    line = one_error_line(result.stderr)
    assert f"cannot reach the hacheck daemon at http://127.0.0.1:{port}/status/lb" in line
    assert line.endswith("the downtime is written") and tool.spool_has("web")


def test_a_load_balancer_that_stops_reporting_no_longer_blocks_once_out_of_the_window(
        hacheck_daemon, tmp_path, load_balancers):
    daemon = hacheck_daemon(config={"lb_view_window": 2})
    tool = Tool(daemon.spool_root, daemon.port, tmp_path)
    load_balancers(daemon.port, "lb1")
    lb2 = load_balancers(daemon.port, "lb2", server="srv2")
    process = tool.start("hadown", "--wait", "--timeout", "30", "-r", "deploy", "web")
    wait_until(lambda: tool.spool_has("web"), "hadown to write the downtime")
    lb2.sending = False  # killed: HAProxy gone, its last report said UP
    time.sleep(0.5)  # a check already on its way arrives
    last_report = lb2.sent[-1][0]
    code, stdout, stderr, ended = finish(process)
    assert code == 0, stderr
    assert list(wait_lines(stdout)) == ["lb1"]
    assert one_error_line(stderr) == "hadown: note: lb2 be_web/srv2 has not reported for 2 s: no longer waited for"
    assert ended > last_report + 2


# ---------------------------------------------------------------- haup --wait

def test_up_wait_returns_once_every_load_balancer_reported_plain_up(daemon, tool, load_balancers):
    assert tool.run("hadown", "-r", "deploy", "web").returncode == 0
    lb1 = load_balancers(daemon.port, "lb1")
    lb2 = load_balancers(daemon.port, "lb2", server="srv2")
    lb3 = load_balancers(daemon.port, "lb3", server="srv3")
    lb2.forced = "DOWN"
    lb3.forced = "UP"  # up already before the change: that report must not count
    lb3.check()
    lb3.sending = False
    wait_until(lambda: not lb1.up and lb1.state() == "DOWN", "lb1 to see web DOWN")

    process = tool.start("haup", "--wait", "web")
    wait_until(lambda: not tool.spool_has("web"), "haup to remove the downtime")
    changed = time.monotonic()
    for state in ("DOWN 1/2", "UP 1/2"):  # neither routes traffic back yet
        lb2.forced = state
        time.sleep(1.0)
        assert process.poll() is None
    lb2.forced = "UP"
    lb3.sending = True
    back = time.monotonic()
    code, stdout, stderr, ended = finish(process)

    assert (code, stderr) == (0, "")
    lines = wait_lines(stdout)
    assert {node: line[:2] for node, line in lines.items()} == {
        "lb1": ("be_web/srv1", "UP"), "lb2": ("be_web/srv2", "UP"), "lb3": ("be_web/srv3", "UP")}
    assert lb1.first_sent("DOWN 1/2", after=changed) < lb1.first_sent("UP", after=changed) < ended
    assert lb2.first_sent("UP", after=back) < ended and lines["lb2"][3] >= 1.9
    assert lb3.first_sent("UP", after=back) < ended and lines["lb3"][3] >= 1.9


# ---------------------------------------------------------------- usage

@pytest.mark.parametrize("tool_name, args", [
    ("hastatus", ["--wait", "web"]),
    ("hashowdowned", ["--wait"]),
    ("halist", ["--timeout", "5"]),
    ("hadown", ["--timeout", "5", "web"]),  # --timeout without --wait
    ("hadown", ["--idle", "web"]),
    ("haup", ["--wait", "--idle", "web"]),
    ("hadown", ["--lb", "web"]),
    ("hastatus", ["--lb", "--effective"]),
    ("hadown", ["--wait", "--timeout", "0", "web"]),
    ("hadown", ["--wait", "--timeout", "-1", "web"]),
    ("hadown", ["--wait", "--timeout", "nan", "web"]),
    ("hadown", ["--wait", "--timeout", "inf", "web"]),
    ("hadown", ["--wait", "--timeout", "soon", "web"]),
    ("hadown", ["--wait"]),
])
def test_usage_errors_exit_2_with_one_line_and_change_nothing(spool_root, tmp_path, tool_name, args):
    tool = Tool(spool_root, unused_port(), tmp_path)
    result = tool.run(tool_name, "-r", "deploy", *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert "usage:" in result.stderr
    one_error_line(result.stderr)
    assert os.listdir(spool_root) == []
