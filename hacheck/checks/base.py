"""What every protocol check shares: its inputs, its result, and how it fails.

A check is ``async def check(target, query, context) -> CheckResult``. It
knows nothing about HTTP responses or the cache; it may raise ``CheckFailed``
(or let a timeout or connection error escape) and ``run_check`` turns that
into a result, so protocol modules do not repeat try/except blocks.
"""

import asyncio
import concurrent.futures
import contextlib
import errno
import itertools
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Deque, Dict, Hashable, Mapping, Optional, Tuple

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.netutil import DefaultLoopResolver, Resolver

from hacheck.config import Config

log = logging.getLogger(__name__)

# What the HTTP client may buffer from one upstream (Tornado's default is 100 MB): four times
# max_upstream_body_bytes, at least this much. Tornado 6.2 reads a body without a length (read
# until close) into this buffer before any streaming callback sees it, so an endless answer
# costs this much memory and time; and it bounds a body by its Content-Length (max_body_size)
# before the http check's own bound could say so, so it must stay above that bound, with room
# for the headers and a socket read (64 KiB).
HTTP_MIN_BUFFER_BYTES = 256 * 1024


def http_buffer_bytes(config: Config) -> int:
    """What the HTTP client may buffer from one upstream under ``config``."""
    return max(HTTP_MIN_BUFFER_BYTES, 4 * config.max_upstream_body_bytes)


# The code Tornado's HTTP client gives a request that got no answer (refused, timed out, cut off).
# An HTTP check records it as its own code, as the original did; the response is a 503 (HTTP knows no 599).
NO_ANSWER = 599
# What a check that got no answer in time records unless it declares another ``no_answer_code``.
DEFAULT_NO_ANSWER_CODE = 503


@dataclass(frozen=True)
class Target:
    """Where a check connects: the host (127.0.0.1 unless a header said otherwise) and port."""

    host: str
    port: int


# Errors that say hacheck itself ran out of something before the check reached the service.
OWN_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class CheckResult:
    """A check's answer: an HTTP-style status code and a message for people.

    ``is_verdict`` is False when the check never reached the service (no free
    slot, hacheck out of file descriptors, a bound): the answer says so, and the
    cache does not keep it as the service's state.
    """

    code: int
    message: str = ""
    is_verdict: bool = True

    @property
    def is_up(self) -> bool:
        return 200 <= self.code < 300


def not_reached(message: str) -> CheckResult:
    """The 503 of a check that never reached the service (never cached)."""
    return CheckResult(503, message, is_verdict=False)


class CheckFailed(Exception):
    """Raised inside a check to answer with ``code`` and ``message`` at once."""

    def __init__(self, code: int, message: str, is_verdict: bool = True):
        super().__init__(message)
        self.result = CheckResult(code, message, is_verdict)


class CheckProgress:
    """What a running check waited for of hacheck's own: a slot it is still waiting for
    (``waiting_for``), or one it got after waiting ``waited`` seconds (``waited_for``).

    When the timeout comes while a check still waits for a slot, the service was
    never asked; when it comes after the check waited, the service had less than
    the timeout to answer. Neither answer may pass for the service's verdict.
    ``client`` is the address whose request started the check: slots are shared
    out between clients by it.
    """

    __slots__ = ("waiting_for", "waited_for", "waited", "client")

    def __init__(self, client: Optional[str] = None) -> None:
        self.waiting_for: Optional[str] = None
        self.waited_for: Optional[str] = None
        self.waited = 0.0
        self.client = client


