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
from typing import List, Optional, Tuple

from hacheck.activity import Activity
from hacheck.metrics import Metrics
from hacheck.names import PORT_PATTERN, SERVICE_PATTERN, InvalidName, check_service_name, parse_port
from hacheck.spool import ALL, Spool, SpoolError
from hacheck.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

# HAProxy sends agent-send at once; a client silent for this long gets the
# answer for a request without a service name and is disconnected.
DEFAULT_READ_TIMEOUT = 1.0
WRITE_TIMEOUT = 5.0
MAX_LINE_BYTES = 1024
# HAProxy keeps a short description (it truncates anyway); keep the answer one small line.
MAX_REASON_CHARS = 200

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


def describe(reason: str) -> str:
    """A reason made safe for the one-line answer: no control characters, bounded length."""
    text = _CONTROL.sub(" ", reason).strip()
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS - 3] + "..."
    return text


def answer_for(spool: Spool, service: Optional[str], port: Optional[int]) -> str:
    """The answer line (without newline) for a service; no service means only ``all`` applies."""
    found = spool.find_downtime(service, port) if service is not None else _find_all(spool)
    if found is None:
        return ANSWER_UP
    _, downtime = found
    word = ANSWER_DRAIN if downtime.is_drain else ANSWER_DOWN
    reason = describe(downtime.reason)
    return f"{word} #{reason}" if reason else word


def _find_all(spool: Spool):
    downtime = spool.active(ALL)
    return None if downtime is None else (ALL, downtime)


class AgentServer:
    """Serves the agent protocol on already bound listening sockets (one per worker, like HTTP)."""

    def __init__(self, spool: Spool, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 activity: Optional[Activity] = None, metrics: Optional[Metrics] = None,
                 warnings: Optional[ThrottledLog] = None):
        """``activity`` and ``metrics`` (the daemon's) count each request as HTTP checks are counted."""
        self.spool = spool
        self.read_timeout = read_timeout
        self.activity = activity
        self.metrics = metrics
        self.warnings = warnings or ThrottledLog(log)
        self._servers: List[asyncio.AbstractServer] = []
        self._connections = set()

    async def start(self, sockets) -> None:
        for sock in sockets:
            self._servers.append(await asyncio.start_server(self._serve_connection, sock=sock))

    def stop(self) -> None:
        """Stop accepting; connections in flight finish on their own (they are short)."""
        for server in self._servers:
            server.close()
        self._servers = []

    async def wait_closed(self, timeout: float = 2.0) -> None:
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            answer = await self._answer(reader, peer)
            writer.write(answer.encode("utf-8") + b"\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as err:
            log.debug("agent connection from %s ended early: %s", peer, err)
        except Exception:  # never let one connection take the server down
            log.exception("agent connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, peer) -> str:
        request, problem = await self._read_request(reader)
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
            return f"#hacheck: {describe(str(err))}"
        try:
            answer = answer_for(self.spool, service, port)
        except SpoolError as err:
            # As the HTTP checks answer 503: nobody can tell whether the service is down.
            self.warnings.error("agent spool unreadable", "agent: %s: every agent request answers maint", err)
            answer = f"{ANSWER_DOWN} #hacheck: {describe(str(err))}"
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

    async def _read_request(self, reader: asyncio.StreamReader) -> Tuple[bytes, Optional[str]]:
        """The first line (without its newline), or what came before EOF or the read timeout.

        Returns (request, problem); problem is set when the line is too long.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        received = b""
        while b"\n" not in received:
            if len(received) > MAX_LINE_BYTES:
                return b"", f"request longer than {MAX_LINE_BYTES} bytes"
            remaining = deadline - loop.time()
            if remaining <= 0:
                break  # a silent client, or agent-send without "\n": answer what came
            try:
                chunk = await asyncio.wait_for(reader.read(MAX_LINE_BYTES + 1), remaining)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break  # the client half-closed (printf 'web' | nc -N): answer what came
            received += chunk
        line = received.split(b"\n", 1)[0]
        if len(line) > MAX_LINE_BYTES:
            return b"", f"request longer than {MAX_LINE_BYTES} bytes"
        return line, None
