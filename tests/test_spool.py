"""The spool library: file names, reading (JSON and legacy), expiry, renewal, atomic writes."""

import json
import os
import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacheck import spool as spool_module
from hacheck.spool import (
    Downtime,
    InvalidServiceName,
    Spool,
    SpoolEntry,
    SpoolError,
    parse_downtime,
    parse_filename,
    spool_filename,
)

NOW = 1_700_000_000.0


@pytest.fixture
def spool(spool_root):
    return Spool(spool_root)


def write_raw(spool, name, content: bytes):
    with open(os.path.join(spool.root, name), "wb") as spool_file:
        spool_file.write(content)


def read_json(spool, name):
    with open(os.path.join(spool.root, name)) as spool_file:
        return json.load(spool_file)


# ---------------------------------------------------------------- file names

@pytest.mark.parametrize("args, name", [
    (("web",), "web"),
    (("all",), "all"),
    (("web", 80), "web:80"),
    (("web", 80, "127.0.0.1"), "web:80"),
    (("web", 80, ""), "web:80"),
    (("web", 80, "10.1.2.3"), "web:10.1.2.3:80"),
    (("web", 0), "web:0"),
    (("web", 65535, "::1"), "web:::1:65535"),
])
def test_spool_filename(args, name):
    assert spool_filename(*args) == name


@pytest.mark.parametrize("name, parsed", [
    ("web", ("web", None, None)),
    ("all", ("all", None, None)),
    ("web:80", ("web", None, 80)),
    ("web:10.1.2.3:80", ("web", "10.1.2.3", 80)),
    ("web:::1:8080", ("web", "::1", 8080)),
    # Not a port: a legacy file with an odd name is still one downtime.
    ("web:http", ("web:http", None, None)),
    ("web:99999", ("web:99999", None, None)),
    ("web:080", ("web:080", None, None)),
    ("web:\u00b2", ("web:\u00b2", None, None)),
    ("web:\u0661\u0662", ("web:\u0661\u0662", None, None)),
    ("web:", ("web:", None, None)),
])
def test_parse_filename(name, parsed):
    assert parse_filename(name) == parsed


@pytest.mark.parametrize("service", ["", ".", "..", "/", "a/b", "../etc", "a\0b", ".#hacheck-tmp.x"])
def test_bad_service_names_are_refused(spool, service):
    with pytest.raises(InvalidServiceName):
        spool_filename(service)
    with pytest.raises(InvalidServiceName):
        spool.down(service, reason="x")
    with pytest.raises(InvalidServiceName):
        spool.up(service)
    with pytest.raises(InvalidServiceName):
        spool.find_downtime(service)
    assert os.listdir(spool.root) == []


@pytest.mark.parametrize("args", [("web", None, "10.0.0.1"), ("web", 65536), ("web", -1), ("web", 80, "a/b"),
                                  ("web", True)])
def test_bad_ports_and_hosts_are_refused(args):
    with pytest.raises(ValueError):
        spool_filename(*args)


# ---------------------------------------------------------------- reading

def test_json_file_is_read(spool):
    write_raw(spool, "web", b'{"reason": "deploy", "expiration": 2000000000, "creation": 1600000000.5}')
    assert spool.read("web") == Downtime(reason="deploy", expiration=2000000000.0, creation=1600000000.5)


@pytest.mark.parametrize("content, reason", [
    (b"maintenance by alice", "maintenance by alice"),
    (b"maintenance by alice\n", "maintenance by alice"),
    (b"", ""),
    (b"\xff\xfe\x00binary\x80", "\ufffd\ufffd\x00binary\ufffd"),
    (b"{not json", "{not json"),
    (b"[1, 2]", "[1, 2]"),
    (b'"a json string"', '"a json string"'),
    (b"42", "42"),
    (b"null", "null"),
])
def test_legacy_and_odd_files_are_a_reason(spool, content, reason):
    write_raw(spool, "web", content)
    downtime = spool.read("web")
    assert downtime == Downtime(reason=reason, expiration=None, creation=None)
    assert spool.find_downtime("web") == ("web", downtime)


@pytest.mark.parametrize("record, expected", [
    ({"reason": 5, "expiration": "soon", "creation": [1]}, Downtime("5", None, None)),
    ({"reason": None, "expiration": True, "creation": False}, Downtime("", None, None)),
    ({"reason": ["a"], "expiration": {}, "creation": "1"}, Downtime('["a"]', None, None)),
    ({}, Downtime("", None, None)),
    ({"reason": "x", "expiration": 10 ** 400}, Downtime("x", None, None)),
    ({"reason": "x", "extra": 1, "creation": 5}, Downtime("x", None, 5.0)),
])
def test_json_with_wrong_types_never_raises(spool, record, expected):
    write_raw(spool, "web", json.dumps(record).encode())
    assert spool.read("web") == expected


