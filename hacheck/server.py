"""The HTTP server, with an accept loop that pauses instead of spinning when file descriptors run out.

Tornado's own accept loop lets ``EMFILE`` escape: the listening socket stays
readable, so the event loop calls it again at once and logs a traceback each
time (thousands a second) until a descriptor frees up. This one stops
listening for a short pause, logs one warning, and resumes; the connections
wait in the kernel's accept queue meanwhile.
"""

import errno
import logging
import socket
from typing import Any, Callable, Iterable

import tornado.httpserver
from tornado.ioloop import IOLoop

log = logging.getLogger(__name__)

# Connections accepted per wake-up, as Tornado does, so accepting cannot starve requests.
ACCEPT_BATCH = 128
# How long to stop accepting when the process (or the system) has no descriptor left.
EXHAUSTED_PAUSE = 0.1
# At most one warning per this many seconds while descriptors keep running out.
WARNING_INTERVAL = 10.0
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def add_pausing_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, Any], None],
                               pause: float = EXHAUSTED_PAUSE) -> Callable[[], None]:
    """Like ``tornado.netutil.add_accept_handler``; returns the function that stops accepting."""
    io_loop = IOLoop.current()
    state = {"removed": False, "resume": None, "pauses": 0, "warned_at": None}

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
                state["pauses"] += 1
                now = io_loop.time()
                if state["warned_at"] is None or now - state["warned_at"] >= WARNING_INTERVAL:
                    log.warning("cannot accept connections: %s; paused accepting %d time(s) for %.1fs "
                                "(raise rlimit_nofile?)", err.strerror, state["pauses"], pause)
                    state["warned_at"] = now
                    state["pauses"] = 0
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


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with ``add_pausing_accept_handler`` as its accept loop.

    ``open_connections`` counts the connections accepted and not yet closed, so
    that a stop can let the ones just accepted send their request and be answered.
    """

    open_connections = 0

    def handle_stream(self, stream, address) -> None:
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = add_pausing_accept_handler(sock, self._handle_connection)

    def apply_config(self, config) -> None:
        """Server-level settings from a reloaded configuration (the listening sockets stay as they are).

        None of today's keys is read at this level; bounds on connections belong here.
        """
