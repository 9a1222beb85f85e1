"""What the daemon has seen: services asked about, requests per client, last statuses.

Feeds ``/recent`` and ``/status/count``. Memory is bounded: the least recently
seen services are forgotten past ``max_services``, and each service keeps
counts for at most ``max_clients_per_service`` client addresses.
"""

import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple


class Activity:
    def __init__(self, max_services: int = 10000, max_clients_per_service: int = 1000,
                 clock: Callable[[], float] = time.time):
        self.max_services = max_services
        self.max_clients_per_service = max_clients_per_service
        self._clock = clock
        # service -> last time seen; kept in least-recently-seen-first order.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._counts: Dict[str, Dict[str, int]] = {}
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
        if counts is None:
            counts = self._counts[service] = {}
        if client_ip in counts:
            counts[client_ip] += 1
        elif len(counts) < self.max_clients_per_service:
            counts[client_ip] = 1
        if code is not None:
            self._last_status[service] = (code, client_ip, now)  # a dict only when asked for
        while len(seen) > self.max_services:
            forgotten, _ = seen.popitem(last=False)
            self._counts.pop(forgotten, None)
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
        return {service: dict(counts) for service, counts in self._counts.items()}
