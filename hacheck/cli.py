"""The operator tools: haup, hadown, hastatus, hashowdowned, halist and haupdown.

One argparse parser serves every tool; ``haupdown -a ACTION`` picks the action,
the other tools have it fixed. Each action is one function that returns the
exit code: 0 success, 1 a failure (or, for hastatus, "something is down"),
2 a usage error.
"""

import argparse
import dataclasses
import http.client
import json
import os
import pwd
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Sequence

from hacheck.names import MAX_NAME_BYTES, SERVICE_CHARACTERS, InvalidName, check_host, check_service_name, parse_port
from hacheck.spool import (
    ALL,
    DEFAULT_SPOOL_ROOT,
    LOCALHOST,
    STATE_DOWN,
    STATE_DRAIN,
    Downtime,
    InvalidExpiration,
    InvalidServiceName,
    Spool,
    SpoolError,
    parse_expiration,
    spool_filename,
    utc_text,
)

ACTIONS = ("up", "down", "status", "status_downed", "list")
# Same default as the original haupdown: with no -a it lists recent services.
DEFAULT_ACTION = "list"

NONHUMANS_FILE = "/etc/nonhumans"
# Testing/packaging hook: another file of non-human account names.
NONHUMANS_ENV = "HACHECK_NONHUMANS_FILE"
NOT_HUMAN_MESSAGE = "please use --reason option to tell us who you REALLY are"

DEFAULT_DAEMON_PORT = 3333
DAEMON_TIMEOUT = 3.0
MAX_RECENT_BYTES = 16 * 1024 * 1024


class UsageError(Exception):
    """Bad flags or arguments: exit 2."""


class ToolError(Exception):
    """The action could not be done (spool not writable, daemon not running): exit 1."""


# ---------------------------------------------------------------- parsing

DESCRIPTIONS = {
    None: "Mark services down or up in the hacheck spool, show their state, "
          "or list what the local hacheck daemon has seen recently.",
    "up": "Bring services back up: remove their downtime from the spool. "
          "A service that is not down is not an error.",
    "down": "Mark services down: hacheck answers 503 for them until they are "
            "brought up again or the expiration passes.",
    "status": "Show whether each service has a downtime of its own (the entry named: "
              "the service, or with -P the service on that port); exit 1 when any has. "
              "A broader downtime ('all', the whole service) is noted on stderr; "
              "--effective reports it instead.",
    "status_downed": "Show every active downtime in the spool.",
    "list": "List the services the local hacheck daemon has seen recently, "
            "with the last response each one got.",
}

