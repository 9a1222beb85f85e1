"""A real HAProxy health-checking a backend through a real hacheck (docs/haproxy.md, as deployed).

HAProxy checks every 200ms with ``fall 2 rise 2``; its view of the server is
read from its stats socket (``show stat``) until a deadline.
"""

import contextlib
import csv
import io
import socket
import subprocess
import time

import pytest

from tests.conftest import require_command, unused_port
from tests.e2e.support import operator_tool, threaded_upstream

DEADLINE = 15.0  # seconds; a change should show within a few 200ms intervals


def show_stat(socket_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
        stats.settimeout(5)
        stats.connect(socket_path)
        stats.sendall(b"show stat\n")
        answer = b""
        while True:
            chunk = stats.recv(65536)
            if not chunk:
                break
            answer += chunk
    text = answer.decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


class HAProxy:
    def __init__(self, process, socket_path, log_path):
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path

    def server(self, backend, server):
        for row in show_stat(self.socket_path):
            if row["pxname"] == backend and row["svname"] == server:
                return row
        raise AssertionError(f"{backend}/{server} not in HAProxy's stats")

    def wait_for(self, backend, server, status, check_status=None):
        """Wait until HAProxy shows ``status`` (from a real check when ``check_status`` is given)."""
        deadline = time.monotonic() + DEADLINE
        row = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited: {self.log_path.read_text()}")
            row = self.server(backend, server)
            if row["status"] == status and (check_status is None or row["check_status"] == check_status):
                return row
            time.sleep(0.1)
        raise AssertionError(f"{backend}/{server} did not become {status} within {DEADLINE}s: "
                             f"status={row and row['status']} check={row and row['check_status']} "
                             f"code={row and row['check_code']} desc={row and row.get('last_chk')}")


@contextlib.contextmanager
def run_haproxy(tmp_path, sections):
    """HAProxy in the foreground with a stats socket and the given configuration sections."""
    binary = require_command("haproxy")
    socket_path = str(tmp_path / "haproxy.sock")
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    stats socket {socket_path} mode 600 level admin
    maxconn 200

{sections}
""")
    log_path = tmp_path / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"haproxy did not start: {log_path.read_text()}")
            try:
                show_stat(socket_path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield HAProxy(process, socket_path, log_path)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def haproxy(tmp_path, backends):
    """HAProxy in HTTP mode with a frontend to the first of the given backend sections."""
    sections = f"""
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout check 5s

frontend fe
    bind 127.0.0.1:{unused_port()}
    default_backend {next(iter(backends))}

{chr(10).join(backends.values())}
"""
    with run_haproxy(tmp_path, sections) as lb:
        yield lb


def backend(name, check_path, server_port, hacheck_port, extra=""):
    return f"""
backend {name}
    option httpchk GET {check_path}
    {extra}
    server srv 127.0.0.1:{server_port} check port {hacheck_port} inter 200ms fall 2 rise 2
"""


def test_hadown_haup_and_upstream_errors_drive_haproxy(tmp_path, hacheck_daemon):
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon(config={"cache_time": 0.2})
        backends = {"be_web": backend("be_web", f"/http/web/{port}/health", port, daemon.port)}
        with haproxy(tmp_path, backends) as lb:
            lb.wait_for("be_web", "srv", "UP", "L7OK")
            assert any(path == "/health" for path, _ in upstream.requests)

            operator_tool("hadown", daemon.spool_root, "-r", "haproxy test", "web")
            row = lb.wait_for("be_web", "srv", "DOWN")
            assert row["check_code"] == "503"

            operator_tool("haup", daemon.spool_root, "web")
            lb.wait_for("be_web", "srv", "UP", "L7OK")

            upstream.code = 500
            row = lb.wait_for("be_web", "srv", "DOWN")
            assert row["check_code"] == "500"

            upstream.code = 200
            lb.wait_for("be_web", "srv", "UP", "L7OK")

        # HAProxy's checks show in the daemon's Prometheus metrics, by protocol and answer.
        answered = http_requests_by_code(daemon.get("/metrics")[1])
        assert answered.get("200", 0) >= 2
        assert answered.get("503", 0) >= 2
        assert answered.get("500", 0) >= 2


def http_requests_by_code(metrics_text):
    """``hacheck_requests_total`` for protocol http, by answered code, read with the client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "hacheck_requests_total" and sample.labels.get("protocol") == "http":
                counts[sample.labels["code"]] = counts.get(sample.labels["code"], 0) + sample.value
    return counts


def test_send_state_port_is_honoured(tmp_path, hacheck_daemon):
    """The URL names a port where nothing listens; only the state header's port=<server port> can be UP."""
    dead_port = unused_port()
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon()
        backends = {
            "be_state": backend("be_state", f"/http/state/{dead_port}/health", port, daemon.port,
                                extra="http-check send-state"),
            "be_plain": backend("be_plain", f"/http/plain/{dead_port}/health", port, daemon.port),
        }
        with haproxy(tmp_path, backends) as lb:
            lb.wait_for("be_state", "srv", "UP", "L7OK")
            row = lb.wait_for("be_plain", "srv", "DOWN")
            assert row["check_code"] == "503"