@pytest.mark.parametrize("content", [b'{"reason": "x", "expiration": NaN}', b'{"reason": "x", "expiration": Infinity}',
                                     b"[" * 60000, b'{"reason": "x", "creation": 1' + b"0" * 5000 + b"}"])
def test_hostile_json_is_a_reason_or_ignored_field(spool, content):
    write_raw(spool, "web", content)
    downtime = spool.read("web")
    assert downtime.expiration is None
    assert spool.find_downtime("web") is not None


def test_directory_in_spool_is_down_not_a_crash(spool):
    os.mkdir(os.path.join(spool.root, "web"))
    found = spool.find_downtime("web")
    assert found is not None and "unreadable" in found[1].reason


def test_missing_file_is_up(spool):
    assert spool.read("web") is None
    assert spool.find_downtime("web", 80, "10.0.0.1") is None


# ---------------------------------------------------------------- writing, expiry, renewal

def test_down_writes_json(spool):
    downtime = spool.down("web", reason="deploy", expiration=NOW + 60, now=NOW)
    assert downtime == Downtime("deploy", NOW + 60, NOW)
    assert read_json(spool, "web") == {"reason": "deploy", "expiration": NOW + 60, "creation": NOW}


def test_expired_downtime_is_up_but_file_stays(spool):
    spool.down("web", reason="deploy", expiration=NOW + 60, now=NOW)
    assert spool.find_downtime("web", now=NOW + 59)[0] == "web"
    assert spool.find_downtime("web", now=NOW + 60) is None
    assert spool.active("web", now=NOW + 61) is None
    assert spool.entries(now=NOW + 61) == []
    assert [entry.service for entry in spool.entries(now=NOW + 61, include_expired=True)] == ["web"]
    assert os.path.exists(os.path.join(spool.root, "web"))


def test_renewal_with_same_reason_keeps_creation(spool):
    spool.down("web", reason="deploy", expiration=NOW + 60, now=NOW)
    renewed = spool.down("web", reason="deploy", expiration=NOW + 600, now=NOW + 30)
    assert renewed == Downtime("deploy", NOW + 600, NOW)
    assert read_json(spool, "web")["creation"] == NOW


def test_new_reason_starts_a_new_creation(spool):
    spool.down("web", reason="deploy", now=NOW)
    assert spool.down("web", reason="disk failure", now=NOW + 30).creation == NOW + 30


def test_same_reason_after_expiry_starts_a_new_creation(spool):
    spool.down("web", reason="deploy", expiration=NOW + 10, now=NOW)
    assert spool.down("web", reason="deploy", now=NOW + 20).creation == NOW + 20


def test_renewal_of_legacy_file_gets_a_creation(spool):
    write_raw(spool, "web", b"deploy")
    assert spool.down("web", reason="deploy", now=NOW).creation == NOW


def test_explicit_creation_is_kept(spool):
    assert spool.down("web", reason="x", creation=123.0, now=NOW).creation == 123.0


def test_up_removes_and_reports(spool):
    spool.down("web", reason="x")
    assert spool.up("web") is True
    assert spool.up("web") is False
    assert os.listdir(spool.root) == []


# ---------------------------------------------------------------- all, per port, per host

def test_all_takes_everything_down(spool):
    spool.down("all", reason="rack move", now=NOW)
    assert spool.find_downtime("web", now=NOW)[0] == "all"
    assert spool.find_downtime("db", 3306, "10.0.0.5", now=NOW)[0] == "all"


def test_service_down_means_every_port(spool):
    spool.down("web", reason="x", now=NOW)
    assert spool.find_downtime("web", 80, now=NOW)[0] == "web"
    assert spool.find_downtime("web", 8080, "10.0.0.1", now=NOW)[0] == "web"
    assert spool.find_downtime("webx", 80, now=NOW) is None


def test_per_port_downtime(spool):
    spool.down("web", reason="x", port=80, now=NOW)
    assert os.listdir(spool.root) == ["web:80"]
    assert spool.find_downtime("web", 80, now=NOW) is not None
    assert spool.find_downtime("web", 80, "127.0.0.1", now=NOW) is not None
    assert spool.find_downtime("web", 81, now=NOW) is None
    assert spool.find_downtime("web", now=NOW) is None
    # A check that names a host (nerve's X-Nerve-Check-IP) on that port is down too: nerve-tools'
    # updown writes `hadown -P <port> <service>` without a host.
    assert spool.find_downtime("web", 80, "10.0.0.1", now=NOW) == ("web", spool.read("web", 80))
    assert spool.find_downtime("web", 81, "10.0.0.1", now=NOW) is None
    assert spool.up("web", port=80) is True


