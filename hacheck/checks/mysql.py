"""The `mysql` check: log in with `mysql_username`/`mysql_password`, select no database, quit.

PyMySQL blocks, so the login runs in the shared bounded thread pool, with socket
timeouts that bring the thread back even when the server never answers.
"""

import pymysql

from hacheck.checks.base import CheckContext, CheckFailed, CheckResult, Target

# MySQL client-side error numbers (CR_*) start at 2000: the server was never heard
# (refused, unreachable, timed out). Below that, the server itself said no.
FIRST_CLIENT_ERROR = 2000


def log_in(target: Target, username: str, password: str, timeout: float) -> str:
    """Connect, authenticate and quit; returns the server's version string."""
    connection = pymysql.connect(
        host=target.host,
        port=target.port,
        user=username,
        password=password,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )
    try:
        return connection.get_server_info()
    finally:
        connection.close()  # sends COM_QUIT


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    config = context.config
    if config.mysql_username is None or config.mysql_password is None:
        return CheckResult(500, "No MySQL username/password in config file")
    where = f"{target.host}:{target.port}"
    try:
        version = await context.resources.run_blocking(
            log_in, target, config.mysql_username, config.mysql_password, context.timeout,
            timeout=context.timeout,
        )
    except pymysql.MySQLError as err:
        number = err.args[0] if err.args else None
        message = err.args[1] if len(err.args) > 1 else str(err)
        if isinstance(number, int) and number < FIRST_CLIENT_ERROR:
            raise CheckFailed(500, f"MySQL at {where} refused the login: ({number}) {message}") from None
        raise CheckFailed(503, f"Cannot reach MySQL at {where}: {message}") from None
    return CheckResult(200, f"Logged in to MySQL {version} at {where} as {config.mysql_username}")
