"""HAProxy's agent-check protocol: one line in naming the service, one line out with its state.

HAProxy connects to the agent port, sends its ``agent-send`` string (here
``<service>``, ``<service>/<port>`` or ``<service>:<port>`` and a newline), and
reads one line back: ``up ready`` when no downtime applies, ``maint`` for a
downtime, ``drain`` for a draining one, each followed by ``#<reason>`` when the
downtime has a reason. The answer comes from the same spool as the HTTP checks.
"""

import asyncio
import logging
import re
import socket
from typing import Callable, List, Optional, Tuple

from hacheck.activity import Activity
from hacheck.config import Config
from hacheck.names import PORT_PATTERN, SERVICE_PATTERN, InvalidName, check_service_name, parse_port
from hacheck.spool import ALL, Spool, SpoolError, report_unreadable, shown_reason
from hacheck.throttled_log import ThrottledLog
from hacheck.web.http_server import add_pausing_accept_handler
from hacheck.web.metrics import Metrics

log = logging.getLogger(__name__)

_REQUEST = re.compile(rf"(?P<service>{SERVICE_PATTERN})(?:[:/](?P<port>{PORT_PATTERN}))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

ANSWER_UP = "up ready"
ANSWER_DOWN = "maint"
ANSWER_DRAIN = "drain"

# How agent requests are counted (the protocol label, and the code /spool would answer for each word).
AGENT_PROTOCOL = "agent"
ANSWER_CODES = {"up": 200, ANSWER_DOWN: 503, ANSWER_DRAIN: 404}
BAD_REQUEST_CODE = 400


class BadAgentRequest(ValueError):
    """A request line that names no valid service; answered with a description only."""


def parse_request(line: str) -> Tuple[Optional[str], Optional[int]]:
    """(service, port) from an agent-send line; (None, None) for an empty line."""
    text = line.strip(" \t\r\n")
    if not text:
        return None, None
    match = _REQUEST.fullmatch(text)
    if match is None:
        raise BadAgentRequest(f"invalid request {text[:60]!r}: expected SERVICE, SERVICE/PORT or SERVICE:PORT")
    service, port_text = match.group("service"), match.group("port")
    try:
        return check_service_name(service), None if port_text is None else parse_port(port_text)
    except InvalidName as err:
        raise BadAgentRequest(str(err)) from None


def describe(reason: str, limit: int) -> str:
    """A reason made safe for the one-line answer: no control characters, cut as HTTP answers cut it."""
    return shown_reason(_CONTROL.sub(" ", reason).strip(), limit)


def answer_for(spool: Spool, service: Optional[str], port: Optional[int], reason_limit: int) -> str:
    """The answer line (without newline) for a service; no service means only ``all`` applies."""
    found = spool.find_downtime(service, port) if service is not None else _find_all(spool)
    if found is None:
        return ANSWER_UP
    _, downtime = found
    word = ANSWER_DRAIN if downtime.is_drain else ANSWER_DOWN
    reason = describe(downtime.reason, reason_limit)
    return f"{word} #{reason}" if reason else word


def _find_all(spool: Spool):
    downtime = spool.active(ALL)
    return None if downtime is None else (ALL, downtime)


class AgentServer:
    """Serves the agent protocol on already bound listening sockets (one per worker, like HTTP).

    Connections are accepted by the HTTP port's accept loop: out of file
    descriptors, it pauses and logs one line per interval through ``warnings``
    (asyncio's own loop logs a traceback for every failed accept).
    The bounds (``agent_request_timeout``, ``agent_write_timeout``, ``max_agent_request_bytes``,
    ``max_reason_chars``) are read from ``config()`` for each connection, so a reload applies them.
    """

    def __init__(self, spool: Spool, config: Callable[[], Config],
                 activity: Optional[Activity] = None, metrics: Optional[Metrics] = None,
                 warnings: Optional[ThrottledLog] = None):
        """``activity`` and ``metrics`` (the daemon's) count each request as HTTP checks are counted."""
        self.spool = spool
        self.config = config
        self.activity = activity
        self.metrics = metrics
        self.warnings = warnings or ThrottledLog(log)
        self._listeners: List[Tuple[socket.socket, Callable[[], None]]] = []
        self._connections = set()

    async def start(self, sockets) -> None:
        for sock in sockets:
            self._listeners.append((sock, add_pausing_accept_handler(sock, self._accepted, self.warnings)))

    def _accepted(self, connection: socket.socket, address) -> None:
        task = asyncio.ensure_future(self._serve_socket(connection))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_socket(self, connection: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=connection)
        except OSError as err:
            log.debug("agent connection lost at once: %s", err)
            connection.close()
            return
        await self._serve_connection(reader, writer)

    def stop(self) -> None:
        """Stop accepting; connections in flight finish on their own (they are short)."""
        for sock, stop_accepting in self._listeners:
            stop_accepting()
            sock.close()
        self._listeners = []

    async def wait_closed(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` for the connections in flight, then end those left."""
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)
        for task in list(self._connections):
            task.cancel()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        config = self.config()
        try:
            answer = await self._answer(reader, peer, config)
            writer.write(answer.encode("utf-8") + b"\n")
            await asyncio.wait_for(writer.drain(), config.agent_write_timeout)
        except (OSError, asyncio.TimeoutError) as err:
            log.debug("agent connection from %s ended early: %s", peer, err)
        except Exception:  # never let one connection take the server down
            log.exception("agent connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, peer, config: Config) -> str:
        request, problem = await self._read_request(reader, config)
        if problem is not None:
            log.debug("agent request from %s refused: %s", peer, problem)
            self._count(peer, None, BAD_REQUEST_CODE)
            return f"#hacheck: {problem}"
        try:
            line = request.decode("ascii")
            service, port = parse_request(line)
        except UnicodeDecodeError:
            self._count(peer, None, BAD_REQUEST_CODE)
            return "#hacheck: invalid request: not ASCII"
        except BadAgentRequest as err:
            log.debug("agent request from %s refused: %s", peer, err)
            self._count(peer, None, BAD_REQUEST_CODE)
            return f"#hacheck: {describe(str(err), config.max_reason_chars)}"
        try:
            answer = answer_for(self.spool, service, port, config.max_reason_chars)
        except SpoolError as err:
            # As the HTTP checks: no downtime (see spool.report_unreadable for why).
            report_unreadable(self.warnings, err)
            answer = ANSWER_UP
        log.debug("agent %s asked %r: %s", peer, line.strip(), answer)
        self._count(peer, service, ANSWER_CODES[answer.split(" ", 1)[0]])
        return answer

    def _count(self, peer, service: Optional[str], code: int) -> None:
        """One request in /recent, /status/count and /metrics, with the code /spool would have answered."""
        if self.metrics is not None:
            self.metrics.count_request(AGENT_PROTOCOL, service or "", code)
        if self.activity is not None and service is not None:
            client_ip = peer[0] if isinstance(peer, tuple) and peer else ""
            self.activity.record(service, client_ip, code)

    async def _read_request(self, reader: asyncio.StreamReader, config: Config) -> Tuple[bytes, Optional[str]]:
        """The first line (without its newline), or what came before EOF or ``agent_request_timeout``.

        HAProxy sends agent-send at once; a client silent that long is answered as for an empty line.
        Returns (request, problem); problem is set when the line is over ``max_agent_request_bytes``.
        """
        limit = config.max_agent_request_bytes
        too_long = f"request longer than {limit} bytes (max_agent_request_bytes)"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.agent_request_timeout
        received = b""
        while b"\n" not in received:
            if len(received) > limit:
                return b"", too_long
            remaining = deadline - loop.time()
            if remaining <= 0:
                break  # a silent client, or agent-send without "\n": answer what came
            try:
                chunk = await asyncio.wait_for(reader.read(limit + 1), remaining)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break  # the client half-closed (printf 'web' | nc -N): answer what came
            received += chunk
        line = received.split(b"\n", 1)[0]
        if len(line) > limit:
            return b"", too_long
        return line, None
