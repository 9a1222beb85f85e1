"""Builds the Tornado application and the one state object its handlers share."""

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Optional

import tornado.web

from hacheck import __version__
from hacheck.activity import Activity
from hacheck.cache import CheckCache
from hacheck.checks import REGISTRY
from hacheck.checks.base import SharedResources
from hacheck.config import CACHE_SHAPING_KEYS, Config
from hacheck.handlers import NotFoundHandler, routes
from hacheck.metrics import Metrics
from hacheck.spool import Spool
from hacheck.tornado_stats import TornadoStats, tornado_stats_if_available

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
    requests_in_flight: int = 0
    tornado_stats: Optional[TornadoStats] = None
    metrics: Optional[Metrics] = None
    # False with -S: HTTP checks report only the real check; downtimes go through the agent.
    spool_on_http: bool = True

    def apply_config(self, config: Config) -> None:
        """Take over a reloaded configuration for the next requests.

        Handlers read ``self.config`` per request; objects built from the
        configuration follow it here. The cached answers stay unless a key they
        depend on changed.
        """
        running, self.config = self.config, config
        self.cache.ttl = config.cache_time
        if any(key in CACHE_SHAPING_KEYS for key in running.changed_keys(config)):
            self.cache.clear()
        self.resources.apply_config(config)

    def close(self) -> None:
        if self.tornado_stats is not None:
            self.tornado_stats.stop()
            self.tornado_stats = None
        self.resources.close()


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
             with_mutornadomon: bool = False, spool_on_http: bool = True) -> tornado.web.Application:
    """The application; ``app.settings["hacheck_state"]`` is its ``DaemonState``.

    ``access_log=False`` skips Tornado's per-request log line entirely.
    ``with_mutornadomon`` needs a current IOLoop (it starts a periodic callback).
    ``spool_on_http=False`` (``-S``) makes check routes other than /spool ignore downtimes.
    """
    metrics = Metrics(spool, REGISTRY, per_service=config.metrics_per_service)
    state = DaemonState(
        config=config,
        spool=spool,
        cache=cache if cache is not None else CheckCache(config.cache_time),
        activity=activity if activity is not None else Activity(),
        resources=resources if resources is not None else SharedResources(config),
        own_ips=own_ips if own_ips is not None else frozenset(),
        metrics=metrics,
        spool_on_http=spool_on_http,
    )
    metrics.observe(state.cache)
    table = routes(state)
    log_function = _access_log if access_log else None
    if with_mutornadomon:
        state.tornado_stats = tornado_stats_if_available()
    if state.tornado_stats is not None:
        table.append(state.tornado_stats.route())
        log_function = state.tornado_stats.counting_requests(log_function)
        state.tornado_stats.start()
    return tornado.web.Application(table, hacheck_state=state, default_handler_class=NotFoundHandler,
                                   default_handler_args={"state": state},
                                   log_function=log_function or _no_access_log)


def _access_log(handler: tornado.web.RequestHandler) -> None:
    """One INFO line per request: a 4xx or 5xx answer is not the daemon's error (Tornado logs those
    at WARNING and ERROR, which would put bad input and down services among real errors)."""
    access = logging.getLogger("tornado.access")
    access.info("%d %s %.2fms", handler.get_status(), handler._request_summary(),
                1000.0 * handler.request.request_time())


def _no_access_log(handler: tornado.web.RequestHandler) -> None:
    """Tornado's per-request log hook, doing nothing (``-v`` turns logging on)."""