class Slots:
    """At most ``limit()`` holders at once; a freed slot goes to the waiting client holding the fewest.

    Among waiters of clients that hold as many, the first come is served first.
    Without that, one address sending many checks to a slow service would queue
    ahead of everyone and keep another client's check waiting past its timeout.
    The limit is read at each acquisition, so a changed configuration applies
    to the next check. ``waiting`` is shown in ``/status``.
    """

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self.in_use = 0
        self._held: Dict[Hashable, int] = {}  # client -> slots it holds
        self._waiters: Dict[Hashable, Deque[asyncio.Future]] = {}  # client -> its waiters, oldest first
        self._arrival: Dict[asyncio.Future, int] = {}  # each waiter's place in the order of arrival
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    @property
    def idle(self) -> bool:
        return self.in_use == 0 and not self._waiters

    def try_acquire(self, client: Hashable = None) -> bool:
        """Take a slot if one is free now, without waiting."""
        if self.in_use < self._limit() and not self._waiters:
            self._take(client)
            return True
        return False

    def _take(self, client: Hashable) -> None:
        self.in_use += 1
        self._held[client] = self._held.get(client, 0) + 1

    async def acquire(self, progress: Optional[CheckProgress] = None, what: str = "") -> None:
        """Wait for a slot; meanwhile ``progress`` says the check waits for ``what``."""
        client = None if progress is None else progress.client
        if self.try_acquire(client):
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.setdefault(client, deque()).append(waiter)
        self._arrival[waiter] = next(self._arrivals)
        started = loop.time()
        if progress is not None:
            progress.waiting_for = what
        try:
            await waiter  # release() counted this holder in before waking it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(client)  # woken and cancelled at once: pass the slot on
            else:
                self._forget_waiter(client, waiter)
            raise
        if progress is not None:
            progress.waiting_for = None
            progress.waited_for = what
            progress.waited += loop.time() - started

    def _forget_waiter(self, client: Hashable, waiter: asyncio.Future) -> None:
        if self._arrival.pop(waiter, None) is None:
            return  # release() took it already
        waiters = self._waiters[client]
        waiters.remove(waiter)  # C-speed: a thousand waiters can time out at once
        if not waiters:
            del self._waiters[client]

    def release(self, client: Hashable = None) -> None:
        self.in_use -= 1
        held = self._held[client] - 1
        if held:
            self._held[client] = held
        else:
            del self._held[client]
        while self._waiters and self.in_use < self._limit():
            chosen = min(self._waiters, key=self._next_in_line)
            waiters = self._waiters[chosen]
            waiter = waiters.popleft()
            del self._arrival[waiter]
            if not waiters:
                del self._waiters[chosen]
            if not waiter.done():
                self._take(chosen)
                waiter.set_result(None)

    def _next_in_line(self, client: Hashable) -> Tuple[int, int]:
        """Who gets a freed slot first: the client holding fewest, then the longest waiting."""
        return self._held.get(client, 0), self._arrival[self._waiters[client][0]]

    @contextlib.asynccontextmanager
    async def held(self, progress: Optional[CheckProgress], what: str) -> AsyncIterator[None]:
        """Hold a slot for the block; ``progress`` says ``what`` the check waits for meanwhile."""
        await self.acquire(progress, what)
        try:
            yield
        finally:
            self.release(None if progress is None else progress.client)


class KeyedSlots:
    """``Slots`` per key (a target, a client), each with the same limit; only keys in use are kept."""

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self._slots: Dict[Hashable, Slots] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def in_use(self) -> int:
        return sum(slots.in_use for slots in self._slots.values())

    def _slots_of(self, key: Hashable) -> Slots:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = Slots(self._limit)
        return slots

    def try_acquire(self, key: Hashable) -> bool:
        slots = self._slots_of(key)
        if slots.try_acquire():
            return True
        self._forget_if_idle(key, slots)
        return False

    async def acquire(self, key: Hashable, progress: Optional[CheckProgress] = None, what: str = "") -> None:
        slots = self._slots_of(key)
        try:
            await slots.acquire(progress, what)
        except asyncio.CancelledError:
            self._forget_if_idle(key, slots)
            raise

    def release(self, key: Hashable, client: Hashable = None) -> None:
        """Free the slot of ``key`` that ``client`` (the progress's client at acquisition) held."""
        slots = self._slots[key]
        slots.release(client)
        self._forget_if_idle(key, slots)

    @contextlib.asynccontextmanager
    async def held(self, key: Hashable, progress: Optional[CheckProgress], what: str) -> AsyncIterator[None]:
        await self.acquire(key, progress, what)
        try:
            yield
        finally:
            self.release(key, None if progress is None else progress.client)

    def _forget_if_idle(self, key: Hashable, slots: Slots) -> None:
        if slots.idle and self._slots.get(key) is slots:
            del self._slots[key]


