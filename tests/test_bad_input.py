"""Bad input through a real ``hacheck`` process: odd URLs, odd headers, odd spool files, odd
configuration. Each gets a clear status and body (or, for configuration, one line and a
non-zero exit), never a 500, a hang or a traceback, and nothing at ERROR level in the log."""

import contextlib
import os
import re
import socket
import subprocess
from typing import List, Optional, Sequence, Tuple

import pytest

from tests.conftest import raw_exchange, start_hacheck, tool_argv, tool_env, unused_port
from tests.e2e.support import CountingListener

LONG_NAME = "a" * 256
LONGEST_NAME = "b" * 255  # a file name can be this long, but not with ":80" appended


def send(port: int, path: str, method: str = "GET", headers: Sequence[Tuple[str, str]] = (),
         body: Optional[bytes] = None, timeout: float = 15.0) -> Tuple[Optional[int], str]:
    """One raw HTTP/1.0 request (any bytes in the path, repeated headers); returns (status, body).

    The status is None when the daemon closed the connection without answering.
    """
    lines = [f"{method} {path} HTTP/1.0".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}".encode())
        if not any(name.lower() == "content-type" for name, _ in headers):
            lines.append(b"Content-Type: application/x-www-form-urlencoded")
    request = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    answer = raw_exchange(port, request, timeout)
    if not answer:
        return None, ""
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content.decode("utf-8", "replace")


# --- the cases ----------------------------------------------------------------------
# (method, path, expected status, text the body contains)

URL_CASES = [
    ("GET", "/spool/caf%C3%A9/80", 404, "Not found"),
    ("GET", "/spool/café/80", 404, "Not found"),
    ("GET", "/spool/%2e%2e/80", 404, "Not found"),
    ("GET", "/spool/..%2F..%2Fetc%2Fpasswd/80", 404, "Not found"),
    ("GET", "/spool/web%00/80", 404, "Not found"),
    ("GET", "/spool/web/%38%30", 404, "Not found"),
    ("GET", f"/spool/{LONG_NAME}/80", 400, "longer than 255 bytes"),
    ("GET", f"/tcp/{LONG_NAME}/80", 400, "longer than 255 bytes"),
    ("GET", f"/spool/{LONGEST_NAME}/80", 200, ""),
    ("GET", "/tcp/web/0", 400, "Invalid port 0"),
    ("GET", "/http/web/0/", 400, "Invalid port 0"),
    ("GET", "/spool/web/0", 200, ""),
    ("GET", "/tcp/web/65536", 400, "ports go from 0 to 65535"),
    ("GET", "/spool/web/99999999999999999999", 400, "ports go from 0 to 65535"),
    ("GET", "/tcp/web/" + "9" * 5000, 400, "ports go from 0 to 65535"),
    ("GET", "/spool/web/00080", 200, ""),
    ("GET", "/spool/web/" + "0" * 5000 + "80", 200, ""),
    ("GET", "/tcp/web/" + "0" * 5000 + "65536", 400, "ports go from 0 to 65535"),
    ("GET", "//spool/web/80", 404, "Not found"),
    ("GET", "/spool//web/80", 404, "Not found"),
    ("GET", "/spool/web//80", 404, "Not found"),
    ("GET", "/http/web/80", 404, "Not found"),
    ("GET", "/spool/web/80?" + "q=" + "x" * 7000, 200, ""),
    ("GET", "/spool/web/80?" + "q=" + "x" * 60000, 414, "max_request_line_bytes"),
    ("GET", "/spool/web/80?%ff%fe=%00&&&==", 200, ""),
    ("GET", "/recent?threshold=%ff", 400, ""),
    ("GET", "/recent?threshold=1e999", 400, "threshold must be a number"),
    ("PUT", "/spool/web/80", 405, "Method Not Allowed"),
    ("DELETE", "/spool/web/80", 405, "Method Not Allowed"),
    ("PATCH", "/spool/web/80", 405, "Method Not Allowed"),
    ("OPTIONS", "/spool/web/80", 405, "Method Not Allowed"),
    ("PUT", "/status", 405, "Method Not Allowed"),
    ("POST", "/tcp/web/80", 405, "Method Not Allowed"),
    ("BREW", "/spool/web/80", 405, "Method Not Allowed"),
]

