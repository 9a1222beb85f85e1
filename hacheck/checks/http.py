"""The `http` check: GET the upstream's ``/<query>`` and answer with its status code and body.

`https` is the same request over TLS (``fetch`` takes the scheme). Redirects
are not followed: a 3xx is the answer. An upstream that refuses, hangs up or
stays silent is a 599 (Tornado's code for "no answer", which the original
recorded as the last status; the response itself is a 503) whose message says which.
"""

import asyncio
import logging
import urllib.parse
from typing import Mapping, Optional, Tuple

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPInputError
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from hacheck import __version__
from hacheck.checks.base import NO_ANSWER, CheckContext, CheckResult, Target, connect_failure
from hacheck.config import Config

USER_AGENT = f"hastate {__version__}"

# Left as they are in the path: what a URL path may hold, and '%' so that a
# query which is already escaped is not escaped twice.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    return await fetch("http", target, query, context)


check.no_answer_code = NO_ANSWER


async def fetch(scheme: str, target: Target, query: str, context: CheckContext) -> CheckResult:
    """GET ``<scheme>://<host>:<port>/<query>?<query string>``; the upstream's code and body are the result."""
    url = upstream_url(scheme, target, query, context.query_string)
    # Reading stops past max_upstream_body_bytes, so an endless body costs at most that much
    # memory and answers at once instead of at the timeout.
    body = _BoundedBody(context.config.max_upstream_body_bytes)
    request = HTTPRequest(
        url,
        headers=outbound_headers(context),
        follow_redirects=False,
        connect_timeout=context.timeout,
        request_timeout=context.timeout,
        validate_cert=False,  # https: health checks talk to self-signed and internal certificates
        decompress_response=True,
        streaming_callback=body.append,
    )
    # raise_error=False keeps every HTTP status from raising; what still
    # raises is a failure to get any complete answer.
    pending = await context.resources.fetch(request, context.progress)
    try:
        # When run_check's timeout cancels this check first, Tornado still ends the fetch at its own timeout.
        response = await asyncio.shield(pending)
    except (HTTPClientError, OSError) as err:
        if isinstance(err, OSError) and not body.too_large:
            return connect_failure(err, target, NO_ANSWER)
        return CheckResult(NO_ANSWER, _failure_message(err, url, target, body, context))
    return CheckResult(response.code, body.text())


def upstream_url(scheme: str, target: Target, query: str, query_string: str) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    path = urllib.parse.quote(query, safe=_PATH_SAFE)
    url = f"{scheme}://{host}:{target.port}/{path}"
    return f"{url}?{query_string}" if query_string else url


def copied_headers(config: Config, incoming: Optional[Mapping[str, str]], service: str) -> Tuple[Tuple[str, str], ...]:
    """The headers an http check sends besides User-Agent: the incoming ones named in
    ``http_headers_to_copy`` and, when ``service_name_header`` is set, the service name.

    They are inputs of the check: its cache key holds them (see ``hacheck.checks.check_key``).
    """
    copied = []
    if isinstance(incoming, HTTPHeaders):
        # Looked up by name (HTTPHeaders ignores case): a cached check pays for the names copied,
        # not for every header of the request. A repeated header gives its last value.
        for name in config.http_headers_to_copy:
            values = incoming.get_list(name)
            if values:
                copied.append((name, values[-1]))
    elif incoming:
        given = {name.lower(): value for name, value in incoming.items()}
        copied = [(name, given[name.lower()]) for name in config.http_headers_to_copy if name.lower() in given]
    if config.service_name_header:
        copied.append((config.service_name_header, service))
    return tuple(copied)


def outbound_headers(context: CheckContext) -> HTTPHeaders:
    """User-Agent and the ``copied_headers``."""
    headers = HTTPHeaders({"User-Agent": USER_AGENT})
    for name, value in copied_headers(context.config, context.headers, context.service):
        headers[name] = value
    return headers


def _failure_message(err: Exception, url: str, target: Target, body: "_BoundedBody", context: CheckContext) -> str:
    if body.too_large:
        return f"Answer from {url} is larger than {_size(body.limit)}; stopped reading it"
    if isinstance(err, HTTPTimeoutError):
        return f"Request to {url} timed out after {context.timeout:.2f}s"
    if isinstance(err, HTTPStreamClosedError):
        return f"Connection closed by {target.host}:{target.port} before a complete answer to {url}"
    return f"Request to {url} failed: {err}"


def _size(size: int) -> str:
    """``64 KiB`` for a whole number of KiB, else ``100 bytes``."""
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} bytes"


class _BodyTooLarge(HTTPInputError):
    """Raised from the body callback; Tornado then drops the connection as for a malformed answer."""


def _is_body_too_large(record: logging.LogRecord) -> bool:
    """False for Tornado's log records of our own ``_BodyTooLarge`` (anywhere in the exception chain)."""
    err = record.exc_info[1] if record.exc_info else None
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, _BodyTooLarge):
            return False
        err = err.__cause__ or err.__context__
        seen += 1
    return True


# Tornado before 6.5 logs an exception raised in a streaming callback as an
# "Uncaught exception" with a traceback, though the fetch then fails as meant:
# an oversized answer is the upstream's doing and already the check's 503.
logging.getLogger("tornado.application").addFilter(_is_body_too_large)


class _BoundedBody:
    """Collects an answer's body up to ``limit`` bytes and aborts the read beyond that."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.too_large = False

    def append(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > self.limit:
            self.too_large = True
            raise _BodyTooLarge(f"body larger than {self.limit} bytes")
        self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")
