"""Yelp/hacheck/tests/test_spool.py and uber/hacheck/tests/test_spool.py, black-box.

The originals' ``spool.status`` (the entry named) is ``hastatus``; ``spool.is_up``
(``all``, the service, then its port) is the daemon's ``/spool`` answer;
``spool.down``/``up`` are ``hadown``/``haup``; ``status_all_down`` is ``hashowdowned``.
"""

import json
import os
import time

from tests.conftest import http_request
from tests.originals.support import ORIGINALS_DISAGREE, Tools, deliberate

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def status(tools, service, port=None, host=None) -> bool:
    """The original's ``spool.status``: True when the entry named is up (``hastatus`` exits 0)."""
    args = (["-P", str(port)] if port is not None else []) + (["-H", host] if host else []) + [service]
    result = tools.run("hastatus", *args)
    assert result.returncode in (0, 1), result
    assert result.stdout.startswith("UP\t" if result.returncode == 0 else ("DOWN\t", "DRAIN\t")), result.stdout
    return result.returncode == 0


def is_up(daemon, service, port=None, host=None) -> bool:
    """The original's ``spool.is_up``: True when the daemon's /spool check answers 200."""
    headers = {"X-Nerve-Check-IP": host} if host else {}
    code, body, _ = http_request(daemon.port, f"/spool/{service}/{port or 1}/status", headers=headers)
    assert code in (200, 503), (code, body)
    return code == 200


def test_configure_creates_root(tmp_path):
    """Yelp/hacheck/tests/test_spool.py::test_configure_creates_root, uber/hacheck/tests/test_spool.py (same):
    the first ``hadown`` creates a missing spool root."""
    root = tmp_path / "spool"
    Tools(str(root)).ok("hadown", "web")
    assert root.is_dir() and os.listdir(root) == ["web"]


def test_configure_no_write(tmp_path):
    """Yelp/hacheck/tests/test_spool.py::test_configure_no_write, uber (same): a spool root the
    tool cannot write fails the change (exit 1, one line), while reading it still works
    (::test_configure_no_write_no_needs_write)."""
    if os.geteuid() == 0:
        # root writes through mode 0555: make the root a path no one can create instead.
        blocker = tmp_path / "file"
        blocker.write_text("")
        root = blocker / "spool"
    else:
        root = tmp_path / "non_writable"
        root.mkdir(mode=0o555)
    tools = Tools(str(root))
    result = tools.run("hadown", "web")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result
    assert "Traceback" not in result.stderr
    if os.geteuid() != 0:
        assert tools.run("hastatus", "web").returncode == 0


