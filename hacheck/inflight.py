"""Bounds on uncached checks in flight, per target and per client, so no one holds every slot.

Checks that take one of the ``max_clients`` outbound slots are counted from
the moment a request starts one until it ends, under the target (host, port)
and the address of the client whose request started it. A request that would
start one more beyond ``max_checks_per_target`` or ``max_checks_per_client``
is refused at once (a 503 that is not cached): a flood aimed at one slow
service, or sent by one client, then leaves slots for everybody else. Joining
a check already in flight costs nothing and is never refused.
"""

from typing import Dict, Hashable, Optional

from hacheck.checks.base import Target
from hacheck.config import Config


class InFlightChecks:
    """Counts of uncached checks in flight by target and by client; both tables only hold
    targets and clients with a check in flight."""

    def __init__(self) -> None:
        self._per_target: Dict[Hashable, int] = {}
        self._per_client: Dict[str, int] = {}

    def admit(self, target: Target, client: str, config: Config) -> Optional[str]:
        """Count a check about to start; None, or (counting nothing) why it may not start."""
        target_key = (target.host, target.port)
        of_target = self._per_target.get(target_key, 0)
        if of_target >= config.max_checks_per_target:
            return (f"Not checked: {of_target} checks of {target.host}:{target.port} already in flight "
                    f"(max_checks_per_target={config.max_checks_per_target})")
        of_client = self._per_client.get(client, 0)
        if of_client >= config.max_checks_per_client:
            return (f"Not checked: client {client} already has {of_client} checks in flight "
                    f"(max_checks_per_client={config.max_checks_per_client})")
        self._per_target[target_key] = of_target + 1
        self._per_client[client] = of_client + 1
        return None

    def release(self, target: Target, client: str) -> None:
        """The check counted by ``admit`` has ended."""
        _decrement(self._per_target, (target.host, target.port))
        _decrement(self._per_client, client)

    def stats(self) -> Dict[str, int]:
        """For ``/status``: how many targets and clients have checks in flight now."""
        return {"targets": len(self._per_target), "clients": len(self._per_client),
                "checks": sum(self._per_target.values())}


def _decrement(counts: Dict[Hashable, int], key: Hashable) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
