"""The daemon's configuration: every key declared once, YAML loading and validation.

Each key is one field of ``Config`` declared with ``key()``: its default, what
values it takes (a ``Kind``: the validator and how the docs name it), whether a
reload can change it, whether cached answers depend on it, and its line in the
docs' table. The validation, the reload policy (``RESTART_KEYS``,
``CACHE_SHAPING_KEYS``) and the table in docs/daemon.md (``markdown_table``,
checked by the tests along with hacheck.yaml(5) and the Debian conffile) all
come from that declaration.

One ``Config`` object is built at start-up and handed down; a reload (SIGHUP)
builds a new one and hands it down the same way (``DaemonState.apply_config``).
A value of the wrong type is a ``ConfigError`` whose message names
the key and the file; an unknown key is only a warning, so old files keep working.
"""

import dataclasses
import difflib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import yaml

from hacheck import lb_view
from hacheck.activity import DEFAULT_MAX_PAIRS
from hacheck.throttled_log import DEFAULT_REPEAT_INTERVAL

# Results the check cache keeps at most: declared here, as checks/ imports the configuration, never the
# other way round.
DEFAULT_CACHE_MAX_ENTRIES = 10000

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key or problem."""


@dataclass(frozen=True)
class Kind:
    """The values a key takes: the validator that reads one from YAML, and how the docs name them."""

    validate: Callable[[Any], Any]
    text: str


@dataclass(frozen=True)
class Key:
    """Everything declared about one configuration key besides its name and default."""

    kind: Kind
    doc: str  # its description in the docs' table (Markdown)
    unset: str = "unset"  # how the docs show a default of None
    reload: bool = True  # False: a reload keeps the running value until a restart
    shapes_cache: bool = False  # cached answers depend on it: a reload that changes it empties the cache


KEY = "hacheck_key"


def key(default: Any, kind: Kind, doc: str, unset: str = "unset", reload: bool = True,
        shapes_cache: bool = False) -> Any:
    """A ``Config`` field: ``default`` and what ``Key`` declares about it."""
    return field(default=default, metadata={KEY: Key(kind, doc, unset, reload, shapes_cache)})


def _number(minimum: float, allow_equal: bool) -> Callable[[Any], float]:
    def validate(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number of seconds, got {value!r}")
        if value < minimum or (not allow_equal and value == minimum) or value != value:
            bound = ">=" if allow_equal else ">"
            raise ValueError(f"expected a number {bound} {minimum}, got {value!r}")
        if value == float("inf"):
            raise ValueError("expected a finite number")
        return float(value)
    return validate


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def _credential(value: Any) -> Optional[str]:
    # YAML turns an all-digit password into a number; it was still meant as text.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else _text(value)


def _header_name(value: Any) -> Optional[str]:
    if value is None:
        return None
    name = _text(value)
    if not name or any(c in name for c in " :\r\n\t"):
        raise ValueError(f"expected an HTTP header name, got {value!r}")
    return name


# What YAML 1.1 reads as a boolean when unquoted.
_YAML_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _YAML_BOOLEAN_WORDS:
        raise ValueError(f"expected true or false, got the string {value!r}: write it without quotes")
    raise ValueError(f"expected true or false, got {value!r}")


def _header_list(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of header names, got {value!r}")
    return tuple(_header_name(item) or "" for item in value if item is not None)


def _rlimit(value: Any) -> Union[str, int]:
    if value == "max":
        return "max"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected 'max' or a whole number >= 1, got {value!r}")
    return value


def _log_path(value: Any) -> str:
    path = _text(value)
    if not path:
        raise ValueError("expected 'stdout', 'stderr' or a file path, got an empty string")
    return path


def _networks(value: Any) -> Optional[Tuple[Network, ...]]:
    """A list of CIDRs (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is one host)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"expected a list of networks such as 10.0.0.0/8, got {value!r}")
    networks = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a network such as 10.0.0.0/8, got {item!r}")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not a network such as 10.0.0.0/8: {item!r}") from None
    return tuple(networks)



