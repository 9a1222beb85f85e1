"""The `mysql` check: log in with `mysql_username`/`mysql_password`, select no database, quit.

PyMySQL blocks, so the login runs in the shared bounded thread pool. Socket
timeouts bound each read, and when the check's time is up the event loop shuts
the socket down, so even a server that drips bytes cannot keep a thread.
"""

import asyncio
import socket
import threading
from typing import Optional

import pymysql

from hacheck.checks.base import CheckContext, CheckFailed, CheckResult, Target

# MySQL client-side error numbers (CR_*) start at 2000: the server was never properly
# heard (refused, timed out, connection lost). Below that, the server itself said no.
FIRST_CLIENT_ERROR = 2000


class Login:
    """One login attempt: ``run`` in a worker thread, ``abandon`` from the event loop."""

    def __init__(self, target: Target, username: str, password: str, timeout: float):
        self.target, self.username, self.password, self.timeout = target, username, password, timeout
        self._lock = threading.Lock()
        self._socket: Optional[socket.socket] = None
        self._abandoned = False

    def run(self) -> str:
        """Connect, authenticate and quit; returns the server's version string."""
        sock = socket.create_connection((self.target.host, self.target.port), self.timeout)
        with self._lock:
            self._socket = sock
            abandoned = self._abandoned
        if abandoned:
            sock.close()
            raise pymysql.OperationalError(2013, "Login abandoned: the check timed out")
        connection = pymysql.Connection(
            host=self.target.host,
            port=self.target.port,
            user=self.username,
            password=self.password,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
            defer_connect=True,
        )
        connection.connect(sock)  # closes the socket itself when the login fails
        try:
            return connection.get_server_info()
        finally:
            connection.close()  # sends COM_QUIT

    def abandon(self) -> None:
        """Wake the worker thread at once: its blocked read sees the connection end."""
        with self._lock:
            self._abandoned = True
            sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the worker
                pass


async def check(target: Target, query: str, context: CheckContext) -> CheckResult:
    config = context.config
    if config.mysql_username is None or config.mysql_password is None:
        return CheckResult(500, "No MySQL username/password in config file")
    where = f"{target.host}:{target.port}"
    login = Login(target, config.mysql_username, config.mysql_password, context.timeout)
    try:
        version = await context.resources.run_blocking(login.run, timeout=context.timeout, progress=context.progress)
    except pymysql.MySQLError as err:
        number = err.args[0] if err.args else None
        message = err.args[1] if len(err.args) > 1 else str(err)
        if isinstance(number, int) and number < FIRST_CLIENT_ERROR:
            raise CheckFailed(500, f"MySQL at {where} refused the login: ({number}) {message}") from None
        raise CheckFailed(503, f"Cannot talk to MySQL at {where}: {message}") from None
    except (asyncio.TimeoutError, asyncio.CancelledError):
        login.abandon()
        raise
    return CheckResult(200, f"Logged in to MySQL {version} at {where} as {config.mysql_username}")
