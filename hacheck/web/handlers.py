"""Thin Tornado handlers: parse the URL, pick the target, ask the spool and the check runner, answer.

A request flows one way: target -> spool -> check runner (cache, check in flight,
or a new check: hacheck/checks/runner.py) -> activity
(seen, counted, last status) -> response. Handlers hold no state of their own;
everything lives in the ``DaemonState`` the route table hands to each of them.
"""

import asyncio
import functools
import http.client
import ipaddress
import logging
import os
import re
import time
from typing import Awaitable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import tornado.escape
import tornado.httputil
import tornado.web

from hacheck.checks import REGISTRY, CheckResult, Target
from hacheck.lb_view import VIEW_FIELDS, LbView, report_from_header
from hacheck.names import (
    MAX_NAME_BYTES,
    MAX_PORT,
    PORT_PATTERN,
    SERVICE_CHARACTERS,
    SERVICE_PATTERN,
    InvalidName,
    check_service_name,
    is_host,
    parse_port,
)
from hacheck.spool import (
    LOCALHOST,
    STATE_DOWN,
    STATE_DRAIN,
    Downtime,
    InvalidExpiration,
    SpoolError,
    parse_expiration,
    report_unreadable,
    shown_reason,
    spool_filename,
)

log = logging.getLogger(__name__)

# The first part of a path: the spool route, then one per protocol (the metrics' protocol label).
SPOOL_ROUTE = "spool"
ROUTE_NAMES = (SPOOL_ROUTE, *REGISTRY)
DEFAULT_RECENT_THRESHOLD = 600

# The headers that may name another host (and port) to check than the URL's port on 127.0.0.1.
SERVER_STATE_HEADER = "X-Haproxy-Server-State"
NERVE_CHECK_IP_HEADER = "X-Nerve-Check-IP"
# The same names as HTTPHeaders keeps them, so one pass over a request's header names finds either.
_TARGET_HEADER_NAMES = frozenset(tornado.httputil.HTTPHeaders({SERVER_STATE_HEADER: "", NERVE_CHECK_IP_HEADER: ""}))


def sentence(message: str) -> str:
    """A message as the first words of an answer: capitalised."""
    return message[:1].upper() + message[1:]


class BadRequest(Exception):
    """The request cannot be served as asked; answered with 400 and the message."""


def down_message(matched: str, downtime: Downtime, reason_limit: int) -> str:
    """The body of a 503 for a downtime, as the original daemon wrote it."""
    return _downtime_message(matched, downtime, "down", reason_limit)


def drain_message(matched: str, downtime: Downtime, reason_limit: int) -> str:
    """The body of a 404 for a draining downtime: the down message, saying drain."""
    return _downtime_message(matched, downtime, "drain", reason_limit)


def _downtime_message(matched: str, downtime: Downtime, state_word: str, reason_limit: int) -> str:
    message = f"Service {matched} in {state_word} state"
    if downtime.creation is not None:
        message += f" since {downtime.creation:f}"
    if downtime.expiration is not None:
        message += f" until {downtime.expiration:f}"
    if downtime.reason:
        message += f": {shown_reason(downtime.reason, reason_limit)}"
    return message


