"""End to end: a spool directory the daemon cannot read is answered as the originals did (no downtime), loudly.

The directory is made unreadable by putting a regular file where it was: the
tests run as root, for whom permission bits do not stop a lookup, while a path
through a file fails for anyone (ENOTDIR), as a lookup in a directory without
search permission fails for the daemon's own user (EACCES).
"""

import json
import os
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_hacheck, tool_argv, tool_env, unused_port
from tests.e2e.support import ask_agent, operator_tool, threaded_upstream


def spool_readable_gauge(daemon) -> float:
    for family in text_string_to_metric_families(daemon.get("/metrics")[1]):
        for sample in family.samples:
            if sample.name == "hacheck_spool_readable":
                return sample.value
    raise AssertionError("no hacheck_spool_readable in /metrics")


def hastatus(spool_root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(tool_argv("hastatus") + ["--spool-root", spool_root, *args], capture_output=True,
                          text=True, timeout=30, env=tool_env())


@pytest.fixture
def upstream():
    with threaded_upstream() as (port, state):
        yield port, state


def test_unreadable_spool_directory_answers_as_no_downtime_and_says_so(tmp_path, upstream):
    upstream_port, _ = upstream
    agent_port = unused_port()
    # Long enough that every request below falls in one interval: exactly one ERROR line.
    daemon = start_hacheck(tmp_path, config={"log_repeat_interval": 3600}, args=["-A", str(agent_port)])
    root = daemon.spool_root
    try:
        operator_tool("hadown", root, "-r", "before", "web")
        assert daemon.get("/spool/web/80")[0] == 503
        assert spool_readable_gauge(daemon) == 1
        assert json.loads(daemon.get("/status")[1])["spool"] == {"root": root, "readable": True, "problem": None}
        assert hastatus(root, "web").returncode == 1

        os.rename(root, root + ".moved")
        with open(root, "w"):  # a file where the directory was
            pass
        problem = f"cannot read spool directory {root}: Not a directory"
        for _ in range(3):
            assert daemon.get("/spool/web/80")[:2] == (200, "")
            assert daemon.get(f"/http/web/{upstream_port}/")[:2] == (200, "healthy")
            assert daemon.get(f"/tcp/web/{upstream_port}")[0] == 200
            assert daemon.get("/spool/web/80", headers={"X-Nerve-Check-IP": "10.0.0.1"})[:2] == (200, "")
            assert ask_agent(agent_port, b"web\n") == b"up ready\n"
            assert ask_agent(agent_port, b"web:80\n") == b"up ready\n"
            assert ask_agent(agent_port, b"\n") == b"up ready\n"
        assert json.loads(daemon.get("/status")[1])["spool"] == {"root": root, "readable": False, "problem": problem}
        assert spool_readable_gauge(daemon) == 0

        text = hastatus(root, "web", "api")
        assert (text.returncode, text.stdout) == (3, "UP\tweb\nUP\tapi\n")
        assert text.stderr == (f"hastatus: error: {problem}: hacheck answers every check as if nothing "
                               "were down\n")
        as_json = hastatus(root, "--json", "-P", "80", "web")
        assert as_json.returncode == 3
        assert json.loads(as_json.stdout) == {"status": "UP", "service": "web", "host": None, "port": 80,
                                              "reason": None, "creation": None, "expiration": None,
                                              "state": None}

        os.unlink(root)
        os.rename(root + ".moved", root)
        assert daemon.get("/spool/web/80")[0] == 503
        assert spool_readable_gauge(daemon) == 1
        assert ask_agent(agent_port, b"web\n") == b"maint #before\n"
    finally:
        daemon.stop()
    errors = [line for line in daemon.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1, daemon.output()
    assert errors[0].endswith(f"{problem}: downtimes are ignored, every check and agent request is answered "
                              "as if nothing were down (/status spool.readable, /metrics hacheck_spool_readable)")


def test_unreadable_entry_is_still_a_downtime_while_the_directory_is_readable(tmp_path):
    daemon = start_hacheck(tmp_path)
    try:
        os.makedirs(daemon.spool_root, exist_ok=True)
        os.symlink("/etc/hostname", os.path.join(daemon.spool_root, "web"))
        assert daemon.get("/spool/web/80")[:2] == (
            503, "Service web in down state: unreadable spool entry: not a regular file")
        assert spool_readable_gauge(daemon) == 1
        assert json.loads(daemon.get("/status")[1])["spool"]["readable"] is True
    finally:
        daemon.stop()