def test_per_host_downtime(spool):
    spool.down("web", reason="x", port=80, host="10.0.0.1", now=NOW)
    assert os.listdir(spool.root) == ["web:10.0.0.1:80"]
    assert spool.find_downtime("web", 80, "10.0.0.1", now=NOW) is not None
    assert spool.find_downtime("web", 80, now=NOW) is None
    assert spool.find_downtime("web", 80, "10.0.0.2", now=NOW) is None
    assert spool.up("web", port=80, host="10.0.0.1") is True


def test_lookup_order_all_service_port_host(spool):
    """The broadest downtime is named, as the originals named it; a cut still wins over a drain."""
    for name, port, host in [("web", 80, "10.0.0.1"), ("web", 80, None), ("web", None, None), ("all", None, None)]:
        spool.down(name, reason=spool_filename(name, port, host), port=port, host=host, now=NOW)
        assert spool.find_downtime("web", 80, "10.0.0.1", now=NOW)[1].reason == spool_filename(name, port, host)
    spool.down("all", reason="all", state="drain", now=NOW)
    assert spool.find_downtime("web", 80, "10.0.0.1", now=NOW)[1].reason == "web"


def test_unreadable_reason(tmp_path, spool):
    assert spool.unreadable_reason() is None
    assert Spool(str(tmp_path / "missing")).unreadable_reason() is None
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert Spool(str(blocker)).unreadable_reason() == f"cannot read spool directory {blocker}: Not a directory"


def _put_down_on_the_port(spool, round_number):
    spool.down("web", port=80, reason=f"round {round_number}")
    assert spool.find_downtime("web", port=80)[1].reason == f"round {round_number}"
    spool.up("web", port=80)


def _write_a_legacy_all(spool, round_number):
    write_raw(spool, "all", b"legacy writer")
    assert spool.find_downtime("web", port=80)[0] == "all"
    os.unlink(os.path.join(spool.root, "all"))


def _take_the_service_up(spool, round_number):
    before = spool.find_downtime("web", port=80)[1]
    spool.up("web")
    assert spool.find_downtime("web", port=80) is None
    spool.down("web", reason=before.reason, creation=before.creation)


def _rename_a_file_in(spool, round_number):
    write_raw(spool, ".elsewhere", b"moved in")
    time.sleep(0.1)
    assert spool.find_downtime("web", port=80) is None
    os.rename(os.path.join(spool.root, ".elsewhere"), os.path.join(spool.root, "web:80"))
    assert spool.find_downtime("web", port=80)[1].reason == "moved in"
    os.unlink(os.path.join(spool.root, "web:80"))


def _put_a_directory_in_the_way(spool, round_number):
    os.mkdir(os.path.join(spool.root, "web"))
    assert "directory" in spool.find_downtime("web", port=80)[1].reason
    os.rmdir(os.path.join(spool.root, "web"))


@pytest.mark.parametrize("change, down_before", [
    (_put_down_on_the_port, False),
    (_write_a_legacy_all, False),
    (_take_the_service_up, True),
    (_rename_a_file_in, False),
    (_put_a_directory_in_the_way, False),
])
def test_a_change_counts_at_once_after_a_quiet_spell(spool, monkeypatch, change, down_before):
    """The daemon reuses a listing of a settled spool; any change to it must still count at the next look.

    Each change asserts it was seen at once, then puts the spool back as it was.
    """
    monkeypatch.setattr(spool_module, "LISTING_SETTLE_SECONDS", 0.05)
    if down_before:
        spool.down("web", reason="before")
    for round_number in range(3):
        time.sleep(0.1)  # settled: the listing read next is reused
        before = spool.find_downtime("web", port=80)
        assert (before is not None) == down_before
        assert spool.find_downtime("web", port=80) == before
        change(spool, round_number)
        assert spool.find_downtime("web", port=80) == before


def test_entries_list_everything_back(spool):
    spool.down("web", reason="a", now=NOW)
    spool.down("web", reason="b", port=80, now=NOW)
    spool.down("web", reason="c", port=80, host="10.0.0.1", now=NOW)
    spool.down("all", reason="d", expiration=NOW + 5, now=NOW)
    write_raw(spool, "legacy", b"old tool")
    entries = spool.entries(now=NOW)
    assert entries == [
        SpoolEntry("all", None, None, Downtime("d", NOW + 5, NOW)),
        SpoolEntry("legacy", None, None, Downtime("old tool")),
        SpoolEntry("web", None, None, Downtime("a", None, NOW)),
        SpoolEntry("web", "10.0.0.1", 80, Downtime("c", None, NOW)),
        SpoolEntry("web", None, 80, Downtime("b", None, NOW)),
    ]
    assert [entry.filename for entry in entries] == ["all", "legacy", "web", "web:10.0.0.1:80", "web:80"]


