"""A time-bounded cache of check results that also shares checks in flight.

The cache knows nothing about protocols: it runs a coroutine for a key. N
callers asking for the same key while its check runs all wait for that one
check. Entries expire ``ttl`` seconds after they were stored and are removed
as time passes, and at most ``max_entries`` are kept (the oldest go first), so
memory stays bounded however many distinct keys pass through. A value whose
``is_verdict`` is False (a check that never reached its service) is handed to
the callers waiting for it but never stored.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Dict, Hashable, Optional, Tuple

from hacheck import private_names
from hacheck.config import DEFAULT_CACHE_MAX_ENTRIES

COUNTER_NAMES = ("gets", "hits", "misses", "sets", "expirations", "coalesced", "evictions", "not_stored")

# A dict never gives back the table it grew to, request objects caught in
# reference cycles wait for a full garbage collection, and freed memory stays
# in the process: once the cache has shrunk below a quarter of a peak this
# large, its entries are copied into a fresh dict, the cycles are collected and
# the C library is asked to return free pages, so RSS falls back after a burst
# of distinct keys expires. It happens at most once per such burst.
#
# CPython's type attribute cache is emptied too: it keeps a reference to the
# name of each attribute looked up through it, and names made per request
# (``getattr(handler, method.lower())`` in Tornado, a method called by name from
# C in ``datetime``) are small strings strewn across the allocator's 1 MiB
# arenas while the cache grew; one of them left in an arena keeps the whole
# arena in memory (about 14 of 28 MB after 100,000 keys, measured with
# ``sys._debugmallocstats()``). The cache fills again from the next lookups.
COMPACT_PEAK = 4096


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


class CacheObserver:
    """Told about cache events (the metrics use it); this base ignores them."""

    def hit(self) -> None:
        pass

    def miss(self) -> None:
        pass

    def coalesced(self) -> None:
        pass

    def stored(self, size: int) -> None:
        pass

    def expired(self, count: int, size: int) -> None:
        pass


class CheckCache:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 observer: Optional[CacheObserver] = None, max_entries: int = DEFAULT_CACHE_MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        # Told about hits, misses, ... as they happen; None when nobody needs telling.
        self.observer = observer
        # Insertion order is expiry order because every entry lives exactly ttl.
        self._entries: OrderedDict[Hashable, Tuple[float, Any]] = OrderedDict()
        self._in_flight: Dict[Hashable, asyncio.Future[Any]] = {}
        self.counters: Dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._peak = 0
        # When the oldest entry expires (never before): a lookup sweeps only once something is due.
        self._next_expiry = float("inf")
        # Raised by clear(): a check started before it does not store its result.
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def stats(self) -> Dict[str, int]:
        """The counters, current size and bound, for ``/status``."""
        return {**self.counters, "size": len(self._entries), "max_entries": self.max_entries,
                "in_flight": len(self._in_flight)}

    def reconfigure(self, ttl: float, max_entries: int) -> None:
        """New ``cache_time`` and ``cache_max_entries`` (a configuration reload calls this).

        A new ttl empties the cache (insertion order must stay expiry order);
        otherwise the oldest entries beyond the new bound go at once.
        """
        before = len(self._entries)
        if ttl != self.ttl:
            self._entries.clear()
            self._next_expiry = float("inf")
        self.ttl = ttl
        self.max_entries = max_entries
        self._evict_oldest(len(self._entries) - max_entries)
        if self.observer is not None and len(self._entries) != before:
            self.observer.expired(before - len(self._entries), len(self._entries))

    def running(self, key: Hashable) -> bool:
        """Whether a check for ``key`` is in flight (a caller of ``get_or_run`` would join it)."""
        return key in self._in_flight

    def _evict_oldest(self, count: int) -> None:
        entries = self._entries
        for _ in range(min(count, len(entries))):
            entries.popitem(last=False)
            self.counters["evictions"] += 1
        self._next_expiry = next(iter(entries.values()))[0] if entries else float("inf")

    def _evict_expired(self, now: float) -> None:
        entries = self._entries
        expired = 0
        while entries:
            key, (expires_at, _) = next(iter(entries.items()))
            if expires_at > now:
                break
            del entries[key]
            self.counters["expirations"] += 1
            expired += 1
        self._next_expiry = next(iter(entries.values()))[0] if entries else float("inf")
        if expired:
            if self.observer is not None:
                self.observer.expired(expired, len(entries))
        if self._peak >= COMPACT_PEAK and len(entries) * 4 < self._peak:
            self._compact()

    def _compact(self) -> None:
        self._entries = OrderedDict(self._entries)
        self._in_flight = dict(self._in_flight)
        self._peak = len(self._entries)
        if private_names.clear_type_cache is not None:
            private_names.clear_type_cache()
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)

    def clear(self) -> None:
        """Forget every answer, and the checks in flight: their results are not stored (a reload)."""
        self._entries = OrderedDict()
        self._in_flight = {}
        self._next_expiry = float("inf")
        self._peak = 0
        self._generation += 1
        if self.observer is not None:
            self.observer.expired(0, 0)  # nothing expired, but the size is now 0

    def fresh(self, key: Hashable) -> Any:
        """The cached value for ``key`` when there is a fresh one (counted as a get and a hit), else None.

        The synchronous fast path: a caller that gets None goes on with ``get_or_run``,
        which counts the get and the miss (or the shared check). Values are never None.
        """
        now = self._clock()
        if now >= self._next_expiry:
            self._evict_expired(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        counters = self.counters
        counters["gets"] += 1
        counters["hits"] += 1
        if self.observer is not None:
            self.observer.hit()
        return entry[1]

    async def get_or_run(self, key: Hashable, run: Callable[[], Awaitable[Any]], bypass: bool = False) -> Any:
        """A fresh cached value for ``key``, else the value of ``run()``, shared by concurrent callers.

        ``bypass`` (``Pragma: no-cache``) skips the cached value, but joins a
        check already in flight (whose answer is no older than the request) or
        runs a new one that others join, whose result is then stored for others.
        """
        counters = self.counters
        if bypass:
            now = self._clock()
            if now >= self._next_expiry:
                self._evict_expired(now)
        else:
            value = self.fresh(key)
            if value is not None:
                return value
        counters["gets"] += 1
        pending = self._in_flight.get(key)
        if pending is not None:
            counters["coalesced"] += 1
            if self.observer is not None:
                self.observer.coalesced()
            return await asyncio.shield(pending)
        counters["misses"] += 1
        if self.observer is not None:
            self.observer.miss()
        task = asyncio.ensure_future(run())
        self._in_flight[key] = task
        generation = self._generation
        task.add_done_callback(lambda done: self._finish(key, done, generation))
        # A caller that goes away must not cancel the check others are waiting for.
        return await asyncio.shield(task)

    def _finish(self, key: Hashable, task: "asyncio.Future[Any]", generation: int) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled() and task.exception() is None and generation == self._generation:
            self.store(key, task.result())

    def store(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` for ``key`` for ttl seconds, letting the oldest entries go when full.

        A value whose ``is_verdict`` is False is refused (counted as ``not_stored``).
        """
        if self.ttl <= 0:
            return
        if not getattr(value, "is_verdict", True):
            self.counters["not_stored"] += 1
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            self._evict_oldest(len(self._entries) - self.max_entries + 1)
        expires_at = self._clock() + self.ttl
        self._entries[key] = (expires_at, value)
        if expires_at < self._next_expiry:
            self._next_expiry = expires_at
        self.counters["sets"] += 1
        if self.observer is not None:
            self.observer.stored(len(self._entries))
        if len(self._entries) > self._peak:
            self._peak = len(self._entries)
