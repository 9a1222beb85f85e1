"""airbnb/nerve's http check, as Yelp/nerve-tools configures it, byte for byte.

nerve (lib/nerve/service_watcher/http.rb, ``HttpServiceCheck``) asks with Ruby's
``Net::HTTP``: ``Net::HTTP.new(host, port).get(uri, headers)``, and counts a
check as passed when the code is 2xx or 3xx (and the body holds ``expect``, when
set). Yelp/nerve-tools (nerve_tools/configure_nerve.py,
``generate_subconfiguration``) points it at hacheck on 127.0.0.1:<hacheck_port>
with ``uri`` ``/<mode>/<service>/<port>/<healthcheck_uri>`` and the header
``x-smartstack-target-identity: <service>``; for a Kubernetes pod, Yelp/paasta
(paasta_tools/kubernetes_tools.py) adds ``X-Nerve-Check-IP: <pod ip>`` to
``extra_healthcheck_headers``. The requests Ruby 3.1's Net::HTTP sends for
these are stored in ``captures/nerve-*.http``; with ``ruby`` installed they are
captured again (and the real client asks hacheck). CI does not need Ruby: the
stored bytes are what every run replays.
"""

import json
import shutil
import subprocess

import pytest

from tests.clients.support import Form, RecordingListener, replay, tornado_upstream, with_markers
from tests.conftest import http_request, unused_port
from tests.e2e.support import operator_tool

NERVE = "airbnb/nerve lib/nerve/service_watcher/http.rb"
NERVE_TOOLS = "Yelp/nerve-tools nerve_tools/configure_nerve.py"
POD_IP = "127.0.0.2"  # the pod's address in X-Nerve-Check-IP: another loopback address here

# The headers each form's check is configured with, in the order nerve's configuration has them.
HEADERS = {
    "nerve-tools-http": {"x-smartstack-target-identity": "web"},
    "nerve-paasta-pod": {"X-Nerve-Check-IP": POD_IP, "x-smartstack-target-identity": "web"},
}
FORMS = [
    Form("nerve-tools-http", f"{NERVE}, configured by {NERVE_TOOLS}"),
    Form("nerve-paasta-pod", f"{NERVE}, configured by {NERVE_TOOLS} and Yelp/paasta paasta_tools/kubernetes_tools.py"),
]
IDS = [form.name for form in FORMS]
URI = "/http/web/{server_port}/status"

# nerve's HttpServiceCheck#check and #get_connection, reduced to the request and its verdict.
NERVE_CHECK = """
require 'net/http'
require 'json'
opts = JSON.parse(ARGV[0])
con = Net::HTTP.new(opts['host'], opts['port'])
con.read_timeout = 5
con.open_timeout = 5
response = con.get(opts['uri'], opts['headers'])
code = response.code.to_i
expected = opts['expect'].nil? || response.body.include?(opts['expect'])
puts JSON.generate({'code' => code, 'body' => response.body, 'up' => (code >= 200 and code < 400 and expected)})
"""


def ruby_path() -> str:
    """Ruby, or a skip: CI replays the stored bytes and does not need it (even with CI=true)."""
    path = shutil.which("ruby")
    if path is None:
        pytest.skip("ruby is not installed: the real Net::HTTP client is not run (the stored bytes are)")
    return path


def nerve_check(ruby: str, hacheck_port: int, uri: str, headers: dict, expect=None) -> dict:
    options = {"host": "127.0.0.1", "port": hacheck_port, "uri": uri, "headers": headers, "expect": expect}
    result = subprocess.run([ruby, "-e", NERVE_CHECK, json.dumps(options)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def capture_nerve(forms) -> dict:
    """The request Net::HTTP sends for each form, with its ports as markers."""
    ruby = shutil.which("ruby")
    if ruby is None:
        raise SystemExit("ruby is not installed: cannot capture nerve's requests")
    server_port = unused_port()
    captured = {}
    for form in forms:
        with RecordingListener() as listener:
            nerve_check(ruby, listener.port, URI.format(server_port=server_port), HEADERS[form.name])
            captured[form.name] = with_markers(listener.first(), server_port, listener.port)
    return captured


def nerve_concludes_up(code: int, body: str, expect=None) -> bool:
    """nerve's verdict on an answer (HttpServiceCheck#check)."""
    return 200 <= code < 400 and (expect is None or expect in body)


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_real_net_http_sends_the_stored_bytes(form):
    ruby_path()
    assert capture_nerve([form])[form.name] == form.stored()


def test_stored_request_is_the_nerve_request():
    """What the stored bytes are, so a wrong capture cannot pass unnoticed."""
    lines = FORMS[1].stored().decode().split("\r\n")
    assert lines[0] == "GET /http/web/@SERVER_PORT@/status HTTP/1.1"
    assert {"User-Agent: Ruby", "Host: 127.0.0.1:@HACHECK_PORT@", f"X-Nerve-Check-Ip: {POD_IP}",
            "X-Smartstack-Target-Identity: web", "Connection: close"} <= set(lines)


def test_a_healthy_service_is_up_and_a_downtime_takes_it_down(hacheck_daemon):
    form = FORMS[0]
    with tornado_upstream() as (port, upstream):
        daemon = hacheck_daemon(config={"cache_time": 0})  # the upstream's failure shows at once
        code, body, _ = replay(form, daemon.port, port)
        assert (code, body) == (200, "healthy")
        assert nerve_concludes_up(code, body, expect="healthy")
        [(path, headers)] = upstream.requests
        assert path == "/status" and headers["Host"] == f"127.0.0.1:{daemon.port}"  # nerve's, copied

        operator_tool("hadown", daemon.spool_root, "-r", "deploying", "web")  # nerve-tools' updown_service
        code, body, _ = replay(form, daemon.port, port)
        assert code == 503 and not nerve_concludes_up(code, body)
        operator_tool("haup", daemon.spool_root, "web")
        operator_tool("hadown", daemon.spool_root, "-P", str(port), "web")  # updown_service with a port
        assert not nerve_concludes_up(*replay(form, daemon.port, port)[:2])

        operator_tool("haup", daemon.spool_root, "-P", str(port), "web")
        upstream.code = 500
        code, body, _ = replay(form, daemon.port, port)
        assert not nerve_concludes_up(code, body)


def test_a_pod_is_checked_at_its_own_address(hacheck_daemon):
    """X-Nerve-Check-IP: hacheck checks the pod's address, not 127.0.0.1."""
    form = FORMS[1]
    with tornado_upstream(POD_IP) as (port, upstream):
        daemon = hacheck_daemon()
        code, body, _ = replay(form, daemon.port, port)
        assert nerve_concludes_up(code, body) and body == "healthy"
        assert [path for path, _ in upstream.requests] == ["/status"]

        operator_tool("hadown", daemon.spool_root, "web")
        assert not nerve_concludes_up(*replay(form, daemon.port, port)[:2])


def test_real_nerve_check_against_hacheck(hacheck_daemon):
    """The real Net::HTTP client, with nerve's verdict, against the real daemon."""
    ruby = ruby_path()
    with tornado_upstream() as (port, _):
        daemon = hacheck_daemon()
        uri = URI.format(server_port=port)
        assert nerve_check(ruby, daemon.port, uri, HEADERS["nerve-tools-http"], expect="healthy")["up"] is True
        operator_tool("hadown", daemon.spool_root, "web")
        result = nerve_check(ruby, daemon.port, uri, HEADERS["nerve-tools-http"])
        assert result["code"] == 503 and result["up"] is False
        assert http_request(daemon.port, "/status")[0] == 200