def test_entries_of_missing_root_is_empty(tmp_path):
    assert Spool(str(tmp_path / "nothing")).entries() == []


# ---------------------------------------------------------------- root and atomic writes

def test_ensure_root_creates_with_mode(tmp_path):
    root = tmp_path / "a" / "spool"
    Spool(str(root)).ensure_root()
    assert root.is_dir()
    assert (root.stat().st_mode & 0o777) == 0o750 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_root_under_a_regular_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = Spool(str(blocker / "spool"))
    with pytest.raises(SpoolError, match=re.escape(str(blocker / "spool"))):
        spool.ensure_root()
    with pytest.raises(SpoolError, match=re.escape(str(blocker / "spool"))):
        spool.check_root()
    with pytest.raises(SpoolError, match=re.escape(str(blocker / "spool"))):
        spool.down("web", reason="x")
    file_spool = Spool(str(blocker))
    with pytest.raises(SpoolError, match="not a directory"):
        file_spool.ensure_root()


def test_check_root(tmp_path, spool):
    assert spool.check_root() is True
    assert Spool(str(tmp_path / "missing")).check_root() is False


def test_writes_leave_no_temporary_files(spool):
    for number in range(20):
        spool.down("web", reason=f"r{number}", port=80)
    assert os.listdir(spool.root) == ["web:80"]


def test_write_over_a_directory_fails_cleanly(spool):
    os.mkdir(os.path.join(spool.root, "web"))
    with pytest.raises(SpoolError, match="web"):
        spool.down("web", reason="x")
    assert os.listdir(spool.root) == ["web"]


def test_concurrent_writers_and_readers_never_see_half_a_file(spool):
    """Threads rewrite one file with long reasons while others read it: every read is whole JSON."""
    reasons = [chr(ord("a") + number) * 20000 for number in range(4)]
    errors = []
    stop = threading.Event()

    def writer(reason):
        for _ in range(40):
            spool.down("web", reason=reason)

    def reader():
        while not stop.is_set():
            downtime = spool.read("web")
            if downtime is not None and downtime.reason not in reasons:
                errors.append(downtime.reason[:50])

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(reason,)) for reason in reasons]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert os.listdir(spool.root) == ["web"]
    assert read_json(spool, "web")["reason"] in reasons


# ---------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                          st.sampled_from(["reason", "expiration", "creation", "x"]), inner, max_size=4),
                      max_leaves=10).map(lambda value: json.dumps(value).encode()))
def test_parse_downtime_never_raises(content):
    downtime = parse_downtime(content)
    assert isinstance(downtime.reason, str)
    for moment in (downtime.expiration, downtime.creation):
        assert moment is None or isinstance(moment, float)
    downtime.is_expired(NOW)
    json.loads(downtime.to_json())


SERVICE_NAMES = st.from_regex(r"[.a-zA-Z0-9_-]+", fullmatch=True).filter(lambda name: name not in (".", ".."))
HOSTS = st.none() | st.sampled_from(["127.0.0.1", "", "::1", "fe80::1:2"]) | st.from_regex(
    r"[a-z0-9.:-]{1,20}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(SERVICE_NAMES, st.none() | st.integers(0, 65535), HOSTS)
def test_filename_round_trip(service, port, host):
    if port is None:
        host = None
    name = spool_filename(service, port, host)
    expected_host = None if host in (None, "", "127.0.0.1") else host
    assert parse_filename(name) == (service, expected_host, port)
    assert "/" not in name and name not in ("", ".", "..")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_filename_never_raises(name):
    service, host, port = parse_filename(name)
    assert isinstance(service, str)
    assert port is None or 0 <= port <= 65535


def test_counted_entries_follow_the_spool_without_rereading_unchanged_files(spool):
    """What /metrics counts: new and removed downtimes at once, expired ones left out as time passes."""
    now = time.time()
    spool.down("web", reason="deploy", expiration=now + 60)
    spool.down("db", reason="disk")
    old = now - 10
    os.utime(spool.root, (old, old))  # the directory's stamp old enough to be trusted
    counted = sorted(entry.service for entry in spool.entries_for_count(now=now))
    assert counted == ["db", "web"]
    assert sorted(entry.service for entry in spool.entries_for_count(now=now + 61)) == ["db"]
    spool.up("db")
    assert [entry.service for entry in spool.entries_for_count(now=now)] == ["web"]
