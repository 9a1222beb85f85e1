"""The `haproxy` check: read HAProxy's stats CSV and report the service's BACKEND status.

The service name is the proxy name (`pxname`); its row with `svname` BACKEND says
whether HAProxy has any server up for it. The query is the stats page's path
(``/haproxy/<backend>/<port>/stats`` reads ``/stats;csv``), ``/`` when empty.

The codes are the original's (uber/hacheck, the only one with this check): a stats
page that answers an error passes its code on (500 stays 500); a stats page that
cannot be read as text (NUL bytes, not UTF-8), or no answer at all, records 599 and
is answered 503, as for an http check.
"""

import asyncio
import csv
from typing import Optional

from tornado.httpclient import HTTPClientError, HTTPRequest

from hacheck.checks.base import NO_ANSWER, CheckContext, CheckResult, Target, connect_failure
from hacheck.checks.http import upstream_url


def _stats_text(body: bytes) -> Optional[str]:
    """The stats page as text; None when it is not (NUL bytes, not UTF-8), which no CSV parser takes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    url = upstream_url("http", target, query + ";csv", "")
    # End just inside run_check's deadline: Tornado then reports its own timeout
    # rather than logging an error for a fetch cancelled from outside.
    timeout = context.timeout - min(0.1, context.timeout / 10)
    request = HTTPRequest(
        url,
        connect_timeout=timeout,
        request_timeout=timeout,
        follow_redirects=False,
    )
    try:
        response = await asyncio.shield(await context.resources.fetch(request, context.progress))
    except HTTPClientError as err:  # timeouts and closed streams (599) are raised even so
        return CheckResult(NO_ANSWER, f"Cannot read HAProxy stats at {url}: {err}")
    except OSError as err:
        return connect_failure(err, target, NO_ANSWER)
    if not 200 <= response.code < 300:
        # An error passes its own code on; anything else (a redirect) must not look like a pass.
        code = response.code if 400 <= response.code < 600 else 503
        return CheckResult(code, f"HAProxy stats at {url} answered {response.code} {response.reason}")
    text = _stats_text(response.body)
    if text is None:
        return CheckResult(NO_ANSWER, f"HAProxy stats at {url} is not text (NUL bytes or not UTF-8)")

    # The header line is "# pxname,svname,qcur,...": columns are found by name.
    rows = csv.DictReader(text.removeprefix("# ").splitlines())
    if not {"pxname", "svname", "status"} <= set(rows.fieldnames or ()):
        return CheckResult(500, f"{url} is not HAProxy stats CSV (no pxname, svname and status columns)")
    for row in rows:
        if row["pxname"] == context.service and row["svname"] == "BACKEND":
            status = row["status"]
            return CheckResult(200 if status == "UP" else 500, f"{context.service} is {status}")
    return CheckResult(500, f"{context.service} is not found")


check.no_answer_code = NO_ANSWER
