"""Bounds of one HTTP client connection: how long and how much a client may send.

Tornado keeps a connection an hour by default, closes it without a word when
the request's head is too large, and parses a chunked body one chunk at a time
in Python (a body of 1-byte chunks costs about a second of CPU). Here:

- the head of the first request must arrive within ``request_header_timeout``
  of the connection opening; on a kept-alive connection the next request must
  start within ``idle_connection_timeout`` and its head arrive within
  ``request_header_timeout`` of its first byte (``BoundedStream``);
- a request line or head over its size answers 414 or 431, a body over its
  size 413, a chunked body 411, each before the body is read and with a one-line
  body (``BoundedRequest``, ``ConnectionLimits.refusal``);
- a refused client's answer is followed by a short linger in which what it
  still sends is read and dropped, so that closing does not reset the
  connection under the answer (``ConnectionGuard.refuse``);
- a request without ``Host`` is served as Tornado 6.2 served it, on every
  Tornado (``BoundedRequest``), and a head Tornado refuses while building the
  request answers 400 with its reason;
- Tornado's per-connection log lines (bad requests, unsatisfiable reads) go
  through a ``ThrottledLog``.

Only public Tornado API is used: the ``IOStream`` methods a subclass may
override, ``HTTP1Connection.detach`` and the ``HTTPMessageDelegate`` interface.
"""

import http
import logging
import socket
from dataclasses import dataclass
from typing import Callable, Optional, Set, Tuple

import tornado.httputil
import tornado.iostream
from tornado.ioloop import IOLoop

from hacheck.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

