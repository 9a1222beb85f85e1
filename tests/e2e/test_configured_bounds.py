"""The agent's, the stop's and the http check's bounds are configuration keys, through the real daemon.

Before, they were fixed: an agent client was waited for 1 s, an agent request line was
cut at 1024 bytes, an upstream body at 64 KiB, and a stop gave a connection 1 s to send
its request.
"""

import os
import signal
import socket
import time

import yaml

from tests.conftest import unused_port
from tests.e2e.support import ask_agent, operator_tool, threaded_upstream
from tests.test_reload import wait_for_line

WAIT = 20  # generous: other helpers load this 2-core machine


def reload_with(daemon, config_path, keys: dict, reloads: int) -> None:
    config_path.write_text(yaml.safe_dump(keys))
    os.kill(daemon.pid, signal.SIGHUP)
    assert len(wait_for_line(daemon.output, "reloaded", reloads)) == reloads, daemon.output()


def test_agent_request_timeout_and_length_come_from_the_configuration_and_a_reload(hacheck_daemon, tmp_path):
    agent_port = unused_port()
    config_path = tmp_path / "agent.yaml"
    keys = {"agent_request_timeout": 2.5, "max_agent_request_bytes": 16}
    config_path.write_text(yaml.safe_dump(keys))
    daemon = hacheck_daemon(config=str(config_path), args=["-A", str(agent_port)])
    operator_tool("hadown", daemon.spool_root, "-r", "everything", "all")
    # A silent client is answered (for an empty line: only "all" applies) once the configured time is over.
    started = time.monotonic()
    assert ask_agent(agent_port, b"") == b"maint #everything\n"
    assert time.monotonic() - started >= 2.0  # not after the 1 s that used to be fixed
    long_service = b"w" * 40
    assert ask_agent(agent_port, long_service + b"\n") == \
        b"#hacheck: request longer than 16 bytes (max_agent_request_bytes)\n"
    reload_with(daemon, config_path, {**keys, "max_agent_request_bytes": 64}, 1)
    assert ask_agent(agent_port, long_service + b"\n") == b"maint #everything\n"


def test_upstream_body_bound_comes_from_the_configuration_and_a_reload(hacheck_daemon, tmp_path):
    config_path = tmp_path / "body.yaml"
    keys = {"max_upstream_body_bytes": 100}
    config_path.write_text(yaml.safe_dump(keys))
    with threaded_upstream() as (upstream_port, upstream):
        upstream.body = b"ok " * 50  # 150 bytes
        daemon = hacheck_daemon(config=str(config_path))
        status, body, _ = daemon.get(f"/http/web/{upstream_port}/health")
        assert status == 503, body
        assert f"Answer from http://127.0.0.1:{upstream_port}/health is larger than 100 bytes; stopped reading it" \
            in body
        # The bound is a key the cached answers depend on: a reload that changes it empties the cache.
        reload_with(daemon, config_path, {"max_upstream_body_bytes": 1000}, 1)
        status, body, _ = daemon.get(f"/http/web/{upstream_port}/health")
        assert (status, body) == (200, "ok " * 50)


def test_a_stop_gives_connections_stop_grace_to_send_their_request(hacheck_daemon):
    grace = 3.0
    daemon = hacheck_daemon(config={"stop_grace": grace, "healthcheck_timeout": 1})
    request = b"GET /spool/web/1/ HTTP/1.1\r\nHost: hacheck\r\n\r\n"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as late, \
            socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT) as silent:
        # An answer proves each connection is accepted; HTTP/1.1 keeps them open.
        for connection in (late, silent):
            connection.sendall(request)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert wait_for_line(daemon.output, "stopping"), daemon.output()
        # Past the 1 s that used to be fixed, within stop_grace: still answered.
        time.sleep(max(0.0, signalled + 1.5 - time.monotonic()))
        late.sendall(request)
        assert late.recv(4096).startswith(b"HTTP/1.1 200")
        # A connection that sends nothing is closed once stop_grace is over.
        assert silent.recv(4096) == b""
        assert time.monotonic() - signalled >= grace - 0.5
    assert daemon.process.wait(WAIT) == 0
