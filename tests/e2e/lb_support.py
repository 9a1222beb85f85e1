"""Three real HAProxys checking one server through one real hacheck with ``http-check send-state``.

What the load balancers' view (``GET /status/lb``), ``hastatus --lb`` and ``hadown/haup --wait`` are
tested against (tests/e2e/test_lb_view.py). Each HAProxy runs with ``global node lb1`` (``lb2``,
``lb3``), a stats socket of its own and one backend ``be_web`` with one server ``srv1``: the test's
``HoldingUpstream``, checked through hacheck as ``GET /tcp/web/<upstream port>`` with ``fall 2 rise 2``.
lb1 and lb2 check every 200 ms, lb3 every 1.2 s: the slow one a wait has to wait for; a drain's 404
puts the server in NOLB (``http-check disable-on-404``). Each listens
in ``mode tcp`` on a frontend port of its own, so a test can hold a connection through it to the
upstream (HAProxy counts it in ``scur`` until both directions have ended).
"""

import contextlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from tests.conftest import http_request, tool_argv, tool_env, unused_port, wait_until
from tests.e2e.haproxy_support import HAProxy, backend, defaults_section, run_haproxy
from tests.e2e.support import CountingListener

FAST_INTER = 0.2  # seconds between lb1's (and lb2's) checks
SLOW_INTER = 1.2  # lb3's
NODES = {"lb1": FAST_INTER, "lb2": FAST_INTER, "lb3": SLOW_INTER}
BACKEND, SERVER, SERVICE = "be_web", "srv1", "web"
# How long a connection through a load balancer may stay silent: longer than any test holds one.
IDLE_TIMEOUT = "60s"
SERVER_STATE_HEADER = "X-Haproxy-Server-State"


class HoldingUpstream(CountingListener):
    """The server behind the load balancers (a TCP listener thread; ``with`` starts and stops it).

    Each connection is held until its client ends its side, then closed: a connection through
    HAProxy ends in both directions as soon as the test closes its end.
    """

    def handle(self, connection) -> None:
        threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    @staticmethod
    def _hold(connection) -> None:
        with connection:
            connection.settimeout(120)
            try:
                while connection.recv(4096):
                    pass
            except OSError:
                pass  # reset or timed out: closed all the same


class LoadBalancer:
    """One running HAProxy of the fleet: its node name, check interval and frontend port."""

    def __init__(self, node: str, inter: float, frontend_port: int, haproxy: HAProxy):
        self.node, self.inter, self.frontend_port, self.haproxy = node, inter, frontend_port, haproxy

    def row(self) -> dict:
        """``show stat``'s line for the server."""
        return self.haproxy.server(BACKEND, SERVER)

    def status(self) -> str:
        return self.row()["status"]

    def wait_for(self, status: str) -> dict:
        return self.haproxy.wait_for(BACKEND, SERVER, status)

    def connect(self) -> socket.socket:
        """A connection through this load balancer to the upstream (close it to end the session)."""
        return socket.create_connection(("127.0.0.1", self.frontend_port), timeout=10)

    def kill(self) -> None:
        """SIGKILL: it stops checking at once, as a load balancer that crashed or lost its network."""
        self.haproxy.process.kill()
        self.haproxy.process.wait(10)


def haproxy_sections(frontend_port: int, upstream_port: int, hacheck_port: int, inter: float) -> str:
    """A frontend in mode tcp to ``be_web``, whose one server is checked through hacheck with send-state."""
    check = backend(BACKEND, f"/tcp/{SERVICE}/{upstream_port}", upstream_port, hacheck_port,
                    extra="http-check send-state\n    http-check disable-on-404", server=SERVER,
                    inter=f"{round(inter * 1000)}ms")
    return f"""
{defaults_section("tcp", IDLE_TIMEOUT)}
frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend {BACKEND}
{check}
"""


class Fleet:
    """The running load balancers by node; ``start`` adds one (stopped when the fleet's ``with`` ends)."""

    def __init__(self, directory: Path, hacheck_port: int, upstream_port: int, stack: contextlib.ExitStack):
        self.directory, self.hacheck_port, self.upstream_port = directory, hacheck_port, upstream_port
        self._stack = stack
        self.balancers: Dict[str, LoadBalancer] = {}

    def start(self, node: str, inter: float) -> LoadBalancer:
        own = self.directory / node
        own.mkdir()
        frontend_port = unused_port()
        sections = haproxy_sections(frontend_port, self.upstream_port, self.hacheck_port, inter)
        haproxy = self._stack.enter_context(run_haproxy(own, sections, global_lines=f"node {node}"))
        self.balancers[node] = LoadBalancer(node, inter, frontend_port, haproxy)
        return self.balancers[node]

    def __getitem__(self, node: str) -> LoadBalancer:
        return self.balancers[node]

    def statuses(self, nodes: Optional[Iterable[str]] = None) -> Dict[str, str]:
        """What each one's ``show stat`` says of the server now (``UP``, ``UP 1/2``, ``DOWN``, ...)."""
        return {node: self.balancers[node].status() for node in (nodes or NODES)}

    def wait_all(self, status: str, nodes: Optional[Iterable[str]] = None) -> None:
        for node in nodes or NODES:
            self.balancers[node].wait_for(status)


@contextlib.contextmanager
def load_balancers(directory: Path, hacheck_port: int, upstream_port: int, nodes: Dict[str, float] = NODES):
    """The fleet of ``nodes`` (name -> check interval), each HAProxy in a folder of ``directory``."""
    with contextlib.ExitStack() as stack:
        fleet = Fleet(directory, hacheck_port, upstream_port, stack)
        for node, inter in nodes.items():
            fleet.start(node, inter)
        yield fleet


