"""End to end: a per-port downtime reaches checks that name a host.

nerve-tools (Yelp/nerve-tools nerve_tools/updown_service.py, reconfigure_hacheck) takes an
instance out with `hadown <service> -P <port>`, no host, while nerve's checks carry
X-Nerve-Check-IP with the instance's address; HAProxy's send-state carries address= and port=.
The originals looked only at `<service>:<host>:<port>` for such checks, so the downtime
never applied.
"""

import pytest

from tests.conftest import start_hacheck
from tests.e2e.support import operator_tool

NERVE_IP = "10.1.2.3"
OTHER_IP = "10.1.2.4"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    running = start_hacheck(tmp_path_factory.mktemp("port-downtime-with-host"))
    try:
        yield running
    finally:
        running.stop()


def spool_answer(daemon, path: str, **headers):
    return daemon.get(path, headers=headers)[:2]


def test_nerve_tools_hadown_port_reaches_a_check_with_x_nerve_check_ip(daemon):
    root = daemon.spool_root
    assert spool_answer(daemon, "/spool/svc.main/31000/status", **{"X-Nerve-Check-IP": NERVE_IP}) == (200, "")
    operator_tool("hadown", root, "svc.main", "-P", "31000")  # argument order as updown_service writes it
    down = spool_answer(daemon, "/spool/svc.main/31000/status", **{"X-Nerve-Check-IP": NERVE_IP})
    assert down[0] == 503 and down[1].startswith("Service svc.main in down state since ")
    # No check is run for a service held down: the answer comes before any connection to 10.1.2.3.
    assert daemon.get("/http/svc.main/31000/status", headers={"X-Nerve-Check-IP": NERVE_IP})[0] == 503
    assert spool_answer(daemon, "/spool/svc.main/31001/status", **{"X-Nerve-Check-IP": NERVE_IP}) == (200, "")
    operator_tool("haup", root, "svc.main", "-P", "31000")
    assert spool_answer(daemon, "/spool/svc.main/31000/status", **{"X-Nerve-Check-IP": NERVE_IP}) == (200, "")


def test_send_state_address_and_port_are_reached_by_a_per_port_downtime(daemon):
    state = f"UP 2/3; name=be_web/a; node=lb1; weight=1/2; scur=0/0; qcur=0; address={NERVE_IP}; port=8080"
    operator_tool("hadown", daemon.spool_root, "-r", "bad disk", "-P", "8080", "web")
    try:
        status, body = spool_answer(daemon, "/spool/web/1", **{"X-Haproxy-Server-State": state})
        assert (status, body.endswith(": bad disk")) == (503, True)
    finally:
        operator_tool("haup", daemon.spool_root, "-P", "8080", "web")
    assert spool_answer(daemon, "/spool/web/1", **{"X-Haproxy-Server-State": state}) == (200, "")


def test_a_host_downtime_still_takes_out_only_that_host(daemon):
    operator_tool("hadown", daemon.spool_root, "-r", "one box", "-P", "9000", "-H", NERVE_IP, "api")
    try:
        assert spool_answer(daemon, "/spool/api/9000", **{"X-Nerve-Check-IP": NERVE_IP})[0] == 503
        assert spool_answer(daemon, "/spool/api/9000", **{"X-Nerve-Check-IP": OTHER_IP}) == (200, "")
        assert spool_answer(daemon, "/spool/api/9000") == (200, "")
    finally:
        operator_tool("haup", daemon.spool_root, "-P", "9000", "-H", NERVE_IP, "api")
