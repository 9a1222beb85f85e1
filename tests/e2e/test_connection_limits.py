"""Bounded connections and bodies, the agent port out of descriptors, and a stop that is bounded
whatever clients do, through the real daemon (issue 14).

Raw sockets speak to the daemon, so that what a misbehaving client sees (the
status, the one-line body, the moment the connection closes) is what is asserted.
"""

import asyncio
import os
import re
import signal
import socket
import threading
import time
from typing import List, Optional, Tuple

import pytest

from tests.conftest import raw_exchange, unused_port
from tests.e2e.misbehaving_support import LatencyProbe, raise_open_files_limit
from tests.e2e.support import ask_agent, operator_tool

# Time on top of a bound for a close to reach the client on a busy shared machine.
SLACK = 2.0


def exchange(port: int, request: bytes, timeout: float = 10.0) -> Tuple[bytes, float]:
    """Send ``request``, read until the daemon closes; returns (everything read, seconds until the close)."""
    started = time.monotonic()
    answer = raw_exchange(port, request, timeout)
    return answer, time.monotonic() - started


def status_and_body(answer: bytes) -> Tuple[Optional[int], str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return (int(match.group(1)) if match else None), body.decode("utf-8", "replace")


def assert_one_line_answer(answer: bytes, status: int, text: str) -> None:
    got_status, body = status_and_body(answer)
    assert got_status == status, answer[:300]
    assert body.endswith("\n") and body.count("\n") == 1, body
    assert text in body, body
    assert b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n"


# --- sizes --------------------------------------------------------------------------


def test_oversized_requests_get_a_one_line_answer_and_haproxy_requests_pass(hacheck_daemon):
    daemon = hacheck_daemon(config={"allow_remote_spool_changes": True})
    port = daemon.port
    cases = [
        (b"GET /spool/web/80?q=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
         414, "it may take 8192 bytes (max_request_line_bytes)"),
        (b"GET /spool/web/80?q=" + b"x" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
         414, "max_request_line_bytes"),
        (b"GET /spool/web/80 HTTP/1.1\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (n, b"y" * 1000) for n in range(20))
         + b"\r\n", 431, "may take 16384 bytes (max_request_header_bytes)"),
        # The head only: the answer comes before any of the body is sent.
        (b"POST /spool/web/0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n"
         b"Content-Type: application/x-www-form-urlencoded\r\n\r\n",
         413, "Content-Length 100000 is over 65536 bytes (max_request_body_bytes)"),
        (b"POST /spool/web/0/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Type: application/x-www-form-urlencoded\r\n\r\n",
         411, "send the request body with a Content-Length"),
    ]
    for request, status, text in cases:
        answer, seconds = exchange(port, request)
        assert_one_line_answer(answer, status, text)
        assert seconds < 1.0 + SLACK  # answered at once, closed after at most the linger
    # What HAProxy sends: HTTP/1.0 without Host, lower-case headers, Connection: close.
    haproxy = (b"GET /spool/web/80 HTTP/1.0\r\nconnection: close\r\n"
               b"x-haproxy-server-state: UP 2/3; name=be/web; node=lb1; weight=1/2; scur=0/1; qcur=0\r\n\r\n")
    assert status_and_body(exchange(port, haproxy)[0]) == (200, "")
    assert status_and_body(exchange(port, b"GET /spool/web/80 HTTP/1.0\r\n\r\n")[0]) == (200, "")
    # A form within the bounds still changes the spool.
    form = b"status=down&reason=deploy"
    post = (b"POST /spool/web/0/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s" % (len(form), form))
    assert status_and_body(exchange(port, post)[0])[0] == 200
    status, body = status_and_body(exchange(port, haproxy)[0])
    assert status == 503 and body.startswith("Service web in down state since ") and body.endswith(": deploy")


def test_a_head_tornado_refuses_answers_400_with_its_reason_and_a_missing_host_is_served(hacheck_daemon):
    import tornado

    port = hacheck_daemon().port
    # HTTP/1.1 without Host (HAProxy's `option httpchk GET /path HTTP/1.1`): served on every Tornado.
    assert status_and_body(exchange(port, b"GET /spool/web/80 HTTP/1.1\r\nConnection: close\r\n\r\n")[0]) == (200, "")
    two_hosts = b"GET /spool/web/80 HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
    answer = exchange(port, two_hosts)[0]
    if tornado.version_info >= (6, 5):
        assert_one_line_answer(answer, 400, "Bad request: Multiple host headers not allowed: 'a,b'")
    else:  # Tornado 6.2 takes the first
        assert status_and_body(answer) == (200, "")


# --- times --------------------------------------------------------------------------


def seconds_until_closed(port: int, first: bytes = b"", trickle: bytes = b"", every: float = 0.1,
                         read_answer: bool = False, timeout: float = 10.0) -> float:
    """Open a connection, send ``first`` (then ``trickle`` every ``every`` seconds), and time the daemon's close.

    With ``read_answer``, the clock starts once a complete answer to ``first`` has come back.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        started = time.monotonic()
        connection.sendall(first)
        if read_answer:
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += connection.recv(4096)
            started = time.monotonic()
        connection.settimeout(every if trickle else timeout)
        while time.monotonic() - started < timeout:
            try:
                if not connection.recv(4096):
                    return time.monotonic() - started
            except socket.timeout:
                try:
                    connection.sendall(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
    return float("inf")


def test_idle_slow_header_and_slow_body_connections_are_closed_after_their_bounds(hacheck_daemon):
    header, idle, body = 0.5, 1.5, 0.5
    daemon = hacheck_daemon(config={"request_header_timeout": header, "idle_connection_timeout": idle,
                                    "request_body_timeout": body, "allow_remote_spool_changes": True})
    port = daemon.port
    cases = {
        "silent": (dict(), header),
        "slow header": (dict(first=b"GET /spool/web/80 HTTP/1.1\r\n", trickle=b"X: y\r\n"), header),
        "kept alive, idle": (dict(first=b"GET /spool/web/80 HTTP/1.1\r\nHost: a\r\n\r\n", read_answer=True), idle),
        "slow body": (dict(first=b"POST /spool/web/0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nstatus="),
                      body),
        # Trickling one byte at a time does not stretch the body's bound either.
        "trickled body": (dict(first=b"POST /spool/web/0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n",
                               trickle=b"x"), body),
    }
    measured = {}

    def measure(name, kwargs):
        measured[name] = seconds_until_closed(port, **kwargs)

    threads = [threading.Thread(target=measure, args=(name, kwargs)) for name, (kwargs, _) in cases.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, (_, bound) in cases.items():
        assert bound * 0.9 <= measured[name] < bound + SLACK, (name, measured)
    assert daemon.get("/spool/web/80")[0] == 200


# --- chunked bodies, and stopping ----------------------------------------------------

CHUNKERS = 48
# A spool form's worth of 1-byte chunks at a time (each is "1\r\nx\r\n" on the wire).
CHUNK_BLOCK = b"1\r\nx\r\n" * 1000
CHUNKED_HEAD = (b"POST /spool/web/0/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")


class ChunkedFlood:
    """``CHUNKERS`` clients POSTing 1-byte chunks as fast as they can, each starting again once closed.

    ``answers`` holds (first bytes of the answer, seconds from the head to them) per connection.
    """

    def __init__(self, port: int):
        self.port = port
        self.answers: List[Tuple[bytes, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _chunker(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            started = time.monotonic()
            answered_at = []
            answer = asyncio.ensure_future(reader.read(4096))
            answer.add_done_callback(lambda _, answered_at=answered_at: answered_at.append(time.monotonic()))
            try:
                writer.write(CHUNKED_HEAD)
                while not self._stop.is_set():  # on, even once answered: until the daemon closes
                    writer.write(CHUNK_BLOCK)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()
            try:
                first = await asyncio.wait_for(answer, 5)
            except (OSError, asyncio.TimeoutError):
                first = b""
            self.answers.append((first, (answered_at or [time.monotonic()])[0] - started))

    async def _run(self) -> None:
        await asyncio.gather(*(self._chunker() for _ in range(CHUNKERS)))

    def __enter__(self) -> "ChunkedFlood":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.timeout(90)
def test_chunked_posts_are_refused_at_once_spool_stays_fast_and_stop_is_bounded(hacheck_daemon):
    timeout = 1.0
    daemon = hacheck_daemon(config={"allow_remote_spool_changes": True, "healthcheck_timeout": timeout})
    with ChunkedFlood(daemon.port) as flood:
        time.sleep(0.5)
        probe = LatencyProbe(daemon.port, "/spool/other-service/80")
        time.sleep(3.0)
        samples = probe.stop()
        # Stopping while they go on sending: bounded by healthcheck_timeout plus a second or two.
        stop_started = time.monotonic()
        daemon.stop(timeout=60)
        stopped_in = time.monotonic() - stop_started
    assert stopped_in < timeout + 1.0 + SLACK, f"stopping took {stopped_in:.1f}s"
    latencies = sorted(seconds for seconds, _, _ in samples)
    assert len(latencies) >= 20 and all(status == 200 for _, status, _ in samples), samples[:5]
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    assert p95 < 0.050, f"95th percentile {p95 * 1000:.1f} ms; slowest {latencies[-1] * 1000:.1f} ms"
    refused = [first for first, _ in flood.answers if first]
    assert len(refused) >= CHUNKERS, f"only {len(refused)} answers"
    assert all(first.startswith(b"HTTP/1.1 411 ") for first in refused), refused[:3]
    # Refused on the head alone: not after reading (and parsing) the chunks.
    waits = sorted(seconds for first, seconds in flood.answers if first)
    assert waits[len(waits) // 2] < 0.5, f"median wait for the 411: {waits[len(waits) // 2]:.2f}s"
    assert_one_line_answer(refused[0], 411, "chunked request bodies are not accepted")


# --- the agent port out of file descriptors ------------------------------------------------


def test_agent_port_out_of_descriptors_logs_a_line_and_answers_once_they_free_up(hacheck_daemon):
    raise_open_files_limit(1024)
    agent_port = unused_port()
    daemon = hacheck_daemon(config={"rlimit_nofile": 40}, args=["-A", str(agent_port)])
    clients = []
    # Silent clients: each holds a descriptor of the daemon for the agent's read timeout (1 s).
    for _ in range(120):
        clients.append(socket.create_connection(("127.0.0.1", agent_port), timeout=20))
    answers = []
    for client in clients:
        answer = b""
        try:
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError as err:
            answer = repr(err).encode()
        answers.append(answer)
        client.close()
    assert answers == [b"up ready\n"] * len(clients)
    with socket.create_connection(("127.0.0.1", agent_port), timeout=10) as client:
        client.sendall(b"web\n")
        assert client.recv(4096) == b"up ready\n"
    lines = daemon.output().splitlines()
    exhausted = [line for line in lines if "Too many open files" in line]
    assert 1 <= len(exhausted) <= 2, "\n".join(lines[:30])
    assert "cannot accept connections: Too many open files" in exhausted[0]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], "\n".join(lines[:30])


# --- the spool: links and long reasons ----------------------------------------------------


def test_a_link_in_the_spool_is_down_without_showing_what_it_points_to(tmp_path, hacheck_daemon):
    secret = tmp_path / "hacheck.yaml"
    secret.write_text("mysql_password: hunter2-not-for-clients\n")
    agent_port = unused_port()
    daemon = hacheck_daemon(args=["-A", str(agent_port)])
    os.symlink(secret, os.path.join(daemon.spool_root, "web"))
    status, body, _ = daemon.get("/spool/web/80")
    assert (status, body) == (503, "Service web in down state: unreadable spool entry: not a regular file")
    assert ask_agent(agent_port, b"web\n") == b"maint #unreadable spool entry: not a regular file\n"
    listed = operator_tool("hashowdowned", daemon.spool_root)
    assert "web\tunreadable spool entry: not a regular file" in listed and "hunter2" not in listed


def test_reasons_are_cut_for_clients_and_shown_whole_by_the_tools(hacheck_daemon):
    agent_port = unused_port()
    daemon = hacheck_daemon(config={"max_reason_chars": 40}, args=["-A", str(agent_port)])
    reason = "maintenance window " + "w" * 300 + " ends"
    operator_tool("hadown", daemon.spool_root, "-r", reason, "web")
    status, body, _ = daemon.get("/spool/web/80")
    assert status == 503
    shown = reason[:37] + "..."
    assert body.endswith(f": {shown}"), body
    assert ask_agent(agent_port, b"web\n") == f"maint #{shown}\n".encode()
    assert reason in operator_tool("hashowdowned", daemon.spool_root)


# --- Tornado's private names -------------------------------------------------------------

# A Tornado that renamed IOLoop._run_callback (as a later release may): every use inside
# Tornado follows the new name, and the old one is gone. Then hacheck's own main().
_TORNADO_WITHOUT_RUN_CALLBACK = r"""
import sys, types
import tornado.ioloop, tornado.platform.asyncio

def renamed(code, old, new):
    consts = tuple(renamed(c, old, new) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_names=tuple(new if n == old else n for n in code.co_names), co_consts=consts)

for module in (tornado.ioloop, tornado.platform.asyncio):
    for cls in [value for value in vars(module).values() if isinstance(value, type)]:
        for value in vars(cls).values():
            if isinstance(value, types.FunctionType):
                value.__code__ = renamed(value.__code__, "_run_callback", "_run_callback_elsewhere")
tornado.ioloop.IOLoop._run_callback_elsewhere = tornado.ioloop.IOLoop._run_callback
del tornado.ioloop.IOLoop._run_callback

from hacheck.process.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_a_private_tornado_name_the_daemon_logs_one_line_and_serves(tmp_path):
    import subprocess
    import sys

    from tests.conftest import http_request, port_open, require, tool_env
    try:
        import mutornadomon  # noqa: F401
    except Exception:
        require(False, "mutornadomon is not installed (.ci/run installs it)")
    port = unused_port()
    output_path = tmp_path / "output.txt"
    with open(output_path, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", _TORNADO_WITHOUT_RUN_CALLBACK, "-p", str(port),
                                    "--spool-root", str(tmp_path / "spool")],
                                   stdout=output, stderr=subprocess.STDOUT, env=tool_env())
    try:
        deadline = time.monotonic() + 20
        while not port_open(port, timeout=0.2) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, output_path.read_text()
        assert http_request(port, "/spool/web/80")[:2] == (200, "")
        # Served without the callback timing: the I/O handlers are still counted.
        status, body, _ = http_request(port, "/mutornadomon")
        assert status == 200 and "callbacks_processed" in body, body
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    lines = output_path.read_text().splitlines()
    warned = [line for line in lines if "has no IOLoop._run_callback" in line]
    assert len(warned) == 1, "\n".join(lines)
    assert "Traceback" not in output_path.read_text()


