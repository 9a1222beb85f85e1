"""Property-based tests (hypothesis), bounded to run in seconds: the spool reader, the target
headers, routing through a real daemon, and configuration loading never fail in any way but
the documented one. ``fuzz/run.py`` runs the same properties far longer, by hand."""

import os
import socket
import tempfile

import pytest
import tornado.httputil
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hacheck.config import Config, ConfigError
from hacheck.lb_view import MAX_NAME_CHARS, report_from_header
from hacheck.names import is_host
from hacheck.spool import LOCALHOST, MAX_READ_BYTES, Downtime, Spool
from hacheck.web.handlers import BadRequest, choose_target, parse_server_state
from tests.conftest import start_hacheck, unused_port

# Small by default; fuzz/run.py raises it through HACHECK_PROPERTY_EXAMPLES.
EXAMPLES = int(os.environ.get("HACHECK_PROPERTY_EXAMPLES", "150"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- the spool reader -------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=2000) | st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_spool_file_reads_as_a_downtime(content):
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "web"), "wb") as entry:
            entry.write(content)
        spool = Spool(root)
        downtime = spool.read("web")
        assert isinstance(downtime, Downtime) and isinstance(downtime.reason, str)
        assert len(downtime.reason) <= MAX_READ_BYTES
        # Present means down unless a valid expiration has passed.
        found = spool.find_downtime("web", 80)
        assert (found is None) == downtime.is_expired()


# --- the target headers -----------------------------------------------------------------

HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
FIELD = st.one_of(
    st.tuples(st.sampled_from(["address", "port", "ADDRESS", " port ", "name", ""]),
              st.one_of(HEADER_TEXT, st.integers(-5, 70000).map(str), st.ip_addresses().map(str)))
    .map(lambda pair: f"{pair[0]}={pair[1]}"),
    HEADER_TEXT,
)
STATE = st.lists(FIELD, max_size=6).map("; ".join)


def check_target(target, url_port):
    assert target.host == LOCALHOST or is_host(target.host)
    assert target.port == url_port or 0 < target.port <= 65535
    assert "/" not in target.host and "\0" not in target.host


@BOUNDED
@given(STATE)
def test_server_state_gives_a_host_and_port_or_bad_request(value):
    try:
        host, port, state_field, view_fields = parse_server_state(value)
    except BadRequest as err:
        assert "more than once" in str(err)
        return
    assert host is None or is_host(host)
    assert port is None or 0 < port <= 65535
    # Any header either makes a report the view can show, or none: never an error.
    report = report_from_header(state_field, view_fields, "web", port or 8080, host, 1.0)
    if report is not None:
        assert report.state.strip() and report.node and report.backend and report.server
        assert all(len(name) <= MAX_NAME_CHARS and name.isprintable() for name in report.key)
        assert report.scur is None or report.scur >= 0


@BOUNDED
@given(st.ip_addresses(), st.integers(1, 65535), st.lists(HEADER_TEXT.filter(lambda text: "=" not in text),
                                                          max_size=3))
def test_well_formed_server_state_is_read(address, port, others):
    value = "; ".join(["UP 2/3", f"address={address}", *others, f"port={port}", "name=bck/srv"])
    assert parse_server_state(value)[:2] == (str(address), port)


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(["X-Haproxy-Server-State", "x-nerve-check-ip", "X-Other"]),
                          st.one_of(STATE, HEADER_TEXT, st.ip_addresses().map(str))), max_size=4),
       st.integers(0, 65535))
def test_choose_target_from_any_headers(lines, url_port):
    headers = tornado.httputil.HTTPHeaders()
    for name, value in lines:
        try:
            headers.add(name, value)
        except tornado.httputil.HTTPInputError:  # Tornado 6.5+ refuses such a value on the wire too
            assume(False)
    try:
        target, _ = choose_target(headers, url_port, frozenset({"192.0.2.77"}))
    except BadRequest:
        return
    check_target(target, url_port)
    assert target.host != "192.0.2.77"