EPILOG = """\
output lines:
  UP<TAB>SERVICE
  DOWN<TAB>EXPIRATION<TAB>SERVICE<TAB>REASON
  DRAIN<TAB>EXPIRATION<TAB>SERVICE<TAB>REASON   (a downtime made with --drain)
      EXPIRATION is a unix time (%f) or "inf"; with -P, and for per-port
      downtimes, SERVICE reads SERVICE:HOST:PORT (HOST empty for 127.0.0.1).
  SERVICE last_response=JSON          (list; SERVICE alone from an older
                                      daemon that lists plain names)
  NODE<TAB>BACKEND/SERVER<TAB>STATE<TAB>SCUR<TAB>SECONDS
      status --lb: one line per load balancer (HAProxy's node name) and
      server it checks, from its last check's http-check send-state: STATE
      as sent ("UP", "UP 1/2", "DOWN", "NOLB", ...), SCUR its sessions on
      the server ("-" when not sent), SECONDS since that check (the daemon
      keeps what arrived within lb_view_window). down/up --wait: one line per
      load balancer and server as it confirms the change, SECONDS after the
      change that check arrived.
  --json: one JSON object per line with status, service, host, port,
      reason, creation, expiration and state ("down", "drain"; null when up);
      for list, with service and last_response; for status --lb, the
      entries of the daemon's GET /status/lb.

exit codes:
  0 success (status: nothing asked about has a downtime of its own; status
    --lb: the daemon answered, whatever the load balancers report; down/up
    --wait: every load balancer reporting on the services confirmed)
  1 status: an entry asked about is down; otherwise the action failed (spool not
    writable, daemon not running, a non-human user without --reason); down/up
    --wait: timed out (the error names what still routes traffic) or the daemon
    cannot be read, the change itself made
  2 usage error (bad flags, missing or invalid service names)
  3 status: the spool directory cannot be read; hacheck answers every check
    as if nothing were down, and so do the UP lines printed. down/up --wait:
    no load balancer reports on a service named (enable http-check
    send-state), the change itself made

environment:
  SUDO_USER, SSH_USER  the default reason for down, before the user name
  HACHECK_NONHUMANS_FILE  read instead of /etc/nonhumans (testing/packaging)
"""


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except InvalidName as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser(prog: str, action: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser for one tool; ``action`` None is haupdown, which takes ``-a``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(DESCRIPTIONS[action], width=78),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if action is None:
        parser.add_argument(
            "-a", "--action", choices=ACTIONS, default=DEFAULT_ACTION,
            help="what to do: up (haup), down (hadown), status (hastatus), "
                 "status_downed (hashowdowned) or list (halist); default: %(default)s",
        )
    parser.add_argument(
        "services", nargs="*", metavar="SERVICE",
        help="service names (up, down and status need at least one; "
             "status_downed and list take none); 'all' means the whole machine. "
             f"down takes only names a check URL can hold: {SERVICE_CHARACTERS}",
    )
    parser.add_argument(
        "--spool-root", metavar="DIR", default=DEFAULT_SPOOL_ROOT,
        help="the spool directory (default: %(default)s)",
    )
    _add_downtime_options(parser)
    parser.add_argument(
        "-p", "--port", metavar="PORT", type=_port, default=DEFAULT_DAEMON_PORT,
        help="list, status --lb, up/down --wait: the port the local hacheck daemon listens on "
             "(default: %(default)s)",
    )
    parser.add_argument(
        "--effective", action="store_true",
        help="status: report the downtime checks answer with ('all', then the service, "
             "then the service on its port), not only the entry named",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="status, status_downed, list: print one JSON object per line instead of text",
    )
    _add_load_balancer_options(parser)
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}")
    return seconds


def _add_load_balancer_options(parser: argparse.ArgumentParser) -> None:
    """What the load balancers report (HAProxy's http-check send-state), read from the daemon (-p)."""
    parser.add_argument(
        "--lb", action="store_true",
        help="status: show each load balancer's last report on the services (all of them when none "
             "is named), as the local daemon received them with HAProxy's http-check send-state",
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="down, up: after the change, wait until every load balancer reporting on the services "
             "has confirmed it in a check received after it: any state but UP for down, plain UP for up",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds,
        help=f"with --wait: give up after this many seconds (exit 1); default: {DEFAULT_WAIT_TIMEOUT:g}",
    )
    parser.add_argument(
        "--idle", action="store_true",
        help="down with --wait: also wait until each load balancer reports no sessions (scur 0) on the server",
    )


def _add_downtime_options(parser: argparse.ArgumentParser) -> None:
    """What a downtime holds and names: its reason, end, port and host, and whether it drains."""
    parser.add_argument(
        "-r", "--reason", metavar="TEXT", default="",
        help="down: why the service is down (default: $SUDO_USER, else $SSH_USER, "
             "else your user name; non-human accounts listed in /etc/nonhumans must give one)",
    )
    parser.add_argument(
        "-e", "--expiration", metavar="WHEN",
        help="down: when the downtime ends, as a unix time (1767225600) or a "
             "duration from now (90s, 30m, 2h, 1d); default: never. A unix time "
             "already past writes an expired downtime (the service stays up) and warns",
    )
    parser.add_argument(
        "-P", "--service-port", metavar="PORT", type=_port,
        help="up, down, status: only the service on this port",
    )
    parser.add_argument(
        "-H", "--service-host", metavar="HOST",
        help="with -P: only the service on this host and port "
             "(as the daemon sees it from X-Nerve-Check-IP / HAProxy's address): "
             "an IP address or a host name",
    )
    parser.add_argument(
        "--drain", action="store_true",
        help="down: drain instead of cutting: HTTP checks answer 404 (HAProxy's "
             "http-check disable-on-404) and the agent answers drain, so established "
             "connections finish but no new ones arrive",
    )


