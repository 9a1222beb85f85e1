"""Who may do what, against the real daemon: remote spool changes, the hosts that headers may
name, and the introspection kept for localhost, seen from loopback and from a client in a
network namespace of its own (a veth pair this test creates and removes)."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import IN_CI, http_request, require, require_command
from tests.e2e.support import CountingListener

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def mutornadomon_importable() -> bool:
    try:
        import mutornadomon.config  # noqa: F401
    except Exception:  # it imports `mock`, which a --no-deps install may lack
        return False
    return True


# --- from loopback ----------------------------------------------------------------------


def test_check_host_outside_the_allowed_networks_is_403_and_never_connected(hacheck_daemon):
    with CountingListener("127.0.0.2") as listener:
        daemon = hacheck_daemon(config={"check_host_allowed_networks": ["192.0.2.0/24"]})
        for path in (f"/tcp/web/{listener.port}", f"/http/web/{listener.port}/health"):
            status, body, _ = daemon.get(path, headers={"X-Nerve-Check-IP": "127.0.0.2"})
            assert (status, body) == (403, "Host 127.0.0.2 is not in check_host_allowed_networks\n")
        status, body, _ = daemon.get("/tcp/web/1", headers={
            "X-Haproxy-Server-State": f"UP 1/1; address=127.0.0.2; port={listener.port}"})
        assert status == 403
        assert listener.count(0) == 0


def test_check_host_inside_the_allowed_networks_is_checked(hacheck_daemon):
    with CountingListener("127.0.0.2") as listener:
        daemon = hacheck_daemon(config={"check_host_allowed_networks": ["192.0.2.0/24", "127.0.0.2/32"]})
        status, body, _ = daemon.get(f"/tcp/web/{listener.port}", headers={"X-Nerve-Check-IP": "127.0.0.2"})
        assert status == 200 and body.startswith("Connected in")
        assert listener.count(1) == 1


def test_without_the_key_any_header_host_is_checked_as_before(hacheck_daemon):
    with CountingListener("127.0.0.2") as listener:
        daemon = hacheck_daemon()
        status, _, _ = daemon.get(f"/tcp/web/{listener.port}", headers={"X-Nerve-Check-IP": "127.0.0.2"})
        assert status == 200
        assert listener.count(1) == 1


def test_allowed_networks_leave_the_default_target_and_spool_checks_alone(hacheck_daemon):
    with CountingListener() as listener:
        daemon = hacheck_daemon(config={"check_host_allowed_networks": []})
        assert daemon.get(f"/tcp/web/{listener.port}")[0] == 200
        # A spool check connects nowhere, so the header host only picks the spool entry.
        assert daemon.get("/spool/web/80", headers={"X-Nerve-Check-IP": "10.1.2.3"})[0] == 200
        status, body, _ = daemon.get(f"/tcp/web/{listener.port}", headers={"X-Nerve-Check-IP": "localhost"})
        assert status == 403 and "localhost" in body  # a name could resolve anywhere: only addresses
        assert listener.count(1) == 1


def test_remote_spool_changes_outside_the_allowed_networks_are_403(hacheck_daemon):
    daemon = hacheck_daemon(config={"allow_remote_spool_changes": True,
                                    "remote_spool_allowed_networks": ["192.0.2.0/24"]})
    status, body, _ = daemon.get("/spool/web/0/x", method="POST", body="status=down&reason=r", headers=FORM)
    assert status == 403 and "remote_spool_allowed_networks" in body
    assert not os.path.exists(os.path.join(daemon.spool_root, "web"))


def test_remote_spool_changes_inside_the_allowed_networks_work(hacheck_daemon):
    daemon = hacheck_daemon(config={"allow_remote_spool_changes": True,
                                    "remote_spool_allowed_networks": ["127.0.0.0/8"]})
    assert daemon.get("/spool/web/0/x", method="POST", body="status=down&reason=r", headers=FORM)[0] == 200
    assert daemon.get("/spool/web/80")[0] == 503


def test_allowed_networks_do_not_turn_remote_spool_changes_on(hacheck_daemon):
    daemon = hacheck_daemon(config={"remote_spool_allowed_networks": ["127.0.0.0/8"]})
    status, body, _ = daemon.get("/spool/web/0/x", method="POST", body="status=down", headers=FORM)
    assert status == 403 and "allow_remote_spool_changes" in body


# --- from another network namespace -----------------------------------------------------


class Namespace:
    """A network namespace joined to this one by a veth pair: ``host_ip`` here, ``client_ip`` there."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name = f"hachk-{tag}"
        self.outside, self.inside = f"hav{tag}o", f"hav{tag}i"
        subnet = int(tag[:2], 16) % 250  # 10.200.<subnet>.0/30: addresses this test makes up
        self.host_ip, self.client_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
        self.network = f"10.200.{subnet}.0/30"

    def create(self) -> None:
        ip = ["ip"]
        inside = ["ip", "netns", "exec", self.name, "ip"]
        for command in (ip + ["link", "add", self.outside, "type", "veth", "peer", "name", self.inside],
                        ip + ["link", "set", self.inside, "netns", self.name],
                        ip + ["addr", "add", f"{self.host_ip}/30", "dev", self.outside],
                        ip + ["link", "set", self.outside, "up"],
                        inside + ["addr", "add", f"{self.client_ip}/30", "dev", self.inside],
                        inside + ["link", "set", self.inside, "up"],
                        inside + ["link", "set", "lo", "up"]):
            subprocess.run(command, check=True, capture_output=True, timeout=30)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def request(self, port: int, path: str, method: str = "GET", body=None, headers=None):
        """(status, body) of one request made from inside the namespace to ``host_ip``."""
        script = (
            "import http.client, json, sys\n"
            "host, port, method, path, body, headers = json.loads(sys.argv[1])\n"
            "connection = http.client.HTTPConnection(host, port, timeout=15)\n"
            "connection.request(method, path, body=body, headers=headers)\n"
            "response = connection.getresponse()\n"
            "print(json.dumps([response.status, response.read().decode('utf-8', 'replace')]))\n"
        )
        arguments = json.dumps([self.host_ip, port, method, path, body, headers or {}])
        result = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", script, arguments],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return tuple(json.loads(result.stdout))


