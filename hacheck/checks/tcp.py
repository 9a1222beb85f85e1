"""The `tcp` check: up when a TCP connection to the target opens in time; the query is ignored."""

import time

from hacheck.checks.base import CheckContext, CheckResult, Target, close_quietly, open_connection


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    """200 ``Connected in 0.00s``; a refusal (at once) or a timeout raises a 503 ``CheckFailed``."""
    started = time.monotonic()
    _, writer = await open_connection(target, context.timeout)
    elapsed = time.monotonic() - started
    await close_quietly(writer)
    return CheckResult(200, f"Connected in {elapsed:.2f}s")
