"""HAProxy 2.6's HTTP health checks, byte for byte, answered by hacheck on every Tornado we support.

Each form is one way HAProxy's manual lets a check be written; its request,
as Debian's HAProxy 2.6 sends it, is stored in ``captures/<form>.http``.
With HAProxy installed, the first test captures each form again from the
real HAProxy and checks it against the stored bytes. Every Tornado refusal of
a shape HAProxy sends (Tornado 6.5 refuses HTTP/1.1 without Host) fails here.
"""

import pytest

from tests.clients.support import (
    Form,
    answered_then_down,
    canonical,
    captured_by_haproxy,
    haproxy_end_to_end,
    tornado_upstream,
)

MANUAL = "HAProxy 2.6 configuration manual, option httpchk / http-check send"
FORMS = [
    # The plain form of docs/haproxy.md: HTTP/1.0, no Host.
    Form("haproxy-http10", MANUAL, "option httpchk GET /http/web/{server_port}/health"),
    # The HAProxy 1.x idiom for a Host: headers after the version, escaped.
    Form("haproxy-http10-host", MANUAL,
         r"option httpchk GET /http/web/{server_port}/health HTTP/1.0\r\nHost:\ web.example.com"),
    # HTTP/1.1 without Host, an extra header: the shape synapse-tools writes (test_synapse_tools.py).
    Form("haproxy-http11-no-host", MANUAL,
         r"option httpchk GET /http/web/{server_port}/health HTTP/1.1\r\nX-Mode:\ ro"),
    # HAProxy 2.2's http-check send, a Host with a port.
    Form("haproxy-send-host-port", MANUAL, "option httpchk\nhttp-check send meth GET uri "
         "/http/web/{server_port}/health ver HTTP/1.1 hdr Host web.example.com:8080"),
    # Header names written in lower case (HAProxy sends every name in lower case anyway).
    Form("haproxy-send-lowercase", MANUAL, "option httpchk\nhttp-check send meth GET uri "
         "/http/web/{server_port}/health ver HTTP/1.1 hdr host web.example.com hdr x-mode ro"),
    # send-state on HTTP/1.0 without Host: the URL's port (1) is not the service's, the header's port is.
    Form("haproxy-send-state-http10", MANUAL, "option httpchk GET /http/web/1/health\nhttp-check send-state"),
]
IDS = [form.name for form in FORMS]
# The Host each form makes hacheck send upstream: the one HAProxy sent, or, without one, the
# upstream's own address (as the original hacheck, whose HTTP client set it from the URL).
UPSTREAM_HOST = {
    "haproxy-http10-host": "web.example.com",
    "haproxy-send-host-port": "web.example.com:8080",
    "haproxy-send-lowercase": "web.example.com",
}


captured = captured_by_haproxy(FORMS)


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_real_haproxy_sends_the_stored_bytes(form, captured):
    assert canonical(captured[form.name]) == canonical(form.stored())


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_stored_request_is_answered(form, hacheck_daemon):
    with tornado_upstream() as (port, upstream):
        assert answered_then_down(form, hacheck_daemon(), port) == "healthy"
        [(path, headers)] = upstream.requests
        assert path == "/health"
        assert headers["Host"] == UPSTREAM_HOST.get(form.name, f"127.0.0.1:{port}")


def test_every_form_keeps_a_healthy_server_up_and_a_downtime_takes_it_down(tmp_path, hacheck_daemon):
    with tornado_upstream() as (port, _):
        haproxy_end_to_end(tmp_path, FORMS, hacheck_daemon(), port)
