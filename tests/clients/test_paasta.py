"""paasta's hacheck drain method, replayed against a real hacheck daemon.

Client: Yelp/paasta paasta_tools/hacheck.py (get_spool, post_spool) as used by
paasta_tools/drain_lib.py (HacheckDrainMethod: spool_urls, down, up, is_draining,
is_safe_to_kill). The requests below are the bytes paasta's aiohttp sends, captured
once from aiohttp 3.7.4.post0 (the version pinned in Yelp/paasta requirements.txt)
running get_spool and post_spool against a listening socket; only the Host header's
port (the daemon's) and the expiration (now plus paasta's) are filled in here.
paasta's parsing is written out below from the same file: a 200 is "up", anything
else is matched with its regex, and a body the regex does not match crashes paasta
(``match.groupdict()`` on None), which is why every non-200 answer hacheck gives on
/spool must be a downtime body.
"""

import http.client
import os
import re
import socket
import time
import urllib.parse
import zlib

import pytest

from tests.conftest import start_hacheck
from tests.e2e.support import operator_tool

# paasta_tools/utils.py get_user_agent(): "<basename of argv[0]> <paasta version>".
USER_AGENT = "setup_kubernetes_job 1.8.2"
REGISTRATION = "svc.main"
TASK_PORT = 31000
# drain_lib.HacheckDrainMethod: delay=240 by default, expiration = delay * 10 unless given.
DELAY = 240.0
EXPIRATION = DELAY * 10


def spool_path(registration: str = REGISTRATION, task_port: int = TASK_PORT) -> str:
    """The path of drain_lib.HacheckDrainMethod.spool_urls: /spool/{registration}/{task_port}/status."""
    return f"/spool/{registration}/{task_port:d}/status"


def get_spool_request(hacheck_port: int, path: str) -> bytes:
    """hacheck.get_spool: session.get(spool_url, headers={"User-Agent": ...}) as aiohttp 3.7 writes it."""
    return (f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{hacheck_port}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: gzip, deflate\r\n"
            "\r\n").encode("ascii")