# Headers for /tcp/web/<url port>: the listener's port, or 1 (nothing listens) where a header names the port.
# (url port is listener, headers, expected status, text the body contains)
HEADER_CASES = [
    (True, [("X-Haproxy-Server-State", "garbage")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "address=not a host!; port=99999")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "address=; port=; =; ;;;")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "address=10.0.0.1:80")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "address=999.1.1.1")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "port=0")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "port=-80")], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "port=¹")], 200, "Connected"),  # found by fuzz/run.py: was a 500
    (True, [("X-Haproxy-Server-State", "port=" + "9" * 5000)], 200, "Connected"),
    (True, [("X-Haproxy-Server-State", "UP 2/3; name=bck/srv2; node=lb1; weight=1/2")], 200, "Connected"),
    (False, [("X-Haproxy-Server-State", "port={port}")], 200, "Connected"),
    (False, [("X-Haproxy-Server-State", "UP; port={port}; port={port}")], 200, "Connected"),
    (False, [("X-Haproxy-Server-State", "port={port}"), ("X-Haproxy-Server-State", "port={port}")],
     200, "Connected"),
    (False, [("X-Haproxy-Server-State", "port={port}; port=1")], 400, "more than once"),
    (False, [("X-Haproxy-Server-State", "port={port}"), ("X-Haproxy-Server-State", "port=1")],
     400, "more than once"),
    (True, [("X-Haproxy-Server-State", "address=10.0.0.1; address=10.0.0.2")], 400, "more than once"),
    (True, [("X-Nerve-Check-IP", "garbage!")], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "1.2.3.4:80")], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "999.1.1.1")], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "a/b")], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "x" * 300)], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "ünïcode")], 400, "not a host"),
    (True, [("X-Nerve-Check-IP", "10.0.0.1"), ("X-Nerve-Check-IP", "10.0.0.2")], 400, "more than once"),
    (True, [("X-Nerve-Check-IP", "127.0.0.1"), ("X-Nerve-Check-IP", "127.0.0.1")], 200, "Connected"),
    (True, [("X-Nerve-Check-IP", "  ")], 200, "Connected"),
    (True, [("X-Nerve-Check-IP", "localhost")], 200, "Connected"),
]

SPOOL_CASES = {  # service -> (how the entry is made, expected body (regex))
    "empty": (b"", r"Service empty in down state"),
    "binary": (bytes(range(256)), r"Service binary in down state: [\s\S]+"),
    "huge": (b"x" * (8 * 1024 * 1024), r"Service huge in down state: x{197}\.\.\."),
    "huge-json": (b'{"reason": "' + b"y" * (8 * 1024 * 1024) + b'"}',
                  r'Service huge-json in down state: \{"reason": "y{185}\.\.\.'),
    "list": (b"[1, 2]", r"Service list in down state: \[1, 2\]"),
    "string": (b'"text"', r'Service string in down state: "text"'),
    "null": (b"null", r"Service null in down state: null"),
    "nested": (b"[" * 100000, r"Service nested in down state: \[{197}\.\.\."),
    "types": (b'{"reason": 5, "expiration": "tomorrow", "creation": [1]}', r"Service types in down state: 5"),
    "infinite": (b'{"reason": "r", "expiration": 1e400, "creation": -1e400}', r"Service infinite in down state: r"),
    "directory": ("mkdir", r"Service directory in down state: unreadable spool entry: a directory"),
    "dangling": ("dangling", r"Service dangling in down state: unreadable spool entry: not a regular file"),
    "loop": ("loop", r"Service loop in down state: unreadable spool entry: not a regular file"),
    "fifo": ("fifo", r"Service fifo in down state: unreadable spool entry: not a regular file"),
    "device": ("device", r"Service device in down state: unreadable spool entry: not a regular file"),
}

