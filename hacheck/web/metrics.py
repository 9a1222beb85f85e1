"""Prometheus metrics: what the daemon counts per request and what ``GET /metrics`` reports.

In a single process the request path only adds to plain numbers (requests
by label, and the cache's own counters), handed to prometheus_client when
``/metrics`` is scraped: the scrape is their only reader. Downtimes are read
from the spool when scraped, not counted per request.

With ``-n`` the supervisor gives its workers a private ``PROMETHEUS_MULTIPROC_DIR``
(``create_multiprocess_dir()``): every worker writes its values there as they
happen and the worker that answers a scrape adds up all of them. prometheus_client decides at
import time whether values live in memory or in that directory, so this module
imports it only inside functions, after ``main`` has set or cleared the variable.
"""

import logging
import os
import shutil
import tempfile
import time
from typing import Awaitable, Dict, Iterable, Optional, Tuple, TypeVar

from hacheck import private_names
from hacheck.checks.cache import CacheObserver, CheckCache
from hacheck.lb_view import LbView
from hacheck.spool import DOWNTIME_STATES, Spool, SpoolEntry, SpoolError

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The lower-case spelling older prometheus_client releases read too.
_LEGACY_MULTIPROCESS_ENV = "prometheus_multiproc_dir"

DOWNTIME_KINDS = ("all", "service", "port", "host")
# Every kind and state (spool.DOWNTIME_STATES) gets a zero sample, so the series exist before the first one.

# From a fast local answer to healthcheck_timeout (10 s by default) and beyond.
CHECK_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

T = TypeVar("T")


def multiprocess_dir() -> Optional[str]:
    """The shared metrics directory of this daemon's workers, or None in single-process mode."""
    return os.environ.get(MULTIPROCESS_ENV) or None


def clear_multiprocess_env() -> None:
    """Single-process mode keeps values in memory, whatever directory the environment names."""
    os.environ.pop(MULTIPROCESS_ENV, None)
    os.environ.pop(_LEGACY_MULTIPROCESS_ENV, None)


