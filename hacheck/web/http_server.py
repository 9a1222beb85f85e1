"""The HTTP server: an accept loop that pauses instead of spinning when file descriptors run out,
and connections kept to their bounds (``hacheck.web.connections``).

Tornado's own accept loop lets ``EMFILE`` escape: the listening socket stays
readable, so the event loop calls it again at once and logs a traceback each
time (thousands a second) until a descriptor frees up. This one stops
listening for a short pause, logs one warning per interval (``ThrottledLog``),
and resumes; the connections wait in the kernel's accept queue meanwhile.
The agent port uses the same loop.
"""

import errno
import logging
import socket
from typing import Any, Callable, Iterable, List, Tuple

import tornado.http1connection
import tornado.httpserver
from tornado.ioloop import IOLoop

from hacheck import private_names
from hacheck.throttled_log import ThrottledLog
from hacheck.web.connections import BoundedRequest, BoundedStream, ConnectionGuard, ConnectionLimits

log = logging.getLogger(__name__)

# Connections accepted per wake-up, as Tornado does, so accepting cannot starve requests.
ACCEPT_BATCH = 128
# How long to stop accepting when the process (or the system) has no descriptor left.
EXHAUSTED_PAUSE = 0.1
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def add_pausing_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, Any], None],
                               warnings: ThrottledLog, pause: float = EXHAUSTED_PAUSE) -> Callable[[], None]:
    """Like ``tornado.netutil.add_accept_handler``; returns the function that stops accepting."""
    io_loop = IOLoop.current()
    state = {"removed": False, "resume": None}

    def resume() -> None:
        state["resume"] = None
        if not state["removed"]:
            io_loop.add_handler(sock, accept, IOLoop.READ)

    def accept(fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as err:
                if err.errno not in _EXHAUSTED:
                    raise
                # One kind for every port: out of descriptors is one problem, however many ports see it.
                warnings.warning(("accept", err.errno), "cannot accept connections: %s; paused accepting for "
                                 "%.1fs (raise rlimit_nofile?)", err.strerror, pause)
                io_loop.remove_handler(sock)
                state["resume"] = io_loop.call_later(pause, resume)
                return
            callback(connection, address)

    def remove() -> None:
        if state["removed"]:
            return
        state["removed"] = True
        if state["resume"] is not None:
            io_loop.remove_timeout(state["resume"])
            state["resume"] = None
        else:
            io_loop.remove_handler(sock)

    io_loop.add_handler(sock, accept, IOLoop.READ)
    return remove


def _apply_limits(params: tornado.http1connection.HTTP1ConnectionParameters, limits: ConnectionLimits) -> None:
    """Set Tornado's own bounds in ``params`` from ``limits`` (a backstop: the connections keep to
    them first, answering where Tornado would close without a word). Changed in place: every
    connection holds this one object and reads it at its next request, as it reads ``limits``."""
    params.max_header_size = limits.max_header_bytes
    # No header timeout of Tornado's: the connections time each head themselves (idle, then
    # request_header_timeout), and Tornado's would wrap every request's head in a timeout future.
    params.header_timeout = None
    params.max_body_size = limits.max_body_bytes
    params.body_timeout = limits.body_timeout


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with ``add_pausing_accept_handler`` as its accept loop and bounded connections.

    Built as ``HTTPServer(app, limits=ConnectionLimits(...), warnings=ThrottledLog(...), ...)``.
    """

    def initialize(self, request_callback, limits: ConnectionLimits, warnings: ThrottledLog, **kwargs) -> None:
        super().initialize(request_callback, **kwargs)
        _apply_limits(private_names.connection_parameters(self), limits)
        self.guard = ConnectionGuard(limits, warnings)
        self.listeners: List[Tuple[socket.socket, Callable[[], None]]] = []

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self.listeners.append((sock, add_pausing_accept_handler(sock, self._accepted, self.guard.warnings)))

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        try:
            peer = address[0] if isinstance(address, tuple) else str(address)
            stream = BoundedStream(connection, peer, self.guard, max_buffer_size=self.max_buffer_size,
                                   read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)
        except Exception:  # one connection must not take the accept loop down
            log.exception("cannot serve a connection from %s", address)
            connection.close()

    def start_request(self, server_conn, request_conn):
        return BoundedRequest(super().start_request(server_conn, request_conn), request_conn, self.guard)

    def stop(self) -> None:
        """Stop accepting (the listening sockets close); connections go on until closed."""
        for sock, stop_accepting in self.listeners:
            stop_accepting()
            sock.close()
        self.listeners = []
        super().stop()

    def answering(self) -> int:
        """Requests read and not yet answered."""
        return self.guard.answering()

    def unanswered(self) -> int:
        """Connections open with no request being answered: idle, or still sending one."""
        return len(self.guard.streams) - self.guard.answering()

    def finish_connections(self) -> None:
        """From now on each connection closes once its next request is answered, with ``Connection: close``.

        Closing a kept-alive connection right after an answer would lose the
        request its client may have sent on it meanwhile; answered with
        ``Connection: close`` instead, the client opens its next connection to
        the process that takes over the socket. Tornado reads ``no_keep_alive``
        from the parameters every connection shares at each request's head.
        """
        self.guard.stopping = True
        private_names.connection_parameters(self).no_keep_alive = True

    def lingering(self) -> int:
        """Connections closed without a reset, still read until their client closes too."""
        return len(self.guard.lingering)

    def close_unanswered(self, last_request_wait: float) -> None:
        """Close every connection not being answered now; those being answered close once answered, or
        after one more request when the answer promised to keep the connection alive."""
        self.guard.close_unanswered(last_request_wait)

    def connections(self) -> int:
        """Connections open: being answered, or waiting for the one request still served on them."""
        return len(self.guard.streams)

    def close_all(self) -> None:
        self.guard.close_all()

    def apply_config(self, config) -> None:
        """Server-level settings from a reloaded configuration (the listening sockets stay as they are):
        the connection limits, for connections accepted from now on and for the next request of the others."""
        limits = ConnectionLimits.from_config(config)
        self.guard.limits = limits
        _apply_limits(private_names.connection_parameters(self), limits)