# ---------------------------------------------------------------- output

def _printable(text: str) -> str:
    """Keep one record on one tab-separated line, whatever a legacy file holds."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _normal_host(host: Optional[str]) -> Optional[str]:
    return None if host in (None, "", LOCALHOST) else host


def _label(service: str, port: Optional[int], host: Optional[str], host_as_given: bool = False) -> str:
    """How a line names a downtime: the service, or SERVICE:HOST:PORT when per port. The host is
    left out for this machine's own (127.0.0.1), unless ``host_as_given``: hastatus names the
    entry as its -H named it, as the original did."""
    if port is None:
        return service
    return f"{service}:{(host if host_as_given else _normal_host(host)) or ''}:{port}"


def _expiration_text(downtime: Downtime) -> str:
    return "inf" if downtime.expiration is None else f"{downtime.expiration:f}"


def _down_line(label: str, downtime: Downtime) -> str:
    status = "DRAIN" if downtime.is_drain else "DOWN"
    return "\t".join([status, _expiration_text(downtime), _printable(label), _printable(downtime.reason)])


def _json_line(status: str, service: str, host: Optional[str], port: Optional[int],
               downtime: Optional[Downtime]) -> str:
    return json.dumps({
        "status": status,
        "service": service,
        "host": _normal_host(host),
        "port": port,
        "reason": downtime.reason if downtime else None,
        "creation": downtime.creation if downtime else None,
        "expiration": downtime.expiration if downtime else None,
        # "status" stays DOWN for drains, so readers that predate draining still see a downtime.
        "state": downtime.state if downtime else None,
    })


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def _note(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: {message}\n")


# ---------------------------------------------------------------- actions

def _nonhuman_names() -> set:
    path = os.environ.get(NONHUMANS_ENV) or NONHUMANS_FILE
    try:
        with open(path, encoding="utf-8", errors="replace") as names_file:
            lines = names_file.read().splitlines()
    except OSError:
        return set()
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


def default_reason() -> Optional[str]:
    """Who is downing: $SUDO_USER, $SSH_USER or the effective user; None for a non-human."""
    name = os.environ.get("SUDO_USER") or os.environ.get("SSH_USER")
    if not name:
        try:
            name = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid without a passwd entry names nobody
            return None
    if name in _nonhuman_names():
        return None
    return name


def action_down(prog: str, spool: Spool, options) -> int:
    if options.service_port is not None and ALL in options.services:
        raise UsageError("'all' takes the whole machine down and cannot be limited to a port")
    expiration = None
    if options.expiration is not None:
        try:
            expiration = parse_expiration(options.expiration)
        except InvalidExpiration as err:
            raise UsageError(str(err)) from None
        if expiration <= time.time():
            # Scripts that run late rely on this: the downtime is written, already over.
            _note(prog, f"warning: expiration {options.expiration.strip()} ({utc_text(expiration)}) is already "
                        "past: the downtime is written expired and the service stays up")
    reason = options.reason or default_reason()
    if reason is None:
        _say(NOT_HUMAN_MESSAGE)
        return 1
    spool.ensure_root()
    for service in options.services:
        spool.down(service, reason=reason, expiration=expiration,
                   port=options.service_port, host=options.service_host,
                   state=STATE_DRAIN if options.drain else STATE_DOWN)
    if options.wait:
        return wait_for_load_balancers(prog, options, "down", changed_at=time.time())
    return 0


def action_up(prog: str, spool: Spool, options) -> int:
    if spool.check_root():  # without a spool directory nothing is down
        _remove_downtimes(prog, spool, options)
    if options.wait:
        return wait_for_load_balancers(prog, options, "up", changed_at=time.time())
    return 0


def _remove_downtimes(prog: str, spool: Spool, options) -> None:
    port, host = options.service_port, options.service_host
    for service in options.services:
        spool.up(service, port=port, host=host)
    # Helpful, not an error: say what still keeps these services down.
    for service in options.services:
        label = _label(service, port, host)
        found = spool.find_downtime(service, port, host)
        if found is not None and found[0] == ALL and service != ALL:
            _note(prog, f"note: {label} is still down because 'all' is down")
        elif found is not None and port is not None:
            _note(prog, f"note: {label} is still down because {service} is down on every port "
                        "(bring it up without -P)")
        if port is None:
            for entry in spool.entries():
                if entry.service == service and entry.port is not None:
                    flags = f"-P {entry.port}" + (f" -H {entry.host}" if entry.host else "")
                    _note(prog, f"note: {_label(service, entry.port, entry.host)} is still down on its own "
                                f"(bring it up with {flags})")


def _broader_note(service: str, port: Optional[int], host: Optional[str], found) -> str:
    """The stderr note for an entry that is up on its own while checks of it answer down."""
    label = _label(service, port, host)
    cause = "'all' is down" if found[0] == ALL else f"a broader downtime of {service} applies"
    return (f"note: {label} has no downtime of its own, but checks of it answer down: {cause} "
            "(hastatus --effective shows it)")


# hastatus's exit code when the spool cannot be read: neither "all up" (0) nor "something is down" (1).
EXIT_SPOOL_UNREADABLE = 3


def _status_of_unreadable_spool(prog: str, problem: str, options) -> int:
    """What hacheck answers when it cannot read the spool (up, as the originals did), said to be that."""
    _note(prog, f"error: {problem}: hacheck answers every check as if nothing were down")
    for service in options.services:
        _say(_json_line("UP", service, options.service_host, options.service_port, None) if options.json
             else f"UP\t{_printable(service)}")
    return EXIT_SPOOL_UNREADABLE


def action_status(prog: str, spool: Spool, options) -> int:
    if options.lb:
        return action_status_lb(prog, options)
    problem = spool.unreadable_reason()
    if problem is not None:
        return _status_of_unreadable_spool(prog, problem, options)
    if not spool.check_root():
        _note(prog, f"spool directory {spool.root} does not exist: nothing is down")
    port, host = options.service_port, options.service_host
    exit_code = 0
    for service in options.services:
        # As the originals: the entry named decides; --effective asks what checks answer.
        found = spool.find_downtime(service, port, host)
        if options.effective:
            downtime = found[1] if found else None
        else:
            downtime = spool.active(service, port, host)
            if downtime is None and found is not None:
                _note(prog, _broader_note(service, port, host, found))
        if downtime is not None:
            exit_code = 1
        if options.json:
            _say(_json_line("DOWN" if downtime else "UP", service, host, port, downtime))
        elif downtime is None:
            _say(f"UP\t{_printable(service)}")
        else:
            _say(_down_line(_label(service, port, host, host_as_given=True), downtime))
    return exit_code


def action_status_downed(prog: str, spool: Spool, options) -> int:
    if not spool.check_root():
        _note(prog, f"spool directory {spool.root} does not exist: nothing is down")
        return 0
    for entry in spool.entries():
        if options.json:
            _say(_json_line("DOWN", entry.service, entry.host, entry.port, entry.downtime))
        else:
            _say(_down_line(_label(entry.service, entry.port, entry.host), entry.downtime))
    return 0


# Older daemons list plain names (["web"]); ours list [name, last_response] pairs.
NO_LAST_RESPONSE = object()


def _seen_pair(item) -> tuple:
    """(service, last_response) from one item of seen_services; NO_LAST_RESPONSE for a plain name."""
    if isinstance(item, str):
        return item, NO_LAST_RESPONSE
    if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    raise ValueError("seen_services holds neither names nor [service, last_response] pairs")


def _daemon_document(port: int, path: str, what: str, timeout: float = DAEMON_TIMEOUT):
    """The JSON document the local daemon answers at ``path``; ToolError when unreachable or not JSON.

    ``what`` names the document in the error ("a /recent JSON document").
    """
    url = f"http://127.0.0.1:{port}{path}"
    # No proxies: the daemon is on this machine whatever $http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_RECENT_BYTES)
    except urllib.error.HTTPError as err:
        raise ToolError(f"the hacheck daemon at {url} answered HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or err.reason
        raise ToolError(f"cannot reach the hacheck daemon at {url}: {reason} (is hacheck running?)") from None
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ToolError(f"cannot reach the hacheck daemon at {url}: {reason} (is hacheck running?)") from None
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ToolError(f"the daemon at {url} did not answer with {what}") from None


def fetch_recent(port: int, timeout: float = DAEMON_TIMEOUT) -> list:
    """The daemon's ``/recent`` as sorted (service, last_response) pairs; ToolError when unreachable.

    last_response is NO_LAST_RESPONSE for a daemon that lists plain names.
    """
    what = "a /recent JSON document"
    recent = _daemon_document(port, "/recent", what, timeout)
    try:
        seen = recent["seen_services"]
        if not isinstance(seen, list):
            raise ValueError("seen_services is not a list")
        pairs = [_seen_pair(item) for item in seen]
    except (ValueError, KeyError, TypeError):
        raise ToolError(f"the daemon at http://127.0.0.1:{port}/recent did not answer with {what}") from None
    return sorted(pairs, key=lambda pair: pair[0])


def action_list(prog: str, spool: Spool, options) -> int:
    for service, last_response in fetch_recent(options.port):
        if options.json:
            known = None if last_response is NO_LAST_RESPONSE else last_response
            _say(json.dumps({"service": service, "last_response": known}))
        elif last_response is NO_LAST_RESPONSE:
            _say(_printable(service))  # as the original printed an older daemon's list
        else:
            _say(f"{_printable(service)} last_response={json.dumps(last_response)}")
    return 0


# ---------------------------------------------------------------- load balancers (GET /status/lb)

# hadown/haup --wait: how often the daemon's view is read, and how long to wait by default.
WAIT_POLL_SECONDS = 0.25
DEFAULT_WAIT_TIMEOUT = 120.0
# hadown/haup --wait's exit code when no load balancer reports on a service: neither confirmed (0) nor timed out (1).
EXIT_NO_LOAD_BALANCER = 3
# What the tool says it left behind when --wait cannot confirm.
CHANGE_MADE = {"down": "the downtime is written", "up": "the downtime is removed"}


@dataclasses.dataclass(frozen=True)
class LbEntry:
    """One load balancer's last report on one server, as the daemon's ``GET /status/lb`` lists it."""

    node: str
    backend: str
    server: str
    service: str
    port: Optional[int]
    host: Optional[str]
    state: str
    transition: Optional[str]
    scur: Optional[int]
    seen: float
    document: dict  # the entry as the daemon sent it: --json prints it unchanged

    @property
    def key(self) -> tuple:
        return self.node, self.backend, self.server

    @property
    def state_text(self) -> str:
        """The state as HAProxy sent it: ``UP``, ``UP 1/2``, ``DOWN``, ..."""
        return self.state if self.transition is None else f"{self.state} {self.transition}"

    @property
    def name(self) -> str:
        return f"{self.node} {self.backend}/{self.server}"


@dataclasses.dataclass(frozen=True)
class LbListing:
    """What the daemon's /status/lb listed at one moment, with its clock (``now``) and window then."""

    entries: List[LbEntry]
    now: float
    window: float


