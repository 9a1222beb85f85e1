"""The `smtp` check: read the server's greeting (220), send QUIT, expect 221."""

import asyncio
import time
from typing import Tuple

from hacheck.checks.base import CheckContext, CheckFailed, CheckResult, Target, close_quietly, open_connection


async def read_reply(reader: asyncio.StreamReader, where: str, waiting_for: str) -> Tuple[str, str]:
    """One SMTP reply, following `250-...` continuation lines: (code, text of the last line)."""
    while True:
        try:
            raw = await reader.readline()
        except ValueError:  # a line longer than the stream's limit: not SMTP
            raise CheckFailed(503, f"{where} sent an over-long line while we waited for {waiting_for}") from None
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not raw.endswith(b"\n"):
            said = f" after {line!r}" if line else ""
            raise CheckFailed(503, f"{where} closed the connection{said} while we waited for {waiting_for}")
        if line[3:4] != "-":
            return line[:3], line


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    started = time.monotonic()
    where = f"{target.host}:{target.port}"
    reader, writer = await open_connection(target, context.timeout)
    try:
        code, line = await read_reply(reader, where, "the greeting")
        if code != "220":
            return CheckResult(503, f"Expected a 220 greeting from {where}, got {line!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
        code, line = await read_reply(reader, where, "the answer to QUIT")
        if code != "221":
            return CheckResult(503, f"Expected 221 after QUIT from {where}, got {line!r}")
    finally:
        await close_quietly(writer)
    return CheckResult(200, f"Connected in {time.monotonic() - started:.2f}s")