SECONDS_OR_ZERO = Kind(_number(0, allow_equal=True), "number of seconds, >= 0")
SECONDS = Kind(_number(0, allow_equal=False), "number of seconds, > 0")
WHOLE_NUMBER = Kind(_positive_int, "whole number >= 1")
TEXT = Kind(_text, "string")
CREDENTIAL = Kind(_credential, "string")
HEADER_NAME = Kind(_header_name, "header name")
HEADER_LIST = Kind(_header_list, "list of header names")
LOG_PATH = Kind(_log_path, "`stdout`, `stderr` or a file path")
RLIMIT = Kind(_rlimit, "`max` or a whole number")
BOOLEAN = Kind(_boolean, "`true`/`false`")
NETWORKS = Kind(_networks, "list of networks")


@dataclass(frozen=True)
class Config:
    cache_time: float = key(
        10.0, SECONDS_OR_ZERO, shapes_cache=True,
        doc="how long a protocol check's result is reused; 0 turns the cache off")
    service_name_header: Optional[str] = key(
        None, HEADER_NAME, shapes_cache=True,
        doc="HTTP checks send the service name in this header, and the service name joins the cache key")
    log_path: str = key(
        "stderr", LOG_PATH,
        doc="where logs go; a file is reopened when logrotate moves it away (no signal needed)")
    mysql_username: Optional[str] = key(
        None, CREDENTIAL, shapes_cache=True,
        doc="user for the `mysql` check")
    mysql_password: Optional[str] = key(
        None, CREDENTIAL, shapes_cache=True,
        doc="password for the `mysql` check")
    rlimit_nofile: Optional[Union[str, int]] = key(
        None, RLIMIT, unset="unset (inherited)",
        doc="open-files limit: `max` raises it to the hard limit; a number above the hard limit is a start-up error")
    allow_remote_spool_changes: bool = key(
        False, BOOLEAN,
        doc="accept `POST /spool/...`")
    http_headers_to_copy: Tuple[str, ...] = key(
        ("Host",), HEADER_LIST, shapes_cache=True,
        doc="request headers passed on to `http`/`https` upstreams")
    healthcheck_timeout: float = key(
        10.0, SECONDS, shapes_cache=True,
        doc="time limit of every protocol check")
    max_clients: int = key(
        10, WHOLE_NUMBER,
        doc="concurrent outbound HTTP checks (and blocking database checks)")
    postgresql_username: Optional[str] = key(
        None, CREDENTIAL, shapes_cache=True,
        doc="role for the `postgresql` check")
    postgresql_password: Optional[str] = key(
        None, CREDENTIAL, shapes_cache=True,
        doc="password for the `postgresql` check")
    postgresql_database: str = key(
        "postgres", TEXT, shapes_cache=True,
        doc="database the `postgresql` check connects to")
    metrics_per_service: bool = key(
        False, BOOLEAN, reload=False,
        doc="a `service` label on the request and duration metrics ([metrics](metrics.md#configuration))")
    check_host_allowed_networks: Optional[Tuple[Network, ...]] = key(
        None, NETWORKS, unset="unset: any host",
        doc=(
            "hosts the target headers may point checks at; others answer 403 "
            "([security](security.md#the-target-host-headers-a-way-into-your-network))"))
    remote_spool_allowed_networks: Optional[Tuple[Network, ...]] = key(
        None, NETWORKS, unset="unset: any client",
        doc=(
            "clients allowed to `POST /spool/...` (with `allow_remote_spool_changes`) "
            "([security](security.md#configuration-keys))"))
    request_header_timeout: float = key(
        10.0, SECONDS,
        doc=(
            "a request's line and headers must arrive within this time (from the connection's opening, or from "
            "the first byte of a later request); else the connection is closed ([connection "
            "limits](security.md#connection-limits))"))
    idle_connection_timeout: float = key(
        60.0, SECONDS,
        doc="a kept-alive connection on which no new request starts for this long is closed")
    request_body_timeout: float = key(
        10.0, SECONDS,
        doc="a request body must arrive within this time; else the connection is closed")
    max_request_line_bytes: int = key(
        8 * 1024, WHOLE_NUMBER,
        doc="a longer request line answers 414")
    max_request_header_bytes: int = key(
        16 * 1024, WHOLE_NUMBER,
        doc="a longer request head (line and headers) answers 431")
    max_request_body_bytes: int = key(
        64 * 1024, WHOLE_NUMBER,
        doc="a longer body (by its `Content-Length`) answers 413 before it is read; a chunked body answers 411")
    refused_request_linger: float = key(
        1.0, SECONDS_OR_ZERO,
        doc=(
            "after a 411/413/414/431, and when a stop or an idle timeout closes a connection, how long what the"
            " client still sends is read and dropped (at most `max_request_body_bytes` of it) so that it can "
            "read the answer sent before"))
    max_reason_chars: int = key(
        200, WHOLE_NUMBER,
        doc=(
            "a downtime's reason is cut to this many characters (ending `...`) in HTTP answers and agent "
            "answers; the tools show it whole"))
    cache_max_entries: int = key(
        DEFAULT_CACHE_MAX_ENTRIES, WHOLE_NUMBER,
        doc="results the cache keeps at most; when full, the oldest go first")
    access_counts_max_pairs: int = key(
        DEFAULT_MAX_PAIRS, WHOLE_NUMBER,
        doc="(service, client) pairs `/status/count` counts apart; the rest are counted under `(overflow)`")
    max_checks_per_target: int = key(
        4, WHOLE_NUMBER,
        doc=(
            "uncached `http`/`https`/`haproxy`/`mysql` checks running against one host and port; more wait "
            "within their timeout, then answer 503, not cached"))
    max_checks_per_client: int = key(
        8, WHOLE_NUMBER,
        doc=(
            "uncached `http`/`https`/`haproxy`/`mysql` checks running that one client address started; its "
            "further requests wait up to `healthcheck_timeout`, then answer 503, not cached"))
    max_upstream_body_bytes: int = key(
        64 * 1024, WHOLE_NUMBER, shapes_cache=True,
        doc=(
            "an `http`/`https` check reads at most this much of an upstream's body; a longer one answers 503 "
            "`Answer from ... is larger than 64 KiB; stopped reading it` at once (the HTTP client buffers at "
            "most four times this, at least 256 KiB, from one upstream)"))
    agent_request_timeout: float = key(
        1.0, SECONDS,
        doc=(
            "how long the agent port (`-A`) waits for a client's request line; a client silent this long is "
            "answered as for an empty line (only a downtime of `all` applies) and disconnected"))
    agent_write_timeout: float = key(
        5.0, SECONDS,
        doc="how long writing an agent answer may take before the connection is dropped")
    max_agent_request_bytes: int = key(
        1024, WHOLE_NUMBER,
        doc=(
            "a longer agent request line answers `#hacheck: request longer than 1024 bytes "
            "(max_agent_request_bytes)` (a description only: HAProxy changes nothing)"))
    stop_grace: float = key(
        1.0, SECONDS_OR_ZERO,
        doc=(
            "on a stop, how long a connection already accepted may still take to send its request, and how long"
            " beyond `healthcheck_timeout` answers get to be written ([workers and "
            "signals](#workers-and-signals))"))
    restart_limit_burst: int = key(
        5, WHOLE_NUMBER,
        doc=(
            "with `-n`: workers that may exit unexpectedly within `restart_limit_interval`; one more and the "
            "supervisor stops the rest and exits 1 ([workers and signals](#workers-and-signals))"))
    restart_limit_interval: float = key(
        10.0, SECONDS,
        doc="the window of `restart_limit_burst` (systemd's `StartLimitIntervalSec=`)")
    log_repeat_interval: float = key(
        DEFAULT_REPEAT_INTERVAL, SECONDS_OR_ZERO,
        doc=(
            "a warning that can repeat with every request (the spool directory unreadable, a refused host or "
            "spool change, a refused or unrun check, a bad or refused request, out of file descriptors on "
            "either port) is logged at most once per interval, with the number left out"))
    lb_view_window: float = key(
        lb_view.DEFAULT_WINDOW, SECONDS,
        doc=(
            "how long a load balancer's last `send-state` report stays in the view (`/status/lb`, `hastatus --lb`, "
            "`hadown --wait`; [HAProxy](haproxy.md#what-every-load-balancer-thinks)): one that stops checking "
            "leaves it after this"))
    lb_view_max_entries: int = key(
        lb_view.DEFAULT_MAX_ENTRIES, WHOLE_NUMBER,
        doc="(node, backend, server) reports the view keeps at most (and metric series it shows); when full, "
            "the least recently reported go first")
    source: Optional[str] = field(default=None, compare=False)

    @classmethod
    def load(cls, path: Optional[str]) -> Tuple["Config", List[str]]:
        """Read ``path`` (None: defaults). Returns the config and warnings to log."""
        if path is None:
            return cls(), []
        try:
            with open(path, "rb") as config_file:
                document = yaml.safe_load(config_file)
        except OSError as err:
            raise ConfigError(f"{path}: cannot read configuration file: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not a valid YAML file: {_yaml_problem(err)}") from err
        except RecursionError:  # absurdly nested YAML
            raise ConfigError(f"{path}: not a valid YAML file: nested too deeply") from None
        return cls.from_mapping(document, source=path)

    @classmethod
    def from_mapping(cls, document: Any, source: str = "<config>") -> Tuple["Config", List[str]]:
        """Validate a parsed document. An empty document means every default."""
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ConfigError(
                f"{source}: the configuration must be a mapping of keys to values, "
                f"not {type(document).__name__}"
            )
        values: Dict[str, Any] = {}
        warnings = []
        for key, raw in document.items():
            validator = _VALIDATORS.get(key) if isinstance(key, str) else None
            if validator is None:
                warnings.append(f"{source}: unknown configuration key {key!r} ignored{_suggestion(key)}")
                continue
            try:
                values[key] = validator(raw)
            except (ValueError, TypeError, OverflowError) as err:
                raise ConfigError(f"{source}: key {key!r}: {err}") from None
        return cls(source=source, **values), warnings

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def changed_keys(self, other: "Config") -> List[str]:
        """The keys whose values differ between this configuration and ``other``."""
        return [key.name for key in dataclasses.fields(self)
                if key.compare and getattr(self, key.name) != getattr(other, key.name)]


