"""Yelp/hacheck/tests/test_misc.py and uber/hacheck/tests/test_misc.py (rlimit_nofile), and the
black-box part of their test_mysql.py, against a real daemon and a real MariaDB.
"""

import re
import resource
import subprocess

import pytest

from tests.checks.test_mysql import mysql_user  # noqa: F401 (a fixture: a MariaDB account for this module)
from tests.conftest import start_hacheck, tool_argv, tool_env, unused_port


def open_files_limit(pid: int) -> tuple:
    """(soft, hard) "Max open files" of a running process."""
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = re.split(r"\s{2,}", line.strip())[1:3]
    return int(soft), int(hard)


def lowered_limits():
    """Start the daemon with a soft limit below the hard one, so raising it shows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))


@pytest.mark.parametrize("setting", ["max", 600])
def test_setrlimit_nofile(tmp_path, setting):
    """Yelp/hacheck/tests/test_misc.py::test_max and ::test_specific, uber (same): ``max`` raises
    the soft limit to the hard one; a number sets the soft limit and keeps the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 600:
        pytest.skip(f"the hard open-files limit ({hard}) is below the limits this test sets")
    config = tmp_path / "hacheck.yaml"
    config.write_text(f"rlimit_nofile: {setting}\n")
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered_limits()
    try:
        daemon = start_hacheck(tmp_path, config=str(config))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)
    try:
        expected_soft = hard if setting == "max" else setting
        assert open_files_limit(daemon.pid) == (expected_soft, hard)
    finally:
        daemon.stop()


def test_illegal(tmp_path):
    """Yelp/hacheck/tests/test_misc.py::test_illegal, uber (same): a limit above the hard one is
    refused (a start-up error: exit non-zero, one line saying so)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-files limit to exceed")
    config = tmp_path / "hacheck.yaml"
    config.write_text(f"rlimit_nofile: {hard + 1}\n")
    argv = tool_argv("hacheck") + ["-p", str(unused_port()), "-c", str(config), "--spool-root", str(tmp_path)]
    result = subprocess.run(argv, env=tool_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "rlimit_nofile" in result.stderr and "Traceback" not in result.stderr


def test_password_hash(mysql_user, hacheck_daemon):  # noqa: F811 (the fixture imported above)
    """Yelp/hacheck/tests/test_mysql.py::test_password_hash and uber (same): the original tested
    its password scramble; black-box, a real MariaDB accepts a login with the right password and
    refuses a wrong one."""
    username, password = mysql_user
    good = hacheck_daemon(config={"mysql_username": username, "mysql_password": password})
    assert good.get("/mysql/db/3306")[0] == 200
    bad = hacheck_daemon(config={"mysql_username": username, "mysql_password": password + "x"})
    assert bad.get("/mysql/db/3306")[0] != 200
