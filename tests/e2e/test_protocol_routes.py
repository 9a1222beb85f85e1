"""The database protocols through the real daemon: routes, credentials from the config, cache, spool first."""

import asyncio
import json
import secrets

import pymysql
import pytest

from hacheck.spool import Spool
from tests.conftest import require_port, unused_port


@pytest.fixture
def mysql_login():
    require_port("MariaDB", 3306)
    username = f"hacheck_route_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{username}'@'%%' IDENTIFIED BY %s", (password,))
        yield username, password
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{username}'@'%'")
        admin.close()


@pytest.fixture
def postgresql_login():
    require_port("PostgreSQL", 5432)
    import asyncpg

    role = f"hacheck_route_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)

    async def admin(statement):
        connection = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    try:
        yield role, password
    finally:
        asyncio.run(admin(f"DROP ROLE IF EXISTS {role}"))


def test_every_database_protocol_answers_through_the_daemon(hacheck_daemon, mysql_login, postgresql_login):
    require_port("Redis", 6379)
    mysql_user, mysql_password = mysql_login
    pg_role, pg_password = postgresql_login
    daemon = hacheck_daemon(config={
        "mysql_username": mysql_user, "mysql_password": mysql_password,
        "postgresql_username": pg_role, "postgresql_password": pg_password,
        "healthcheck_timeout": 5,
    })

    status, body, _ = daemon.get("/redis/cache/6379")
    assert (status, body) == (200, "PONG")

    status, body, _ = daemon.get("/redis-info/cache/6379")
    assert status == 200
    assert "redis_version" in json.loads(body)

    status, body, _ = daemon.get("/redis-info/cache/6379/match?role=master")
    assert (status, body.strip()) == (200, "Matched role=master")
    status, _, _ = daemon.get("/redis-info/cache/6379/match?role=slave")
    assert status == 500

    status, body, _ = daemon.get("/mysql/db/3306")
    assert status == 200, body
    assert mysql_user in body

    status, body, _ = daemon.get("/postgresql/pg/5432/")
    assert status == 200, body
    assert pg_role in body

    closed = unused_port()
    for path in (f"/mysql/db/{closed}", f"/postgresql/pg/{closed}/", f"/redis/cache/{closed}",
                 f"/smtp/mail/{closed}", f"/haproxy/web/{closed}"):
        status, body, _ = daemon.get(path)
        assert status == 503, (path, body)


def test_database_results_are_cached_and_downtimes_come_first(hacheck_daemon, mysql_login):
    mysql_user, mysql_password = mysql_login
    daemon = hacheck_daemon(config={"mysql_username": mysql_user, "mysql_password": mysql_password,
                                    "cache_time": 60})
    assert daemon.get("/mysql/db/3306")[0] == 200
    # Dropping the user does not change a cached answer...
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with admin.cursor() as cursor:
        cursor.execute(f"DROP USER '{mysql_user}'@'%'")
    admin.close()
    assert daemon.get("/mysql/db/3306")[0] == 200
    # ...until the cache is bypassed, and a downtime answers before any check.
    status, body, _ = daemon.get("/mysql/db/3306", headers={"Pragma": "no-cache"})
    assert status == 500, body
    Spool(daemon.spool_root).down("db", reason="failover drill")
    status, body, _ = daemon.get("/mysql/db/3306")
    assert status == 503
    assert body.startswith("Service db in down state") and body.endswith(": failover drill")
    status = json.loads(daemon.get("/status")[1])
    assert status["cache"]["hits"] >= 1