POST_CASES = [  # (path, body, expected status, text the body contains)
    ("/spool/web/0/x", b"status=sideways", 400, "status must be"),
    ("/spool/web/0/x", b"status=\xff\xfe", 400, ""),
    ("/spool/web/0/x", bytes(range(256)), 400, ""),
    ("/spool/web/0/x", b"status=down&expiration=nan", 400, "finite"),
    ("/spool/web/0/x", b"status=down&creation=soon", 400, "unix time"),
    ("/spool/web/0/x", b"status=down&reason=" + b"r" * (70 * 1024), 413, "max_request_body_bytes"),
    (f"/spool/{'c' * 252}/65535/x", b"status=down", 400, "longer than 255 bytes"),
    (f"/spool/{LONG_NAME}/0/x", b"status=down", 400, "longer than 255 bytes"),
]


def make_spool_entry(root: str, service: str, how) -> None:
    path = os.path.join(root, service)
    if isinstance(how, bytes):
        with open(path, "wb") as entry:
            entry.write(how)
    elif how == "mkdir":
        os.mkdir(path)
    elif how == "dangling":
        os.symlink(os.path.join(root, "nothing-here"), path)
    elif how == "loop":
        os.symlink(path, path)
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "device":
        os.symlink("/dev/zero", path)


@contextlib.contextmanager
def bad_input_daemon(tmp_path):
    """A verbose daemon (access lines on) with remote spool changes on and every odd spool entry."""
    spool_root = str(tmp_path / "spool")
    os.mkdir(spool_root)
    for service, (how, _) in SPOOL_CASES.items():
        make_spool_entry(spool_root, service, how)
    with CountingListener() as listener:
        running = start_hacheck(tmp_path, config={"allow_remote_spool_changes": True}, args=["-v"],
                                spool_root=spool_root)
        running.listener = listener
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with bad_input_daemon(tmp_path_factory.mktemp("bad-input")) as running:
        yield running


def header_request(daemon, url_is_listener: bool, headers: List[Tuple[str, str]]):
    port = daemon.listener.port
    headers = [(name, value.replace("{port}", str(port))) for name, value in headers]
    return send(daemon.port, f"/tcp/web/{port if url_is_listener else 1}", headers=headers)


def send_every_bad_input(daemon) -> List[Tuple[str, Optional[int]]]:
    """Everything on this page once; returns (what was sent, status) pairs."""
    statuses = []
    for method, path, _, _ in URL_CASES:
        statuses.append((f"{method} {path[:80]}", send(daemon.port, path, method)[0]))
    for url_is_listener, headers, _, _ in HEADER_CASES:
        statuses.append((repr(headers)[:80], header_request(daemon, url_is_listener, headers)[0]))
    for service in SPOOL_CASES:
        statuses.append((f"spool {service}", send(daemon.port, f"/spool/{service}/80")[0]))
    for path, body, _, _ in POST_CASES:
        statuses.append((f"POST {path[:40]} {body[:40]!r}", send(daemon.port, path, "POST", body=body)[0]))
    statuses.append(("huge request line", send(daemon.port, "/spool/web/80?q=" + "x" * 70000)[0]))
    statuses.append(("not HTTP", send_bytes(daemon.port, b"\x16\x03\x01\x00garbage\r\n\r\n")))
    return statuses


