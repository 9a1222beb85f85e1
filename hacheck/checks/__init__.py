"""Protocol checks, found by name, each with what its answer depends on.

Adding a protocol is one module and one ``Protocol`` entry here. The entry
declares the check's inputs besides the target (host and port); ``check_key``
builds the cache key and ``check_context`` what the check sees from that same
declaration, so a check cannot use an input its key does not hold.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from hacheck.checks import haproxy, http, https, mysql, postgresql, redis, redis_info, smtp, tcp
from hacheck.checks.base import (
    CheckContext,
    CheckFunction,
    CheckProgress,
    CheckResult,
    SharedResources,
    Target,
    run_check,
)
from hacheck.config import Config


@dataclass(frozen=True)
class Protocol:
    """One protocol's check and the inputs its answer depends on besides the target."""

    check: CheckFunction
    # The URL must end in /<query> (the original's http and https routes did).
    query_required: bool = False
    # The /<query> part of the URL.
    uses_query: bool = False
    # The request's own query string (?a=b).
    uses_query_string: bool = False
    # The service name (haproxy: the backend to report).
    uses_service: bool = False
    # Request headers sent upstream: http_headers_to_copy, and the service name under service_name_header.
    sends_headers: bool = False
    # Takes one of the max_clients outbound slots (HTTP client or blocking pool); such checks are
    # bounded per target and per client (max_checks_per_target, max_checks_per_client).
    uses_outbound_slot: bool = False


_HTTP = dict(query_required=True, uses_query=True, uses_query_string=True, sends_headers=True,
             uses_outbound_slot=True)

REGISTRY: Dict[str, Protocol] = {
    "http": Protocol(http.check, **_HTTP),
    "https": Protocol(https.check, **_HTTP),
    "tcp": Protocol(tcp.check),
    "mysql": Protocol(mysql.check, uses_outbound_slot=True),
    "redis": Protocol(redis.check),
    "sentinel": Protocol(redis.check),
    "redis-info": Protocol(redis_info.check, uses_query=True, uses_query_string=True),
    "sentinel-info": Protocol(redis_info.check, uses_query=True, uses_query_string=True),
    "haproxy": Protocol(haproxy.check, uses_query=True, uses_service=True, uses_outbound_slot=True),
    "smtp": Protocol(smtp.check),
    "postgresql": Protocol(postgresql.check),
}


def check_key(name: str, protocol: Protocol, config: Config, target: Target, service: str, query: str,
              query_string: str, headers: Optional[Mapping[str, str]]) -> tuple:
    """The cache key of a check: the protocol, the target and every input its entry declares.

    An input the entry does not declare is left out (``tcp`` on any query shares one result).
    """
    return (
        name, target.host, target.port,
        query if protocol.uses_query else None,
        query_string if protocol.uses_query_string else None,
        service if protocol.uses_service else None,
        http.copied_headers(config, headers, service) if protocol.sends_headers else None,
    )


def check_context(protocol: Protocol, config: Config, resources: SharedResources, service: str,
                  query_string: str, headers: Optional[Mapping[str, str]],
                  client: Optional[str] = None) -> CheckContext:
    """What the check sees of the request: only what ``check_key`` holds (the service name is
    always there, for messages and logs; a check that answers by it declares ``uses_service``).
    ``client``, whose request starts the check, shares out hacheck's slots; the check never sees it."""
    return CheckContext(
        service=service, config=config, resources=resources,
        query_string=query_string if protocol.uses_query_string else "",
        headers=headers if protocol.sends_headers else {},
        progress=CheckProgress(client),
    )


__all__ = ["REGISTRY", "Protocol", "check_key", "check_context", "CheckContext", "CheckResult", "Target",
           "run_check"]
