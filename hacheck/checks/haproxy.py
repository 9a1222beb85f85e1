"""The `haproxy` check: read HAProxy's stats CSV and report the service's BACKEND status.

The service name is the proxy name (`pxname`); its row with `svname` BACKEND says
whether HAProxy has any server up for it. The query is the stats page's path
(``/haproxy/<backend>/<port>/stats`` reads ``/stats;csv``), ``/`` when empty.
"""

import asyncio
import csv

from tornado.httpclient import HTTPClientError, HTTPRequest

from hacheck.checks.base import CheckContext, CheckResult, Target, connect_failure
from hacheck.checks.http import upstream_url


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
        return CheckResult(503, f"Cannot read HAProxy stats at {url}: {err}")
    except OSError as err:
        return connect_failure(err, target)
    if response.code != 200:
        return CheckResult(503, f"HAProxy stats at {url} answered {response.code} {response.reason}")

    # The header line is "# pxname,svname,qcur,...": columns are found by name.
    text = response.body.decode("utf-8", "replace")
    rows = csv.DictReader(text.removeprefix("# ").splitlines())
    if not {"pxname", "svname", "status"} <= set(rows.fieldnames or ()):
        return CheckResult(500, f"{url} is not HAProxy stats CSV (no pxname, svname and status columns)")
    for row in rows:
        if row["pxname"] == context.service and row["svname"] == "BACKEND":
            status = row["status"]
            return CheckResult(200 if status == "UP" else 500, f"{context.service} is {status}")
    return CheckResult(500, f"{context.service} is not found")