def _field(entry: dict, name: str, kinds: tuple, optional: bool = True):
    value = entry.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ValueError(f"{name} is {value!r}")
    return value


def _lb_entry(entry) -> LbEntry:
    """An entry of /status/lb; ValueError when it is not one."""
    if not isinstance(entry, dict):
        raise ValueError("an entry is not an object")
    texts = {name: _field(entry, name, (str,), optional=False)
             for name in ("node", "backend", "server", "service", "state")}
    return LbEntry(**texts, port=_field(entry, "port", (int,)), host=_field(entry, "host", (str,)),
                   transition=_field(entry, "transition", (str,)), scur=_field(entry, "scur", (int,)),
                   seen=float(_field(entry, "seen", (int, float), optional=False)), document=entry)


def fetch_lb_listing(port: int, service: Optional[str] = None, timeout: float = DAEMON_TIMEOUT) -> LbListing:
    """The daemon's ``/status/lb`` (``?service=`` when given); ToolError when unreachable or not one."""
    path = "/status/lb" + (f"?service={urllib.parse.quote(service, safe='')}" if service is not None else "")
    what = "a /status/lb JSON document (a daemon older than the load balancers' view?)"
    document = _daemon_document(port, path, what, timeout)
    try:
        entries = document["load_balancers"]
        if not isinstance(entries, list):
            raise ValueError("load_balancers is not a list")
        return LbListing([_lb_entry(entry) for entry in entries],
                         float(_field(document, "now", (int, float), optional=False)),
                         float(_field(document, "window_seconds", (int, float), optional=False)))
    except (ValueError, KeyError, TypeError):
        raise ToolError(f"the daemon at http://127.0.0.1:{port}{path} did not answer with {what}") from None


