"""Builds the Tornado application and the one state object its handlers share."""

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import tornado.web

from hacheck import __version__
from hacheck.activity import Activity
from hacheck.cache import CheckCache
from hacheck.checks import REGISTRY
from hacheck.checks.base import SharedResources
from hacheck.config import Config
from hacheck.handlers import NotFoundHandler, routes
from hacheck.metrics import Metrics
from hacheck.spool import Spool

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
    monitor: Any = None
    metrics: Optional[Metrics] = None
    # False with -S: HTTP checks report only the real check; downtimes go through the agent.
    spool_on_http: bool = True

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
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


def is_localhost(request) -> bool:
    try:
        address = ipaddress.ip_address(request.remote_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 on a dual-stack socket
        address = address.ipv4_mapped
    return address.is_loopback


class _RequestCounter:
    """mutornadomon's per-request counts (requests, localhost_requests, private_requests), made cheap.

    mutornadomon's own WebCollector parses the client address with ipaddress
    and tests it against a dozen networks on every request; a health checker
    hears from the same few HAProxy hosts over and over, so the two answers are
    remembered per address (bounded) and the counts stay the same.
    """

    MAX_ADDRESSES = 4096

    def __init__(self, monitor):
        from mutornadomon import net

        self.monitor = monitor
        self._net = net
        self._kinds = {}

    def __call__(self, request) -> None:
        address = request.remote_ip
        kind = self._kinds.get(address)
        if kind is None:
            if len(self._kinds) >= self.MAX_ADDRESSES:
                self._kinds.clear()
            kind = self._kinds[address] = (self._net.is_local_address(address),
                                           self._net.is_private_address(address))
        count = self.monitor.count
        count("requests", 1)
        if kind[0]:
            count("localhost_requests", 1)
        if kind[1]:
            count("private_requests", 1)


def _counting_requests(log_function, count_request):
    """The per-request log hook, also counting the request (cheaper than a Tornado transform, which
    adds three calls to every response)."""
    def log_and_count(handler: tornado.web.RequestHandler) -> None:
        count_request(handler.request)
        log_function(handler)
    return log_and_count


def _start_mutornadomon(app: tornado.web.Application):
    """What ``initialize_mutornadomon(tornado_app=app, request_filter=...)`` does, with a cheaper request counter."""
    from mutornadomon import MuTornadoMon
    from mutornadomon.collectors.ioloop_util import UtilizationCollector
    from mutornadomon.external_interfaces.http_endpoints import HTTPEndpointExternalInterface

    monitor = MuTornadoMon(HTTPEndpointExternalInterface(app, request_filter=is_localhost))
    monitor.start()
    app.settings["log_function"] = _counting_requests(app.settings["log_function"], _RequestCounter(monitor))
    UtilizationCollector(monitor).start()
    return monitor


def _enable_mutornadomon(app: tornado.web.Application):
    """Serve ``/mutornadomon`` when the package imports; its absence is not an error."""
    try:
        import mutornadomon  # noqa: F401
    except Exception as err:  # ImportError, or a broken install of an optional extra
        log.debug("mutornadomon not available: %s", err)
        return None
    try:
        return _start_mutornadomon(app)
    except Exception:
        log.exception("mutornadomon could not start; /mutornadomon is not served")
        return None


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
    state.cache.observer = metrics.cache
    settings = {"hacheck_state": state, "default_handler_class": NotFoundHandler}
    settings["log_function"] = _access_log if access_log else _no_access_log
    app = tornado.web.Application(routes(), **settings)
    if with_mutornadomon:
        state.monitor = _enable_mutornadomon(app)
    return app


def _access_log(handler: tornado.web.RequestHandler) -> None:
    """One INFO line per request: a 4xx or 5xx answer is not the daemon's error (Tornado logs those
    at WARNING and ERROR, which would put bad input and down services among real errors)."""
    access = logging.getLogger("tornado.access")
    access.info("%d %s %.2fms", handler.get_status(), handler._request_summary(),
                1000.0 * handler.request.request_time())


def _no_access_log(handler: tornado.web.RequestHandler) -> None:
    """Tornado's per-request log hook, doing nothing (``-v`` turns logging on)."""