def post_spool_request(hacheck_port: int, path: str, data: dict) -> bytes:
    """hacheck.post_spool: session.post(url, data=data, headers={"User-Agent": ...}), a urlencoded form."""
    body = urllib.parse.urlencode(data).encode("ascii")
    return (f"POST {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{hacheck_port}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: gzip, deflate\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "\r\n").encode("ascii") + body


def exchange(port: int, request: bytes):
    """Send ``request`` and read one response as aiohttp does (keep-alive: by Content-Length, not to EOF).

    Returns (status, body text): aiohttp's response.text() decodes a gzip or deflate body and the
    charset of Content-Type.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(request)
        response = http.client.HTTPResponse(connection)
        response.begin()
        body = response.read()
        encoding = (response.getheader("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        charset = response.msg.get_content_charset() or "utf-8"
        return response.status, body.decode(charset)


# paasta_tools/hacheck.py get_spool: the regex, joined from the same pieces.
PAASTA_SPOOL_REGEX = "".join([
    "^",
    r"Service (?P<service>.+)",
    r" in (?P<state>.+) state",
    r"(?: since (?P<since>[0-9.]+))?",
    r"(?: until (?P<until>[0-9.]+))?",
    r"(?:: (?P<reason>.*))?",
    "$",
])


def paasta_parse(status: int, text: str) -> dict:
    """What get_spool returns for an answer; raises AttributeError where paasta crashes."""
    if status == 200:
        return {"state": "up"}
    match = re.match(PAASTA_SPOOL_REGEX, text)
    groupdict = match.groupdict()  # paasta's crash when nothing matched: 'NoneType' has no 'groupdict'
    info = {"service": groupdict["service"], "state": groupdict["state"]}
    info["since"] = float(groupdict["since"] or 0)
    info["until"] = float(groupdict["until"] or 0)
    info["reason"] = groupdict["reason"]
    return info


def is_draining(results) -> bool:
    """drain_lib.HacheckDrainMethod.is_draining."""
    return not all(result is None or result["state"] == "up" for result in results)


def is_safe_to_kill(results, delay: float = DELAY) -> bool:
    """drain_lib.HacheckDrainMethod.is_safe_to_kill."""
    if all(result is None or result["state"] == "up" for result in results):
        return False
    return all(result.get("since", 0) < (time.time() - delay) for result in results)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    # paasta posts from the machine that runs the drain: remote spool changes must be allowed.
    running = start_hacheck(tmp_path_factory.mktemp("paasta"), config={"allow_remote_spool_changes": True})
    try:
        yield running
    finally:
        running.stop()


def get_spool(daemon, path: str = spool_path()) -> dict:
    return paasta_parse(*exchange(daemon.port, get_spool_request(daemon.port, path)))


def post_spool(daemon, data: dict, path: str = spool_path()) -> None:
    status, text = exchange(daemon.port, post_spool_request(daemon.port, path, data))
    assert status == 200, text  # post_spool calls resp.raise_for_status()


def test_up(daemon):
    assert get_spool(daemon) == {"state": "up"}
    assert not is_draining([get_spool(daemon)])
    assert not is_safe_to_kill([get_spool(daemon)])


def test_drain_down_with_reason_and_expiration_then_up(daemon):
    posted_at = time.time()
    expiration = str(posted_at + EXPIRATION)  # HacheckDrainMethod.down: str(time.time() + self.expiration)
    post_spool(daemon, {"status": "down", "expiration": expiration, "reason": "Drained by Paasta"})
    assert sorted(os.listdir(daemon.spool_root)) == [f"{REGISTRATION}:{TASK_PORT}"]
    try:
        info = get_spool(daemon)
        assert (info["service"], info["state"], info["reason"]) == (REGISTRATION, "down", "Drained by Paasta")
        assert posted_at - 1 <= info["since"] <= time.time()
        assert abs(info["until"] - float(expiration)) < 1e-5
        assert is_draining([info])
        assert not is_safe_to_kill([info])  # down for less than the delay
        time.sleep(0.01)
        assert is_safe_to_kill([get_spool(daemon)], delay=0)
        # Another port of the same registration is not drained.
        assert get_spool(daemon, spool_path(task_port=TASK_PORT + 1)) == {"state": "up"}
    finally:
        post_spool(daemon, {"status": "up"})  # HacheckDrainMethod.up / stop_draining
    assert get_spool(daemon) == {"state": "up"}
    assert os.listdir(daemon.spool_root) == []


def test_operator_drain_and_all_are_parsed(daemon):
    root = daemon.spool_root
    operator_tool("hadown", root, "--drain", "-r", "slow disk", REGISTRATION)
    try:
        info = get_spool(daemon)
        assert (info["service"], info["state"], info["reason"]) == (REGISTRATION, "drain", "slow disk")
        assert is_draining([info])
    finally:
        operator_tool("haup", root, REGISTRATION)
    operator_tool("hadown", root, "-r", "rack move", "-e", "1h", "all")
    try:
        info = get_spool(daemon)
        assert (info["service"], info["state"], info["reason"]) == ("all", "down", "rack move")
        assert info["until"] > time.time() + 3500
    finally:
        operator_tool("haup", root, "all")
    assert get_spool(daemon) == {"state": "up"}


def test_unreadable_spool_directory_is_up_for_paasta(daemon):
    root = daemon.spool_root
    post_spool(daemon, {"status": "down", "expiration": str(time.time() + EXPIRATION), "reason": "Drained by Paasta"})
    try:
        os.rename(root, root + ".moved")
        try:
            with open(root, "w"):  # a file where the directory was: unreadable even for root
                pass
            assert get_spool(daemon) == {"state": "up"}  # before: a 503 paasta's regex could not parse
            assert not is_draining([get_spool(daemon)])
        finally:
            if os.path.isfile(root):
                os.unlink(root)
            os.rename(root + ".moved", root)
        assert get_spool(daemon)["state"] == "down"
    finally:
        post_spool(daemon, {"status": "up"})


@pytest.mark.parametrize("make_entry", [
    pytest.param(lambda path: os.symlink("/etc/hostname", path), id="symbolic-link"),
    pytest.param(os.mkdir, id="directory"),
])
def test_unreadable_entry_is_a_downtime_paasta_parses(daemon, make_entry):
    entry = os.path.join(daemon.spool_root, f"{REGISTRATION}:{TASK_PORT}")
    make_entry(entry)
    try:
        status, text = exchange(daemon.port, get_spool_request(daemon.port, spool_path()))
        assert status == 503
        info = paasta_parse(status, text)
        assert (info["service"], info["state"], info["since"], info["until"]) == (REGISTRATION, "down", 0, 0)
        assert info["reason"].startswith("unreadable spool entry: ")
        assert is_draining([info])
        # No "since": paasta reads it as 0, long enough ago for any delay.
        assert is_safe_to_kill([info])
    finally:
        if os.path.isdir(entry) and not os.path.islink(entry):
            os.rmdir(entry)
        else:
            os.unlink(entry)
    assert get_spool(daemon) == {"state": "up"}