def read_lb_listing(options) -> LbListing:
    """The entries on the services asked about (every one for none or ``all``), narrowed by -P and -H.

    One request per service (the daemon filters), one in all for every service.
    """
    names = list(dict.fromkeys(options.services))
    every_service = not names or ALL in names
    listings = [fetch_lb_listing(options.port, service) for service in ([None] if every_service else names)]
    newest: Dict[tuple, LbEntry] = {}
    for entry in (entry for listing in listings for entry in listing.entries):
        if _narrowed_to(entry, options) and (entry.key not in newest or entry.seen > newest[entry.key].seen):
            newest[entry.key] = entry
    return LbListing([newest[key] for key in sorted(newest)], max(listing.now for listing in listings),
                     listings[-1].window)


def _narrowed_to(entry: LbEntry, options) -> bool:
    """Whether -P (the port whose downtimes the check consults) and -H (its host) take in ``entry``."""
    if options.service_port is not None and entry.port != options.service_port:
        return False
    return options.service_host is None or _normal_host(entry.host) == _normal_host(options.service_host)


def _lb_line(entry: LbEntry, seconds: float) -> str:
    """NODE, BACKEND/SERVER, STATE, SCUR and a number of seconds, tab-separated."""
    return "\t".join([_printable(entry.node), _printable(f"{entry.backend}/{entry.server}"),
                      _printable(entry.state_text), "-" if entry.scur is None else str(entry.scur),
                      f"{max(seconds, 0.0):.1f}"])


