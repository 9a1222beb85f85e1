"""What every protocol check shares: its inputs, its result, and how it fails.

A check is ``async def check(target, query, context) -> CheckResult``. It
knows nothing about HTTP responses or the cache; it may raise ``CheckFailed``
(or let a timeout or connection error escape) and ``run_check`` turns that
into a result, so protocol modules do not repeat try/except blocks.
"""

import asyncio
import concurrent.futures
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Optional, Tuple

from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import DefaultLoopResolver, Resolver

from hacheck.config import Config

log = logging.getLogger(__name__)

# What the HTTP client may buffer from one upstream (Tornado's default is 100 MB).
# Tornado 6.2 reads a body without a length (read until close) into this buffer
# before any streaming callback sees it, so an endless answer would cost this much
# memory and time; the http check reads at most 64 KiB of body anyway.
HTTP_MAX_BUFFER_BYTES = 256 * 1024


@dataclass(frozen=True)
class Target:
    """Where a check connects: the host (127.0.0.1 unless a header said otherwise) and port."""

    host: str
    port: int


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict: an HTTP-style status code and a message for people."""

    code: int
    message: str = ""

    @property
    def is_up(self) -> bool:
        return 200 <= self.code < 300


class CheckFailed(Exception):
    """Raised inside a check to answer with ``code`` and ``message`` at once."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.result = CheckResult(code, message)


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
        self._blocking_slots: Optional[asyncio.Semaphore] = None

    @property
    def http_client(self) -> AsyncHTTPClient:
        """One HTTP client whose ``max_clients`` bounds concurrent outbound requests."""
        if self._http_client is None:
            self._http_client = AsyncHTTPClient(
                force_instance=True, max_clients=self.config.max_clients,
                max_buffer_size=HTTP_MAX_BUFFER_BYTES, resolver=self._resolver,
            )
        return self._http_client

    def outbound_queue_size(self) -> int:
        """Requests waiting for a free outbound HTTP slot (``/status``)."""
        client = self._http_client
        queue = getattr(client, "queue", None)
        return len(queue) if queue is not None else 0

    async def run_blocking(self, func: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """Run a blocking call (a driver without asyncio) in a bounded thread pool.

        At most ``max_clients`` run at once; waiting for a slot counts against
        ``timeout``, so a hung server can neither block the event loop nor make
        callers wait longer than the timeout. The call itself must have its own
        socket timeouts so the thread comes back.
        """
        if self._executor is None:
            workers = self.config.max_clients
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="hacheck-blocking"
            )
            self._blocking_slots = asyncio.Semaphore(workers)
        # Held here: a reload may start a new pool meanwhile; this call finishes in the old one.
        executor, slots = self._executor, self._blocking_slots
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def bounded() -> Any:
            async with slots:
                return await loop.run_in_executor(executor, func, *args)

        return await asyncio.wait_for(bounded(), max(0.0, deadline - loop.time()))

    def apply_config(self, config: Config) -> None:
        """Take over a reloaded configuration: ``max_clients`` bounds the next outbound checks."""
        running, self.config = self.config, config
        if config.max_clients == running.max_clients:
            return
        if self._http_client is not None:
            self._http_client.max_clients = config.max_clients
        # Calls in flight keep the old pool; with no reference left it ends its threads once they are done.
        self._executor = None
        self._blocking_slots = None

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None
        self._resolver.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


@dataclass(frozen=True)
class CheckContext:
    """Everything about the incoming request a check may use besides target and query."""

    service: str
    config: Config
    resources: SharedResources
    query_string: str = ""
    headers: Mapping[str, str] = None  # the incoming request's headers, case-insensitive

    @property
    def timeout(self) -> float:
        return self.config.healthcheck_timeout


CheckFunction = Callable[[Target, str, CheckContext], Awaitable[CheckResult]]


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
        raise CheckFailed(503, describe_connect_error(err, target)) from None


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
    started = time.monotonic()
    try:
        return await asyncio.wait_for(check(target, query, context), timeout)
    except CheckFailed as failed:
        return failed.result
    except asyncio.TimeoutError:
        return CheckResult(503, f"Check timed out after {timeout:.2f}s")
    except (OSError, ssl.SSLError) as err:
        return CheckResult(503, describe_connect_error(err, target))
    except asyncio.CancelledError:
        raise
    except Exception as err:  # a bug in a check must not take the daemon down
        log.exception("check %s for %s failed after %.2fs", getattr(check, "__module__", check),
                      context.service, time.monotonic() - started)
        return CheckResult(500, f"Check failed: {type(err).__name__}: {err}")
