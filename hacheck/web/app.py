"""Builds the Tornado application and the one state object its handlers share."""

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

import tornado.web

from hacheck import __version__
from hacheck.activity import Activity
from hacheck.checks.base import SharedResources
from hacheck.checks.cache import CheckCache
from hacheck.checks.inflight import InFlightChecks
from hacheck.checks.runner import CheckRunner
from hacheck.config import CACHE_SHAPING_KEYS, Config
from hacheck.lb_view import LbView
from hacheck.spool import Spool, SpoolWriter
from hacheck.throttled_log import ThrottledLog
from hacheck.web.agent import AGENT_PROTOCOL
from hacheck.web.handlers import ROUTE_NAMES, NotFoundHandler, routes
from hacheck.web.metrics import Metrics
from hacheck.web.tornado_stats import TornadoStats, tornado_stats_if_available

log = logging.getLogger(__name__)


@dataclass
class DaemonState:
    """Everything a request may read or change; one per worker process, owned by the application."""

    config: Config
    spool: Spool
    cache: CheckCache
    activity: Activity
    resources: SharedResources
    started_at: float = field(default_factory=time.time)
    own_ips: frozenset = frozenset()
    version: str = __version__
    tornado_stats: Optional[TornadoStats] = None
    # Why /mutornadomon is not served, for its 404 (None when it is).
    tornado_stats_problem: Optional[str] = "the daemon was started without /mutornadomon"
    metrics: Optional[Metrics] = None
    # False with -S: HTTP checks report only the real check; downtimes go through the agent.
    spool_on_http: bool = True
    # Uncached checks in flight per target and per client (max_checks_per_target, max_checks_per_client).
    in_flight_checks: InFlightChecks = field(init=False)
    # Where each check's result comes from: the cache, a check in flight, or a new one in a slot.
    checks: CheckRunner = field(init=False)
    # Warnings that may repeat with every request, logged at most once per log_repeat_interval.
    warnings: Optional[ThrottledLog] = None
    # What every load balancer last reported (send-state); with -n shared through a directory.
    lb_view: LbView = field(default_factory=LbView)
    # POST /spool's changes, off the event loop.
    spool_writer: SpoolWriter = field(default_factory=SpoolWriter)
    # Which configuration this is: 1 at start, one more for each reload that applied a file
    # (with -n the supervisor numbers them, so every worker can be seen to agree).
    config_generation: int = 1

    def __post_init__(self) -> None:
        if self.warnings is None:
            self.warnings = ThrottledLog(log, self.config.log_repeat_interval)
        self.in_flight_checks = InFlightChecks(lambda: self.config)
        self.checks = CheckRunner(self.cache, self.in_flight_checks, self.resources, self.metrics, self.warnings,
                                  lambda: self.config)
        self.apply_config(self.config, self.config_generation)

    def apply_config(self, config: Config, generation: Optional[int] = None) -> None:
        """Use ``config`` from now on (at start and on reload): the one place where objects that
        keep a copy of a key are told. Handlers read ``self.config`` per request. The cached
        answers stay unless a key they depend on changed. ``generation`` (None: the next one)
        numbers it.
        """
        self.set_config_generation(self.config_generation + 1 if generation is None else generation)
        running, self.config = self.config, config
        if any(key in CACHE_SHAPING_KEYS for key in running.changed_keys(config)):
            self.cache.clear()
        self.resources.apply_config(config)
        self.cache.reconfigure(config.cache_time, config.cache_max_entries)
        self.activity.max_pairs = config.access_counts_max_pairs
        self.lb_view.configure(config.lb_view_window, config.lb_view_max_entries)
        self.warnings.interval = config.log_repeat_interval

    def set_config_generation(self, generation: int) -> None:
        self.config_generation = generation
        if self.metrics is not None:
            self.metrics.set_config_generation(generation)

    def close(self) -> None:
        if self.tornado_stats is not None:
            self.tornado_stats.stop()
            self.tornado_stats = None
        self.resources.close()
        self.spool_writer.close()


def own_ip_addresses() -> frozenset:
    """This machine's addresses as its hostname resolves (checks aimed at them go to 127.0.0.1)."""
    addresses = set()
    try:
        hostname = socket.gethostname()
        for family, _, _, _, sockaddr in socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP):
            if family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(sockaddr[0])
    except OSError as err:
        log.warning("cannot resolve this machine's own hostname: %s", err)
    return frozenset(addresses)


def make_app(config: Config, spool: Spool, cache: Optional[CheckCache] = None,
             activity: Optional[Activity] = None, resources: Optional[SharedResources] = None,
             own_ips: Optional[frozenset] = None, access_log: bool = True,
             with_mutornadomon: bool = False, spool_on_http: bool = True,
             lb_view: Optional[LbView] = None) -> tornado.web.Application:
    """The application; ``app.settings["hacheck_state"]`` is its ``DaemonState``.

    ``access_log=False`` skips Tornado's per-request log line entirely.
    ``with_mutornadomon`` needs a current IOLoop (it starts a periodic callback).
    ``spool_on_http=False`` (``-S``) makes check routes other than /spool ignore downtimes.
    ``lb_view`` (with -n, one sharing the workers' directory) keeps the load balancers' reports.
    """
    lb_view = lb_view if lb_view is not None else LbView()
    metrics = Metrics(spool, ROUTE_NAMES, per_service=config.metrics_per_service,
                      request_only_protocols=[AGENT_PROTOCOL], lb_view=lb_view)
    state = DaemonState(
        config=config,
        spool=spool,
        cache=cache if cache is not None else CheckCache(config.cache_time),
        activity=activity if activity is not None else Activity(),
        resources=resources if resources is not None else SharedResources(config),
        own_ips=own_ips if own_ips is not None else frozenset(),
        metrics=metrics,
        spool_on_http=spool_on_http,
        lb_view=lb_view,
    )
    metrics.observe(state.cache)
    table = routes(state)
    log_function = _access_log if access_log else None
    if with_mutornadomon:
        state.tornado_stats, state.tornado_stats_problem = tornado_stats_if_available()
    if state.tornado_stats is not None:
        table.append(state.tornado_stats.route())
        log_function = state.tornado_stats.counting_requests(log_function)
    return tornado.web.Application(table, hacheck_state=state, default_handler_class=NotFoundHandler,
                                   default_handler_args={"state": state},
                                   log_function=log_function or _no_access_log)


def _access_log(handler: tornado.web.RequestHandler) -> None:
    """One INFO line per request: a 4xx or 5xx answer is not the daemon's error (Tornado logs those
    at WARNING and ERROR, which would put bad input and down services among real errors)."""
    access = logging.getLogger("tornado.access")
    request = handler.request
    access.info("%d %s %s (%s) %.2fms", handler.get_status(), request.method, request.uri, request.remote_ip,
                1000.0 * request.request_time())


def _no_access_log(handler: tornado.web.RequestHandler) -> None:
    """Tornado's per-request log hook, doing nothing (``-v`` turns logging on)."""