def _nobody_reports(options, services: Sequence[str], window: float) -> str:
    """'no load balancer has reported on web (port 8080) in the last 60 s'."""
    names = "any service" if not services or ALL in services else ", ".join(services)
    if options.service_port is not None:
        names += f" (port {options.service_port}" + (f", host {options.service_host})" if options.service_host
                                                   else ")")
    return f"no load balancer has reported on {names} in the last {window:g} s"


def action_status_lb(prog: str, options) -> int:
    """hastatus --lb: one line (or JSON object) per report the daemon holds; exit 0 whatever they say."""
    listing = read_lb_listing(options)
    if not listing.entries:
        _note(prog, f"note: {_nobody_reports(options, options.services, listing.window)} "
                    "(HAProxy sends its listing with 'http-check send-state')")
    for entry in listing.entries:
        _say(json.dumps(entry.document) if options.json else _lb_line(entry, listing.now - entry.seen))
    return 0


@dataclasses.dataclass
class LbWait:
    """What hadown/haup --wait has learned: the newest report of each entry, and which have confirmed.

    ``direction`` is "down" (confirmed by a state other than UP: plain UP and UP x/y still route
    traffic; with ``idle`` also scur 0 in that report) or "up" (confirmed by plain UP). Only a report
    of a check that arrived at ``changed_at`` or later counts: the daemon stamps ``seen`` with its
    time.time() on this machine, the clock ``changed_at`` was read from.
    """

    direction: str
    idle: bool
    changed_at: float
    newest: Dict[tuple, LbEntry] = dataclasses.field(default_factory=dict)
    confirmed: Dict[tuple, LbEntry] = dataclasses.field(default_factory=dict)

    def confirms(self, entry: LbEntry) -> bool:
        if entry.seen < self.changed_at:
            return False
        if self.direction == "up":
            return entry.state == "UP" and entry.transition is None
        return entry.state != "UP" and (not self.idle or entry.scur == 0)

    def take(self, listing: LbListing) -> List[LbEntry]:
        """Learn from ``listing``; returns the reports that confirmed their entry for the first time."""
        newly = []
        for entry in listing.entries:
            known = self.newest.get(entry.key)
            if known is None or entry.seen >= known.seen:
                self.newest[entry.key] = entry
            if entry.key not in self.confirmed and self.confirms(entry):
                self.confirmed[entry.key] = entry
                newly.append(entry)
        return newly

    def forget_gone(self, listing: LbListing) -> List[LbEntry]:
        """Drop the entries whose newest report left the daemon's window; returns those not confirmed.

        An entry missing from one listing but seen within the window still counts: with -n a worker
        may not have merged a fresh report yet, and a restarted daemon lists nothing for a moment.
        """
        listed = {entry.key for entry in listing.entries}
        gone = [entry for key, entry in self.newest.items()
                if key not in listed and listing.now - entry.seen > listing.window]
        for entry in gone:
            del self.newest[entry.key]
        return [entry for entry in gone if entry.key not in self.confirmed]

    def pending(self) -> List[LbEntry]:
        return [entry for key, entry in sorted(self.newest.items()) if key not in self.confirmed]


