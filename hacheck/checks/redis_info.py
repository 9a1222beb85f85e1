"""The `redis-info` and `sentinel-info` checks: send INFO and show or match its fields.

Without a query the answer is every INFO field as JSON. With the query `match`,
the request's query string (`?role=master`, several pairs allowed) names fields
and values; the check is up only when every field has exactly that value.
"""

import json
from typing import Dict
from urllib.parse import parse_qsl

from hacheck.checks.base import CheckContext, CheckResult, Target
from hacheck.checks.redis import raw_reply, session


def parse_info(text: str) -> Dict[str, str]:
    """INFO's `field:value` lines as text, section headers (`# Server`) left out."""
    fields = {}
    for line in text.splitlines():
        field, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[field] = value
    return fields


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    if query not in ("", "match"):
        return CheckResult(400, f"Unknown query {query!r}: use 'match' with ?field=value, or nothing for all fields")
    if query == "match":
        try:
            wanted = parse_qsl(context.query_string, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            wanted = []
        if not wanted or not all(field for field, _ in wanted):
            return CheckResult(
                400, f"The match query needs a query string field=value, got {context.query_string!r}"
            )

    async with session(target, context.timeout) as client:
        reply = await raw_reply(client, "INFO")
    if not isinstance(reply, str):
        return CheckResult(500, f"Expected INFO text, got {reply!r}")
    fields = parse_info(reply)

    if query != "match":
        return CheckResult(200, json.dumps(fields, sort_keys=True))
    mismatches = []
    for field, value in wanted:
        if field not in fields:
            mismatches.append(f"{field} is not in INFO")
        elif fields[field] != value:
            mismatches.append(f"{field} is {fields[field]!r}, not {value!r}")
    if mismatches:
        return CheckResult(500, "; ".join(mismatches))
    return CheckResult(200, "Matched " + ", ".join(f"{field}={value}" for field, value in wanted))
