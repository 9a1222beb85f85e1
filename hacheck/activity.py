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
        self._last_status: Dict[str, Dict[str, object]] = {}

    def record_request(self, service: str, client_ip: str) -> None:
        """Mark ``service`` as seen now and count one request from ``client_ip``."""
        self._seen.pop(service, None)
        self._seen[service] = self._clock()
        counts = self._counts.setdefault(service, {})
        if client_ip in counts or len(counts) < self.max_clients_per_service:
            counts[client_ip] = counts.get(client_ip, 0) + 1
        while len(self._seen) > self.max_services:
            forgotten, _ = self._seen.popitem(last=False)
            self._counts.pop(forgotten, None)
            self._last_status.pop(forgotten, None)

    def record_status(self, service: str, code: int, client_ip: str) -> None:
        """Remember the check's own code as the service's last status."""
        if service in self._seen:
            self._last_status[service] = {"code": code, "remote_ip": client_ip, "ts": self._clock()}

    def last_status(self, service: str) -> Optional[Dict[str, object]]:
        return self._last_status.get(service)

    def recent(self, threshold: float) -> List[Tuple[str, Optional[Dict[str, object]]]]:
        """Services seen within ``threshold`` seconds, sorted, each with its last status or None."""
        oldest = self._clock() - threshold
        return sorted(
            ((service, self._last_status.get(service))
             for service, seen_at in self._seen.items() if seen_at >= oldest),
            key=lambda item: item[0],
        )

    def access_counts(self) -> Dict[str, Dict[str, int]]:
        return {service: dict(counts) for service, counts in self._counts.items()}
