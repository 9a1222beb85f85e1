"""The daemon's configuration: defaults, YAML loading and validation.

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

from hacheck.activity import DEFAULT_MAX_PAIRS
from hacheck.cache import DEFAULT_MAX_ENTRIES
from hacheck.throttled_log import DEFAULT_REPEAT_INTERVAL

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key or problem."""


@dataclass(frozen=True)
class Config:
    cache_time: float = 10.0
    service_name_header: Optional[str] = None
    log_path: str = "stderr"
    mysql_username: Optional[str] = None
    mysql_password: Optional[str] = None
    postgresql_username: Optional[str] = None
    postgresql_password: Optional[str] = None
    postgresql_database: str = "postgres"
    rlimit_nofile: Optional[Union[str, int]] = None
    allow_remote_spool_changes: bool = False
    http_headers_to_copy: Tuple[str, ...] = ("Host",)
    healthcheck_timeout: float = 10.0
    max_clients: int = 10
    metrics_per_service: bool = False
    log_repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    # None keeps the original behaviour; a tuple of networks restricts (docs/security.md, "Configuration keys").
    remote_spool_allowed_networks: Optional[Tuple[Network, ...]] = None
    check_host_allowed_networks: Optional[Tuple[Network, ...]] = None
    # Bounds of one client connection (docs/security.md, "Connection limits"): seconds and bytes.
    request_header_timeout: float = 10.0
    request_body_timeout: float = 10.0
    idle_connection_timeout: float = 60.0
    max_request_line_bytes: int = 8 * 1024
    max_request_header_bytes: int = 16 * 1024
    max_request_body_bytes: int = 64 * 1024
    # How long a refused client may go on sending (read and dropped) so that it reads its answer.
    refused_request_linger: float = 1.0
    # A downtime's reason is cut to this many characters in answers to clients (the tools show it whole).
    max_reason_chars: int = 200
    # Bounded tables and shared slots; read at request time.
    cache_max_entries: int = DEFAULT_MAX_ENTRIES
    access_counts_max_pairs: int = DEFAULT_MAX_PAIRS
    # Uncached checks in flight that take an outbound slot: per (host, port), and per client address.
    max_checks_per_target: int = 4
    max_checks_per_client: int = 8
    # The agent port (-A): how long a silent client is waited for (then answered as if it had sent an
    # empty line), how long writing the answer may take, and the longest request line.
    agent_request_timeout: float = 1.0
    agent_write_timeout: float = 5.0
    max_agent_request_bytes: int = 1024
    # A stop gives connections that have not sent their request this long to send it, and answers
    # healthcheck_timeout plus this long to reach their clients.
    stop_grace: float = 1.0
    # Health pages are small: an http check stops reading an upstream's body past this size.
    max_upstream_body_bytes: int = 64 * 1024
    # With -n: workers that may exit unexpectedly within restart_limit_interval seconds before the
    # supervisor gives up, stops the rest and exits 1 (systemd's StartLimitBurst/StartLimitIntervalSec).
    restart_limit_burst: int = 5
    restart_limit_interval: float = 10.0
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


# Keys a running daemon keeps until it restarts: a reload that changes one keeps the running
# value and names the key in its log line. Every other key takes effect on reload.
RESTART_KEYS = frozenset({
    "metrics_per_service",  # the metrics' label names are fixed when they are registered
})
# Keys that cached answers depend on: a reload that changes one empties the check cache.
CACHE_SHAPING_KEYS = frozenset({
    "cache_time", "service_name_header", "http_headers_to_copy", "healthcheck_timeout", "max_upstream_body_bytes",
    "mysql_username", "mysql_password", "postgresql_username", "postgresql_password", "postgresql_database",
})


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


_VALIDATORS: Dict[str, Callable[[Any], Any]] = {
    "cache_time": _number(0, allow_equal=True),
    "service_name_header": _header_name,
    "log_path": _log_path,
    "mysql_username": _credential,
    "mysql_password": _credential,
    "postgresql_username": _credential,
    "postgresql_password": _credential,
    "postgresql_database": _text,
    "rlimit_nofile": _rlimit,
    "allow_remote_spool_changes": _boolean,
    "http_headers_to_copy": _header_list,
    "healthcheck_timeout": _number(0, allow_equal=False),
    "max_clients": _positive_int,
    "metrics_per_service": _boolean,
    "log_repeat_interval": _number(0, allow_equal=True),
    "remote_spool_allowed_networks": _networks,
    "check_host_allowed_networks": _networks,
    "request_header_timeout": _number(0, allow_equal=False),
    "request_body_timeout": _number(0, allow_equal=False),
    "idle_connection_timeout": _number(0, allow_equal=False),
    "max_request_line_bytes": _positive_int,
    "max_request_header_bytes": _positive_int,
    "max_request_body_bytes": _positive_int,
    "refused_request_linger": _number(0, allow_equal=True),
    "max_reason_chars": _positive_int,
    "cache_max_entries": _positive_int,
    "access_counts_max_pairs": _positive_int,
    "max_checks_per_target": _positive_int,
    "max_checks_per_client": _positive_int,
    "agent_request_timeout": _number(0, allow_equal=False),
    "agent_write_timeout": _number(0, allow_equal=False),
    "max_agent_request_bytes": _positive_int,
    "stop_grace": _number(0, allow_equal=True),
    "max_upstream_body_bytes": _positive_int,
    "restart_limit_burst": _positive_int,
    "restart_limit_interval": _number(0, allow_equal=False),
}
