"""Thin Tornado handlers: parse the URL, pick the target, ask spool, cache and checks, answer.

A request flows one way: activity (seen, counted) -> target -> spool -> cached
protocol check -> response -> activity (last status). Handlers hold no state of
their own; everything lives in the ``DaemonState`` found in the application settings.
"""

import http.client
import logging
import os
import re
import time
from typing import Mapping, Optional, Tuple

import tornado.web

from hacheck.checks import QUERY_REQUIRED, REGISTRY, CheckContext, Target, run_check
from hacheck.spool import LOCALHOST, Downtime, SpoolError

log = logging.getLogger(__name__)

SERVICE_PATTERN = r"[.a-zA-Z0-9_-]+"
DEFAULT_RECENT_THRESHOLD = 600

# Host names and IPv4/IPv6 literals: anything else in a header is not a host.
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9._:%-]{1,255}$")


class BadRequest(Exception):
    """The request cannot be served as asked; answered with 400 and the message."""


def down_message(matched: str, downtime: Downtime) -> str:
    """The body of a 503 for a downtime, as the original daemon wrote it."""
    message = f"Service {matched} in down state"
    if downtime.creation is not None:
        message += f" since {downtime.creation:f}"
    if downtime.expiration is not None:
        message += f" until {downtime.expiration:f}"
    if downtime.reason:
        message += f": {downtime.reason}"
    return message


def parse_server_state(value: str) -> Tuple[Optional[str], Optional[int]]:
    """``address=`` and ``port=`` from HAProxy's ``X-Haproxy-Server-State``; malformed fields are ignored."""
    host = port = None
    for field in value.split(";"):
        name, sep, field_value = field.strip().partition("=")
        if not sep:
            continue
        name, field_value = name.strip().lower(), field_value.strip()
        if name == "address" and _HOST_PATTERN.match(field_value):
            host = field_value
        elif name == "port" and field_value.isdigit() and 0 < int(field_value) <= 65535:
            port = int(field_value)
    return host, port


def choose_target(headers: Mapping[str, str], url_port: int, own_ips: frozenset) -> Target:
    """Host and port to check: the URL's port on 127.0.0.1, unless the headers name others."""
    host, port = None, url_port
    state = headers.get("X-Haproxy-Server-State")
    if state is not None:
        state_host, state_port = parse_server_state(state)
        host = state_host
        if state_port is not None:
            port = state_port
    if host is None:
        nerve_ip = headers.get("X-Nerve-Check-IP")
        if nerve_ip is not None and nerve_ip.strip():
            nerve_ip = nerve_ip.strip()
            if not _HOST_PATTERN.match(nerve_ip):
                raise BadRequest(f"X-Nerve-Check-IP header is not a host: {nerve_ip!r}")
            host = nerve_ip
    if host is None or host in own_ips:
        host = LOCALHOST
    return Target(host, port)


def http_status_for(code: int) -> int:
    """The status to answer with: the check's code when HTTP knows it, else 503."""
    if 200 <= code <= 599 and code in http.client.responses:
        return code
    return 503


class BaseHandler(tornado.web.RequestHandler):
    @property
    def state(self):
        return self.settings["hacheck_state"]

    def prepare(self) -> None:
        self.state.requests_in_flight += 1
        self._counted_in_flight = True

    def on_finish(self) -> None:
        if getattr(self, "_counted_in_flight", False):
            self._counted_in_flight = False
            self.state.requests_in_flight -= 1

    def compute_etag(self) -> None:
        # Health answers are never conditional: a 304 would hide a state change.
        return None

    def answer(self, code: int, message: str = "") -> None:
        """Finish with ``code`` and a plain-text body (none for codes that carry none)."""
        self.set_status(code)
        if code in (204, 304):
            self.finish()
            return
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(message)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {self._reason}\n")