def create_multiprocess_dir() -> str:
    """A private directory (mode 0700) for the workers' metrics, named in the environment they inherit.

    Raises ``OSError`` when the directory cannot be created.
    """
    path = tempfile.mkdtemp(prefix="hacheck-metrics-")
    clear_multiprocess_env()
    os.environ[MULTIPROCESS_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    clear_multiprocess_env()
    shutil.rmtree(path, ignore_errors=True)


def remove_orphaned_multiprocess_dir() -> None:
    """Called by a worker whose supervisor was killed outright: the directory would be left behind."""
    path = multiprocess_dir()
    if path is not None:
        remove_multiprocess_dir(path)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's gauges (its counters stay: they count work that was done)."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, path)
    except OSError as err:
        log.warning("cannot remove the metrics of worker %d: %s", pid, err)


def downtime_kind(entry: SpoolEntry) -> str:
    """What a downtime applies to: the whole machine, a service, a service on a port, or on a host and port."""
    if entry.host is not None:
        return "host"
    if entry.port is not None:
        return "port"
    if entry.service == "all":
        return "all"
    return "service"


def downtime_state(entry: SpoolEntry) -> str:
    """``down`` unless the spool records another state for the downtime."""
    return entry.downtime.state


class DowntimeCollector:
    """``hacheck_spool_readable`` and ``hacheck_downtimes`` (active downtimes by kind and state), from
    the spool: every worker reads the same directory, so any of them can answer. The downtime files
    are read again only when the directory changed."""

    def __init__(self, spool: Spool):
        self.spool = spool

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("hacheck_spool_readable",
                                "1 when downtimes can be read from the spool directory; 0 when it cannot be "
                                "read and every check is answered as if nothing were down.",
                                value=0 if self.spool.unreadable_reason() else 1)
        try:
            entries = self.spool.entries_for_count()
        except SpoolError as err:
            log.warning("metrics: %s", err)
            return
        counts: Dict[Tuple[str, str], int] = {
            (kind, state): 0 for kind in DOWNTIME_KINDS for state in DOWNTIME_STATES
        }
        for entry in entries:
            key = (downtime_kind(entry), downtime_state(entry))
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily("hacheck_downtimes", "Active operator downtimes in the spool.",
                                   labels=["kind", "state"])
        for (kind, state), count in counts.items():
            family.add_metric([kind, state], count)
        yield family


class LoadBalancerCollector:
    """``hacheck_lb_server_up`` and ``hacheck_lb_server_sessions``: one series per report in the load balancers'
    view (every worker's with ``-n``), read when scraped; at most ``lb_view_max_entries`` of each."""

    def __init__(self, lb_view: LbView):
        self.lb_view = lb_view

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        labels = ["node", "backend", "server"]
        up = GaugeMetricFamily("hacheck_lb_server_up",
                               "1 when the load balancer's last check of the server said UP (it sends it "
                               "traffic), else 0; from HAProxy's http-check send-state.", labels=labels)
        sessions = GaugeMetricFamily("hacheck_lb_server_sessions",
                                     "The server's current sessions on the load balancer (scur), as its last "
                                     "check said.", labels=labels)
        for report in self.lb_view.entries():
            up.add_metric(report.key, 1 if report.routes_traffic else 0)
            if report.scur is not None:
                sessions.add_metric(report.key, report.scur)
        yield up
        yield sessions


class CacheMetrics(CacheObserver):
    """The check cache's counters and entries gauge: told each event (``-n``), or caught up when scraped."""

    def __init__(self, hits, misses, coalesced, sets, expirations, entries):
        # Bound methods kept as attributes: a hit costs one call into the client.
        self.hit = hits.inc
        self.miss = misses.inc
        self.coalesced = coalesced.inc
        self._entries = entries
        self._counters = {"hits": hits, "misses": misses, "coalesced": coalesced, "sets": sets,
                          "expirations": expirations}
        self._reported: Dict[str, int] = {}

    def catch_up(self, cache_counters: Dict[str, int], size: int) -> None:
        """Add what the cache counted since the last call, and set the entries gauge to ``size``."""
        for name, counter in self._counters.items():
            added = cache_counters[name] - self._reported.get(name, 0)
            if added:
                counter.inc(added)
            self._reported[name] = cache_counters[name]
        self._entries.set(size)

    def stored(self, size: int) -> None:
        self._counters["sets"].inc()
        self._entries.set(size)

    def expired(self, count: int, size: int) -> None:
        self._counters["expirations"].inc(count)
        self._entries.set(size)


class Metrics:
    """One worker's metrics and the registry a scrape renders; owned by the application's ``DaemonState``.

    ``protocols`` (the checks) and ``request_only_protocols`` (requests counted but not timed
    as checks: the agent) are the only values the ``protocol`` label takes; ``per_service``
    (the ``metrics_per_service`` key) adds a ``service`` label to requests and check durations.
    """

    def __init__(self, spool: Spool, protocols: Iterable[str], per_service: bool = False,
                 request_only_protocols: Iterable[str] = (), lb_view: Optional[LbView] = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess_dir = multiprocess_dir()
        in_memory = private_names.prometheus_values_in_memory(values)
        if in_memory is not None and in_memory == (self.multiprocess_dir is not None):
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set or cleared; "
                "metrics would not add up across workers"
            )
        self.per_service = per_service
        check_protocols = sorted(frozenset(protocols))
        self.protocols = frozenset(check_protocols) | frozenset(request_only_protocols)
        self.registry = CollectorRegistry()
        # In multiprocess mode values go to files and a scrape reads every worker's files.
        own = None if self.multiprocess_dir else self.registry
        self._register_collectors(spool, lb_view)

        service = ("service",) if per_service else ()
        self._requests = Counter(
            "hacheck_requests", "Check requests answered, by protocol and HTTP status code.",
            ("protocol", "code") + service, registry=own)
        self._durations = Histogram(
            "hacheck_check_duration_seconds",
            "Time taken by checks actually run (cache hits and shared checks are not timed).",
            ("protocol",) + service, buckets=CHECK_DURATION_BUCKETS, registry=own)
        outbound = Gauge(
            "hacheck_outbound_requests_in_flight", "Checks running against their services right now.",
            ("protocol",), multiprocess_mode="livesum", registry=own)
        self.cache = CacheMetrics(
            hits=Counter("hacheck_cache_hits", "Checks answered from a fresh cached result.", registry=own),
            misses=Counter("hacheck_cache_misses", "Checks that were run (not cached, or Pragma: no-cache).",
                           registry=own),
            coalesced=Counter("hacheck_cache_coalesced", "Checks that waited for the same check already running.",
                              registry=own),
            sets=Counter("hacheck_cache_sets", "Check results stored in the cache.", registry=own),
            expirations=Counter("hacheck_cache_expirations", "Cached results removed after cache_time.",
                                registry=own),
            entries=Gauge("hacheck_cache_entries", "Results in the cache now (all workers added up).",
                          multiprocess_mode="livesum", registry=own),
        )
        # Every live worker's own value (a pid label with -n): they agree once a reload reached them all.
        self._config_generation = Gauge(
            "hacheck_config_generation", "Which configuration this process serves with: 1 at start, "
            "one more per reload that applied a file.", multiprocess_mode="liveall", registry=own)
        # Labelled children are made once and kept: the request path only looks them up.
        self._outbound = {protocol: outbound.labels(protocol) for protocol in check_protocols}
        self._request_children: Dict[tuple, object] = {}
        # Single process: requests counted here and handed to the client at each scrape (see render).
        self._request_counts: Optional[Dict[tuple, int]] = None if self.multiprocess_dir else {}
        self._scraped_cache = None
        self._duration_children: Dict[tuple, object] = {}
        if not per_service:
            for protocol in check_protocols:
                self._duration_children[(protocol,)] = self._durations.labels(protocol)

    def _register_collectors(self, spool: Spool, lb_view: Optional[LbView]) -> None:
        """What a scrape reads besides this worker's values: every worker's files (-n), the spool, the view."""
        if self.multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, path=self.multiprocess_dir)
        self.registry.register(DowntimeCollector(spool))
        if lb_view is not None:
            self.registry.register(LoadBalancerCollector(lb_view))

    def set_config_generation(self, generation: int) -> None:
        self._config_generation.set(generation)

    def observe(self, cache: CheckCache) -> None:
        """Report ``cache``: told each event with ``-n`` (a scrape may come to any worker), else read at
        each scrape from the cache's own counters (nothing more on the request path)."""
        if self.multiprocess_dir:
            cache.observer = self.cache
        else:
            self._scraped_cache = cache

    def count_request(self, protocol: str, service: str, code: int) -> None:
        """One answered check request."""
        key = (protocol, code, service) if self.per_service else (protocol, code)
        counts = self._request_counts
        if counts is None:  # -n: written at once
            child = self._request_children.get(key)
            if child is None:
                if protocol not in self.protocols:
                    return
                child = self._request_child(key)
            child.inc()
        elif key in counts:
            counts[key] += 1
        elif protocol in self.protocols:
            counts[key] = 1
            # Made now, once per label set: its *_created sample is when the series began, not the next scrape.
            self._request_child(key)

    def _request_child(self, key: tuple):
        """The labelled child of ``hacheck_requests`` for a key of ``count_request``, made once."""
        child = self._request_children.get(key)
        if child is None:
            labels = (key[0], str(key[1])) + key[2:]
            child = self._request_children[key] = self._requests.labels(*labels)
        return child

    def _catch_up(self) -> None:
        """Single process: hand what the request path added up to prometheus_client."""
        counts, self._request_counts = self._request_counts, {}
        for key, count in counts.items():
            self._request_child(key).inc(count)
        if self._scraped_cache is not None:
            self.cache.catch_up(self._scraped_cache.counters, len(self._scraped_cache))

    async def time_check(self, protocol: str, service: str, check: Awaitable[T]) -> T:
        """Await ``check`` (a real check, run by the cache) counting it in flight and timing it."""
        in_flight = self._outbound.get(protocol)
        if in_flight is None:
            return await check
        labels = (protocol, service) if self.per_service else (protocol,)
        histogram = self._duration_children.get(labels)
        if histogram is None:
            histogram = self._duration_children[labels] = self._durations.labels(*labels)
        in_flight.inc()
        started = time.perf_counter()
        try:
            return await check
        finally:
            histogram.observe(time.perf_counter() - started)
            in_flight.dec()

    def render(self) -> Tuple[bytes, str]:
        """The scrape: body in Prometheus text format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._request_counts is not None:
            self._catch_up()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
