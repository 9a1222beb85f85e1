"""The `mysql` check (not implemented yet)."""

from hacheck.checks.base import CheckContext, CheckResult, Target


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    return CheckResult(501, "mysql check not implemented yet")