def address_in_networks(text: str, networks: Sequence) -> bool:
    """True when ``text`` is an IP address inside one of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _one_value(name: str, values: List[str]) -> Optional[str]:
    """The value given; the same value repeated is that value, different ones are a 400."""
    distinct = sorted(set(values))
    if len(distinct) > 1:
        raise BadRequest(f"{name} given more than once with different values: {', '.join(distinct)}")
    return distinct[0] if distinct else None


class ServerState(NamedTuple):
    """What one request's ``X-Haproxy-Server-State`` says: the target it names and its sender's view."""

    host: Optional[str]
    port: Optional[int]
    state_field: str  # the first field: "UP", "DOWN 1/2", ...
    view_fields: Dict[str, str]  # name=, node=, weight=, scur=, qcur= (each given once, or the same each time)


def parse_server_state(value: str) -> ServerState:
    """``address=``, ``port=`` and the load balancer's view from HAProxy's ``X-Haproxy-Server-State``;
    malformed fields are ignored.

    An address or port given twice with different (well-formed) values is ambiguous: BadRequest.
    A view field given twice with different values is left out (the view then ignores the report).
    """
    hosts, ports = [], []
    fields = value.split(";")
    view_fields: Dict[str, str] = {}
    ambiguous = []
    for field in fields:
        name, sep, field_value = field.strip().partition("=")
        if not sep:
            continue
        name, field_value = name.strip().lower(), field_value.strip()
        if name == "address" and is_host(field_value):
            hosts.append(field_value)
        elif name == "port":
            try:
                ports.append(str(parse_port(field_value)))
            except InvalidName:
                pass
        elif name in VIEW_FIELDS:
            if view_fields.setdefault(name, field_value) != field_value:
                ambiguous.append(name)
    host = _one_value("X-Haproxy-Server-State field address=", hosts)
    port = _one_value("X-Haproxy-Server-State field port=", ports)
    for name in ambiguous:
        view_fields.pop(name, None)
    return ServerState(host, None if port is None else int(port), fields[0].strip(), view_fields)


def choose_target(headers: tornado.httputil.HTTPHeaders, url_port: int,
                  own_ips: frozenset) -> Tuple[Target, Optional[ServerState]]:
    """Host and port to check (the URL's port on 127.0.0.1, unless the headers name others), and what
    ``X-Haproxy-Server-State`` said (None without one)."""
    if _TARGET_HEADER_NAMES.isdisjoint(headers):
        return Target(LOCALHOST, url_port), None  # the usual request: nothing to parse
    host, port, server_state = None, url_port, None
    states = headers.get_list(SERVER_STATE_HEADER)
    if states:
        server_state = parse_server_state(";".join(states))
        host = server_state.host
        if server_state.port is not None:
            port = server_state.port
    if host is None:
        nerve_ips = [value.strip() for value in headers.get_list(NERVE_CHECK_IP_HEADER) if value.strip()]
        nerve_ip = _one_value("X-Nerve-Check-IP header", nerve_ips)
        if nerve_ip is not None:
            if not is_host(nerve_ip):
                raise BadRequest(f"X-Nerve-Check-IP header is not a host: {nerve_ip!r}")
            host = nerve_ip
    if host is None or host in own_ips:
        host = LOCALHOST
    return Target(host, port), server_state


def record_server_state(lb_view: LbView, server_state: ServerState, service: str, target: Target) -> None:
    """Keep what the load balancer that sent this check thinks of its server (when it is a report)."""
    report = report_from_header(server_state.state_field, server_state.view_fields, service, target.port,
                                None if target.host == LOCALHOST else target.host, time.time())
    if report is not None:
        lb_view.record(report)


# The check codes answered as they are (HTTP knows them); any other code is answered 503.
_ANSWERED_AS_IS = frozenset(code for code in http.client.responses if 200 <= code <= 599)


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, state) -> None:
        self.state = state  # the DaemonState, handed to every handler by the route table

    def compute_etag(self) -> None:
        # Health answers are never conditional: a 304 would hide a state change.
        return None

    def check_etag_header(self) -> bool:
        # Never a 304 (above); and Tornado's own check looks up two headers that are not there,
        # each a KeyError raised and caught, on every answer.
        return False

    def answer(self, code: int, message: str = "") -> None:
        """Finish with ``code`` and a plain-text body (none for codes that carry none)."""
        self.set_status(code)
        if code in (204, 304):
            self.finish()
            return
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(message or None)  # no body, no write

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        reason = getattr(error, "reason", None) or http.client.responses.get(status_code, "Unknown")
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {reason}\n")


class NotFoundHandler(BaseHandler):
    """Every path no route matches: a plain-text 404 saying what is wrong with it."""

    def prepare(self) -> None:
        self.answer(404, f"Not found: {not_found_reason(self.request.path, self.state.tornado_stats_problem)}\n")


def not_found_reason(path: str, tornado_stats_problem: Optional[str]) -> str:
    """Why ``path`` is not served: an unknown protocol, a missing /<query>, /mutornadomon unavailable, or
    what check paths look like."""
    if path.rstrip("/") == "/mutornadomon" and tornado_stats_problem:
        return f"/mutornadomon is not served: {tornado_stats_problem}"
    parts = path.split("/", 4)  # "", protocol, service, port[, query]
    if len(parts) >= 4 and parts[1] and re.fullmatch(PORT_PATTERN, parts[3]):
        protocol = parts[1]
        if protocol not in ROUTE_NAMES:
            return (f"unknown protocol {protocol[:40]!r}; the protocols are "
                    f"{', '.join(sorted(ROUTE_NAMES))}")
        if protocol in _QUERY_REQUIRED and len(parts) == 4 and re.fullmatch(SERVICE_PATTERN, parts[2]):
            return (f"{protocol} checks need the trailing /<query>: /{protocol}/<service>/<port>/<query>, "
                    f"e.g. {path}/ for the upstream's root page")
    return (f"checks are /<protocol>/<service>/<port>/<query>, where the service is {SERVICE_CHARACTERS}, "
            f"the port is decimal, and the /<query> may be left out except for "
            f"{' and '.join(sorted(_QUERY_REQUIRED))}")


# Protocols whose routes need the trailing /<query> (their registry entries say so).
_QUERY_REQUIRED = frozenset(name for name, protocol in REGISTRY.items() if protocol.query_required)


class PathHandler(BaseHandler):
    """What ``/spool/...`` and the protocol routes share: the path's parts, the target, the downtime.

    The route only says that the path has this shape (see ``routes``); the parts
    are taken from the path here, once, instead of Tornado percent-decoding
    each of them: the service and the port cannot hold a percent sign, so only
    the query ever needs decoding.
    """

    def initialize(self, state, protocol: str) -> None:
        self.state = state
        self.protocol = protocol
        self.service = ""
        self._request_counted = False

    def _parse_path(self) -> Optional[Tuple[str, int, str]]:
        """Service, port and query ("" when none) of this request's path; None once answered with 400."""
        parts = self.request.path.split("/", 4)  # "", protocol, service, port[, query]
        service = self.service = parts[2]
        port_text = parts[3]
        # The route matched SERVICE_PATTERN and PORT_PATTERN already: what is left to check is cheap.
        # Anything else goes through the names' own checks, which say what is wrong.
        if len(service) <= MAX_NAME_BYTES and service not in (".", "..") and len(port_text) <= 5 \
                and int(port_text) <= MAX_PORT:
            port = int(port_text)
        else:
            try:
                check_service_name(service)
                port = parse_port(port_text, minimum=0)
            except InvalidName as err:
                self.answer(400, f"{sentence(str(err))}\n")
                return None
        query = parts[4] if len(parts) == 5 else ""
        if "%" in query or not query.isascii():
            # As Tornado decodes a path argument, with its 400 for bytes that are not UTF-8.
            query = self.decode_argument(tornado.escape.url_unescape(query, encoding=None, plus=False))
        return service, port, query

    def _service_target_query(self) -> Optional[Tuple[str, Target, str]]:
        """The service, the target the URL and headers name, and the query; None once answered with 400.
        A load balancer's report in the headers goes to the view."""
        parsed = self._parse_path()
        if parsed is None:
            return None
        service, port, query = parsed
        headers = self.request.headers
        if _TARGET_HEADER_NAMES.isdisjoint(headers):
            return service, Target(LOCALHOST, port), query  # the usual request: nothing to parse or record
        try:
            target, server_state = choose_target(headers, port, self.state.own_ips)
        except BadRequest as err:
            self.state.activity.record(service, self.request.remote_ip)
            self.answer(400, f"{err}\n")
            return None
        if server_state is not None:
            record_server_state(self.state.lb_view, server_state, service, target)
        return service, target, query

    def _downtime(self, service: str, target: Target) -> Optional[Tuple[str, Downtime]]:
        """The downtime that applies, or None (also when the spool root cannot be read)."""
        state = self.state
        try:
            return state.spool.find_downtime(
                service, port=target.port, host=None if target.host == LOCALHOST else target.host
            )
        except SpoolError as err:
            # As the originals: no downtime. A 503 here would take every service of every host
            # with the same mistake out of rotation; the failure is loud instead.
            report_unreadable(state.warnings, err)
            return None

    def _answer_and_record(self, service: str, code: int, message: str) -> None:
        # The check's own code is the service's last status; the answer is that code when HTTP knows it.
        self.state.activity.record(service, self.request.remote_ip, code)
        self.answer(code if code in _ANSWERED_AS_IS else 503, message)

    def finish(self, chunk=None):
        # Counted before the answer leaves: a scrape sent after it (maybe to another worker) includes it.
        if not self._request_counted:
            self._request_counted = True
            self.state.metrics.count_request(self.protocol, self.service, self.get_status())
        return super().finish(chunk)


class SpoolHandler(PathHandler):
    """``/spool/<service>/<port>[/<query>]``: the spool alone (GET); POST changes it when allowed."""

    def get(self) -> None:
        asked = self._service_target_query()
        if asked is None:
            return
        service, target, _ = asked
        found = self._downtime(service, target)
        if found is None:
            code, message = 200, ""
        elif found[1].is_drain:
            code, message = 404, drain_message(*found, self.state.config.max_reason_chars)
        else:
            code, message = 503, down_message(*found, self.state.config.max_reason_chars)
        self._answer_and_record(service, code, message)

    head = get

    async def post(self) -> None:
        parsed = self._parse_path()
        if parsed is None:
            return
        service, port, _ = parsed
        state = self.state
        client_ip = self.request.remote_ip
        if not state.config.allow_remote_spool_changes:
            self.answer(403, "Remote spool changes are disabled (allow_remote_spool_changes is false)\n")
            return
        networks = state.config.remote_spool_allowed_networks
        if networks is not None and not address_in_networks(client_ip, networks):
            state.warnings.warning("remote spool change refused",
                                   "%s tried a remote spool change from outside remote_spool_allowed_networks",
                                   client_ip)
            self.answer(403, f"Remote spool changes from {client_ip} are not allowed "
                             "(remote_spool_allowed_networks)\n")
            return
        status = self.get_body_argument("status", None)
        if status not in ("up", "down", "drain"):
            self.answer(400, f"status must be 'up', 'down' or 'drain', got {status!r}\n")
            return
        entry_port = port or None
        if len(spool_filename(service, entry_port).encode()) > MAX_NAME_BYTES:
            self.answer(400, f"Invalid service name: with the port, longer than {MAX_NAME_BYTES} bytes\n")
            return
        try:
            expiration_text = self.get_body_argument("expiration", "").strip()
            expiration = parse_expiration(expiration_text) if expiration_text else None
            creation = self._optional_time("creation")
        except (BadRequest, InvalidExpiration) as err:
            self.answer(400, f"{err}\n")
            return
        if status == "up":
            change = functools.partial(state.spool.up, service, port=entry_port)
        else:
            change = functools.partial(state.spool.down, service, reason=self.get_body_argument("reason", ""),
                                       expiration=expiration, port=entry_port, creation=creation,
                                       state=STATE_DRAIN if status == "drain" else STATE_DOWN)
        try:
            await asyncio.wrap_future(state.spool_writer.submit(change))
        except SpoolError as err:
            log.error("remote spool change failed: %s", err)
            self.answer(500, f"{err}\n")
            return
        log.info("%s set %s%s %s by remote request", client_ip, service,
                 f":{port}" if entry_port else "", status)
        self.answer(200)

    def _optional_time(self, name: str) -> Optional[float]:
        value = self.get_body_argument(name, "").strip()
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            raise BadRequest(f"{name} must be a unix time, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise BadRequest(f"{name} must be a finite unix time, got {value!r}")
        return number


class CheckHandler(PathHandler):
    """``/<protocol>/<service>/<port>[/<query>]`` (GET): the spool, then the protocol's cached check."""

    def get(self) -> Optional[Awaitable[None]]:
        """Answered here when the spool or the cache has the answer; else the check's coroutine, which
        Tornado awaits (a cache hit, the usual request, then costs no coroutine at all)."""
        asked = self._service_target_query()
        if asked is None:
            return None
        service, target, query = asked
        state = self.state
        client_ip = self.request.remote_ip
        if target.port == 0:
            state.activity.record(service, client_ip)
            self.answer(400, "Invalid port 0: a check needs a port from 1 to 65535\n")
            return None
        networks = state.config.check_host_allowed_networks
        if networks is not None and target.host != LOCALHOST and not address_in_networks(target.host, networks):
            # Refused before any connection: the header must not reach arbitrary hosts.
            state.warnings.warning("check host refused", "%s asked to check %s, outside check_host_allowed_networks",
                                   client_ip, target.host)
            state.activity.record(service, client_ip)
            self.answer(403, f"Host {target.host} is not in check_host_allowed_networks\n")
            return None
        # With -S downtimes reach HAProxy only through the agent; /spool still reports them.
        found = self._downtime(service, target) if state.spool_on_http else None
        if found is not None and not found[1].is_drain:
            self._answer_and_record(service, 503, down_message(*found, self.state.config.max_reason_chars))
            return None
        key, bypass, result = state.checks.cached(self.protocol, service, target, query, self.request.query,
                                                  self.request.headers)
        if result is None:
            return self._answer_after_check(service, target, query, found, key, bypass)
        self._answer_result(service, found, result)
        return None

    async def _answer_after_check(self, service: str, target: Target, query: str,
                                  found: Optional[Tuple[str, Downtime]], key: tuple, bypass: bool) -> None:
        request = self.request
        result = await self.state.checks.run_or_join(self.protocol, service, target, query, request.query,
                                                     request.headers, request.remote_ip, key, bypass)
        self._answer_result(service, found, result)

    def _answer_result(self, service: str, found: Optional[Tuple[str, Downtime]], result: CheckResult) -> None:
        """Answer the check's ``result``, or 404 for a draining (``found``) and otherwise healthy service."""
        state = self.state
        if not result.is_verdict:
            # Not the service's state: /recent keeps the last one the service really gave.
            state.activity.record(service, self.request.remote_ip)
            self.answer(503, f"{result.message}\n")
        elif found is not None and 200 <= result.code < 400:
            # Draining and otherwise healthy: 404 is what `http-check disable-on-404` turns into
            # a graceful drain. A failing check still answers its failure, so HAProxy marks the
            # server down instead of keeping persistent connections on a dead one.
            self._answer_and_record(service, 404, drain_message(*found, self.state.config.max_reason_chars))
        else:
            self._answer_and_record(service, result.code, result.message)

    head = get

    def post(self) -> None:
        self.service = self.request.path.split("/", 3)[2]  # for the request count
        raise tornado.web.HTTPError(405)


class StatusHandler(BaseHandler):
    def get(self) -> None:
        state = self.state
        self.write({
            "cache": state.cache.stats(),
            "access_counts": state.activity.stats(),
            "uncached_checks_in_flight": state.in_flight_checks.stats(),
            "uptime": time.time() - state.started_at,
            "outbound_request_queue_size": state.resources.outbound_queue_size(),
            "requests_in_flight": state.checks.requests_in_flight,
            "version": state.version,
            "pid": os.getpid(),
            "spool": spool_status(state.spool),
            "config_generation": state.config_generation,
        })


def spool_status(spool) -> dict:
    """/status's ``spool``: the root, whether downtimes can be read from it, and why not."""
    problem = spool.unreadable_reason()
    return {"root": spool.root, "readable": problem is None, "problem": problem}


class LoadBalancersHandler(BaseHandler):
    """``/status/lb[?service=NAME]``: what every load balancer last reported of its server (``send-state``)."""

    def get(self) -> None:
        service = self.get_query_argument("service", None)
        view = self.state.lb_view
        now = time.time()
        self.write({"load_balancers": [report.as_json() for report in view.entries(service, now)],
                    "window_seconds": view.window, "now": now})


class MetricsHandler(BaseHandler):
    """``/metrics``: the Prometheus scrape (every worker's numbers with ``-n``)."""

    def get(self) -> None:
        body, content_type = self.state.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class StatusCountHandler(BaseHandler):
    def get(self) -> None:
        self.write({"service_access_counts": self.state.activity.access_counts()})


class RecentHandler(BaseHandler):
    def get(self) -> None:
        text = self.get_query_argument("threshold", str(DEFAULT_RECENT_THRESHOLD)).strip()
        try:
            threshold = float(text)
        except ValueError:
            threshold = float("nan")
        if threshold != threshold or threshold < 0 or threshold == float("inf"):
            self.answer(400, f"threshold must be a number of seconds, got {text!r}\n")
            return
        if threshold.is_integer():
            threshold = int(threshold)
        recent = self.state.activity.recent(threshold)
        self.write({"seen_services": [[service, status] for service, status in recent],
                    "threshold_seconds": threshold})


def routes(state) -> list:
    """The URL table: one check route per protocol, then the status endpoints.

    A check route has no groups: ``CheckHandler`` takes the parts from the path itself.
    """
    given = {"state": state}
    table = [(rf"/{SPOOL_ROUTE}/{SERVICE_PATTERN}/{PORT_PATTERN}(?:/.*)?", SpoolHandler,
              {"protocol": SPOOL_ROUTE, **given})]
    for name, protocol in REGISTRY.items():
        query = "/.*" if protocol.query_required else "(?:/.*)?"
        table.append((rf"/{re.escape(name)}/{SERVICE_PATTERN}/{PORT_PATTERN}{query}", CheckHandler,
                      {"protocol": name, **given}))
    table += [
        (r"/status", StatusHandler, given),
        (r"/status/count", StatusCountHandler, given),
        (r"/status/lb", LoadBalancersHandler, given),
        (r"/recent", RecentHandler, given),
        (r"/metrics", MetricsHandler, given),
    ]
    return table
