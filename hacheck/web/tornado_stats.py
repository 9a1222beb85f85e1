"""``/mutornadomon``: mutornadomon's standard Tornado stats, kept cheap on the request path.

mutornadomon is optional: when it does not import, nothing here is used and
``/mutornadomon`` is a 404 saying why (and a line at start-up names the missing module).

What mutornadomon's own setup (``initialize_mutornadomon``) would do costs a
check request about a sixth of its time, for counters nobody reads between
scrapes: its ``UtilizationCollector`` wraps every I/O handler in four more
calls, its request counter parses the client address and tests it against a
dozen networks on every request, and its HTTP interface adds a host rule that
every request is routed through first. Here the same counters
(``callback_duration``, ``callbacks_processed``, ``requests``,
``localhost_requests``, ``private_requests``) are tallied with plain
arithmetic and handed to the monitor when ``/mutornadomon`` is read, and the
endpoint is one more route in hacheck's own table.
"""

import ipaddress
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

from hacheck import private_names

log = logging.getLogger(__name__)

# What mutornadomon imports at run time without declaring it (its own pins are for Tornado < 6).
MUTORNADOMON_NEEDS = ("psutil", "mock", "six")

# Client addresses whose kind (loopback, private) is remembered; HAProxy hosts are few.
MAX_REMEMBERED_ADDRESSES = 4096


def is_localhost(request) -> bool:
    """The filter for introspection endpoints: loopback clients only (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(request.remote_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 on a dual-stack socket
        address = address.ipv4_mapped
    return address.is_loopback


class _Tallies:
    """What the request path adds up between two reads of ``/mutornadomon``."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.callback_seconds = 0.0
        self.callbacks = 0
        self.requests = 0
        self.localhost_requests = 0
        self.private_requests = 0

    def take(self) -> Dict[str, Any]:
        """The tallies under mutornadomon's counter names, starting again from zero."""
        taken = {"callback_duration": self.callback_seconds, "callbacks_processed": self.callbacks,
                 "requests": self.requests, "localhost_requests": self.localhost_requests,
                 "private_requests": self.private_requests}
        self._reset()
        return taken


class TornadoStats:
    """A started mutornadomon monitor, its ``/mutornadomon`` route and the request counter for the log hook."""

    def __init__(self):
        from mutornadomon import MuTornadoMon
        from mutornadomon import net as mutornadomon_net

        tallies = self.tallies = _Tallies()

        class Monitor(MuTornadoMon):
            @property
            def metrics(self):
                for name, value in tallies.take().items():
                    if value:
                        self.count(name, value)
                return super().metrics

        self._net = mutornadomon_net
        self._address_kinds: Dict[str, tuple] = {}
        self.monitor = Monitor(_NoExternalInterface())
        self._io_loop = self.monitor.io_loop
        self._undo: Optional[Callable[[], None]] = None

    def route(self) -> tuple:
        """``/mutornadomon``, served by mutornadomon's own handler to loopback clients only."""
        from mutornadomon.external_interfaces.http_endpoints import StatusHandler

        return (r"/mutornadomon", StatusHandler, {"monitor": self.monitor, "request_filter": is_localhost})

    def start(self) -> None:
        """Start the monitor and time the I/O loop's callbacks and the I/O handlers added from now on
        (as mutornadomon's UtilizationCollector does: start it before listening)."""
        self.monitor.start()
        io_loop = self._io_loop
        tallies = self.tallies
        clock = time.perf_counter

        def count_callback(seconds: float) -> None:
            tallies.callback_seconds += seconds
            tallies.callbacks += 1

        def timed(handler):
            def timed_handler(fd, events):
                started = clock()
                handler(fd, events)
                count_callback(clock() - started)
            return timed_handler

        # The loop's callbacks go through a private Tornado name: without it, only handlers are timed.
        undo_callback_timing = private_names.time_loop_callbacks(io_loop, count_callback, clock)
        undo_handler_timing = private_names.replace_add_handler(io_loop, timed)

        def undo() -> None:
            if undo_callback_timing is not None:
                undo_callback_timing()
            undo_handler_timing()
        self._undo = undo

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        self.monitor.stop()

    def counting_requests(self, log_function: Optional[Callable]) -> Callable:
        """Tornado's per-request log hook: counts the request, then calls ``log_function`` (if any)."""
        tallies = self.tallies
        kinds = self._address_kinds
        net = self._net

        def count_and_log(handler) -> None:
            address = handler.request.remote_ip
            kind = kinds.get(address)
            if kind is None:
                if len(kinds) >= MAX_REMEMBERED_ADDRESSES:
                    kinds.clear()
                kind = kinds[address] = (net.is_local_address(address), net.is_private_address(address))
            tallies.requests += 1
            if kind[0]:
                tallies.localhost_requests += 1
            if kind[1]:
                tallies.private_requests += 1
            if log_function is not None:
                log_function(handler)

        return count_and_log


class _NoExternalInterface:
    """mutornadomon starts an external interface; the endpoint here is a route of hacheck's own."""

    def start(self, monitor) -> None:
        pass

    def stop(self) -> None:
        pass


def tornado_stats_if_available() -> Tuple[Optional[TornadoStats], Optional[str]]:
    """A started ``TornadoStats`` when mutornadomon imports and starts, else None and why ``/mutornadomon``
    is not served.

    Its absence is not an error; a missing dependency of an installed mutornadomon is worth a warning.
    """
    try:
        import mutornadomon  # noqa: F401
    except ImportError as err:
        if err.name == "mutornadomon":
            problem = "the mutornadomon package is not installed"
            log.info("/mutornadomon is not served: %s", problem)
        else:
            problem = (f"the mutornadomon package is installed but cannot be imported: module "
                       f"{err.name or err} is missing (it needs {', '.join(MUTORNADOMON_NEEDS)})")
            log.warning("/mutornadomon is not served: %s", problem)
        return None, problem
    except Exception as err:  # a broken install of an optional extra
        problem = f"the mutornadomon package cannot be imported: {type(err).__name__}: {err}"
        log.warning("/mutornadomon is not served: %s", problem)
        return None, problem
    stats = None
    try:
        stats = TornadoStats()
        stats.start()
        return stats, None
    except Exception as err:  # one line, and the daemon serves without /mutornadomon
        problem = f"mutornadomon could not start: {type(err).__name__}: {err}"
        log.warning("/mutornadomon is not served: %s", problem)
        if stats is not None:
            try:
                stats.stop()
            except Exception:  # already half-stopped: nothing more to undo
                pass
        return None, problem
