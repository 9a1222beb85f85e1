"""The mysql check against the real MariaDB on 127.0.0.1:3306, with a user made for each test run."""

import asyncio
import dataclasses
import secrets
import time

import pymysql
import pytest

from hacheck.checks import mysql
from hacheck.checks.base import CheckProgress, Target, run_check
from tests.checks.conftest import HUNG_SLACK, HUNG_TIMEOUT
from tests.conftest import require_port

MARIADB = Target("127.0.0.1", 3306)


@pytest.fixture(scope="module")
def mysql_user():
    """A MariaDB account (random name and password) that exists only during these tests."""
    require_port("MariaDB", 3306)
    username = f"hacheck_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    hosts = ("127.0.0.1", "localhost")  # the server may see a loopback client under either name
    try:
        with admin.cursor() as cursor:
            for host in hosts:
                cursor.execute(f"CREATE USER '{username}'@'{host}' IDENTIFIED BY %s", (password,))
        yield username, password
    finally:
        with admin.cursor() as cursor:
            for host in hosts:
                cursor.execute(f"DROP USER IF EXISTS '{username}'@'{host}'")
        admin.close()


@pytest.mark.gen_test
async def test_good_login_names_the_server(mysql_user, make_context):
    username, password = mysql_user
    context = make_context(mysql_username=username, mysql_password=password)
    result = await run_check(mysql.check, MARIADB, "", context)
    assert result.code == 200, result
    assert "MariaDB" in result.message
    assert username in result.message


@pytest.mark.gen_test
async def test_bad_password_is_500_with_the_servers_message(mysql_user, make_context):
    username, _ = mysql_user
    context = make_context(mysql_username=username, mysql_password="not-the-password")
    result = await run_check(mysql.check, MARIADB, "", context)
    assert result.code == 500
    assert "Access denied" in result.message
    assert username in result.message


@pytest.mark.gen_test
async def test_closed_port_is_503_at_once(closed_port, make_context):
    started = time.monotonic()
    result = await run_check(mysql.check, closed_port, "", make_context(mysql_username="u", mysql_password="p"))
    assert result.code == 503
    assert "Connection refused" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "credentials",
    [{}, {"mysql_username": "someone"}, {"mysql_password": "secret"}],
    ids=["both-unset", "password-unset", "username-unset"],
)
@pytest.mark.gen_test
async def test_unset_credentials(credentials, make_context, closed_port):
    result = await run_check(mysql.check, closed_port, "", make_context(**credentials))
    assert (result.code, result.message) == (500, "No MySQL username/password in config file")


@pytest.mark.gen_test
async def test_a_hung_server_costs_at_most_the_timeout(hang_probe):
    result = await hang_probe(mysql.check, mysql_username="u", mysql_password="p")
    # PyMySQL's read timeout and the check's own fire at the same moment; either may say it.
    assert "0.50s" in result.message or "timed out" in result.message


@pytest.mark.gen_test
async def test_a_hung_server_does_not_stall_other_checks(mysql_user, silent_server, make_context):
    username, password = mysql_user
    context = make_context(healthcheck_timeout=HUNG_TIMEOUT * 2, mysql_username=username, mysql_password=password)
    finished = {}

    async def timed(name, target):
        result = await run_check(mysql.check, target, "", context)
        finished[name] = time.monotonic()
        return result

    started = time.monotonic()
    hung, good = await asyncio.gather(timed("hung", silent_server.target), timed("good", MARIADB))
    assert hung.code == 503
    assert good.code == 200, good
    assert finished["good"] < finished["hung"], "the good check waited for the hung one"
    assert finished["hung"] - started < HUNG_TIMEOUT * 2 + HUNG_SLACK


@pytest.mark.gen_test
async def test_hung_servers_cannot_exhaust_the_thread_pool(mysql_user, silent_server, make_context):
    # Twice as many hung logins as there are threads: every one ends within the timeout
    # (those waiting for a thread too), and a good login right after still gets through.
    username, password = mysql_user
    context = make_context(
        healthcheck_timeout=HUNG_TIMEOUT, max_clients=2, mysql_username=username, mysql_password=password
    )
    started = time.monotonic()
    results = await asyncio.gather(*(run_check(mysql.check, silent_server.target, "", context) for _ in range(4)))
    assert [result.code for result in results] == [503] * 4
    assert time.monotonic() - started < HUNG_TIMEOUT + HUNG_SLACK

    patient = dataclasses.replace(context, config=context.config.replace(healthcheck_timeout=5))
    good = await run_check(mysql.check, MARIADB, "", patient)
    assert good.code == 200, good


@pytest.mark.gen_test
async def test_a_dripping_server_cannot_keep_the_only_thread(mysql_user, scripted_server, make_context):
    # The server starts a huge handshake packet and sends one byte every 0.1 s: no
    # single read ever times out. The check still ends on time and frees its thread,
    # so with a pool of one thread the next login gets through.
    username, password = mysql_user
    dripping = scripted_server(greeting=b"\xff\xff\x00\x00", drip=b"x")
    context = make_context(
        healthcheck_timeout=HUNG_TIMEOUT, max_clients=1, mysql_username=username, mysql_password=password
    )
    started = time.monotonic()
    stuck = await run_check(mysql.check, dripping.target, "", context)
    assert stuck.code == 503
    assert time.monotonic() - started < HUNG_TIMEOUT + HUNG_SLACK

    patient = dataclasses.replace(context, config=context.config.replace(healthcheck_timeout=2))
    good = await run_check(mysql.check, MARIADB, "", patient)
    assert good.code == 200, good


@pytest.mark.gen_test
async def test_no_free_thread_within_the_timeout_is_not_a_verdict(mysql_user, silent_server, make_context):
    # A hung login holds the only thread for 1 s; a login asked meanwhile with a 0.3 s timeout
    # never reaches MariaDB, and its 503 says so instead of passing for MariaDB's state.
    username, password = mysql_user
    context = make_context(healthcheck_timeout=1.0, max_clients=1, mysql_username=username, mysql_password=password)
    holder = asyncio.ensure_future(run_check(mysql.check, silent_server.target, "", context))
    await asyncio.sleep(0.1)
    waiting = dataclasses.replace(context, config=context.config.replace(healthcheck_timeout=0.3),
                                  progress=CheckProgress())
    result = await run_check(mysql.check, MARIADB, "", waiting)
    assert (result.code, result.is_verdict) == (503, False)
    assert result.message == ("Check of 127.0.0.1:3306 not run: no free blocking-pool thread (max_clients=1) "
                              "within 0.30s")
    assert (await holder).is_verdict