def _pending_text(wait: LbWait, pending: List[LbEntry], now: float) -> str:
    """'lb3 be_web/srv1 (UP 1/2, scur 2, last check 1.4 s ago), ...'."""
    texts = []
    for entry in pending:
        before = ", before the change" if entry.seen < wait.changed_at else ""
        scur = "-" if entry.scur is None else entry.scur
        texts.append(f"{_printable(entry.name)} ({_printable(entry.state_text)}, scur {scur}, "
                     f"last check {max(now - entry.seen, 0.0):.1f} s ago{before})")
    return ", ".join(texts)


def _no_load_balancer(options, listing: LbListing) -> Optional[str]:
    """Why --wait cannot begin (None when it can): a service asked about that nobody reports on."""
    reported = {entry.service for entry in listing.entries}
    services = list(dict.fromkeys(options.services))
    missing = [] if ALL in services else [service for service in services if service not in reported]
    if (ALL in services and not listing.entries) or missing:
        return (f"{_nobody_reports(options, missing or services, listing.window)}: enable "
                "'http-check send-state' in HAProxy's backends so that --wait can see them")
    return None


def wait_for_load_balancers(prog: str, options, direction: str, changed_at: float) -> int:
    """hadown/haup --wait: poll the daemon's listing until every entry confirmed ``direction`` (exit 0).

    Exit 1 when the daemon cannot be read or at the timeout, 3 when a service has no entries at all.
    """
    wait = LbWait(direction, options.idle, changed_at)
    timeout = options.timeout or DEFAULT_WAIT_TIMEOUT
    deadline = time.monotonic() + timeout
    first = True
    while True:
        try:
            listing = read_lb_listing(options)
        except ToolError as err:
            raise ToolError(f"{err}; {CHANGE_MADE[direction]}") from None
        problem = _no_load_balancer(options, listing) if first else None
        if problem is not None:
            _note(prog, f"error: {problem} ({CHANGE_MADE[direction]})")
            return EXIT_NO_LOAD_BALANCER
        first = False
        for entry in wait.take(listing):
            _say(_lb_line(entry, entry.seen - changed_at))
            sys.stdout.flush()  # progress: each load balancer as it confirms
        for entry in wait.forget_gone(listing):
            _note(prog, f"note: {_printable(entry.name)} has not reported for {listing.window:g} s: "
                        "no longer waited for")
        pending = wait.pending()
        if not pending:
            return 0
        if time.monotonic() >= deadline:
            doing = {"down": "still routing traffic" + (" or holding sessions" if options.idle else ""),
                     "up": "not routing traffic yet"}[direction]
            _note(prog, f"error: timed out after {timeout:g} s; {doing}: {_pending_text(wait, pending, listing.now)} "
                        f"({CHANGE_MADE[direction]})")
            return 1
        time.sleep(WAIT_POLL_SECONDS)


ACTION_FUNCTIONS: Dict[str, Callable[[str, Spool, argparse.Namespace], int]] = {
    "up": action_up,
    "down": action_down,
    "status": action_status,
    "status_downed": action_status_downed,
    "list": action_list,
}