class StatusWatcher:
    """Polls every load balancer's ``show stat`` (every 20 ms, in a thread) and keeps when each first
    showed ``status`` (time.monotonic()); ``with`` starts and stops it."""

    def __init__(self, fleet: Fleet, status: str, nodes: Iterable[str] = NODES):
        self.fleet, self.status, self.nodes = fleet, status, list(nodes)
        self.first: Dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for node, status in self.fleet.statuses(self.nodes).items():
                if status == self.status:
                    self.first.setdefault(node, time.monotonic())
            self._stop.wait(0.02)

    def __enter__(self) -> "StatusWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)


# --- the daemon's view and the operator tools --------------------------------------


def lb_entries(daemon, service: Optional[str] = None) -> List[dict]:
    """``GET /status/lb``'s entries (``?service=`` when given)."""
    status, body, _ = http_request(daemon.port, "/status/lb" + (f"?service={service}" if service else ""))
    assert status == 200, body
    return json.loads(body)["load_balancers"]


def entries_by_node(daemon) -> Dict[str, dict]:
    """The entries on the fleet's server, by node (one each)."""
    return {entry["node"]: entry for entry in lb_entries(daemon)
            if (entry["backend"], entry["server"]) == (BACKEND, SERVER)}


def wait_for_reports(daemon, nodes: Iterable[str] = NODES, state: Optional[str] = None,
                     timeout: float = 15.0) -> Dict[str, dict]:
    """The entries by node once every one of ``nodes`` is listed (in state ``state``: ``UP``, ``UP 1/2``)."""
    def listed():
        entries = entries_by_node(daemon)
        wanted = all(node in entries and (state is None or state_text(entries[node]) == state) for node in nodes)
        return entries if wanted else None

    return wait_until(listed, f"{list(nodes)} in /status/lb" + (f" with state {state}" if state else ""), timeout)


def state_text(entry: dict) -> str:
    """An entry's state as HAProxy sent it and shows it: ``UP``, ``UP 1/2``, ``DOWN``."""
    return entry["state"] if entry["transition"] is None else f"{entry['state']} {entry['transition']}"


def tool_command(daemon, tool: str, *args: str) -> List[str]:
    """``tool`` (``hadown``, ``haup``, ``hastatus``) on the daemon's spool root and port."""
    return tool_argv(tool) + ["--spool-root", daemon.spool_root, "-p", str(daemon.port), *args]


def start_tool(daemon, tool: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(tool_command(daemon, tool, *args), env=tool_env(SUDO_USER="tester"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_tool(daemon, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(tool_command(daemon, tool, *args), env=tool_env(SUDO_USER="tester"), text=True,
                          capture_output=True, timeout=timeout)


def wait_lines(stdout: str) -> Dict[str, List[str]]:
    """hadown/haup --wait's lines by node: [backend/server, state, scur, seconds after the change]."""
    return {line.split("\t")[0]: line.split("\t")[1:] for line in stdout.splitlines()}


# --- forged reports -----------------------------------------------------------------


def forged_request(index: int) -> bytes:
    """A /spool check (no check of its own) carrying a report from a load balancer named ``forged-<index>``."""
    state = (f"UP; address=127.0.0.1; port=1; name=be_forged/srv; node=forged-{index}; weight=1/1; "
             f"scur=0/0; qcur=0")
    return (f"GET /spool/forged/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n{SERVER_STATE_HEADER}: {state}\r\n\r\n").encode()


def _read_answers(connection: socket.socket, count: int, buffered: bytes) -> tuple:
    """Read ``count`` HTTP answers (each with a Content-Length); returns (their codes, what is left)."""
    codes = []
    while len(codes) < count:
        head_end = buffered.find(b"\r\n\r\n")
        if head_end < 0:
            chunk = connection.recv(1 << 16)
            assert chunk, f"the daemon closed the connection after {len(codes)} of {count} answers"
            buffered += chunk
            continue
        head = buffered[:head_end].decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:"))
        while len(buffered) < head_end + 4 + length:
            buffered += connection.recv(1 << 16)
        codes.append(int(head[0].split()[1]))
        buffered = buffered[head_end + 4 + length:]
    return codes, buffered


def _send_forged(port: int, indexes: range, batch: int, codes: List[int]) -> None:
    """Send ``indexes``' forged requests over one kept-alive connection, ``batch`` at a time (pipelined)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        buffered = b""
        for start in range(indexes.start, indexes.stop, batch):
            chunk = range(start, min(start + batch, indexes.stop))
            connection.sendall(b"".join(forged_request(index) for index in chunk))
            answered, buffered = _read_answers(connection, len(chunk), buffered)
            codes += answered


def send_forged_reports(port: int, count: int, connections: int = 4, batch: int = 100) -> List[int]:
    """``count`` check requests, each with a distinct forged node name, sent fast over ``connections``
    kept-alive connections at once; returns the codes answered."""
    share = -(-count // connections)
    results: List[List[int]] = [[] for _ in range(connections)]
    threads = [threading.Thread(target=_send_forged, daemon=True,
                                args=(port, range(number * share, min((number + 1) * share, count)), batch,
                                      results[number]))
               for number in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [code for codes in results for code in codes]


def lb_series(metrics_text: str) -> Dict[tuple, float]:
    """``hacheck_lb_server_up`` and ``_sessions`` samples by (name, node, backend, server), read with the
    Prometheus client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in ("hacheck_lb_server_up", "hacheck_lb_server_sessions"):
                labels = sample.labels
                series[(sample.name, labels["node"], labels["backend"], labels["server"])] = sample.value
    return series