def send_bytes(port: int, data: bytes) -> Optional[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(data)
        answer = connection.recv(65536)
    return int(answer.split(b" ", 2)[1]) if answer else None


# --- URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, status, text", URL_CASES, ids=lambda value: str(value)[:40])
def test_odd_urls_get_a_clear_answer(daemon, method, path, status, text):
    answer_status, body = send(daemon.port, path, method)
    assert answer_status == status, body[:200]
    assert text in body
    assert "<html>" not in body and "Traceback" not in body


def test_head_is_answered_like_get_with_no_body(daemon):
    assert send(daemon.port, "/spool/web/80", "HEAD") == (200, "")
    assert send(daemon.port, "/spool/empty/80", "HEAD") == (503, "")


def test_request_line_over_64k_is_414_and_the_daemon_carries_on(daemon):
    status, body = send(daemon.port, "/spool/web/80?q=" + "x" * 70000)
    assert (status, body) == (414, "Request line too long: it may take 8192 bytes (max_request_line_bytes)\n")
    assert send(daemon.port, "/spool/web/80") == (200, "")


def test_not_http_at_all_is_400(daemon):
    assert send_bytes(daemon.port, b"\x16\x03\x01\x00garbage\r\n\r\n") == 400
    assert send(daemon.port, "/spool/web/80") == (200, "")


# --- headers ------------------------------------------------------------------------


@pytest.mark.parametrize("url_is_listener, headers, status, text", HEADER_CASES,
                         ids=lambda value: str(value)[:60])
def test_odd_target_headers(daemon, url_is_listener, headers, status, text):
    answer_status, body = header_request(daemon, url_is_listener, headers)
    assert answer_status == status, body
    assert text in body


# --- spool files --------------------------------------------------------------------


@pytest.mark.parametrize("service", list(SPOOL_CASES))
def test_odd_spool_entries_are_down_with_a_reason(daemon, service):
    status, body = send(daemon.port, f"/spool/{service}/80", timeout=10)
    assert status == 503
    assert re.fullmatch(SPOOL_CASES[service][1], body[:300] if service.startswith("huge") else body), body[:300]
    assert len(body) <= 300  # the reason cut to max_reason_chars (200), never the whole file


def test_a_fifo_in_the_spool_never_blocks_the_daemon(daemon):
    for _ in range(3):
        assert send(daemon.port, "/spool/fifo/80", timeout=5)[0] == 503
    assert send(daemon.port, "/status", timeout=5)[0] == 200


def test_hashowdowned_lists_odd_entries_without_hanging(daemon):
    result = subprocess.run(tool_argv("hashowdowned") + ["--spool-root", daemon.spool_root],
                            capture_output=True, text=True, timeout=30, env=tool_env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for service in ("fifo", "device", "directory", "dangling"):
        assert re.search(rf"^DOWN\tinf\t{service}\t", result.stdout, re.M)


# --- remote spool changes -----------------------------------------------------------


@pytest.mark.parametrize("path, body, status, text", POST_CASES, ids=lambda value: str(value)[:40])
def test_odd_remote_spool_changes(daemon, path, body, status, text):
    answer_status, answer = send(daemon.port, path, "POST", body=body)
    assert answer_status == status, answer
    assert text in answer


# --- the log ------------------------------------------------------------------------


def test_bad_input_leaves_no_error_or_traceback_in_the_log(tmp_path):
    with bad_input_daemon(tmp_path) as daemon:
        statuses = send_every_bad_input(daemon)
        assert not [sent for sent, status in statuses if status is not None and status >= 500 and status != 503]
        assert send(daemon.port, "/status")[0] == 200
        assert daemon.stop() == 0
    output = daemon.output()
    assert "GET /spool/web/80" in output  # -v: the access lines are there, at INFO
    bad = [line for line in output.splitlines() if " ERROR " in line or "CRITICAL" in line or "Traceback" in line]
    assert bad == [], "\n".join(bad[:20])


# --- configuration ------------------------------------------------------------------

CONFIG_CASES = [  # (file content, text the one line names besides the file)
    ("cache_time: soon\n", "'cache_time'"),
    ("cache_time: -1\n", "'cache_time'"),
    ("cache_time: .nan\n", "'cache_time'"),
    ("cache_time: .inf\n", "'cache_time'"),
    ("cache_time: 1" + "0" * 400 + "\n", "'cache_time'"),
    ("service_name_header: has space\n", "'service_name_header'"),
    ("service_name_header: [a]\n", "'service_name_header'"),
    ("log_path: ''\n", "'log_path'"),
    ("log_path: 5\n", "'log_path'"),
    ("mysql_username: [x]\n", "'mysql_username'"),
    ("mysql_password: {a: 1}\n", "'mysql_password'"),
    ("postgresql_username: [1]\n", "'postgresql_username'"),
    ("postgresql_password: true\n", "'postgresql_password'"),
    ("postgresql_database: 5\n", "'postgresql_database'"),
    ("rlimit_nofile: lots\n", "'rlimit_nofile'"),
    ("rlimit_nofile: 0\n", "'rlimit_nofile'"),
    ("rlimit_nofile: true\n", "'rlimit_nofile'"),
    ("allow_remote_spool_changes: 'maybe'\n", "'allow_remote_spool_changes'"),
    ("allow_remote_spool_changes: 1\n", "'allow_remote_spool_changes'"),
    ("http_headers_to_copy: Host\n", "'http_headers_to_copy'"),
    ("http_headers_to_copy: ['a b']\n", "'http_headers_to_copy'"),
    ("healthcheck_timeout: 0\n", "'healthcheck_timeout'"),
    ("healthcheck_timeout: '10'\n", "'healthcheck_timeout'"),
    ("max_clients: 0\n", "'max_clients'"),
    ("max_clients: 1.5\n", "'max_clients'"),
    ("remote_spool_allowed_networks: 10.0.0.0/8\n", "'remote_spool_allowed_networks'"),
    ("remote_spool_allowed_networks: [10.0.0.0/33]\n", "'remote_spool_allowed_networks'"),
    ("remote_spool_allowed_networks: [5]\n", "'remote_spool_allowed_networks'"),
    ("check_host_allowed_networks: [10.0.0.0/8, banana]\n", "'check_host_allowed_networks'"),
    ("check_host_allowed_networks: {a: 1}\n", "'check_host_allowed_networks'"),
    ("cache_time: [unclosed\n", "not a valid YAML file"),
    ("\x00\x01\x02\n", "not a valid YAML file"),
    ("key: value\n  bad indentation: here\n", "not a valid YAML file"),
    ("[" * 20000 + "\n", "not a valid YAML file"),
    ("- cache_time\n- 5\n", "must be a mapping"),
    ("just some text\n", "must be a mapping"),
]


def run_hacheck_with_config(tmp_path, config_path: str):
    argv = tool_argv("hacheck") + ["-c", config_path, "-p", str(unused_port()),
                                   "--spool-root", str(tmp_path / "spool")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=tool_env(),
                          stdin=subprocess.DEVNULL)


def assert_one_line_naming(result, *texts):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[:2000]
    assert "Traceback" not in result.stderr
    for text in texts:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("content, named", CONFIG_CASES, ids=lambda value: str(value)[:30])
def test_bad_configuration_is_one_line_naming_the_key_and_file(tmp_path, content, named):
    config = tmp_path / "hacheck.yaml"
    config.write_bytes(content.encode())
    result = run_hacheck_with_config(tmp_path, str(config))
    assert_one_line_naming(result, named, str(config))


def test_binary_configuration_file(tmp_path):
    config = tmp_path / "hacheck.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    assert_one_line_naming(run_hacheck_with_config(tmp_path, str(config)), "not a valid YAML file", str(config))


def test_missing_configuration_file(tmp_path):
    missing = str(tmp_path / "absent.yaml")
    assert_one_line_naming(run_hacheck_with_config(tmp_path, missing), "No such file", missing)


def test_directory_as_configuration_file(tmp_path):
    assert_one_line_naming(run_hacheck_with_config(tmp_path, str(tmp_path)), "cannot read", str(tmp_path))


@pytest.mark.parametrize("content", ["", "# every line a comment, as in the Debian conffile\n# cache_time: 10\n",
                                     "---\n", "cache_time: 1\nremote_spool_allowed_networks: []\n"])
def test_empty_or_comment_only_configuration_starts(tmp_path, content):
    config = tmp_path / "hacheck.yaml"
    config.write_text(content)
    daemon = start_hacheck(tmp_path, config=str(config))
    try:
        assert send(daemon.port, "/spool/web/80") == (200, "")
    finally:
        assert daemon.stop() == 0


def test_networks_are_read_as_networks(tmp_path):
    from hacheck.config import Config

    config, _ = Config.from_mapping({"remote_spool_allowed_networks": ["10.1.2.3", "2001:db8::/32", "10.9.0.1/16"]})
    assert [str(network) for network in config.remote_spool_allowed_networks] == [
        "10.1.2.3/32", "2001:db8::/32", "10.9.0.0/16"]
    assert config.check_host_allowed_networks is None