class CheckHandler(BaseHandler):
    """``/<protocol>/<service>/<port>[/<query>]`` and ``/spool/...`` (GET; POST changes the spool)."""

    def initialize(self, protocol: str) -> None:
        self.protocol = protocol

    def _parse(self, service: str, port_text: str) -> Optional[int]:
        if service in (".", ".."):
            self.answer(400, f"Invalid service name {service!r}\n")
            return None
        port = int(port_text)
        if port > 65535:
            self.answer(400, f"Invalid port {port_text}: ports go from 0 to 65535\n")
            return None
        return port

    async def get(self, service: str, port_text: str, query: Optional[str] = None) -> None:
        port = self._parse(service, port_text)
        if port is None:
            return
        state = self.state
        client_ip = self.request.remote_ip
        state.activity.record_request(service, client_ip)
        try:
            target = choose_target(self.request.headers, port, state.own_ips)
        except BadRequest as err:
            self.answer(400, f"{err}\n")
            return
        found = state.spool.find_downtime(
            service, port=target.port, host=None if target.host == LOCALHOST else target.host
        )
        if found is not None:
            matched, downtime = found
            state.activity.record_status(service, 503, client_ip)
            self.answer(503, down_message(matched, downtime))
            return
        if self.protocol == "spool":
            state.activity.record_status(service, 200, client_ip)
            self.answer(200)
            return
        result = await self._run_protocol_check(service, target, query or "")
        state.activity.record_status(service, result.code, client_ip)
        self.answer(http_status_for(result.code), result.message)

    head = get

    async def _run_protocol_check(self, service: str, target: Target, query: str):
        state = self.state
        config = state.config
        query_string = self.request.query
        key = (self.protocol, target.host, target.port, query, query_string)
        if config.service_name_header:
            key += (service,)
        headers = self.request.headers
        check = REGISTRY[self.protocol]
        pragma = headers.get("Pragma")
        bypass = pragma is not None and "no-cache" in pragma.lower()

        def run():
            # Built only when the check runs: a cache hit needs no context.
            context = CheckContext(service=service, config=config, resources=state.resources,
                                   query_string=query_string, headers=headers)
            return run_check(check, target, query, context)

        return await state.cache.get_or_run(key, run, bypass=bypass)

    def post(self, service: str, port_text: str, query: Optional[str] = None) -> None:
        if self.protocol != "spool":
            raise tornado.web.HTTPError(405)
        port = self._parse(service, port_text)
        if port is None:
            return
        state = self.state
        if not state.config.allow_remote_spool_changes:
            self.answer(403, "Remote spool changes are disabled (allow_remote_spool_changes is false)\n")
            return
        status = self.get_body_argument("status", None)
        if status not in ("up", "down"):
            self.answer(400, f"status must be 'up' or 'down', got {status!r}\n")
            return
        entry_port = port or None
        try:
            expiration = self._optional_time("expiration")
            creation = self._optional_time("creation")
        except BadRequest as err:
            self.answer(400, f"{err}\n")
            return
        try:
            if status == "up":
                state.spool.up(service, port=entry_port)
            else:
                state.spool.down(service, reason=self.get_body_argument("reason", ""),
                                 expiration=expiration, port=entry_port, creation=creation)
        except SpoolError as err:
            log.error("remote spool change failed: %s", err)
            self.answer(500, f"{err}\n")
            return
        log.info("%s set %s%s %s by remote request", self.request.remote_ip, service,
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


class StatusHandler(BaseHandler):
    def get(self) -> None:
        state = self.state
        self.write({
            "cache": state.cache.stats(),
            "uptime": time.time() - state.started_at,
            "outbound_request_queue_size": state.resources.outbound_queue_size(),
            "requests_in_flight": state.requests_in_flight,
            "version": state.version,
            "pid": os.getpid(),
        })


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


def routes():
    """The URL table: one check route per protocol, then the status endpoints."""
    table = []
    for protocol in REGISTRY:
        name = re.escape(protocol)
        if protocol in QUERY_REQUIRED:
            pattern = rf"/{name}/({SERVICE_PATTERN})/([0-9]+)/(.*)"
        else:
            pattern = rf"/{name}/({SERVICE_PATTERN})/([0-9]+)(?:/(.*))?"
        table.append((pattern, CheckHandler, {"protocol": protocol}))
    table += [
        (r"/status", StatusHandler),
        (r"/status/count", StatusCountHandler),
        (r"/recent", RecentHandler),
    ]
    return table
