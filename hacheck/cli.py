"""The operator tools: haup, hadown, hastatus, hashowdowned, halist and haupdown.

One argparse parser serves every tool; ``haupdown -a ACTION`` picks the action,
the other tools have it fixed. Each action is one function that returns the
exit code: 0 success, 1 a failure (or, for hastatus, "something is down"),
2 a usage error.
"""

import argparse
import http.client
import json
import os
import pwd
import sys
import textwrap
import time
import urllib.error
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
  --json: one JSON object per line with status, service, host, port,
      reason, creation, expiration and state ("down", "drain"; null when up);
      for list, with service and last_response.

exit codes:
  0 success (status: nothing asked about has a downtime of its own)
  1 status: an entry asked about is down; otherwise the action failed (spool not
    writable, daemon not running, a non-human user without --reason)
  2 usage error (bad flags, missing or invalid service names)
  3 status: the spool directory cannot be read; hacheck answers every check
    as if nothing were down, and so do the UP lines printed

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
        help="list: the port the local hacheck daemon listens on (default: %(default)s)",
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
    return parser


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
    return 0


def action_up(prog: str, spool: Spool, options) -> int:
    if not spool.check_root():
        return 0  # no spool directory: nothing is down
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
    return 0


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


def fetch_recent(port: int, timeout: float = DAEMON_TIMEOUT) -> list:
    """The daemon's ``/recent`` as sorted (service, last_response) pairs; ToolError when unreachable.

    last_response is NO_LAST_RESPONSE for a daemon that lists plain names.
    """
    url = f"http://127.0.0.1:{port}/recent"
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
        recent = json.loads(body.decode("utf-8"))
        seen = recent["seen_services"]
        if not isinstance(seen, list):
            raise ValueError("seen_services is not a list")
        pairs = [_seen_pair(item) for item in seen]
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        raise ToolError(f"the daemon at {url} did not answer with a /recent JSON document") from None
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
    if action in ("up", "down", "status") and not options.services:
        raise UsageError(f"{action} needs at least one service name")
    if action in ("status_downed", "list") and options.services:
        raise UsageError(f"{action} takes no service names")
    if options.json and action not in ("status", "status_downed", "list"):
        raise UsageError("--json only applies to status, status_downed and list")
    if options.drain and action != "down":
        raise UsageError("--drain only applies to down")
    if options.effective and action != "status":
        raise UsageError("--effective only applies to status")


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