# --- the log -----------------------------------------------------------------------------


def test_bad_and_refused_requests_are_logged_once_per_interval_with_a_count(hacheck_daemon):
    daemon = hacheck_daemon()
    for _ in range(100):
        assert status_and_body(exchange(daemon.port, b"NOT HTTP AT ALL\r\n\r\n")[0])[0] == 400
        assert status_and_body(exchange(daemon.port, b"GET /" + b"x" * 9000 + b" HTTP/1.0\r\n\r\n")[0])[0] == 414
    lines = daemon.output().splitlines()
    malformed = [line for line in lines if "Malformed HTTP message" in line]
    refused = [line for line in lines if "refused a request" in line]
    assert len(malformed) == 1 and len(refused) == 1, "\n".join(lines)
    assert "414 Request line too long" in refused[0]
    daemon.stop()


# --- reload ------------------------------------------------------------------------------


def test_a_reload_applies_the_new_limits(hacheck_daemon, tmp_path):
    import yaml

    from tests.test_reload import wait_for_line

    config = tmp_path / "limits.yaml"
    config.write_text(yaml.safe_dump({"allow_remote_spool_changes": True}))
    daemon = hacheck_daemon(config=str(config))
    form = b"status=down&reason=" + b"r" * 200
    post = (b"POST /spool/web/0/x HTTP/1.0\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s" % (len(form), form))
    assert status_and_body(exchange(daemon.port, post)[0])[0] == 200
    config.write_text(yaml.safe_dump({"allow_remote_spool_changes": True, "max_request_body_bytes": 100,
                                      "max_reason_chars": 10}))
    os.kill(daemon.pid, signal.SIGHUP)
    assert wait_for_line(daemon.output, "reloaded")
    assert_one_line_answer(exchange(daemon.port, post)[0], 413, f"Content-Length {len(form)} is over 100 bytes")
    status, body, _ = daemon.get("/spool/web/80")
    assert status == 503 and body.endswith(": rrrrrrr..."), body
