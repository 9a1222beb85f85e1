"""Downtimes are never lost: the daemon never deletes a spool file, and readers never see half a file.

Both run the real daemon and the real ``hadown``/``haup`` processes while
other threads hammer the daemon with checks.
"""

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hacheck.spool import Spool
from tests.conftest import http_request, tool_argv, tool_env
from tests.e2e.support import operator_tool


class Hammer:
    """Threads asking the daemon ``paths`` over and over until stopped; every answer is kept."""

    def __init__(self, port: int, paths, threads: int = 4):
        self.port = port
        self.paths = paths
        self.answers = []
        self.errors = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, offset: int) -> None:
        n = offset
        while not self._stop.is_set():
            path = self.paths[n % len(self.paths)]
            n += 1
            try:
                status, body, _ = http_request(self.port, path, timeout=10)
            except OSError as err:
                self.errors.append((path, repr(err)))
                continue
            self.answers.append((path, status, body))

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@pytest.mark.timeout(90)
def test_a_renewed_downtime_is_never_deleted_by_the_daemon(hacheck_daemon):
    daemon = hacheck_daemon(config={"cache_time": 0})
    spool = Spool(daemon.spool_root)
    path = spool.path("renewed")
    with Hammer(daemon.port, ["/spool/renewed/80", "/http/renewed/80/health"]) as hammer:
        for round_number in range(5):
            # A downtime that expires in a moment, read by the daemon all along.
            operator_tool("hadown", daemon.spool_root, "-r", f"short {round_number}", "-e", "1s", "renewed")
            deadline = time.monotonic() + 15
            while daemon.get("/spool/renewed/80")[0] != 200:  # until it has expired: up again
                assert time.monotonic() < deadline, "the short downtime never expired"
                time.sleep(0.05)
            time.sleep(0.2)  # the hammer finds it expired many times over
            # The daemon found it expired many times over, and left it in place.
            assert os.path.exists(path), f"round {round_number}: the daemon deleted the expired downtime"
            operator_tool("hadown", daemon.spool_root, "-r", f"renewed {round_number}", "renewed")
            time.sleep(0.3)  # the hammer reads the renewed downtime meanwhile
            assert os.path.exists(path), f"round {round_number}: the renewed downtime was deleted"
            assert spool.read("renewed").reason == f"renewed {round_number}"
            status, body, _ = daemon.get("/spool/renewed/80")
            assert status == 503 and body.endswith(f": renewed {round_number}"), (status, body)
            operator_tool("haup", daemon.spool_root, "renewed")
    assert hammer.errors == []
    assert len(hammer.answers) > 50
    assert {status for _, status, _ in hammer.answers} <= {200, 503}


SERVICES = ["svc-a", "svc-b", "svc-c"]
DOWN_MESSAGE = re.compile(
    r"Service (svc-[abc]) in down state since [0-9]+\.[0-9]{6}"
    r"( until [0-9]+\.[0-9]{6})?: writer-[0-9]+ round-[0-9]+ " + "x" * 200 + r"\Z")


def toggle(spool_root: str, writer: int, rounds: int) -> list:
    """One operator changing the services: hadown (some with an expiration), then haup, ``rounds`` times."""
    failures = []
    for round_number in range(rounds):
        service = SERVICES[(writer + round_number) % len(SERVICES)]
        # A long reason, so a torn read would show as a cut-off message.
        reason = f"writer-{writer} round-{round_number} " + "x" * 200
        commands = [["hadown", "-r", reason] + (["-e", "1h"] if writer % 2 else []) + [service]]
        if round_number % 2:
            commands.append(["haup", service])
        for command in commands:
            done = subprocess.run(tool_argv(command[0]) + ["--spool-root", spool_root] + command[1:],
                                  capture_output=True, text=True, timeout=60, env=tool_env(SUDO_USER="tester"))
            if done.returncode != 0:
                failures.append((command, done.returncode, done.stderr))
    return failures


@pytest.mark.timeout(180)
def test_readers_never_see_half_a_file_while_many_tools_run(hacheck_daemon):
    # The whole reason in the answer (max_reason_chars), so a torn read cannot hide behind the cut.
    daemon = hacheck_daemon(config={"cache_time": 0, "max_reason_chars": 1000})
    paths = [f"/spool/{service}/{80 + n}" for n, service in enumerate(SERVICES)]
    with Hammer(daemon.port, paths, threads=4) as hammer:
        with ThreadPoolExecutor(max_workers=30) as pool:
            failures = [f for result in pool.map(lambda w: toggle(daemon.spool_root, w, 2), range(30))
                        for f in result]
    assert failures == []
    assert hammer.errors == []
    statuses = {200: 0, 503: 0}
    for path, status, body in hammer.answers:
        assert status in (200, 503), (path, status, body)
        statuses[status] += 1
        if status == 200:
            assert body == "", (path, body)
        else:
            match = DOWN_MESSAGE.match(body)
            assert match, f"garbled down message for {path}: {body!r}"
            assert match.group(1) == path.split("/")[2]
    # Both answers were seen, so the readers really raced the writers.
    assert statuses[200] > 0 and statuses[503] > 0, statuses
    assert "Traceback" not in daemon.output()
