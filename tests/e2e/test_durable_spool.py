"""Downtimes survive a power loss, and the disk never holds the event loop.

Seen through strace on the real tools and the real daemon: after every rename
and unlink in the spool, the spool directory itself is fsynced (a file's fsync
makes its content durable, not its name); with fsync made slow, a POST /spool
delays only itself; a /metrics scrape of an unchanged spool reads no file.
"""

import json
import os
import re
import subprocess
import threading
import time
import urllib.parse

from tests.conftest import http_request, require_command, start_hacheck, tool_argv, tool_env

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SYSCALLS = "openat,rename,renameat,renameat2,unlink,unlinkat,fsync,fdatasync"


def traced_run(tmp_path, argv) -> list:
    """Run ``argv`` under strace; the system call lines it made."""
    strace = require_command("strace")
    out = tmp_path / f"strace-{time.monotonic_ns()}.txt"
    subprocess.run([strace, "-f", "-qq", "-e", f"trace={SYSCALLS}", "-o", str(out), *argv],
                   check=True, env=tool_env(), capture_output=True, timeout=60)
    return out.read_text().splitlines()


class Tracer:
    """strace attached to a running process (every thread) until stopped."""

    def __init__(self, tmp_path, pid: int, *options: str):
        strace = require_command("strace")
        self.out = tmp_path / f"strace-{pid}-{time.monotonic_ns()}.txt"
        self.process = subprocess.Popen([strace, "-f", "-p", str(pid), "-o", str(self.out), *options],
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not all_threads_traced(pid):
            assert time.monotonic() < deadline, "strace did not attach within 10 s"
            time.sleep(0.05)

    def stop(self) -> list:
        self.process.terminate()
        self.process.wait(timeout=10)
        return self.out.read_text().splitlines()


def all_threads_traced(pid: int) -> bool:
    """Whether every thread of ``pid`` has a tracer (the kernel's TracerPid)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            if re.search(r"^TracerPid:\s+0$", status.read(), re.M):
                return False
    return True


def directory_syncs_after(lines, spool_root: str, change: str) -> list:
    """For each ``change`` (rename/unlink) into the spool, whether an fsync of the spool directory followed it.

    Follows each process's (pid's) lines on their own: the fsync must come after the
    change in the same thread, on a descriptor opened on the spool root.
    """
    root_fds = {}  # pid -> fds opened on the spool root with O_DIRECTORY
    pending = {}  # pid -> changes not yet followed by a directory fsync
    results = []
    for line in lines:
        pid, _, call = line.partition(" ")
        call = call.strip()
        opened = re.match(r'openat\(AT_FDCWD, "([^"]+)", [^)]*O_DIRECTORY[^)]*\)\s+= (\d+)', call)
        if opened and opened.group(1).rstrip("/") == spool_root.rstrip("/"):
            root_fds.setdefault(pid, set()).add(opened.group(2))
        elif call.startswith(change) and spool_root in call and re.search(r"\)\s+= 0$", call):
            pending.setdefault(pid, []).append(call)
        synced = re.match(r"fsync\((\d+)\)\s+= 0", call)
        if synced and synced.group(1) in root_fds.get(pid, ()):
            results += [True] * len(pending.pop(pid, []))
    for calls in pending.values():
        results += [False] * len(calls)
    return results


def test_the_tools_sync_the_spool_directory_after_each_rename_and_unlink(tmp_path):
    spool_root = str(tmp_path / "spool")
    os.mkdir(spool_root)
    down = traced_run(tmp_path, tool_argv("hadown") + ["--spool-root", spool_root, "-r", "deploy", "web"])
    assert directory_syncs_after(down, spool_root, "rename") == [True]
    up = traced_run(tmp_path, tool_argv("haup") + ["--spool-root", spool_root, "web"])
    assert directory_syncs_after(up, spool_root, "unlink") == [True]
    assert os.listdir(spool_root) == []


def test_the_daemon_syncs_the_spool_directory_after_each_remote_change(tmp_path):
    daemon = start_hacheck(tmp_path, config={"allow_remote_spool_changes": True})
    try:
        tracer = Tracer(tmp_path, daemon.process.pid, "-qq", "-e", f"trace={SYSCALLS}")
        for status in ("down", "drain", "up"):
            body = urllib.parse.urlencode({"status": status, "reason": "deploy"}).encode()
            code, _ = http_request(daemon.port, "/spool/web/0/status", method="POST", body=body,
                                        headers=FORM)[:2]
            assert code == 200
        lines = tracer.stop()
    finally:
        daemon.stop()
    assert directory_syncs_after(lines, daemon.spool_root, "rename") == [True, True]
    assert directory_syncs_after(lines, daemon.spool_root, "unlink") == [True]


def test_a_slow_disk_delays_only_the_post_that_waits_for_it(tmp_path):
    """Every fsync made to take 3 s: a check asked meanwhile answers at once, the POST after 3 s or more."""
    daemon = start_hacheck(tmp_path, config={"allow_remote_spool_changes": True})
    try:
        tracer = Tracer(tmp_path, daemon.process.pid, "-qq", "--seccomp-bpf", "-e", "trace=fsync",
                        "-e", "inject=fsync:delay_enter=3000000")
        posted = {}

        def post() -> None:
            started = time.monotonic()
            body = urllib.parse.urlencode({"status": "down", "reason": "slow disk"}).encode()
            posted["code"] = http_request(daemon.port, "/spool/web/0/status", method="POST", body=body,
                                          headers=FORM, timeout=30)[0]
            posted["seconds"] = time.monotonic() - started

        poster = threading.Thread(target=post)
        poster.start()
        time.sleep(0.5)  # the POST is now waiting for its fsync
        started = time.monotonic()
        code, body = http_request(daemon.port, "/spool/other/0/status", timeout=30)[:2]
        check_seconds = time.monotonic() - started
        poster.join(timeout=30)
        tracer.stop()
    finally:
        daemon.stop()
    assert code == 200
    assert posted["code"] == 200
    assert posted["seconds"] >= 3.0  # the delay did apply: the comparison below means something
    assert check_seconds < 1.5, f"a check waited {check_seconds:.2f} s behind a spool write"


def test_a_scrape_of_an_unchanged_spool_reads_no_downtime_file(tmp_path):
    """20,000 downtimes: the first scrape reads them, the next ones only look at the directory."""
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    content = json.dumps({"reason": "many", "expiration": None, "creation": time.time()})
    for number in range(20000):
        (spool_root / f"service-{number}").write_text(content)
    (spool_root / "soon:8080").write_text(json.dumps({"reason": "r", "expiration": time.time() + 3600,
                                                       "creation": time.time()}))
    time.sleep(2.1)  # the directory's stamp is then old enough to stand for its content
    daemon = start_hacheck(tmp_path, spool_root=str(spool_root))
    try:
        assert downtimes_scraped(daemon.port) == {"service": 20000, "port": 1}
        tracer = Tracer(tmp_path, daemon.process.pid, "-qq", "-e", "trace=openat")
        assert downtimes_scraped(daemon.port) == {"service": 20000, "port": 1}
        opened = [line for line in tracer.stop() if str(spool_root) + "/" in line]
        assert opened == []
        subprocess.run(tool_argv("haup") + ["--spool-root", str(spool_root), "service-7"], check=True,
                       env=tool_env(), timeout=60)
        assert downtimes_scraped(daemon.port) == {"service": 19999, "port": 1}
    finally:
        daemon.stop()


def downtimes_scraped(port: int) -> dict:
    """``hacheck_downtimes{state="down"}`` per kind, as /metrics shows it."""
    code, body = http_request(port, "/metrics", timeout=30)[:2]
    assert code == 200
    found = re.findall(r'^hacheck_downtimes\{kind="(\w+)",state="down"\} (\S+)$', body, re.M)
    return {kind: int(float(value)) for kind, value in found if kind in ("service", "port")}
