"""A request's check result: from the cache, shared with the same check in flight, or run in a slot.

The handler parses the request and answers it; between the two, the runner
decides where the result comes from. ``cached`` is the synchronous fast path
(a cache hit costs no coroutine); ``run_or_join`` is the rest: the client's
fair share of outbound slots (``max_checks_per_client``), joining a check
already in flight, or running one bounded per target, timed by the metrics.
It knows nothing of HTTP: headers are any ``HTTPHeaders``-like mapping.
"""

from typing import Awaitable, Callable, Optional, Tuple

from hacheck.checks import REGISTRY, Protocol, check_context, check_key, run_check
from hacheck.checks.base import CheckResult, SharedResources, Target, not_reached
from hacheck.checks.cache import CheckCache
from hacheck.checks.inflight import InFlightChecks
from hacheck.config import Config
from hacheck.throttled_log import ThrottledLog


class CheckRunner:
    """Where each check result comes from; one per worker process, reading the configuration per use.

    ``metrics`` is anything with ``time_check(protocol, service, awaitable)`` (the daemon's
    ``Metrics``), or None to run checks untimed.
    """

    def __init__(self, cache: CheckCache, in_flight: InFlightChecks, resources: SharedResources,
                 metrics, warnings: ThrottledLog, config: Callable[[], Config]):
        self.cache = cache
        self.in_flight = in_flight
        self.resources = resources
        self.metrics = metrics
        self.warnings = warnings
        self._config = config
        # Requests waiting for a check (run, joined, or waiting for a slot): a stop lets them
        # finish, and /status reports them.
        self.requests_in_flight = 0

    def cached(self, protocol: str, service: str, target: Target, query: str, query_string: str,
               headers) -> Tuple[tuple, bool, Optional[CheckResult]]:
        """The check's cache key, whether ``Pragma: no-cache`` asks past the cache, and the fresh result
        (None when the check must be run or joined with ``run_or_join``)."""
        key = check_key(protocol, REGISTRY[protocol], self._config(), target, service, query, query_string, headers)
        pragmas = headers.get_list("Pragma")
        bypass = bool(pragmas) and "no-cache" in ",".join(pragmas).lower()
        return key, bypass, None if bypass else self.cache.fresh(key)

    async def run_or_join(self, protocol: str, service: str, target: Target, query: str, query_string: str,
                          headers, client_ip: str, key: tuple, bypass: bool) -> CheckResult:
        """The result when ``cached`` had none: shared with the same check in flight, or run now.

        A check that takes an outbound slot is counted against ``client_ip``'s share while it
        runs; a client over its share waits up to ``healthcheck_timeout`` and is then refused
        (a 503 result that is not cached).
        """
        config = self._config()
        entry = REGISTRY[protocol]
        in_flight = self.in_flight
        counted = entry.uses_outbound_slot and not self.cache.running(key)
        run = _CheckStart(self, protocol, entry, config, service, target, query, query_string, headers,
                          client_ip, counted)
        self.requests_in_flight += 1
        try:
            if counted and not await in_flight.admit_client(client_ip):
                limit = config.max_checks_per_client
                refusal = (f"Not checked: client {client_ip} had {limit} checks in flight for "
                           f"{config.healthcheck_timeout:.2f}s (max_checks_per_client={limit})")
                self.warnings.warning("check refused by a bound", "%s", refusal)
                return not_reached(refusal)
            try:
                result = await self.cache.get_or_run(key, run, bypass=bypass)
            finally:
                if counted and not run.started:  # joined a check after all: nothing of this request's to count
                    in_flight.per_client.release(client_ip)
        finally:
            self.requests_in_flight -= 1
        if not result.is_verdict:
            self.warnings.warning("check not run", "check of %s not run: %s", service, result.message)
        return result


class _CheckStart:
    """The cache's ``run`` for one request: starts the check (once), remembering that it did."""

    __slots__ = ("runner", "protocol", "entry", "config", "service", "target", "query", "query_string",
                 "headers", "client_ip", "counted", "started")

    def __init__(self, runner: CheckRunner, protocol: str, entry: Protocol, config: Config, service: str,
                 target: Target, query: str, query_string: str, headers, client_ip: str, counted: bool):
        self.runner = runner
        self.protocol = protocol
        self.entry = entry
        self.config = config
        self.service = service
        self.target = target
        self.query = query
        self.query_string = query_string
        self.headers = headers
        self.client_ip = client_ip
        self.counted = counted
        self.started = False

    def __call__(self) -> Awaitable[CheckResult]:
        self.started = True
        runner, entry = self.runner, self.entry
        # Built only when the check runs: a shared or cached result needs no context.
        context = check_context(entry, self.config, runner.resources, self.service, self.query_string,
                                self.headers, self.client_ip)
        check = runner.in_flight.bounded_per_target(entry.check) if self.counted else entry.check
        checked = run_check(check, self.target, self.query if entry.uses_query else "", context)
        if runner.metrics is not None:
            checked = runner.metrics.time_check(self.protocol, self.service, checked)
        return _released_after(checked, runner.in_flight, self.client_ip) if self.counted else checked


async def _released_after(check: Awaitable[CheckResult], in_flight: InFlightChecks, client_ip: str) -> CheckResult:
    try:
        return await check
    finally:
        in_flight.per_client.release(client_ip)