# Bytes read and dropped per wake-up of a lingering refused connection.
_LINGER_READ = 64 * 1024
# The Host Tornado is given, while it parses a request, for one that came without:
# the value Tornado itself takes for an HTTP/1.0 request without Host.
STAND_IN_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of one client connection (configuration keys in parentheses)."""

    header_timeout: float  # request_header_timeout
    body_timeout: float  # request_body_timeout
    idle_timeout: float  # idle_connection_timeout
    max_line_bytes: int  # max_request_line_bytes
    max_header_bytes: int  # max_request_header_bytes
    max_body_bytes: int  # max_request_body_bytes
    refusal_linger: float  # refused_request_linger

    @classmethod
    def from_config(cls, config) -> "ConnectionLimits":
        return cls(header_timeout=config.request_header_timeout, body_timeout=config.request_body_timeout,
                   idle_timeout=config.idle_connection_timeout, max_line_bytes=config.max_request_line_bytes,
                   max_header_bytes=config.max_request_header_bytes, max_body_bytes=config.max_request_body_bytes,
                   refusal_linger=config.refused_request_linger)

    def oversized_head(self, line_bytes: Optional[int]) -> Tuple[int, str]:
        """The answer to a head over ``max_header_bytes``; ``line_bytes`` None: its first line never ended."""
        if line_bytes is None or line_bytes > self.max_line_bytes:
            return self.long_line()
        return 431, (f"Request header fields too large: the request line and headers may take "
                     f"{self.max_header_bytes} bytes (max_request_header_bytes)")

    def long_line(self) -> Tuple[int, str]:
        return 414, f"Request line too long: it may take {self.max_line_bytes} bytes (max_request_line_bytes)"

    def refusal(self, start_line, headers: tornado.httputil.HTTPHeaders) -> Optional[Tuple[int, str]]:
        """(code, one line) for a request refused from its head alone, or None to serve it."""
        line_bytes = len(start_line.method) + len(start_line.path) + len(start_line.version) + 2
        if line_bytes > self.max_line_bytes:
            return self.long_line()
        if "Transfer-Encoding" in headers:
            return 411, ("Length required: send the request body with a Content-Length "
                         "(chunked request bodies are not accepted)")
        # Looked up only when present: HTTPHeaders.get raises and catches a KeyError for a missing name.
        length = headers["Content-Length"].strip() if "Content-Length" in headers else ""
        # Anything but plain digits is Tornado's to refuse (400); 20 digits are past any bound.
        if length.isdigit() and (len(length) > 20 or int(length) > self.max_body_bytes):
            return 413, (f"Request body too large: Content-Length {length[:20]} is over "
                         f"{self.max_body_bytes} bytes (max_request_body_bytes)")
        return None


class ConnectionGuard:
    """What the HTTP port's connections share: their limits, the warnings, the open and the lingering ones."""

    def __init__(self, limits: ConnectionLimits, warnings: ThrottledLog):
        self.limits = limits
        self.warnings = warnings
        self.streams: Set[BoundedStream] = set()
        self.lingering: Set[_Linger] = set()  # refused or closed connections, read until the client closes
        self.stopping = False  # each request read from now on is answered with Connection: close
        # Connections not being answered are closed; one whose answer promised to keep it alive still
        # gets this long for the request its client may be sending already.
        self.closing = False
        self.last_request_wait = 0.0

    def answering(self) -> int:
        """Connections whose request has been read and is being answered."""
        return sum(1 for stream in self.streams if stream.answering)

    def close_unanswered(self, last_request_wait: float = 0.0) -> None:
        """Close the connections that are idle or still sending a request, each with a lingering close.

        A connection being answered now under a promise to keep it alive (its
        request came before the stop) afterwards gets ``last_request_wait``
        seconds for one more request, answered with ``Connection: close``: its
        client sends it as soon as it has read the answer.
        """
        self.stopping = self.closing = True
        self.last_request_wait = last_request_wait
        for stream in [stream for stream in self.streams if not stream.answering]:
            stream.close_lingering()

    def close_all(self) -> None:
        """Close every connection now, the lingering ones too."""
        self.close_unanswered()
        for stream in list(self.streams):
            stream.close()
        for linger in list(self.lingering):
            linger.end()

    def linger(self, sock: socket.socket, seconds: float) -> None:
        """Read and drop what the client still sends on ``sock`` (already shut for writing) until it
        closes or ``seconds`` pass, then close: closing with unread data would reset the connection,
        and a reset can destroy an answer the client has not read yet."""
        if seconds <= 0:
            sock.close()
            return
        self.lingering.add(_Linger(sock, self.limits.max_body_bytes, seconds, self.lingering.discard))

    def refuse(self, sock: socket.socket, peer: str, code: int, text: str) -> None:
        """Answer ``code`` with ``text`` as a one-line body on ``sock``, then linger and close it."""
        self.warnings.log(logging.INFO, ("refused", code), "refused a request from %s: %d %s", peer, code, text)
        body = f"{text}\n".encode("ascii", "replace")
        head = (f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n"
                f"Content-Type: text/plain; charset=UTF-8\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode("ascii")
        try:
            sock.send(head + body)  # a few hundred bytes: the send buffer takes them at once
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.linger(sock, 0 if self.closing else self.limits.refusal_linger)


class _Linger:
    """A refused connection after its answer: what the client still sends is read and dropped until it
    closes or ``seconds`` pass. At most ``budget`` bytes are read; past that the client waits on its
    own full send buffer until the end, costing nothing meanwhile."""

    def __init__(self, sock: socket.socket, budget: int, seconds: float, on_end: Callable[["_Linger"], None]):
        self.sock: Optional[socket.socket] = sock
        self.budget = budget
        self.on_end = on_end
        self.io_loop = IOLoop.current()
        self.reading = True
        self.io_loop.add_handler(sock, self._readable, IOLoop.READ)
        self.timeout = self.io_loop.call_later(seconds, self.end)

    def _readable(self, fd, events) -> None:
        try:
            while self.budget > 0:
                data = self.sock.recv(min(_LINGER_READ, self.budget))
                if not data:
                    self.end()  # the client closed too
                    return
                self.budget -= len(data)
        except BlockingIOError:
            return
        except OSError:
            self.end()
            return
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.io_loop.remove_handler(self.sock)

    def end(self) -> None:
        if self.sock is None:
            return
        self.io_loop.remove_timeout(self.timeout)
        self._stop_reading()
        self.sock.close()
        self.sock = None
        self.on_end(self)


def _error_of(exc_info) -> Optional[BaseException]:
    if isinstance(exc_info, tuple):
        return exc_info[1]
    return exc_info if isinstance(exc_info, BaseException) else None


class BoundedStream(tornado.iostream.IOStream):
    """An accepted HTTP connection that keeps to its ``ConnectionLimits`` while a request's head arrives.

    Tornado reads each request's head with ``read_until_regex`` (and nothing
    else with it on a server connection): that call starts the head's clock.
    """

    def __init__(self, sock: socket.socket, peer: str, guard: ConnectionGuard, **kwargs):
        super().__init__(sock, **kwargs)
        self.guard = guard
        self.peer = peer
        self.answering = False  # a request has been read and its answer is not yet written
        self.keep_alive_promised = False  # that answer lets the client send another request on it
        self.heads_read = 0
        self.reading_head = False
        self.awaiting_first_byte = False
        self.head_bytes = 0  # of the head being read, as far as they came through read_from_fd
        self.head_line_bytes: Optional[int] = None  # its first line's length, once it ended
        self.head_timer = None
        guard.streams.add(self)

    def read_until_regex(self, regex, max_bytes=None):
        self.answering = False
        kept_alive, self.keep_alive_promised = self.keep_alive_promised, False
        if self.guard.closing and not kept_alive:
            self.close_lingering()  # no further request is served on it
        first = self.heads_read == 0
        self.heads_read += 1
        self.reading_head = True
        self.head_bytes = 0
        self.head_line_bytes = None
        future = super().read_until_regex(regex, max_bytes)
        if future.done() or self.closed():
            self.reading_head = False
            return future
        limits = self.guard.limits
        self.awaiting_first_byte = not first
        if self.guard.closing:
            self._start_head_timer(min(limits.idle_timeout, self.guard.last_request_wait))
        else:
            self._start_head_timer(limits.header_timeout if first else limits.idle_timeout)
        future.add_done_callback(self._head_read)
        return future

    def read_from_fd(self, buf):
        count = super().read_from_fd(buf)
        if count and self.reading_head:
            if self.awaiting_first_byte:
                self.awaiting_first_byte = False
                self._start_head_timer(self.guard.limits.header_timeout)
            if self.head_line_bytes is None:
                newline = memoryview(buf)[:count].tobytes().find(b"\n")
                if newline >= 0:
                    self.head_line_bytes = self.head_bytes + newline
            self.head_bytes += count
        return count

    def close(self, exc_info=False) -> None:
        if not self.closed():
            self._stop_head_timer()
            if self.reading_head and isinstance(_error_of(exc_info), tornado.iostream.UnsatisfiableReadError):
                # The head outgrew max_header_bytes: Tornado would close without a word.
                self._refuse(*self.guard.limits.oversized_head(self.head_line_bytes))
        super().close(exc_info)
        self.guard.streams.discard(self)

    def close_lingering(self) -> None:
        """Close without a reset: shut the sending side (the client reads the end of the stream after
        every answer sent), then read what the client still sends until it closes too, at most
        ``refused_request_linger`` seconds (as long as the stop's bound leaves)."""
        if self.closed():
            return
        try:
            sock = self.socket.dup()  # outlives this stream's close, for the linger
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.close()
        self.guard.linger(sock, self.guard.limits.refusal_linger)

    def refuse(self, code: int, text: str) -> None:
        """Answer ``code`` with ``text`` and close; the guard lingers on a copy of the socket."""
        self._refuse(code, text)
        self.close()

    def _refuse(self, code: int, text: str) -> None:
        try:
            sock = self.socket.dup()  # outlives this stream's close, for the answer and the linger
        except OSError:
            return
        self.guard.refuse(sock, self.peer, code, text)

    def _head_read(self, future) -> None:
        self.reading_head = False
        self.awaiting_first_byte = False
        self._stop_head_timer()

    def _start_head_timer(self, timeout: float) -> None:
        self._stop_head_timer()
        self.head_timer = self.io_loop.call_later(timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.io_loop.remove_timeout(self.head_timer)
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        log.debug("closing the connection from %s: %s", self.peer,
                  "idle" if self.awaiting_first_byte else "request head not received in time")
        self.close_lingering()


class BoundedRequest(tornado.httputil.HTTPMessageDelegate):
    """Passes a request on to the application unless its head alone refuses it (411, 413, 414).

    A request without ``Host`` is served, whatever its HTTP version: HAProxy
    sends its checks without one unless configured to (``option httpchk GET
    /path HTTP/1.1``), and Tornado 6.5 and later refuse such an HTTP/1.1
    request with an empty 400. Tornado is handed ``STAND_IN_HOST`` while it
    builds the request and routes it, and the header is taken out again
    before the application sees the request: what is copied upstream, the
    cache keys and the logs are as if no ``Host`` had come, as in the
    original hacheck. A request head Tornado still refuses there answers 400
    with Tornado's reason as its one line.
    """

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, request_conn, guard: ConnectionGuard):
        self.delegate = delegate
        self.request_conn = request_conn
        self.stream = request_conn.stream
        self.guard = guard

    def headers_received(self, start_line, headers):
        refusal = self.guard.limits.refusal(start_line, headers)
        if refusal is None:
            if isinstance(self.stream, BoundedStream):
                # Before a stop Tornado keeps the connection alive (unless the request says otherwise).
                self.stream.keep_alive_promised = not self.guard.stopping
            stand_in = "Host" not in headers
            if stand_in:
                headers["Host"] = STAND_IN_HOST
            try:
                return self.delegate.headers_received(start_line, headers)
            except tornado.httputil.HTTPInputError as err:
                refusal = 400, f"Bad request: {str(err)[:200]}"
            finally:
                if stand_in:
                    del headers["Host"]  # the request object holds this same mapping
        self._refuse(refusal)
        return None

    def _refuse(self, refusal: Tuple[int, str]) -> None:
        stream = self.request_conn.detach()  # Tornado reads no body and serves nothing more on it
        if isinstance(stream, BoundedStream):
            stream.refuse(*refusal)
        else:
            stream.close()

    def data_received(self, chunk: bytes):
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        if isinstance(self.stream, BoundedStream):
            self.stream.answering = True
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class _ThrottledTornadoLines(logging.Filter):
    """Tornado's per-connection lines (malformed requests, unsatisfiable reads, ...) through a ThrottledLog.

    A line's kind is its message template (or, for a message formatted
    beforehand, the text before its first colon), so the client's address
    does not make every line a kind of its own. Errors and tracebacks pass as they are.
    """

    def __init__(self, warnings: ThrottledLog):
        super().__init__()
        self.warnings = warnings

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            return True
        template = str(record.msg)
        kind = ("tornado", template if record.args else template.split(":", 1)[0])
        self.warnings.log(record.levelno, kind, "%s", record.getMessage())
        return False


def throttle_tornado_connection_lines(warnings: ThrottledLog) -> logging.Filter:
    """Route ``tornado.general``'s per-connection lines through ``warnings``; returns the filter added."""
    tornado_log = logging.getLogger("tornado.general")
    for previous in [f for f in tornado_log.filters if isinstance(f, _ThrottledTornadoLines)]:
        tornado_log.removeFilter(previous)  # a server started again in the same process
    line_filter = _ThrottledTornadoLines(warnings)
    tornado_log.addFilter(line_filter)
    return line_filter
