"""Protocol checks, found by name. Adding a protocol is one module and one line here."""

from typing import Dict

from hacheck.checks import haproxy, http, https, mysql, postgresql, redis, redis_info, smtp, spool, tcp
from hacheck.checks.base import CheckContext, CheckFunction, CheckResult, Target, run_check

REGISTRY: Dict[str, CheckFunction] = {
    "spool": spool.check,
    "http": http.check,
    "https": https.check,
    "tcp": tcp.check,
    "mysql": mysql.check,
    "redis": redis.check,
    "sentinel": redis.check,
    "redis-info": redis_info.check,
    "sentinel-info": redis_info.check,
    "haproxy": haproxy.check,
    "smtp": smtp.check,
    "postgresql": postgresql.check,
}

# Protocols whose URL must carry the trailing /<query> (the original's routes did).
QUERY_REQUIRED = frozenset({"http", "https"})

__all__ = ["REGISTRY", "QUERY_REQUIRED", "CheckContext", "CheckResult", "Target", "run_check"]
