"""The agent-check server (issue 8): real TCP connections to a real AgentServer, and through the daemon."""

import asyncio
import contextlib
import socket
import subprocess
import time

import pytest
import tornado.netutil

from hacheck.config import Config
from hacheck.spool import Spool
from hacheck.web.agent import AgentServer, BadAgentRequest, parse_request
from tests.conftest import start_hacheck, tool_argv, tool_env, unused_port

READ_TIMEOUT = 0.3


@contextlib.asynccontextmanager
async def agent_server(spool, read_timeout=READ_TIMEOUT):
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    config = Config(agent_request_timeout=read_timeout)
    server = AgentServer(spool, lambda: config)
    await server.start(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        await server.wait_closed()


async def ask(port, request: bytes, half_close=False, timeout=10.0) -> bytes:
    """Send ``request`` (optionally half-closing), return everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if request:
            writer.write(request)
            await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


# --- the request line -----------------------------------------------------------------


@pytest.mark.parametrize("line, parsed", [
    ("web", ("web", None)),
    ("web\n", ("web", None)),
    ("web\r\n", ("web", None)),
    (" web\t", ("web", None)),
    ("web/80", ("web", 80)),
    ("web:80", ("web", 80)),
    ("my.web_svc-2:65535", ("my.web_svc-2", 65535)),
    ("", (None, None)),
    ("\r\n", (None, None)),
])
def test_request_forms(line, parsed):
    assert parse_request(line) == parsed


@pytest.mark.parametrize("line", ["we b", "web:", "web/", "web:0", "web:65536", "web:123456", "web/80/x",
                                  "web:80:90", ".", "..", "../etc", "web;rm", "web#1", "wéb", "web:-1"])
def test_bad_request_lines(line):
    with pytest.raises(BadAgentRequest):
        parse_request(line)


# --- answers --------------------------------------------------------------------------


@pytest.mark.parametrize("request_line", [b"web\n", b"web\r\n", b"web/80\n", b"web:80\n", b"web:80\r\n"])
@pytest.mark.gen_test
async def test_up_ready_when_nothing_is_down(spool, request_line):
    async with agent_server(spool) as port:
        assert await ask(port, request_line) == b"up ready\n"


@pytest.mark.gen_test
async def test_maint_and_drain_with_reason(spool):
    async with agent_server(spool) as port:
        spool.down("web", reason="deploy 42")
        assert await ask(port, b"web\n") == b"maint #deploy 42\n"
        assert await ask(port, b"web/80\n") == b"maint #deploy 42\n"
        spool.down("web", reason="rolling\r\nrestart\tnow", state="drain")
        assert await ask(port, b"web:80\r\n") == b"drain #rolling restart now\n"
        spool.down("web", reason="", state="drain")
        assert await ask(port, b"web\n") == b"drain\n"
        spool.down("web", reason="")
        assert await ask(port, b"web\n") == b"maint\n"
        spool.up("web")
        assert await ask(port, b"web\n") == b"up ready\n"


@pytest.mark.gen_test
async def test_long_reason_stays_one_short_line(spool):
    async with agent_server(spool) as port:
        spool.down("web", reason="x" * 5000 + "\n#tail")
        answer = await ask(port, b"web\n")
    assert answer.startswith(b"maint #xxx") and answer.endswith(b"...\n")
    assert answer.count(b"\n") == 1 and len(answer) < 300


@pytest.mark.gen_test
async def test_per_port_downtimes_and_all(spool):
    async with agent_server(spool) as port:
        spool.down("web", reason="port 81 drains", port=81, state="drain")
        assert await ask(port, b"web\n") == b"up ready\n"
        assert await ask(port, b"web:80\n") == b"up ready\n"
        assert await ask(port, b"web:81\n") == b"drain #port 81 drains\n"
        assert await ask(port, b"web/81\n") == b"drain #port 81 drains\n"
        spool.down("all", reason="machine")
        # a cut wins over a drain
        assert await ask(port, b"web:81\n") == b"maint #machine\n"
        assert await ask(port, b"other\n") == b"maint #machine\n"


@pytest.mark.gen_test
async def test_expired_downtime_is_up(spool):
    async with agent_server(spool) as port:
        spool.down("web", reason="over", expiration=time.time() - 5)
        assert await ask(port, b"web\n") == b"up ready\n"


@pytest.mark.gen_test
async def test_no_line_means_only_all_applies(spool):
    async with agent_server(spool) as port:
        spool.down("web", reason="service only")
        assert await ask(port, b"", half_close=True) == b"up ready\n"
        assert await ask(port, b"\n") == b"up ready\n"
        spool.down("all", reason="everything", state="drain")
        assert await ask(port, b"", half_close=True) == b"drain #everything\n"


@pytest.mark.gen_test
async def test_line_without_newline_is_answered_at_eof(spool):
    async with agent_server(spool, read_timeout=30) as port:
        spool.down("web", reason="r", port=80)
        started = time.monotonic()
        assert await ask(port, b"web:80", half_close=True) == b"maint #r\n"
        assert time.monotonic() - started < 10  # at EOF, not after the read timeout


@pytest.mark.gen_test
async def test_silent_client_is_answered_and_let_go_after_the_read_timeout(spool):
    async with agent_server(spool) as port:
        spool.down("all", reason="everything")
        started = time.monotonic()
        assert await ask(port, b"") == b"maint #everything\n"
        elapsed = time.monotonic() - started
        # agent-send without "\n": what came before the timeout is the request
        assert await ask(port, b"web:80") == b"maint #everything\n"
    assert READ_TIMEOUT * 0.8 <= elapsed < 10


@pytest.mark.parametrize("request_line, message", [
    (b"not a service!\n", b"#hacheck: invalid request 'not a service!': expected SERVICE, SERVICE/PORT "
                          b"or SERVICE:PORT\n"),
    (b"..\n", b"#hacheck: invalid service name '..': '.' and '..' are not service names\n"),
    (b"web:99999\n", b"#hacheck: invalid port '99999': ports go from 1 to 65535, in decimal\n"),
    (b"web:0\n", b"#hacheck: invalid port '0': ports go from 1 to 65535, in decimal\n"),
    (b"\xff\xfe\x00\n", b"#hacheck: invalid request: not ASCII\n"),
    (b"GET / HTTP/1.0\r\n\r\n", b"#hacheck: invalid request 'GET / HTTP/1.0': expected SERVICE, SERVICE/PORT "
                                b"or SERVICE:PORT\n"),
    (b"w" * 5000, b"#hacheck: request longer than 1024 bytes (max_agent_request_bytes)\n"),
    (b"w" * 5000 + b"\n", b"#hacheck: request longer than 1024 bytes (max_agent_request_bytes)\n"),
])
@pytest.mark.gen_test
async def test_bad_requests_get_a_description_only_and_the_server_goes_on(spool, request_line, message):
    """A description without a state word changes nothing in HAProxy (see the e2e test)."""
    spool.down("all", reason="everything")
    async with agent_server(spool) as port:
        assert await ask(port, request_line) == message
        assert await ask(port, b"web\n") == b"maint #everything\n"


@pytest.mark.gen_test
async def test_many_clients_at_once(spool):
    spool.down("web", reason="r", state="drain")
    async with agent_server(spool) as port:
        answers = await asyncio.gather(*(ask(port, b"web\n" if n % 2 else b"db\n") for n in range(50)))
    assert answers == [b"drain #r\n" if n % 2 else b"up ready\n" for n in range(50)]


@pytest.mark.gen_test
async def test_client_that_leaves_at_once_does_not_hurt(spool):
    async with agent_server(spool) as port:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as early:
                early.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert await ask(port, b"web\n") == b"up ready\n"


# --- through the daemon ---------------------------------------------------------------


def ask_blocking(port, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                return answer
            answer += chunk


def test_daemon_serves_several_agent_ports_in_every_worker(tmp_path):
    agent_ports = [unused_port(), unused_port()]
    daemon = start_hacheck(tmp_path, args=["-n", "2", "-A", str(agent_ports[0]), "--agent-port",
                                           str(agent_ports[1])])
    try:
        Spool(daemon.spool_root).down("web", reason="r", state="drain")
        for agent_port in agent_ports:
            for _ in range(10):
                assert ask_blocking(agent_port, b"web\n") == b"drain #r\n"
        assert daemon.get("/spool/web/80")[0] == 404
        assert "agent-check answers on" in daemon.output()
    finally:
        assert daemon.stop() == 0


def test_daemon_without_no_spool_on_http_still_cuts_http(tmp_path):
    agent_port = unused_port()
    daemon = start_hacheck(tmp_path, args=["-A", str(agent_port)])
    try:
        Spool(daemon.spool_root).down("web", reason="r")
        assert ask_blocking(agent_port, b"web\n") == b"maint #r\n"
        status, body, _ = daemon.get(f"/tcp/web/{daemon.port}")
        assert status == 503 and body.endswith(": r")
    finally:
        daemon.stop()


def test_no_spool_on_http_flag(tmp_path):
    agent_port = unused_port()
    daemon = start_hacheck(tmp_path, args=["-S", "-A", str(agent_port)])
    try:
        Spool(daemon.spool_root).down("web", reason="r")
        # the daemon's own port is a real TCP listener: the real check passes, the downtime goes to the agent
        assert daemon.get(f"/tcp/web/{daemon.port}")[0] == 200
        assert ask_blocking(agent_port, b"web\n") == b"maint #r\n"
    finally:
        daemon.stop()


def test_no_spool_on_http_without_agent_port_warns(tmp_path):
    daemon = start_hacheck(tmp_path, args=["-S"])
    try:
        Spool(daemon.spool_root).down("web", reason="r")
        assert daemon.get("/spool/web/80")[0] == 503
    finally:
        daemon.stop()
    assert "-S without -A: HTTP checks ignore downtimes and no agent port reports them" in daemon.output()


def run_hacheck(tmp_path, *args):
    return subprocess.run(tool_argv("hacheck") + ["--spool-root", str(tmp_path / "spool")] + list(args),
                          capture_output=True, text=True, timeout=30, env=tool_env())


def test_agent_port_equal_to_http_port_is_a_usage_error(tmp_path):
    port = unused_port()
    result = run_hacheck(tmp_path, "-p", str(port), "-A", str(port))
    assert result.returncode == 2
    assert f"port {port} cannot serve both HTTP (-p) and the agent (-A)" in result.stderr


@pytest.mark.parametrize("value", ["0", "65536", "web"])
def test_bad_agent_port_is_a_usage_error(tmp_path, value):
    result = run_hacheck(tmp_path, "-A", value)
    assert result.returncode == 2
    assert "invalid port" in result.stderr and "Traceback" not in result.stderr


def test_agent_port_in_use_is_a_clear_start_up_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_hacheck(tmp_path, "-B", "127.0.0.1", "-p", str(unused_port()), "-A", str(busy))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy} (agent)" in result.stderr
    assert "Traceback" not in result.stderr
