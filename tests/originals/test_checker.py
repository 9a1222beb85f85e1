"""Yelp/hacheck/tests/test_checker.py and uber/hacheck/tests/test_checker.py, black-box.

The originals called each checker function against Tornado upstreams in the test's own
IOLoop; here the same upstreams (the originals' handlers, rewritten) run in a thread and a
real ``hacheck`` checks them through its URLs. The answer's code and body are the
checker's result; ``/recent`` shows the code a checker recorded when the answer differs
(599 is answered 503).
"""

import asyncio
import json
import threading
import time

import pytest
import tornado.web

from tests.checks.upstreams import tls_server_context
from tests.conftest import require_port, start_hacheck, unused_port
from tests.e2e.support import threaded_upstream
from tests.originals.support import deliberate, script_server, tornado_upstream

# ---------------------------------------------------------------- upstreams as the originals wrote them

class ReturnTwoHundred(tornado.web.RequestHandler):
    def get(self):
        self.write(b"TEST OK")


class ExpectServiceNameHeader(tornado.web.RequestHandler):
    def get(self):
        self.write(self.request.headers["SName"])


class ReturnThreeOhOne(tornado.web.RequestHandler):
    def get(self):
        self.set_status(301)
        self.set_header("Location", "/")


class ReturnFiveOhOne(tornado.web.RequestHandler):
    def get(self):
        self.set_status(501)
        self.write(b"NOPE")


class EchoParamFoo(tornado.web.RequestHandler):
    def get(self):
        self.write(self.get_argument("foo"))


class Sleep(tornado.web.RequestHandler):
    async def get(self):
        await asyncio.sleep(float(self.get_argument("seconds")))
        self.write(b"slept")


# The stats CSV of uber/hacheck/tests/test_checker.py (ValidHaproxyResponse), its rows cut to
# the columns up to status: pxname, svname, then 15 counters, then status (column 18).
HAPROXY_HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
                  "status\n")
HAPROXY_CSV = HAPROXY_HEADER + "".join(f"{pxname},{svname},{',' * 15}{status}\n" for pxname, svname, status in [
        ("stats", "FRONTEND", "OPEN"), ("stats", "BACKEND", "UP"), ("foofrontend", "FRONTEND", "OPEN"),
        ("server1", "localhost", "DOWN"), ("downbackend", "BACKEND", "DOWN"), ("upbackend", "BACKEND", "UP"),
        ("postgres5503", "FRONTEND", "OPEN"), ("postgres-soa-slave", "localhost", "DOWN"),
        ("postgres-soa-slave", "BACKEND", "DOWN")])


class ValidHaproxyResponse(tornado.web.RequestHandler):
    def get(self):
        self.write(HAPROXY_CSV)


class InvalidHaproxyResponse(tornado.web.RequestHandler):
    def get(self):
        self.set_status(500)


class ExceptionResponse(tornado.web.RequestHandler):
    def get(self):
        self.write("\x00\x00")


HTTP_ROUTES = [("/", ReturnTwoHundred), ("/sname", ExpectServiceNameHeader), ("/redirect", ReturnThreeOhOne),
               ("/bip", ReturnFiveOhOne), ("/echo_foo", EchoParamFoo), ("/sleep", Sleep)]


def last_code(daemon, service: str) -> int:
    seen = dict(map(tuple, json.loads(daemon.get("/recent")[1])["seen_services"]))
    return seen[service]["code"]


# ---------------------------------------------------------------- spool

def test_spool_success_and_failure(module_daemon, tools):
    """Yelp/hacheck/tests/test_checker.py::test_spool_success, ::test_spool_failure and uber (same)."""
    assert module_daemon.get("/spool/checker_spool/1/status")[0] == 200
    tools.ok("hadown", "checker_spool")
    assert module_daemon.get("/spool/checker_spool/1/status")[0] == 503
    tools.ok("haup", "checker_spool")


# ---------------------------------------------------------------- http and https

@pytest.fixture(scope="module", params=["http", "https"])
def http_upstream(request, tmp_path_factory):
    """The originals' BaseTestHTTPHTTPSChecker app, plain (TestHTTPChecker) and TLS (TestHTTPSChecker)."""
    ssl_options = tls_server_context(tmp_path_factory.mktemp("tls")) if request.param == "https" else None
    with tornado_upstream(HTTP_ROUTES, ssl_options) as port:
        yield request.param, port


@pytest.mark.parametrize("query, code, body", [
    ("", 200, "TEST OK"),  # ::test_check_success
    ("bar", 404, None),  # ::test_check_failure
    ("redirect", 301, None),  # ::test_check_redirect (Yelp): not followed
    ("bip", 501, "NOPE"),  # ::test_check_failure_with_code
    ("echo_foo?foo=bar", 200, "bar"),  # ::test_query_params_passed
    ("echo_foo", 400, None),  # ::test_query_params_not_passed
])
def test_http_checks(module_daemon, http_upstream, query, code, body):
    """Yelp/hacheck/tests/test_checker.py TestHTTPChecker and TestHTTPSChecker ::test_check_success,
    ::test_check_failure, ::test_check_redirect, ::test_check_failure_with_code,
    ::test_query_params_passed, ::test_query_params_not_passed, and uber's TestHTTPChecker (same,
    http only, no redirect case)."""
    protocol, port = http_upstream
    answer = module_daemon.get(f"/{protocol}/foo/{port}/{query}", headers={"Pragma": "no-cache"})
    assert answer[0] == code
    if body is not None:
        assert answer[1] == body