@pytest.fixture(scope="module")
def namespace():
    require_command("ip")
    space = Namespace()
    added = subprocess.run(["ip", "netns", "add", space.name], capture_output=True, text=True)
    if added.returncode != 0:
        message = f"cannot create a network namespace: {added.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        space.create()
        yield space
    finally:
        space.remove()


def test_introspection_refuses_a_remote_client(hacheck_daemon, namespace):
    require(mutornadomon_importable(), "mutornadomon (and its import of mock) is not installed")
    daemon = hacheck_daemon()
    status, body = namespace.request(daemon.port, "/mutornadomon")
    assert status == 403
    assert http_request(daemon.port, "/mutornadomon")[0] == 200
    # The original served these to everyone (halist reads /recent); they stay open.
    assert namespace.request(daemon.port, "/status")[0] == 200
    assert namespace.request(daemon.port, "/spool/web/80") == (200, "")


def test_remote_client_and_remote_spool_changes(hacheck_daemon, namespace):
    off = hacheck_daemon()
    assert namespace.request(off.port, "/spool/web/0/x", "POST", "status=down", FORM)[0] == 403

    anyone = hacheck_daemon(config={"allow_remote_spool_changes": True})
    assert namespace.request(anyone.port, "/spool/web/0/x", "POST", "status=down&reason=r", FORM)[0] == 200
    assert http_request(anyone.port, "/spool/web/80")[0] == 503

    elsewhere = hacheck_daemon(config={"allow_remote_spool_changes": True,
                                       "remote_spool_allowed_networks": ["192.0.2.0/24", "127.0.0.0/8"]})
    status, body = namespace.request(elsewhere.port, "/spool/web/0/x", "POST", "status=down", FORM)
    assert status == 403 and namespace.client_ip in body
    assert not os.path.exists(os.path.join(elsewhere.spool_root, "web"))

    this_one = hacheck_daemon(config={"allow_remote_spool_changes": True,
                                      "remote_spool_allowed_networks": [namespace.network]})
    assert namespace.request(this_one.port, "/spool/web/0/x", "POST", "status=down&reason=r", FORM)[0] == 200
    assert http_request(this_one.port, "/spool/web/80")[0] == 503
    local = http_request(this_one.port, "/spool/web/0/x", method="POST", body="status=up", headers=FORM)
    assert local[0] == 403  # loopback is not in the list either


def test_remote_client_cannot_aim_checks_outside_the_allowed_networks(hacheck_daemon, namespace):
    with CountingListener(namespace.host_ip) as listener:
        daemon = hacheck_daemon(config={"check_host_allowed_networks": ["192.0.2.0/24"]})
        headers = {"X-Nerve-Check-IP": namespace.host_ip}
        status, body = namespace.request(daemon.port, f"/tcp/web/{listener.port}", headers=headers)
        assert status == 403 and namespace.host_ip in body
        assert listener.count(0) == 0

        allowed = hacheck_daemon(config={"check_host_allowed_networks": [namespace.network]})
        status, body = namespace.request(allowed.port, f"/tcp/web/{listener.port}", headers=headers)
        assert status == 200 and body.startswith("Connected in")
        assert listener.count(1) == 1
