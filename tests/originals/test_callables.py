"""Yelp/hacheck/tests/test_callables.py and uber/hacheck/tests/test_callables.py, black-box.

The originals mocked the spool and the print function and called ``haupdown.main``; here
the real tools run on a temporary spool and their output, exit codes and files are read.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.originals.support import ORIGINALS_DISAGREE, Tools, deliberate

SERVICE = "testing_service_name"


@pytest.fixture
def spool_tools(tmp_path):
    return Tools(str(tmp_path / "spool"))


def record(tools, name):
    return json.loads(tools.file(name).read_text())


def test_basic(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_basic and uber (same): status_downed reads the
    default spool root /var/spool/hacheck and needs no write access to it."""
    result = spool_tools.run("hashowdowned", "--help", spool=False)
    assert result.returncode == 0 and "default: /var/spool/hacheck" in result.stdout
    spool_tools.ok("hadown", "-r", "x", "web")
    spool_tools.file("").chmod(0o555)
    try:
        assert spool_tools.ok("hashowdowned") == "DOWN\tinf\tweb\tx\n"
    finally:
        spool_tools.file("").chmod(0o755)  # so the temporary directory can be removed


def test_exit_codes(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_exit_codes: UP exits 0, DOWN exits 1 with the
    expiration field (uber's DOWN line is the next test)."""
    result = spool_tools.run("hastatus", SERVICE)
    assert (result.returncode, result.stdout) == (0, f"UP\t{SERVICE}\n")
    spool_tools.ok("hadown", "-r", "irrelevant", SERVICE)
    result = spool_tools.run("hastatus", SERVICE)
    assert (result.returncode, result.stdout) == (1, f"DOWN\tinf\t{SERVICE}\tirrelevant\n")


@deliberate(ORIGINALS_DISAGREE)
def test_exit_codes_uber(spool_tools):
    """uber/hacheck/tests/test_callables.py::test_exit_codes: uber's DOWN line had no expiration."""
    spool_tools.ok("hadown", "-r", "irrelevant", SERVICE)
    result = spool_tools.run("hastatus", SERVICE)
    assert (result.returncode, result.stdout) == (1, f"DOWN\t{SERVICE}\tirrelevant\n")


@pytest.mark.parametrize("flags, filename", [
    ([], SERVICE),  # Yelp ::test_up, uber ::test_up
    (["-P", "1234"], f"{SERVICE}:1234"),  # Yelp ::test_up_with_port
    (["-P", "8888", "-H", "10.93.0.10"], f"{SERVICE}:10.93.0.10:8888"),  # Yelp ::test_up_with_host
])
def test_up(spool_tools, flags, filename):
    """Yelp/hacheck/tests/test_callables.py::test_up, ::test_up_with_port, ::test_up_with_host and
    uber/hacheck/tests/test_callables.py::test_up: haup removes that entry and prints nothing."""
    spool_tools.ok("hadown", *flags, SERVICE)
    assert spool_tools.file(filename).exists()
    assert spool_tools.ok("haup", *flags, SERVICE) == ""
    assert not spool_tools.file(filename).exists()


@pytest.mark.parametrize("flags, filename, reason, expiration", [
    ([], SERVICE, "testyuser", None),  # Yelp and uber ::test_down
    (["-r", "something"], SERVICE, "something", None),  # Yelp and uber ::test_down_with_reason
    (["-e", "9876543210"], SERVICE, "testyuser", 9876543210),  # Yelp ::test_down_with_expiration
    (["-P", "1234"], f"{SERVICE}:1234", "testyuser", None),  # Yelp ::test_down_with_port
    (["-P", "8888", "-H", "10.93.0.10"], f"{SERVICE}:10.93.0.10:8888", "testyuser", None),  # ::test_down_with_host
])
def test_down(spool_tools, flags, filename, reason, expiration):
    """Yelp/hacheck/tests/test_callables.py::test_down (with SUDO_USER and SSH_USER testyuser),
    ::test_down_with_reason, ::test_down_with_expiration, ::test_down_with_port,
    ::test_down_with_host, and uber's ::test_down and ::test_down_with_reason: the file written,
    nothing printed."""
    assert spool_tools.ok("hadown", *flags, SERVICE) == ""
    written = record(spool_tools, filename)
    assert (written["reason"], written["expiration"]) == (reason, expiration)


def test_down_with_host_no_port(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_down_with_host_no_port: a usage error (exit 2)."""
    result = spool_tools.run("hadown", "-H", "10.93.0.10", SERVICE)
    assert result.returncode == 2 and result.stdout == ""
    assert not spool_tools.file("").exists()


@pytest.mark.parametrize("flags", [
    [],  # Yelp and uber ::test_status
    ["-P", "1234"],  # Yelp ::test_status_with_port
    ["-P", "8888", "-H", "10.93.0.10"],  # Yelp ::test_status_with_host
])
def test_status(spool_tools, flags):
    """Yelp/hacheck/tests/test_callables.py::test_status, ::test_status_with_port,
    ::test_status_with_host, uber's ::test_status: one UP line naming the service alone."""
    result = spool_tools.run("hastatus", *flags, SERVICE)
    assert (result.returncode, result.stdout) == (0, f"UP\t{SERVICE}\n")


def test_status_downed(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_status_downed: expiration inf, exit 0."""
    spool_tools.ok("hadown", "-r", "r", SERVICE)
    result = spool_tools.run("hashowdowned")
    assert (result.returncode, result.stdout) == (0, f"DOWN\tinf\t{SERVICE}\tr\n")


@deliberate(ORIGINALS_DISAGREE)
def test_status_downed_uber(spool_tools):
    """uber/hacheck/tests/test_callables.py::test_status_downed: uber's line had no expiration."""
    spool_tools.ok("hadown", "-r", "r", SERVICE)
    assert spool_tools.ok("hashowdowned") == f"DOWN\t{SERVICE}\tr\n"


def test_status_downed_expiration(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_status_downed_expiration: the expiration as %f."""
    spool_tools.ok("hadown", "-r", "r", "-e", "9876543210", SERVICE)
    assert spool_tools.ok("hashowdowned") == f"DOWN\t9876543210.000000\t{SERVICE}\tr\n"


@pytest.mark.parametrize("flags, label", [
    ([], "foo"),
    (["-P", "1234"], "foo::1234"),
    (["-P", "1234", "-H", "10.93.0.1"], "foo:10.93.0.1:1234"),
    # The -H as given, this machine's own address too (Yelp's print_status printed opts.service_host).
    (["-P", "1234", "-H", "127.0.0.1"], "foo:127.0.0.1:1234"),
])
def test_print_status(spool_tools, flags, label):
    """Yelp/hacheck/tests/test_callables.py::test_print_status: UP names the service; DOWN names
    the entry as SERVICE, SERVICE::PORT or SERVICE:HOST:PORT, with the host hastatus was given."""
    assert spool_tools.run("hastatus", *flags, "foo").stdout == "UP\tfoo\n"
    spool_tools.ok("hadown", "-r", "somereason", *flags, "foo")
    assert spool_tools.run("hastatus", *flags, "foo").stdout == f"DOWN\tinf\t{label}\tsomereason\n"


class _OlderRecent(BaseHTTPRequestHandler):
    """A daemon of the original's oldest form: /recent lists plain names."""

    def do_GET(self):
        body = json.dumps({"seen_services": ["foo"], "threshold_seconds": 10}).encode()
        self.send_response(200 if self.path == "/recent" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_list(spool_tools):
    """Yelp/hacheck/tests/test_callables.py::test_list and uber (same): halist against a daemon
    whose /recent is a list of plain names prints ``foo``, exit 0."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OlderRecent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = spool_tools.run("halist", "-p", str(server.server_address[1]), spool=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode, result.stdout, result.stderr) == (0, "foo\n", "")