class NumericFirstResolver(Resolver):
    """Resolves an address written as numbers at once; a name goes to the default resolver.

    Tornado's default resolver hands every host, 127.0.0.1 included, to a thread
    (``getaddrinfo`` in the event loop's executor). A check almost always targets
    an IP address, and a thousand uncached checks at once would otherwise queue
    a thousand thread hops and make the threads fight the event loop for the GIL.
    """

    def initialize(self) -> None:
        self._names = DefaultLoopResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list:
        try:
            # AI_NUMERICHOST never asks DNS: it answers in microseconds or refuses a name.
            found = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            return await self._names.resolve(host, port, family)
        return [(address_family, address) for address_family, _, _, _, address in found]

    def close(self) -> None:
        self._names.close()


class SharedResources:
    """Long-lived clients the checks share; one per process, owned by the application."""

    def __init__(self, config: Config):
        self.config = config
        self._http_client: Optional[AsyncHTTPClient] = None
        self._resolver = NumericFirstResolver()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        # hacheck's own count of outbound HTTP requests, so that a check knows whether it is still
        # waiting for a slot (Tornado's client queue would only say so after the fact).
        self.outbound_slots = Slots(lambda: self.config.max_clients)
        self.blocking_slots = Slots(lambda: self.config.max_clients)

    @property
    def http_client(self) -> AsyncHTTPClient:
        """One HTTP client whose ``max_clients`` bounds concurrent outbound requests."""
        if self._http_client is None:
            self._http_client = AsyncHTTPClient(
                force_instance=True, max_clients=self.config.max_clients,
                max_buffer_size=http_buffer_bytes(self.config), resolver=self._resolver,
            )
        return self._http_client

    def outbound_queue_size(self) -> int:
        """Requests waiting for a free outbound HTTP slot (``/status``)."""
        return self.outbound_slots.waiting

    async def fetch(self, request: HTTPRequest, progress: Optional[CheckProgress]) -> "asyncio.Future":
        """Start ``request`` once one of the ``max_clients`` outbound slots is free; returns the fetch.

        The slot is held until Tornado is done with the request, even when the
        check that started it was cancelled meanwhile: await the fetch shielded.
        """
        slots = self.outbound_slots
        await slots.acquire(progress, f"free outbound connection (max_clients={self.config.max_clients})")
        try:
            pending = self.http_client.fetch(request, raise_error=False)
        except BaseException:
            slots.release(None if progress is None else progress.client)
            raise
        pending.add_done_callback(_release_and_collect(slots, None if progress is None else progress.client))
        return pending

    async def run_blocking(self, func: Callable[..., Any], *args: Any, timeout: float,
                           progress: Optional[CheckProgress] = None) -> Any:
        """Run a blocking call (a driver without asyncio) in a bounded thread pool.

        At most ``max_clients`` run at once; waiting for a slot counts against
        ``timeout``, so a hung server can neither block the event loop nor make
        callers wait longer than the timeout. The call itself must have its own
        socket timeouts so the thread comes back.
        """
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config.max_clients, thread_name_prefix="hacheck-blocking"
            )
        # Held here: a reload may start a new pool meanwhile; this call finishes in the old one.
        executor = self._executor
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        what = f"free blocking-pool thread (max_clients={self.config.max_clients})"

        async def bounded() -> Any:
            async with self.blocking_slots.held(progress, what):
                return await loop.run_in_executor(executor, func, *args)

        return await asyncio.wait_for(bounded(), max(0.0, deadline - loop.time()))

    def apply_config(self, config: Config) -> None:
        """Take over a reloaded configuration: ``max_clients`` and the buffer bound the next outbound checks."""
        running, self.config = self.config, config
        if self._http_client is not None and http_buffer_bytes(config) != http_buffer_bytes(running):
            # Tornado hands it to each new request's connection (whose body bound defaults to it);
            # requests in flight keep theirs.
            self._http_client.max_buffer_size = http_buffer_bytes(config)
        if config.max_clients == running.max_clients:
            return
        if self._http_client is not None:
            self._http_client.max_clients = config.max_clients
        # Calls in flight keep the old pool; with no reference left it ends its threads once they are done.
        self._executor = None

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None
        self._resolver.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _release_and_collect(slots: Slots, client: Optional[str]) -> Callable[["asyncio.Future"], None]:
    """A fetch's done callback: free ``client``'s slot, and collect an outcome nobody awaits any more
    (its check was cancelled at the timeout), so it is not logged as an error."""
    def done(pending: "asyncio.Future") -> None:
        slots.release(client)
        if not pending.cancelled():
            pending.exception()
    return done


