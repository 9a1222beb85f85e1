"""Bounds on uncached checks in flight, per client and per target, so no one holds every slot.

Checks that take one of the ``max_clients`` outbound slots are counted from
the moment a request starts one until it ends, under the address of the
client whose request started it (``max_checks_per_client``) and under the
target host and port (``max_checks_per_target``). A request over its client's
bound waits for one of that client's checks to end before it registers any
check, so nobody else can join a check held up by someone else's bound; a
check over its target's bound waits inside its own timeout. Either wait
that lasts the whole ``healthcheck_timeout`` is a 503 that is not cached.
Joining a check already in flight costs nothing and is never bounded.
"""

import asyncio
import functools
from typing import Callable, Dict

from hacheck.checks.base import CheckContext, CheckFunction, CheckResult, KeyedSlots, Target
from hacheck.config import Config


class InFlightChecks:
    """The per-client and per-target slots; the limits are read from the configuration at each use."""

    def __init__(self, config: Callable[[], Config]):
        self._config = config
        self.per_client = KeyedSlots(lambda: config().max_checks_per_client)
        self.per_target = KeyedSlots(lambda: config().max_checks_per_target)

    async def admit_client(self, client: str) -> bool:
        """Take one of ``client``'s slots, waiting at most ``healthcheck_timeout``; False when none came."""
        if self.per_client.try_acquire(client):
            return True
        try:
            await asyncio.wait_for(self.per_client.acquire(client), self._config().healthcheck_timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def bounded_per_target(self, check: CheckFunction) -> CheckFunction:
        """``check``, run once its target has a slot free (waiting counts against the check's timeout)."""
        @functools.wraps(check)
        async def bounded(target: Target, query: str, context: CheckContext) -> CheckResult:
            what = (f"free check slot for {target.host}:{target.port} "
                    f"(max_checks_per_target={self._config().max_checks_per_target})")
            async with self.per_target.held((target.host, target.port), context.progress, what):
                return await check(target, query, context)
        return bounded

    def stats(self) -> Dict[str, int]:
        """For ``/status``: uncached checks counted now, and the targets and clients holding or awaiting slots."""
        return {"checks": self.per_client.in_use(), "targets": len(self.per_target), "clients": len(self.per_client)}
