"""A real HAProxy for tests: run it with given configuration sections and read its view of a server
from its stats socket (``show stat``) until a deadline."""

import contextlib
import csv
import io
import socket
import subprocess
import time

import pytest

from tests.conftest import require_command, unused_port

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
def run_haproxy(tmp_path, sections, global_lines=""):
    """HAProxy in the foreground with a stats socket, ``global_lines`` and the given configuration sections."""
    binary = require_command("haproxy")
    socket_path = str(tmp_path / "haproxy.sock")
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
global
    stats socket {socket_path} mode 600 level admin
    maxconn 200
    {global_lines}

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


def defaults_section(mode: str = "http", idle_timeout: str = "5s") -> str:
    """``idle_timeout``: how long a connection through the proxy may stay silent (timeout client and server)."""
    return (f"defaults\n    mode {mode}\n    timeout connect 2s\n    timeout client {idle_timeout}\n"
            f"    timeout server {idle_timeout}\n    timeout check 5s\n")


@contextlib.contextmanager
def haproxy(tmp_path, backends):
    """HAProxy in HTTP mode with a frontend to the first of the given backend sections."""
    sections = f"""
{defaults_section()}
frontend fe
    bind 127.0.0.1:{unused_port()}
    default_backend {next(iter(backends))}

{chr(10).join(backends.values())}
"""
    with run_haproxy(tmp_path, sections) as lb:
        yield lb


def backend(name, check_path, server_port, hacheck_port, extra="", server="srv", inter="200ms"):
    return f"""
backend {name}
    option httpchk GET {check_path}
    {extra}
    server {server} 127.0.0.1:{server_port} check port {hacheck_port} inter {inter} fall 2 rise 2
"""
