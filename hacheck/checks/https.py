"""The `https` check: the `http` check over TLS, without verifying the certificate."""

from hacheck.checks.base import NO_ANSWER, CheckContext, CheckResult, Target
from hacheck.checks.http import fetch


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    return await fetch("https", target, query, context)


check.no_answer_code = NO_ANSWER
