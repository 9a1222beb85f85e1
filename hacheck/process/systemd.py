"""systemd's readiness protocol (sd_notify) and socket activation (sd_listen_fds), without libsystemd."""

import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import List, MutableMapping

log = logging.getLogger(__name__)

# The first descriptor systemd hands over (SD_LISTEN_FDS_START); the others follow it.
LISTEN_FDS_START = 3
# FileDescriptorName= of the agent-check sockets in the socket unit; every other name
# ("http", "unknown", the socket unit's name, none at all) is an HTTP socket.
AGENT_FD_NAME = "agent"
HTTP_FD_NAME = "http"


class SocketActivationError(Exception):
    """The sockets systemd handed over cannot be used; the message is one line."""


@dataclass
class HandedSockets:
    """Listening sockets received from systemd, by what they serve."""

    http: List[socket.socket] = field(default_factory=list)
    agent: List[socket.socket] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.http or self.agent)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract socket namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as err:
        log.warning("could not notify systemd at %s: %s", address, err)
        return False
    return True


def notify_reloading(status: str) -> bool:
    """Tell systemd a reload began; it then waits for ``READY=1`` (``notify_ready``)."""
    # systemd wants the reload's start on CLOCK_MONOTONIC to tell this reload from an older one.
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}\nSTATUS={_one_line(status)}")


def notify_ready(status: str) -> bool:
    """Tell systemd the daemon serves (after start-up or a reload), with a one-line status."""
    return notify(f"READY=1\nSTATUS={_one_line(status)}")


def notify_status(status: str) -> bool:
    """Set the one-line status `systemctl status` shows, nothing else (from the main or a control process)."""
    return notify(f"STATUS={_one_line(status)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def listen_sockets(environ: MutableMapping[str, str] = os.environ) -> HandedSockets:
    """The listening sockets systemd handed to this process (socket activation); empty when none.

    The variables are removed from ``environ`` so that no child process takes
    them for its own; descriptors meant for another process (``LISTEN_PID``
    is not ours) are left alone.
    """
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    names = environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return HandedSockets()
    if not pid.strip().isdigit() or int(pid) != os.getpid():
        log.debug("LISTEN_PID=%s is not this process (%d): the sockets are not ours", pid, os.getpid())
        return HandedSockets()
    if not count.strip().isdigit():
        raise SocketActivationError(f"LISTEN_FDS={count!r} is not a number of descriptors")
    fd_names = names.split(":") if names else []
    handed = HandedSockets()
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        name = fd_names[index] if index < len(fd_names) else ""
        sock = _listening_socket(fd, name)
        (handed.agent if name == AGENT_FD_NAME else handed.http).append(sock)
    return handed


def _listening_socket(fd: int, name: str) -> socket.socket:
    label = f"descriptor {fd}" + (f" ({name})" if name else "")
    try:
        # A program this process might run must not inherit the listening socket.
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise SocketActivationError(f"socket activation: {label} is not a socket: {err.strerror}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketActivationError(f"socket activation: {label} is not a listening stream socket "
                                    "(ListenStream= in the socket unit)")
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    """``host:port`` (or the path) a listening socket is bound to, for log lines."""
    address = sock.getsockname()
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)