def test_basic_yelp(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_basic: per-port and per-host entries, each read as named."""
    svc, host = "test_basic", "10.93.10.1"
    assert status(tools, svc) and status(tools, svc, 1234) and status(tools, svc, 1234, host)
    tools.ok("hadown", "-P", "1234", svc)
    assert status(tools, svc)
    assert not status(tools, svc, 1234)
    assert status(tools, svc, 1234, host)
    tools.ok("hadown", svc)
    assert not status(tools, svc)
    assert not is_up(module_daemon, svc)
    assert not is_up(module_daemon, svc, 1234, host)
    tools.ok("haup", "-P", "1234", svc)
    # The entry named is up although the service as a whole is down (exit 0, as the original).
    assert status(tools, svc, 1234)
    tools.ok("haup", "-P", "1234", "-H", host, svc)
    assert status(tools, svc, 1234, host)
    tools.ok("haup", svc)
    assert status(tools, svc)


def test_basic_uber(tools):
    """uber/hacheck/tests/test_spool.py::test_basic: down, then up."""
    svc = "test_basic_uber"
    assert status(tools, svc)
    tools.ok("hadown", svc)
    assert not status(tools, svc)
    tools.ok("haup", svc)
    assert status(tools, svc)


def test_all(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_all and uber/hacheck/tests/test_spool.py::test_all:
    with ``all`` down, the service's own entry is up (hastatus: UP, exit 0) but checks answer down."""
    svc = "test_all"
    assert status(tools, svc)
    tools.ok("hadown", "all")
    try:
        result = tools.run("hastatus", svc)
        assert (result.returncode, result.stdout) == (0, f"UP\t{svc}\n")
        assert "'all' is down" in result.stderr  # ours: a note, not a different answer
        assert not is_up(module_daemon, svc)
    finally:
        tools.ok("haup", "all")


def test_port_entry_up_while_service_down(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_all and ::test_basic, as the tools run them:
    after ``hadown svc; hadown -P 1234 svc; haup -P 1234 svc``, ``hastatus -P 1234 svc`` prints
    ``UP<TAB>svc`` and exits 0, while the daemon still answers 503 for svc on 1234."""
    svc = "test_port_up"
    tools.ok("hadown", svc)
    tools.ok("hadown", "-P", "1234", svc)
    tools.ok("haup", "-P", "1234", svc)
    result = tools.run("hastatus", "-P", "1234", svc)
    assert (result.returncode, result.stdout) == (0, f"UP\t{svc}\n")
    assert not is_up(module_daemon, svc, 1234)
    result = tools.run("hastatus", "--effective", "-P", "1234", svc)
    assert result.returncode == 1 and result.stdout.startswith(f"DOWN\tinf\t{svc}::1234\t")
    tools.ok("haup", svc)


def test_status_all_down_yelp(tools):
    """Yelp/hacheck/tests/test_spool.py::test_status_all_down: none, then one with its fields."""
    listing = Tools(tools.root + "-empty")
    assert listing.ok("hashowdowned") == ""
    listing.ok("hadown", "-r", "because", "foo")
    assert listing.ok("hashowdowned") == "DOWN\tinf\tfoo\tbecause\n"
    record = json.loads(listing.ok("hashowdowned", "--json"))
    assert record["service"] == "foo" and record["reason"] == "because" and record["expiration"] is None
    assert isinstance(record["creation"], float)


@deliberate(ORIGINALS_DISAGREE)
def test_status_all_down_uber(tools):
    """uber/hacheck/tests/test_spool.py::test_status_all_down: uber's lines had no expiration field."""
    listing = Tools(tools.root + "-empty-uber")
    listing.ok("hadown", "-r", "because", "foo")
    assert listing.ok("hashowdowned") == "DOWN\tfoo\tbecause\n"


def test_repeated_ups_works(tools):
    """Yelp/hacheck/tests/test_spool.py::test_repeated_ups_works and uber (same)."""
    tools.ok("haup", "all")
    tools.ok("haup", "all")


def test_spool_file_path(tools):
    """Yelp/hacheck/tests/test_spool.py::test_spool_file_path: the files per port and host."""
    root = Tools(tools.root + "-paths")
    root.ok("hadown", "-P", "1234", "foo")
    root.ok("hadown", "foo")
    root.ok("hadown", "-P", "1234", "-H", "10.93.10.1", "foo")
    assert sorted(os.listdir(root.root)) == ["foo", "foo:10.93.10.1:1234", "foo:1234"]
    root.ok("haup", "-P", "1234", "-H", "127.0.0.1", "foo")  # 127.0.0.1 is the plain port entry
    assert sorted(os.listdir(root.root)) == ["foo", "foo:10.93.10.1:1234"]


def test_parse_spool_file_path(tools):
    """Yelp/hacheck/tests/test_spool.py::test_parse_spool_file_path: file names read back as
    service, host and port (``hashowdowned`` labels and JSON)."""
    root = Tools(tools.root + "-parse")
    root.ok("hadown", "-r", "x", "-P", "1234", "foo")
    root.ok("hadown", "-r", "x", "-P", "1234", "-H", "10.93.10.1", "foo")
    assert root.ok("hashowdowned") == "DOWN\tinf\tfoo:10.93.10.1:1234\tx\nDOWN\tinf\tfoo::1234\tx\n"
    records = [json.loads(line) for line in root.ok("hashowdowned", "--json").splitlines()]
    assert [(r["service"], r["host"], r["port"]) for r in records] == [("foo", "10.93.10.1", 1234),
                                                                       ("foo", None, 1234)]


def test_serialize_spool_file_contents(tools):
    """Yelp/hacheck/tests/test_spool.py::test_serialize_spool_file_contents: a JSON file with
    reason, expiration and creation."""
    before = time.time()
    tools.ok("hadown", "-r", "hi", "-e", "9876543210", "serialized")
    record = json.loads(tools.file("serialized").read_text())
    assert (record["reason"], record["expiration"]) == ("hi", 9876543210)
    assert before - 1 <= record["creation"] <= time.time() + 1
    tools.ok("haup", "serialized")


def test_deserialize_spool_file_contents_legacy(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_deserialize_spool_file_contents_legacy: a plain-text
    file (uber's format) is a downtime whose reason is the text, no expiration, no creation."""
    tools.file("legacy").write_text("this is a reason")
    assert tools.run("hastatus", "legacy").stdout == "DOWN\tinf\tlegacy\tthis is a reason\n"
    assert http_request(module_daemon.port, "/spool/legacy/1/status")[:2] == (
        503, "Service legacy in down state: this is a reason")
    tools.ok("haup", "legacy")


def test_deserialize_spool_file_contents_new(tools):
    """Yelp/hacheck/tests/test_spool.py::test_deserialize_spool_file_contents_new."""
    tools.file("new").write_text('{"reason": "hi", "expiration": 9876543210, "creation": 12344}')
    record = json.loads(tools.run("hastatus", "--json", "new").stdout)
    assert (record["reason"], record["expiration"], record["creation"]) == ("hi", 9876543210, 12344)
    tools.ok("haup", "new")


def test_status_creation(tools):
    """Yelp/hacheck/tests/test_spool.py::test_status_creation: the creation is when it went down."""
    before = time.time()
    tools.ok("hadown", "created")
    record = json.loads(tools.run("hastatus", "--json", "created").stdout)
    assert before - 1 <= record["creation"] <= time.time() + 1
    tools.ok("haup", "created")


def test_status_expiration(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_status_expiration, the answers: a future expiration
    is down; a past one is up again for hastatus and the daemon."""
    svc = "test_status_expiration"
    tools.ok("hadown", "-e", str(time.time() + 600), svc)
    assert not status(tools, svc) and not is_up(module_daemon, svc)
    tools.ok("hadown", "-e", str(time.time() - 10), svc)
    assert tools.file(svc).exists()
    assert status(tools, svc) and is_up(module_daemon, svc)
    tools.ok("haup", svc)


@deliberate("an-expired-downtime-file-stays-in-the-spool")
def test_status_expiration_removes_the_file(tools):
    """Yelp/hacheck/tests/test_spool.py::test_status_expiration, the last line: reading an
    expired downtime deleted its file."""
    svc = "test_status_expiration_file"
    tools.ok("hadown", "-e", str(time.time() - 10), svc)
    assert status(tools, svc)
    try:
        assert not tools.file(svc).exists()
    finally:
        tools.run("haup", svc)


def _down(tools, reason, expiration):
    tools.ok("hadown", "-r", reason, "-e", str(expiration), "all")
    return json.loads(tools.file("all").read_text())


def test_repeated_downs_leaves_original_creation_time(tmp_path):
    """Yelp/hacheck/tests/test_spool.py::test_repeated_downs_leaves_original_creation_time."""
    tools = Tools(str(tmp_path / "spool"))
    first = _down(tools, "maintenance", time.time() + 60)
    time.sleep(0.05)
    second = _down(tools, "maintenance", time.time() + 120)
    assert second["creation"] == first["creation"]
    assert second["expiration"] > first["expiration"]


def test_repeated_downs_with_different_reason_changes_creation_time(tmp_path):
    """Yelp/hacheck/tests/test_spool.py::test_repeated_downs_with_different_reason_changes_creation_time."""
    tools = Tools(str(tmp_path / "spool"))
    first = _down(tools, "first reason", time.time() + 60)
    time.sleep(0.05)
    second = _down(tools, "second reason", time.time() + 120)
    assert second["creation"] > first["creation"]
    assert second["expiration"] > first["expiration"]


def test_repeated_downs_with_creation_arg_changes_creation_time(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_repeated_downs_with_creation_arg_changes_creation_time:
    the creation given (``POST /spool``'s ``creation``) replaces the first one."""
    expiration = time.time() + 600
    for creation in (1000, 1010):
        body = f"status=down&reason=same&expiration={expiration}&creation={creation}"
        assert http_request(module_daemon.port, "/spool/created_arg/0/status", method="POST",
                            headers=FORM, body=body)[0] == 200
    record = json.loads(tools.file("created_arg").read_text())
    assert (record["creation"], record["expiration"]) == (1010, expiration)
    tools.ok("haup", "created_arg")


def test_unreadable_spool_directory_is_no_downtime(hacheck_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_basic and uber/hacheck/tests/test_spool.py::test_basic
    rest on the originals' spool reading an entry it cannot open (IOError) as up: a spool
    directory that cannot be read is answered as no downtime (200)."""
    daemon = hacheck_daemon()
    assert http_request(daemon.port, "/spool/web/1/status")[0] == 200
    os.rename(daemon.spool_root, daemon.spool_root + ".moved")
    with open(daemon.spool_root, "w"):  # a file where the directory was: no one can list it
        pass
    assert http_request(daemon.port, "/spool/web/1/status")[0] == 200


def test_port_downtime_reaches_a_check_naming_a_host(tools, module_daemon):
    """Yelp/hacheck/tests/test_spool.py::test_basic's per-host lookups, as nerve runs them: nerve-tools
    writes ``hadown -P <port> <svc>`` while nerve's checks carry X-Nerve-Check-IP. The originals
    looked up only ``svc:<host>:<port>`` then, so the downtime never reached the check; this
    hacheck looks up the host and port, then the port, then the service, then ``all``."""
    svc = "test_port_with_host"
    tools.ok("hadown", "-P", "1234", svc)
    try:
        assert not is_up(module_daemon, svc, 1234, "10.93.10.1")
    finally:
        tools.ok("haup", "-P", "1234", svc)