@dataclass(frozen=True)
class CheckContext:
    """Everything about the incoming request a check may use besides target and query."""

    service: str
    config: Config
    resources: SharedResources
    query_string: str = ""
    headers: Mapping[str, str] = None  # the incoming request's headers, case-insensitive
    progress: CheckProgress = field(default_factory=CheckProgress)

    @property
    def timeout(self) -> float:
        return self.config.healthcheck_timeout


CheckFunction = Callable[[Target, str, CheckContext], Awaitable[CheckResult]]


def connect_failure(err: BaseException, target: Target, code: int = DEFAULT_NO_ANSWER_CODE) -> CheckResult:
    """``code`` (503) for a failed connection; hacheck's own lack of descriptors is a 503 that is not
    the service's verdict."""
    if isinstance(err, OSError) and err.errno in OWN_RESOURCE_ERRNOS:
        return not_reached(f"hacheck could not connect to {target.host}:{target.port}: {err.strerror} "
                           "(hacheck's own limit; the service was not asked)")
    return CheckResult(code, describe_connect_error(err, target))


def describe_connect_error(err: BaseException, target: Target) -> str:
    """A sentence a person understands for a failed connection."""
    where = f"{target.host}:{target.port}"
    if isinstance(err, ConnectionRefusedError):
        return f"Connection refused by {where}"
    if isinstance(err, socket.gaierror):
        return f"Cannot resolve host {target.host}: {err.strerror or err}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error talking to {where}: {err.reason or err}"
    if isinstance(err, ConnectionResetError):
        return f"Connection reset by {where}"
    if isinstance(err, OSError) and err.strerror:
        return f"Cannot connect to {where}: {err.strerror}"
    return f"Cannot connect to {where}: {err or type(err).__name__}"


async def open_connection(
    target: Target, timeout: float, ssl_context: Optional[ssl.SSLContext] = None
) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect with a timeout; a refusal or timeout raises ``CheckFailed`` (503) at once."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=ssl_context), timeout
        )
    except asyncio.TimeoutError:
        raise CheckFailed(503, f"Connection timed out after {timeout:.2f}s") from None
    except (OSError, ssl.SSLError) as err:
        failure = connect_failure(err, target)
        raise CheckFailed(failure.code, failure.message, failure.is_verdict) from None


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a stream without letting a peer that already left turn into an error."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        pass


async def run_check(check: CheckFunction, target: Target, query: str, context: CheckContext) -> CheckResult:
    """Run a check within ``healthcheck_timeout``; never raises."""
    timeout = context.timeout
    no_answer_code = getattr(check, "no_answer_code", DEFAULT_NO_ANSWER_CODE)
    started = time.monotonic()
    try:
        return await asyncio.wait_for(check(target, query, context), timeout)
    except CheckFailed as failed:
        return failed.result
    except asyncio.TimeoutError:
        progress = context.progress
        if progress.waiting_for is not None:
            return not_reached(f"Check of {target.host}:{target.port} not run: no {progress.waiting_for} "
                               f"within {timeout:.2f}s")
        if progress.waited_for is not None:
            return not_reached(f"Check of {target.host}:{target.port} timed out after {timeout:.2f}s, "
                               f"{progress.waited:.2f}s of it waiting for a {progress.waited_for}")
        return CheckResult(no_answer_code, f"Check timed out after {timeout:.2f}s")
    except (OSError, ssl.SSLError) as err:
        return connect_failure(err, target, no_answer_code)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # a bug in a check must not take the daemon down
        log.exception("check %s for %s failed after %.2fs", getattr(check, "__module__", check),
                      context.service, time.monotonic() - started)
        return CheckResult(500, f"Check failed: {type(err).__name__}: {err}")
