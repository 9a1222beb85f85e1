"""The health checks Yelp/synapse-tools configures HAProxy to send (src/synapse_tools/configure_synapse.py,
``_generate_haproxy_for_watcher``), byte for byte as HAProxy 2.6 sends them.

synapse-tools writes, for every service, ``option httpchk GET /<mode>/<service>/0/<healthcheck_uri>``
and ``http-check send-state``; with ``extra_healthcheck_headers`` it adds ``HTTP/1.1`` and the
headers after it (``\\r\\nX-Mode:\\ ro``), and no Host. The URL's port is 0: hacheck takes the
service's port from HAProxy's ``X-Haproxy-Server-State``. Each server line says ``check port
<hacheck_port>`` (6666 by default) and ``observe layer7`` (``layer4`` for a tcp service), with
``maxconn`` and ``maxqueue``. Stored requests: ``captures/synapse-*.http``.
"""

import pytest

from tests.clients.support import (
    Form,
    answered_then_down,
    canonical,
    captured_by_haproxy,
    haproxy_end_to_end,
    replay,
    tornado_upstream,
)
from tests.e2e.support import operator_tool

SOURCE = "Yelp/synapse-tools src/synapse_tools/configure_synapse.py"
HTTP_SERVER = "observe layer7 maxconn 50 maxqueue 10"
TCP_SERVER = "observe layer4 maxconn 50 maxqueue 10"
FORMS = [
    # A service with extra_healthcheck_headers {X-Mode: ro} (synapse-tools' own tests use this one).
    Form("synapse-http-extra-headers", SOURCE,
         "option httpchk GET /http/web/0/status HTTP/1.1\\r\\nX-Mode:\\ ro\nhttp-check send-state", HTTP_SERVER),
    # A service without extra headers: HTTP/1.0.
    Form("synapse-http", SOURCE, "option httpchk GET /http/web/0/status\nhttp-check send-state", HTTP_SERVER),
    # A tcp service (mode tcp), extra headers: hacheck checks the port only.
    Form("synapse-tcp-extra-headers", SOURCE,
         "mode tcp\noption httpchk GET /tcp/web/0/status HTTP/1.1\\r\\nX-Mode:\\ ro\nhttp-check send-state",
         TCP_SERVER),
]
IDS = [form.name for form in FORMS]


captured = captured_by_haproxy(FORMS)


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_real_haproxy_sends_the_stored_bytes(form, captured):
    assert canonical(captured[form.name]) == canonical(form.stored())


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_stored_request_is_answered(form, hacheck_daemon):
    with tornado_upstream() as (port, upstream):
        body = answered_then_down(form, hacheck_daemon(), port)
        if form.name.startswith("synapse-http"):
            assert body == "healthy"
            [(path, headers)] = upstream.requests
            assert path == "/status"
            assert headers["Host"] == f"127.0.0.1:{port}"  # none came from HAProxy: the upstream's own


def test_a_port_downtime_takes_only_that_server_down(hacheck_daemon):
    """nerve-tools' updown_service writes ``hadown -P <port> <service>``; synapse's URL says port 0,
    the state header the server's port."""
    form = FORMS[0]
    with tornado_upstream() as (port, _), tornado_upstream() as (other_port, _):
        daemon = hacheck_daemon()
        operator_tool("hadown", daemon.spool_root, "-P", str(port), "web")
        assert replay(form, daemon.port, port)[0] == 503
        assert replay(form, daemon.port, other_port)[0] == 200


def test_every_form_keeps_a_healthy_server_up_and_a_downtime_takes_it_down(tmp_path, hacheck_daemon):
    with tornado_upstream() as (port, _):
        haproxy_end_to_end(tmp_path, FORMS, hacheck_daemon(), port)