# --- routing through a real daemon --------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("routing")
    running = start_hacheck(tmp_path, config={"healthcheck_timeout": 2, "allow_remote_spool_changes": True})
    yield running
    running.stop()


SEGMENT = st.one_of(
    st.sampled_from(["spool", "tcp", "http", "https", "status", "count", "recent", "mutornadomon", "web",
                     "a.b-c_d", ".", "..", "", "0", "00080", "65535", "65536", "99999999999999999999",
                     "%2F", "%2e%2e", "%00", "%C3%A9", "é", "a" * 300, "9" * 5000]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#?"), max_size=12),
)
QUERY = st.one_of(st.just(""), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                              blacklist_characters="#"), max_size=60)
                  .map(lambda text: "?" + text))


def raw_status(port: int, method: str, path: str, headers, body: bytes) -> tuple:
    request = [f"{method} {path} HTTP/1.0".encode()]
    request += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    request += [f"Content-Length: {len(body)}".encode(), b"Content-Type: application/x-www-form-urlencoded"]
    data = b"\r\n".join(request) + b"\r\n\r\n" + body
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(data)
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "GET", "HEAD", "POST", "PUT", "OPTIONS"]),
       segments=st.lists(SEGMENT, min_size=1, max_size=6), query=QUERY,
       headers=st.lists(st.tuples(st.sampled_from(["X-Haproxy-Server-State", "X-Nerve-Check-IP", "Pragma"]),
                                  st.one_of(STATE, HEADER_TEXT.map(str.strip))), max_size=3),
       body=st.binary(max_size=200) | st.sampled_from([b"status=down", b"status=up&expiration=nan"]))
def test_random_requests_never_get_a_500(daemon, method, segments, query, headers, body):
    # Where a check would run, point it at a port nothing listens on, so it stays quick.
    free = str(unused_port())
    segments = [free if segment == "65535" else segment for segment in segments]
    path = "/" + "/".join(segments) + query
    status, content = raw_status(daemon.port, method, path, headers, body)
    assert status != 500 and status < 600, (path, content[:300])
    assert b"Traceback" not in content
    if not path.startswith("/mutornadomon"):  # a third-party handler with Tornado's HTML error pages
        assert b"<html>" not in content, (path, content[:300])
    if status == 503 and method != "HEAD":  # an answer to HEAD has no body
        assert b"refused" in content or b"timed out" in content or b"down state" in content, content[:300]


# --- configuration ----------------------------------------------------------------------

KEYS = st.sampled_from([
    "cache_time", "service_name_header", "log_path", "mysql_username", "mysql_password", "postgresql_username",
    "postgresql_password", "postgresql_database", "rlimit_nofile", "allow_remote_spool_changes",
    "http_headers_to_copy", "healthcheck_timeout", "max_clients", "remote_spool_allowed_networks",
    "check_host_allowed_networks", "unknown_key",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300), st.floats(),
                    st.text(max_size=20), st.sampled_from(["max", "10.0.0.0/8", "::1/128", "10.0.0.0/33", "Host"]),
                    st.ip_addresses().map(str))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@BOUNDED
@given(st.one_of(st.dictionaries(KEYS | st.integers() | st.none(), VALUES, max_size=5), VALUES))
def test_config_from_any_document_is_a_config_or_a_config_error(document):
    try:
        config, warnings = Config.from_mapping(document, source="fuzz.yaml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.yaml: ")
        assert "\n" not in str(err)
        return
    assert isinstance(config.cache_time, float) and config.healthcheck_timeout > 0
    assert isinstance(config.max_clients, int) and isinstance(config.allow_remote_spool_changes, bool)
    for networks in (config.remote_spool_allowed_networks, config.check_host_allowed_networks):
        assert networks is None or isinstance(networks, tuple)
    assert all(isinstance(warning, str) for warning in warnings)


@BOUNDED
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_config_load_of_any_file(content):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "hacheck.yaml")
        with open(path, "wb") as config_file:
            config_file.write(content)
        try:
            Config.load(path)
        except ConfigError as err:
            assert path in str(err) and "\n" not in str(err)
