"""The `redis` and `sentinel` checks: send PING, expect PONG.

Both speak the same protocol, so one module serves both names.
"""

import contextlib
import inspect
from typing import AsyncIterator, Dict

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hacheck.checks.base import CheckContext, CheckFailed, CheckResult, Target

# The server answered, but not what we asked for: broken (500), not unreachable (503).
# Several of these subclass redis-py's ConnectionError, so they are caught first.
ANSWERED_ERRORS = (
    redis.exceptions.ResponseError,
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.InvalidResponse,
)


def plain_handshake_options() -> Dict[str, object]:
    """Client options for the oldest handshake: RESP2, no HELLO, no CLIENT SETINFO.

    Every Redis and Sentinel version answers it, and a check costs one round trip.
    The option names changed across redis-py releases, so ask the installed one.
    """
    parameters = inspect.signature(redis.asyncio.Redis.__init__).parameters
    options: Dict[str, object] = {}
    if "protocol" in parameters:
        options["protocol"] = 2
    if "driver_info" in parameters:
        options["driver_info"] = None
    elif "lib_name" in parameters:
        options.update(lib_name=None, lib_version=None)
    return options


PLAIN_HANDSHAKE = plain_handshake_options()


@contextlib.asynccontextmanager
async def session(target: Target, timeout: float) -> AsyncIterator[redis.asyncio.Redis]:
    """One connection for one check, closed after; redis-py errors become ``CheckFailed``.

    Retries are off: each would add another ``timeout`` to a check that must end in one.
    """
    client = redis.asyncio.Redis(
        host=target.host,
        port=target.port,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
        decode_responses=True,
        **PLAIN_HANDSHAKE,
    )
    where = f"{target.host}:{target.port}"
    try:
        yield client
    except ANSWERED_ERRORS as err:
        raise CheckFailed(500, f"{where} answered with an error: {err}") from None
    except redis.exceptions.TimeoutError:
        raise CheckFailed(503, f"No answer from {where} within {timeout:.2f}s") from None
    except (redis.exceptions.ConnectionError, OSError) as err:
        raise CheckFailed(503, str(err) or f"Cannot connect to {where}") from None
    finally:
        # redis-py 5 renamed close() to aclose(); Debian bookworm ships 4.3.
        close = getattr(client, "aclose", None) or client.close
        await close()


async def raw_reply(client: redis.asyncio.Redis, command: str) -> str:
    """Send a command without arguments and return the server's reply untouched.

    redis-py would turn PING's answer into True/False and parse INFO; we want to
    report and match exactly what the server said.
    """
    client.set_response_callback(command, lambda reply, **options: reply)
    return await client.execute_command(command)


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    async with session(target, context.timeout) as client:
        reply = await raw_reply(client, "PING")
    if reply == "PONG":
        return CheckResult(200, "PONG")
    return CheckResult(500, f"Expected PONG, got {reply!r}")
