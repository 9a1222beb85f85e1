"""The postgresql check against the real PostgreSQL on 5432, and a private one that asks for passwords.

The machine's PostgreSQL trusts loopback connections, so it accepts any password:
a wrong password can only be refused by an instance started here with scram auth.
"""

import asyncio
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import asyncpg
import pytest

from hacheck.checks import postgresql
from hacheck.checks.base import Target, run_check
from tests.conftest import IN_CI, port_open, require, require_command, require_port, unused_port

POSTGRESQL = Target("127.0.0.1", 5432)


async def _admin(statement: str, port: int = 5432, **connect) -> None:
    connection = await asyncpg.connect(host="127.0.0.1", port=port, timeout=10, **connect)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def postgresql_role():
    """A role with a password on the machine's PostgreSQL, dropped after these tests."""
    require_port("PostgreSQL", 5432)
    role = f"hacheck_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    asyncio.run(_admin(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", user="postgres", database="postgres"))
    try:
        yield role, password
    finally:
        asyncio.run(_admin(f"DROP ROLE IF EXISTS {role}", user="postgres", database="postgres"))


def _as_postgres(argv):
    """initdb and the server refuse to run as root: run them as the postgres account then."""
    if os.geteuid() == 0:
        return [require_command("runuser"), "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="module")
def password_postgresql():
    """A private PostgreSQL on an unused port whose loopback logins need a password (scram)."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require(bool(initdbs), "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) are not installed")
    bindir = os.path.dirname(initdbs[-1])
    workdir = tempfile.mkdtemp(prefix="hacheck-pg-")  # not under pytest's tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    data, admin_password, port = os.path.join(workdir, "data"), secrets.token_urlsafe(12), unused_port()
    password_file = os.path.join(workdir, "password")
    with open(password_file, "w") as stream:
        stream.write(admin_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(password_file, "postgres")
    pg_ctl = [os.path.join(bindir, "pg_ctl"), "-D", data]
    try:
        subprocess.run(
            _as_postgres([initdbs[-1], "-D", data, "-N", "-U", "admin", f"--pwfile={password_file}",
                          "--auth-local=trust", "--auth-host=scram-sha-256"]),
            check=True, capture_output=True, timeout=60,
        )
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([*pg_ctl, "-o", options, "-l", os.path.join(workdir, "log"), "-w", "-t", "30", "start"]),
            check=True, capture_output=True, timeout=60,
        )
        assert port_open(port), "the private PostgreSQL is not listening"
        yield Target("127.0.0.1", port), "admin", admin_password
    except subprocess.CalledProcessError as err:
        message = f"cannot start a private PostgreSQL: {err.stderr.decode(errors='replace')}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        subprocess.run(_as_postgres([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.gen_test
async def test_good_login_on_the_machines_postgresql(postgresql_role, make_context):
    role, password = postgresql_role
    context = make_context(postgresql_username=role, postgresql_password=password)
    result = await run_check(postgresql.check, POSTGRESQL, "", context)
    assert result.code == 200, result
    assert result.message.startswith("Logged in to PostgreSQL ")
    assert role in result.message


@pytest.mark.gen_test
async def test_a_missing_database_is_500_with_the_servers_message(postgresql_role, make_context):
    role, password = postgresql_role
    context = make_context(postgresql_username=role, postgresql_password=password,
                           postgresql_database="no_such_database_here")
    result = await run_check(postgresql.check, POSTGRESQL, "", context)
    assert result.code == 500
    assert 'database "no_such_database_here" does not exist' in result.message


@pytest.mark.gen_test
async def test_good_and_bad_password_where_passwords_count(password_postgresql, make_context):
    target, admin, password = password_postgresql
    good = await run_check(postgresql.check, target, "",
                           make_context(postgresql_username=admin, postgresql_password=password))
    assert good.code == 200, good
    bad = await run_check(postgresql.check, target, "",
                          make_context(postgresql_username=admin, postgresql_password="not-the-password"))
    assert bad.code == 500
    assert 'password authentication failed for user "admin"' in bad.message


@pytest.mark.gen_test
async def test_closed_port_is_503_at_once(closed_port, make_context):
    started = time.monotonic()
    result = await run_check(postgresql.check, closed_port, "",
                             make_context(postgresql_username="u", postgresql_password="p"))
    assert result.code == 503
    assert "refused" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "credentials, message",
    [
        ({}, "No postgresql_username or postgresql_password in config file"),
        ({"postgresql_username": "someone"}, "No postgresql_password in config file"),
        ({"postgresql_password": "secret"}, "No postgresql_username in config file"),
    ],
)
@pytest.mark.gen_test
async def test_unset_credentials_name_the_missing_keys(credentials, message, make_context, closed_port):
    result = await run_check(postgresql.check, closed_port, "", make_context(**credentials))
    assert (result.code, result.message) == (500, message)


@pytest.mark.gen_test
async def test_a_hung_server_costs_at_most_the_timeout(hang_probe):
    await hang_probe(postgresql.check, postgresql_username="u", postgresql_password="p")