# Every key's declaration, in the order the docs list them.
KEYS: Dict[str, Key] = {item.name: item.metadata[KEY] for item in dataclasses.fields(Config) if KEY in item.metadata}
_VALIDATORS: Dict[str, Callable[[Any], Any]] = {name: declared.kind.validate for name, declared in KEYS.items()}
# Keys a running daemon keeps until it restarts: a reload that changes one keeps the running
# value and names the key in its log line. Every other key takes effect on reload.
RESTART_KEYS = frozenset(name for name, declared in KEYS.items() if not declared.reload)
# Keys that cached answers depend on: a reload that changes one empties the check cache.
CACHE_SHAPING_KEYS = frozenset(name for name, declared in KEYS.items() if declared.shapes_cache)


def default_text(name: str) -> str:
    """A key's default as the docs show it: `10`, `false`, `[Host]`, or ``unset...``."""
    value = Config.__dataclass_fields__[name].default
    if value is None:
        return KEYS[name].unset
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        shown = str(int(value))
    elif isinstance(value, tuple):
        shown = f"[{', '.join(value)}]"
    else:
        shown = str(value)
    return f"`{shown}`"


def markdown_table() -> str:
    """docs/daemon.md's table of keys, made from the declarations (``python3 -m hacheck.config``)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {declared.kind.text} | {default_text(name)} | {declared.doc} |"
              for name, declared in KEYS.items()]
    return "\n".join(lines) + "\n"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where the YAML goes wrong and what is wrong there, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or (str(err).splitlines() or ["invalid YAML"])[0]
    if mark is None:
        return problem
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        problem += f" ({context} at line {context_mark.line + 1})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _suggestion(key: Any) -> str:
    """`` (did you mean 'cache_time'?)`` for a key close to a known one, else nothing."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, _VALIDATORS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


if __name__ == "__main__":
    print(markdown_table(), end="")