def test_check_wrong_port(module_daemon, http_upstream):
    """Yelp/hacheck/tests/test_checker.py ::test_check_wrong_port (http and https) and uber (http):
    the checker's 599, answered 503."""
    protocol, _ = http_upstream
    service = f"wrong_port_{protocol}"
    assert module_daemon.get(f"/{protocol}/{service}/{unused_port()}/")[0] == 503
    assert last_code(module_daemon, service) == 599


@pytest.fixture(scope="module")
def named_daemon(tmp_path_factory):
    """A daemon with ``service_name_header: SName``."""
    daemon = start_hacheck(tmp_path_factory.mktemp("named"), config={"service_name_header": "SName"})
    yield daemon
    daemon.stop()


def cache_counts(daemon):
    cache = json.loads(daemon.get("/status")[1])["cache"]
    return cache["gets"], cache["hits"]


def test_service_name_header(named_daemon, http_upstream):
    """Yelp/hacheck/tests/test_checker.py ::test_service_name_header and uber (same): the service
    name is sent in the configured header."""
    protocol, port = http_upstream
    assert named_daemon.get(f"/{protocol}/service_name/{port}/sname")[:2] == (200, "service_name")


def test_cache_ignores_service_name(module_daemon, http_upstream):
    """Yelp/hacheck/tests/test_checker.py ::test_cache_ignores_service_name: two service names,
    one check (same port and path): the second is a cache hit."""
    protocol, port = http_upstream
    gets, hits = cache_counts(module_daemon)
    query = f"echo_foo?foo=shared{protocol}"
    assert module_daemon.get(f"/{protocol}/service_name.main/{port}/{query}")[0] == 200
    assert module_daemon.get(f"/{protocol}/service_name.main_ro/{port}/{query}")[0] == 200
    assert cache_counts(module_daemon) == (gets + 2, hits + 1)


def test_service_name_header_disables_cache(named_daemon, http_upstream):
    """Yelp/hacheck/tests/test_checker.py ::test_service_name_header_disables_cache: with the
    service name sent upstream, two names are two checks."""
    protocol, port = http_upstream
    gets, hits = cache_counts(named_daemon)
    assert named_daemon.get(f"/{protocol}/service_name.main/{port}/sname")[1] == "service_name.main"
    assert named_daemon.get(f"/{protocol}/service_name.main_ro/{port}/sname")[1] == "service_name.main_ro"
    assert cache_counts(named_daemon) == (gets + 2, hits)