def _check_usage(action: str, options) -> None:
    if options.service_host is not None and options.service_port is None:
        raise UsageError("-H/--service-host needs -P/--service-port")
    if action in ("up", "down", "status") and not options.services and not options.lb:
        raise UsageError(f"{action} needs at least one service name")
    if action in ("status_downed", "list") and options.services:
        raise UsageError(f"{action} takes no service names")
    if options.json and action not in ("status", "status_downed", "list"):
        raise UsageError("--json only applies to status, status_downed and list")
    if options.drain and action != "down":
        raise UsageError("--drain only applies to down")
    if options.effective and action != "status":
        raise UsageError("--effective only applies to status")
    _check_load_balancer_usage(action, options)


def _check_load_balancer_usage(action: str, options) -> None:
    if options.lb and action != "status":
        raise UsageError("--lb only applies to status")
    if options.lb and options.effective:
        raise UsageError("--effective does not apply to --lb (the load balancers' view)")
    if (options.wait or options.timeout is not None) and action not in ("up", "down"):
        raise UsageError("--wait and --timeout only apply to up and down")
    if options.idle and action != "down":
        raise UsageError("--idle only applies to down")
    if (options.timeout is not None or options.idle) and not options.wait:
        raise UsageError("--timeout and --idle need --wait")


def _check_names(action: str, options) -> None:
    """Refuse every bad name before touching the spool, so nothing is half done.

    ``down`` writes only what a check URL or an agent request can name; the other
    actions also take the names of older spool files, so those can be shown and removed.
    """
    if action == "down":
        for service in options.services:
            check_service_name(service)
        if options.service_host is not None:
            check_host(options.service_host)
    for service in options.services:
        try:
            filename = spool_filename(service, options.service_port, options.service_host)
        except InvalidServiceName as err:
            raise InvalidServiceName(f"{err} (names are files in the spool directory)") from None
        if len(os.fsencode(filename)) > MAX_NAME_BYTES:
            raise InvalidServiceName(f"invalid service name {service[:40] + '...'!r}: too long for a spool file name")


def run(prog: str, action: Optional[str], argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) for tool ``prog`` and do the action; returns the exit code."""
    parser = build_parser(prog, action)
    try:
        options = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or an error argparse has already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    action = action or options.action
    if hasattr(sys.stdout, "reconfigure"):
        # Legacy file names and reasons may hold bytes the terminal cannot show.
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        _check_usage(action, options)
        _check_names(action, options)
        return ACTION_FUNCTIONS[action](prog, Spool(options.spool_root), options)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        _note(prog, f"error: {err}")
        return 2
    except (InvalidServiceName, ValueError) as err:
        _note(prog, f"error: {err}")
        return 2
    except (SpoolError, ToolError) as err:
        _note(prog, f"error: {err}")
        return 1
    except BrokenPipeError:
        raise  # the reader of our output left: handled quietly by _main
    except OSError as err:  # anything the spool did not already name
        _note(prog, f"error: {err.filename or options.spool_root}: {err.strerror or err}")
        return 1


def _main(prog: str, action: Optional[str], argv: Optional[Sequence[str]]) -> int:
    try:
        exit_code = run(prog, action, argv)
        sys.stdout.flush()
        return exit_code
    except BrokenPipeError:
        # `hashowdowned | head -1`: the reader left; finish quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def haupdown(argv: Optional[List[str]] = None) -> int:
    """``haupdown -a ACTION [SERVICE ...]``."""
    return _main("haupdown", None, argv)


def haup(argv: Optional[List[str]] = None) -> int:
    """``haup SERVICE ...``: bring services up."""
    return _main("haup", "up", argv)


def hadown(argv: Optional[List[str]] = None) -> int:
    """``hadown SERVICE ...``: mark services down."""
    return _main("hadown", "down", argv)


def hastatus(argv: Optional[List[str]] = None) -> int:
    """``hastatus SERVICE ...``: UP/DOWN/DRAIN per service."""
    return _main("hastatus", "status", argv)


def hashowdowned(argv: Optional[List[str]] = None) -> int:
    """``hashowdowned``: every active downtime."""
    return _main("hashowdowned", "status_downed", argv)


def halist(argv: Optional[List[str]] = None) -> int:
    """``halist``: services the local daemon has seen recently."""
    return _main("halist", "list", argv)
