"""The `postgresql` check: connect, finish start-up and authentication, close.

Uses `postgresql_username`, `postgresql_password` and `postgresql_database`.
"""

import asyncio

import asyncpg

from hacheck.checks.base import CheckContext, CheckFailed, CheckResult, Target, describe_connect_error

# The server answered but cannot take connections right now: unavailable, not broken.
BUSY_ERRORS = (asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    config = context.config
    missing = [key for key in ("postgresql_username", "postgresql_password") if getattr(config, key) is None]
    if missing:
        return CheckResult(500, f"No {' or '.join(missing)} in config file")
    where = f"{target.host}:{target.port}"
    try:
        connection = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=config.postgresql_username,
            password=config.postgresql_password,
            database=config.postgresql_database,
            timeout=context.timeout,
            server_settings={"application_name": "hacheck"},
        )
    except BUSY_ERRORS as err:
        raise CheckFailed(503, f"PostgreSQL at {where} cannot take connections: {err}") from None
    except asyncpg.PostgresError as err:  # the server refused us: bad password, no such role...
        raise CheckFailed(500, f"PostgreSQL at {where} refused the login: {err}") from None
    except asyncio.TimeoutError:
        raise CheckFailed(503, f"No answer from PostgreSQL at {where} within {context.timeout:.2f}s") from None
    except OSError as err:
        raise CheckFailed(503, describe_connect_error(err, target)) from None
    except asyncpg.InterfaceError as err:  # e.g. the peer does not speak PostgreSQL
        raise CheckFailed(503, f"Cannot talk to PostgreSQL at {where}: {err}") from None
    try:
        version = connection.get_settings().server_version
    finally:
        await connection.close(timeout=context.timeout)
    return CheckResult(200, f"Logged in to PostgreSQL {version} at {where} as {config.postgresql_username}")