def test_max_clients_and_healthcheck_timeout(tmp_path, hacheck_daemon):
    """Yelp/hacheck/tests/test_checker.py::TestMaxClientsAndHealthcheckTimeout: with
    healthcheck_timeout 1 a slower upstream is a 503 within about a second (599 recorded), and
    max_clients 3 holds checks to three connections at once."""
    daemon = hacheck_daemon(config={"healthcheck_timeout": 1, "max_clients": 3})
    with tornado_upstream(HTTP_ROUTES) as port:
        started = time.monotonic()
        assert daemon.get(f"/http/slow/{port}/sleep?seconds=3")[0] == 503
        assert time.monotonic() - started < 2.5
        assert last_code(daemon, "slow") == 599

    with threaded_upstream() as (port, upstream):
        upstream.delay = 0.3
        threads = [threading.Thread(target=daemon.get, args=(f"/http/many/{port}/path{n}",)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(upstream.requests) == 6
        assert upstream.max_in_flight_total <= 3


# ---------------------------------------------------------------- tcp and smtp

def greet_then_wait(response: bytes):
    """The originals' TestServer: write ``response`` at once; here, then wait for the client to finish."""
    def handle(connection):
        connection.sendall(response)
        while connection.recv(4096):
            pass
    return handle


def test_tcp_check(module_daemon):
    """Yelp/hacheck/tests/test_checker.py TestTCPChecker ::test_check_success, ::test_check_failure
    and uber (same)."""
    with script_server(greet_then_wait(b"hello")) as port:
        assert module_daemon.get(f"/tcp/foo/{port}")[0] == 200
    assert module_daemon.get(f"/tcp/foo/{unused_port()}")[0] == 503


def smtp_server(connection):
    """Yelp's TestSMTPServer: greet, expect QUIT, say bye."""
    connection.sendall(b"220 some.host MTA NAME\r\n")
    assert connection.recv(4096) == b"QUIT\r\n"
    connection.sendall(b"221 2.0.0 Bye\r\n")


def test_smtp_check_success(module_daemon):
    """Yelp/hacheck/tests/test_checker.py TestSMTPChecker::test_check_success."""
    with script_server(smtp_server) as port:
        assert module_daemon.get(f"/smtp/mail/{port}")[0] == 200


def test_smtp_check_failure_code(module_daemon):
    """Yelp/hacheck/tests/test_checker.py TestSMTPChecker::test_check_failure, the code: a server
    that hangs up at once is a 503."""
    with script_server(lambda connection: None) as port:
        assert module_daemon.get(f"/smtp/mail_hangs_up/{port}")[0] == 503


@deliberate("an-smtp-server-that-hangs-up")
def test_smtp_check_failure_message(module_daemon):
    """Yelp/hacheck/tests/test_checker.py TestSMTPChecker::test_check_failure, the body."""
    with script_server(lambda connection: None) as port:
        assert module_daemon.get(f"/smtp/mail_hangs_up_body/{port}")[:2] == (503, "Peer unexpectedly closed connection")


# ---------------------------------------------------------------- haproxy (uber only)

@pytest.fixture(scope="module")
def haproxy_stats():
    with tornado_upstream([("/;csv", ValidHaproxyResponse)]) as port:
        yield port


@pytest.mark.parametrize("backend, code, body", [
    ("downbackend", 500, "downbackend is DOWN"),  # ::test_downbackend
    ("nonexistentbackend", 500, "nonexistentbackend is not found"),  # ::test_nonexistentbackend
    ("upbackend", 200, "upbackend is UP"),  # ::test_upbackend
])
def test_haproxy_checker_valid_response(module_daemon, haproxy_stats, backend, code, body):
    """uber/hacheck/tests/test_checker.py TestHaproxyCheckerValidResponse ::test_downbackend,
    ::test_nonexistentbackend, ::test_upbackend."""
    assert module_daemon.get(f"/haproxy/{backend}/{haproxy_stats}")[:2] == (code, body)


def test_haproxy_checker_invalid_response(module_daemon):
    """uber/hacheck/tests/test_checker.py TestHaproxyCheckerInvalidResponse::test_invalidhttpresponse:
    a stats page answering 500 with no body is a 500 (and 500 in /recent)."""
    with tornado_upstream([("/;csv", InvalidHaproxyResponse)]) as port:
        assert module_daemon.get(f"/haproxy/invalid_stats/{port}")[0] == 500
    assert last_code(module_daemon, "invalid_stats") == 500


def test_haproxy_checker_exception_response(module_daemon):
    """uber/hacheck/tests/test_checker.py TestHaproxyCheckerExceptionResponse::test_badresponse:
    a stats page of NUL bytes is the checker's 599, answered 503."""
    with tornado_upstream([("/;csv", ExceptionResponse)]) as port:
        assert module_daemon.get(f"/haproxy/nul_stats/{port}")[0] == 503
    assert last_code(module_daemon, "nul_stats") == 599


# ---------------------------------------------------------------- redis and sentinel (uber only)

def test_redis_sentinel_checker(module_daemon):
    """uber/hacheck/tests/test_checker.py TestRedisSentinelChecker ::test_check_success,
    ::test_check_error, ::test_check_timeout: +PONG is 200, anything else 500, nothing 503."""
    with script_server(greet_then_wait(b"+PONG\r\n")) as port:
        assert module_daemon.get(f"/sentinel/foo/{port}")[0] == 200
    with script_server(greet_then_wait(b"WAT\r\n")) as port:
        assert module_daemon.get(f"/sentinel/foo_wat/{port}")[0] == 500
    assert module_daemon.get(f"/sentinel/foo_none/{unused_port()}")[0] == 503


@pytest.mark.parametrize("protocol, last_field", [("redis-info", "Keyspace"), ("sentinel-info", "sentinels")])
def test_redis_and_sentinel_info_checkers(module_daemon, protocol, last_field):
    """uber/hacheck/tests/test_checker.py TestRedisInfoChecker and TestSentinelInfoChecker
    ::test_check_success, ::test_check_timeout. uber's servers sent ``$25``/``$26`` before 27 and
    28 bytes with no closing CRLF, which its checker never parsed; here the reply is framed as a
    Redis server frames it."""
    text = f"redis_version:123\r\n{last_field}".encode()
    with script_server(greet_then_wait(b"$%d\r\n%s\r\n" % (len(text), text))) as port:
        code, body, _ = module_daemon.get(f"/{protocol}/foo/{port}")
        assert code == 200 and json.loads(body)["redis_version"] == "123"
    assert module_daemon.get(f"/{protocol}/foo_none/{unused_port()}")[0] == 503


def test_redis_info_against_a_real_redis(module_daemon):
    """uber/hacheck/tests/test_checker.py TestRedisInfoChecker::test_check_success against a real
    Redis server."""
    require_port("Redis", 6379)
    code, body, _ = module_daemon.get("/redis-info/real/6379")
    assert code == 200 and "redis_version" in json.loads(body)
