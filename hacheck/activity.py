"""What the daemon has seen: services asked about, requests per client, last statuses.

Feeds ``/recent`` and ``/status/count``. Memory is bounded: the least recently
seen services are forgotten past ``max_services``, and at most ``max_pairs``
(service, client) pairs are counted apart (``access_counts_max_pairs``); requests
of any further pair are counted together under ``OVERFLOW_SERVICE``.
"""

import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

# (service, client) pairs counted apart at most (configuration: ``access_counts_max_pairs``).
DEFAULT_MAX_PAIRS = 10000
# Where the requests of pairs beyond the bound are counted: parentheses are not allowed in a
# service name, so no real service can be mistaken for it.
OVERFLOW_SERVICE = "(overflow)"
OVERFLOW_CLIENT = "(any)"


class Activity:
    def __init__(self, max_services: int = 10000, max_pairs: int = DEFAULT_MAX_PAIRS,
                 clock: Callable[[], float] = time.time):
        self.max_services = max_services
        self.max_pairs = max_pairs
        self._clock = clock
        # service -> last time seen; kept in least-recently-seen-first order.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._counts: Dict[str, Dict[str, int]] = {}
        self._pairs = 0
        self._overflow = 0
        self._last_status: Dict[str, Tuple[int, str, float]] = {}

    def record(self, service: str, client_ip: str, code: Optional[int] = None) -> None:
        """One answered request for ``service`` from ``client_ip``: seen now, counted, and ``code``
        (the check's own code, when it got that far) kept as the service's last status."""
        now = self._clock()
        seen = self._seen
        if service in seen:
            seen.move_to_end(service)
        seen[service] = now
        counts = self._counts.get(service)
        if counts is not None and client_ip in counts:
            counts[client_ip] += 1
        elif self._pairs < self.max_pairs:
            if counts is None:
                counts = self._counts[service] = {}
            counts[client_ip] = 1
            self._pairs += 1
        else:
            self._overflow += 1
        if code is not None:
            self._last_status[service] = (code, client_ip, now)  # a dict only when asked for
        while len(seen) > self.max_services:
            forgotten, _ = seen.popitem(last=False)
            self._pairs -= len(self._counts.pop(forgotten, ()))
            self._last_status.pop(forgotten, None)

    def last_status(self, service: str) -> Optional[Dict[str, object]]:
        last = self._last_status.get(service)
        return None if last is None else {"code": last[0], "remote_ip": last[1], "ts": last[2]}

    def recent(self, threshold: float) -> List[Tuple[str, Optional[Dict[str, object]]]]:
        """Services seen within ``threshold`` seconds, sorted, each with its last status or None."""
        oldest = self._clock() - threshold
        return sorted(
            ((service, self.last_status(service))
             for service, seen_at in self._seen.items() if seen_at >= oldest),
            key=lambda item: item[0],
        )

    def access_counts(self) -> Dict[str, Dict[str, int]]:
        counts = {service: dict(counts) for service, counts in self._counts.items()}
        if self._overflow:
            counts[OVERFLOW_SERVICE] = {OVERFLOW_CLIENT: self._overflow}
        return counts

    def stats(self) -> Dict[str, object]:
        """The bound of ``/status/count`` and how full it is, for ``/status``."""
        return {"pairs": self._pairs, "max_pairs": self.max_pairs, "overflow_service": OVERFLOW_SERVICE,
                "overflow_requests": self._overflow}
