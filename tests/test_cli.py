"""The operator tools, run as real subprocesses against a temporary spool root."""

import asyncio
import json
import os
import re
import subprocess
import time

import pytest
import tornado.web

from tests.conftest import tool_argv, tool_env, unused_port

TOOLS = ("haup", "hadown", "hastatus", "hashowdowned", "halist", "haupdown")
NOT_HUMAN = "please use --reason option to tell us who you REALLY are"
DOWN_LINE = re.compile(r"DOWN\t(inf|[0-9]+\.[0-9]{6})\t([^\t]*)\t(.*)")


class Tools:
    """Runs the checkout's tools with a clean environment and this test's spool root."""

    def __init__(self, spool_root, nonhumans_file):
        self.root = spool_root
        self.nonhumans_file = nonhumans_file

    def env(self, **extra):
        env = tool_env(HACHECK_NONHUMANS_FILE=self.nonhumans_file)
        for name in ("SUDO_USER", "SSH_USER", "http_proxy", "HTTP_PROXY"):
            env.pop(name, None)
        env.update(extra)
        return env

    def argv(self, tool, args, spool=True):
        return tool_argv(tool) + (["--spool-root", self.root] if spool else []) + list(args)

    def run(self, tool, *args, env=None, spool=True):
        return subprocess.run(self.argv(tool, args, spool), env=self.env(**(env or {})),
                              capture_output=True, text=True, timeout=60)

    def run_parallel(self, commands):
        """Start every (tool, args) at once; return the finished processes' results in order."""
        processes = [subprocess.Popen(self.argv(tool, args), env=self.env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for tool, args in commands]
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        return results

    def files(self):
        return sorted(os.listdir(self.root))

    def record(self, name):
        with open(os.path.join(self.root, name)) as spool_file:
            return json.load(spool_file)

    def write(self, name, content: bytes):
        with open(os.path.join(self.root, name), "wb") as spool_file:
            spool_file.write(content)


@pytest.fixture
def tools(spool_root, tmp_path):
    nonhumans = tmp_path / "nonhumans"
    nonhumans.write_text("")
    return Tools(spool_root, str(nonhumans))


def assert_ok(result, stdout=""):
    assert (result.returncode, result.stderr) == (0, ""), result
    if stdout is not None:
        assert result.stdout == stdout


def assert_one_error_line(result, code, *fragments):
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def down_fields(line):
    match = DOWN_LINE.fullmatch(line)
    assert match, line
    return match.groups()


# ---------------------------------------------------------------- help and usage

@pytest.mark.parametrize("tool", TOOLS)
def test_help_explains_every_flag(tools, tool):
    result = tools.run(tool, "--help", spool=False)
    assert_ok(result, stdout=None)
    for flag in ("--spool-root DIR", "-r TEXT, --reason TEXT", "-e WHEN, --expiration WHEN",
                 "-P PORT, --service-port PORT", "-H HOST, --service-host HOST", "-p PORT, --port PORT",
                 "--json", "exit codes", "90s", "SUDO_USER"):
        assert flag in result.stdout
    assert ("-a {up,down,status,status_downed,list}" in result.stdout) == (tool == "haupdown")


@pytest.mark.parametrize("tool, args", [
    ("hadown", []),
    ("haup", []),
    ("hastatus", []),
    ("haupdown", ["-a", "down"]),
    ("hashowdowned", ["web"]),
    ("halist", ["web"]),
    ("haupdown", ["web"]),  # default action is list, which takes no names
    ("haupdown", ["-a", "restart", "web"]),
    ("hadown", ["--json", "web"]),
    ("haup", ["--json", "web"]),
    ("hadown", ["--effective", "web"]),
    ("hashowdowned", ["--effective"]),
    ("hadown", ["-H", "10.0.0.1", "web"]),
    ("hastatus", ["-H", "10.0.0.1", "web"]),
    ("hadown", ["-P", "http", "web"]),
    ("hadown", ["-P", "0", "web"]),
    ("hadown", ["-P", "65536", "web"]),
    ("halist", ["-p", "x"]),
    ("hadown", ["-e", "soon", "web"]),
    ("hadown", ["-e", "3600", "web"]),  # a unix time in 1970: almost surely meant 3600s
    ("hadown", ["-e", "0s", "web"]),
    ("hadown", ["-e", "nan", "web"]),
    ("hadown", ["-e", "2w", "web"]),
    ("hadown", ["-P", "80", "all"]),
    ("hadown", ["--bogus", "web"]),
])
def test_usage_errors_exit_2_and_change_nothing(tools, tool, args):
    result = tools.run(tool, *args)
    assert result.returncode == 2, result
    assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert tools.files() == []


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../escape", "/", pytest.param("x" * 300, id="too-long")])
def test_refused_service_names_are_one_line_exit_2(tools, name):
    for tool in ("hadown", "haup", "hastatus"):
        result = tools.run(tool, "-r", "x", "good", name)
        assert_one_error_line(result, 2, "invalid service name")
    assert tools.files() == []
    assert not os.path.exists(os.path.join(os.path.dirname(tools.root), "escape"))


@pytest.mark.parametrize("args, fragment", [
    (["web app"], "invalid service name 'web app': use only letters, digits, '.', '_' and '-'"),
    (["Web+1"], "invalid service name 'Web+1': use only letters, digits, '.', '_' and '-'"),
    (["-P", "8080", "-H", "not_a_host!", "web"], "invalid host 'not_a_host!': use an IPv4 or IPv6 address"),
    (["-P", "8_0", "web"], "invalid port '8_0': ports go from 1 to 65535, in decimal"),
    (["-P", "\uff18\uff10", "web"], "ports go from 1 to 65535, in decimal"),  # full-width digits
])
def test_down_refuses_what_no_check_url_or_agent_request_can_name(tools, args, fragment):
    result = tools.run("hadown", "-r", "x", *args)
    assert_one_error_line(result, 2, fragment)
    assert tools.files() == []


def test_older_spool_files_with_other_names_still_list_show_and_go(tools):
    tools.write("web app", b'{"reason": "old", "expiration": null, "creation": 1.0}')
    result = tools.run("hashowdowned")
    assert_ok(result, "DOWN\tinf\tweb app\told\n")
    result = tools.run("hastatus", "web app")
    assert (result.returncode, result.stdout) == (1, "DOWN\tinf\tweb app\told\n")
    assert_ok(tools.run("haup", "web app"))
    assert tools.files() == []


# ---------------------------------------------------------------- down, status, up

def test_down_status_up_round_trip(tools):
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")
    assert_ok(tools.run("hadown", "-r", "deploy 42", "web"))
    assert tools.files() == ["web"]
    record = tools.record("web")
    assert record["reason"] == "deploy 42" and record["expiration"] is None
    assert abs(record["creation"] - time.time()) < 60

    result = tools.run("hastatus", "web", "db")
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == "DOWN\tinf\tweb\tdeploy 42\nUP\tdb\n"

    assert_ok(tools.run("haup", "web"))
    assert tools.files() == []
    assert_ok(tools.run("hastatus", "web", "db"), "UP\tweb\nUP\tdb\n")


def test_haup_of_a_service_not_down_is_silent(tools):
    assert_ok(tools.run("haup", "web"))
    assert_ok(tools.run("haup", "-P", "80", "-H", "10.0.0.1", "web"))
    os.rmdir(tools.root)
    assert_ok(tools.run("haup", "web"))


def test_several_services_at_once(tools):
    assert_ok(tools.run("hadown", "-r", "x", "a", "b", "c"))
    assert tools.files() == ["a", "b", "c"]
    assert tools.run("hastatus", "a", "z", "c").stdout == "DOWN\tinf\ta\tx\nUP\tz\nDOWN\tinf\tc\tx\n"
    assert_ok(tools.run("haup", "a", "c"))
    assert tools.files() == ["b"]


def test_expiration_as_unix_time(tools):
    expiration = int(time.time()) + 3600
    assert_ok(tools.run("hadown", "-r", "x", "-e", str(expiration), "web"))
    assert tools.record("web")["expiration"] == expiration
    result = tools.run("hastatus", "web")
    assert result.returncode == 1
    assert result.stdout == f"DOWN\t{expiration:f}\tweb\tx\n"


@pytest.mark.parametrize("duration, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                               ("1.5h", 5400)])
def test_expiration_as_duration(tools, duration, seconds):
    before = time.time()
    assert_ok(tools.run("hadown", "-r", "x", "--expiration", duration, "web"))
    after = time.time()
    expiration = tools.record("web")["expiration"]
    assert before + seconds - 1 <= expiration <= after + seconds + 1


def test_past_unix_expiration_is_written_expired_with_a_warning(tools):
    past = int(time.time()) - 3600
    result = tools.run("hadown", "-r", "ran late", "-e", str(past), "web")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"hadown: warning: expiration {past} (")
    assert "already past" in result.stderr
    assert tools.record("web")["expiration"] == past
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")
    assert_ok(tools.run("hashowdowned"), "")


def test_expired_downtime_is_up(tools):
    tools.write("web", json.dumps({"reason": "old", "expiration": time.time() - 5, "creation": 1.0}).encode())
    tools.write("db", json.dumps({"reason": "live", "expiration": time.time() + 600, "creation": 1.0}).encode())
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")
    result = tools.run("hashowdowned")
    assert_ok(result, stdout=None)
    assert [down_fields(line)[1] for line in result.stdout.splitlines()] == ["db"]


def test_short_duration_expires(tools):
    assert_ok(tools.run("hadown", "-r", "x", "-e", "1s", "web"))
    time.sleep(1.2)
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")


def test_renewal_keeps_creation_new_reason_resets_it(tools):
    assert_ok(tools.run("hadown", "-r", "deploy", "-e", "1h", "web"))
    first = tools.record("web")
    time.sleep(0.05)
    assert_ok(tools.run("hadown", "-r", "deploy", "-e", "2h", "web"))
    renewed = tools.record("web")
    assert renewed["creation"] == first["creation"]
    assert renewed["expiration"] > first["expiration"]
    assert_ok(tools.run("hadown", "-r", "disk died", "web"))
    replaced = tools.record("web")
    assert replaced["creation"] > first["creation"] and replaced["expiration"] is None


def test_all_takes_every_service_down(tools):
    assert_ok(tools.run("hadown", "-r", "rack move", "all"))
    result = tools.run("hastatus", "--effective", "web", "db")
    assert result.returncode == 1
    assert result.stdout == "DOWN\tinf\tweb\track move\nDOWN\tinf\tdb\track move\n"
    result = tools.run("hastatus", "--effective", "-P", "80", "web")
    assert result.stdout == "DOWN\tinf\tweb::80\track move\n"
    # Without --effective, as the originals: the entry named, and a note for the broader downtime.
    result = tools.run("hastatus", "-P", "80", "web")
    assert (result.returncode, result.stdout) == (0, "UP\tweb\n")
    assert result.stderr == ("hastatus: note: web::80 has no downtime of its own, but checks of it answer "
                             "down: 'all' is down (hastatus --effective shows it)\n")
    result = tools.run("haup", "web")
    assert result.returncode == 0 and "still down because 'all' is down" in result.stderr
    assert_ok(tools.run("haup", "all"))
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")


# ---------------------------------------------------------------- per port and per host

def test_per_port_downtime(tools):
    assert_ok(tools.run("hadown", "-r", "x", "-P", "80", "web"))
    assert tools.files() == ["web:80"]
    assert_ok(tools.run("hastatus", "web"), "UP\tweb\n")
    assert_ok(tools.run("hastatus", "-P", "81", "web"), "UP\tweb\n")
    result = tools.run("hastatus", "--service-port", "80", "web")
    assert (result.returncode, result.stdout) == (1, "DOWN\tinf\tweb::80\tx\n")
    result = tools.run("hashowdowned")
    assert_ok(result, "DOWN\tinf\tweb::80\tx\n")

    result = tools.run("haup", "web")  # the whole-service up leaves the port down, and says so
    assert result.returncode == 0 and "web::80 is still down on its own (bring it up with -P 80)" in result.stderr
    assert tools.files() == ["web:80"]
    assert_ok(tools.run("haup", "-P", "80", "web"))
    assert tools.files() == []


def test_service_down_covers_every_port(tools):
    assert_ok(tools.run("hadown", "-r", "x", "web"))
    result = tools.run("hastatus", "--effective", "-P", "8080", "-H", "10.0.0.1", "web")
    assert (result.returncode, result.stdout) == (1, "DOWN\tinf\tweb:10.0.0.1:8080\tx\n")
    result = tools.run("hastatus", "-P", "8080", "-H", "10.0.0.1", "web")
    assert (result.returncode, result.stdout) == (0, "UP\tweb\n")
    assert result.stderr == ("hastatus: note: web:10.0.0.1:8080 has no downtime of its own, but checks of it "
                             "answer down: a broader downtime of web applies (hastatus --effective shows it)\n")
    result = tools.run("haup", "-P", "8080", "web")
    assert result.returncode == 0 and "bring it up without -P" in result.stderr


def test_per_host_downtime(tools):
    assert_ok(tools.run("hadown", "-r", "x", "-P", "80", "--service-host", "10.0.0.1", "web"))
    assert tools.files() == ["web:10.0.0.1:80"]
    assert_ok(tools.run("hastatus", "-P", "80", "web"), "UP\tweb\n")
    assert_ok(tools.run("hastatus", "-P", "80", "-H", "10.0.0.2", "web"), "UP\tweb\n")
    result = tools.run("hastatus", "-P", "80", "-H", "10.0.0.1", "web")
    assert (result.returncode, result.stdout) == (1, "DOWN\tinf\tweb:10.0.0.1:80\tx\n")
    assert_ok(tools.run("hashowdowned"), "DOWN\tinf\tweb:10.0.0.1:80\tx\n")
    assert_ok(tools.run("haup", "-P", "80", "web"))  # another entry: nothing removed
    assert tools.files() == ["web:10.0.0.1:80"]
    assert_ok(tools.run("haup", "-P", "80", "-H", "10.0.0.1", "web"))
    assert tools.files() == []


def test_localhost_host_is_the_plain_port_entry(tools):
    assert_ok(tools.run("hadown", "-r", "x", "-P", "80", "-H", "127.0.0.1", "web"))
    assert tools.files() == ["web:80"]


# ---------------------------------------------------------------- hashowdowned and --json

def test_hashowdowned_lists_every_downtime(tools):
    assert_ok(tools.run("hashowdowned"), "")
    expiration = int(time.time()) + 600
    assert_ok(tools.run("hadown", "-r", "a", "-e", str(expiration), "web"))
    assert_ok(tools.run("hadown", "-r", "b", "-P", "3306", "db"))
    tools.write("legacy", b"written by the old hadown\n")
    result = tools.run("hashowdowned")
    assert_ok(result, "DOWN\tinf\tdb::3306\tb\n"
                      "DOWN\tinf\tlegacy\twritten by the old hadown\n"
                      f"DOWN\t{expiration:f}\tweb\ta\n")
    assert_ok(tools.run("haupdown", "-a", "status_downed"), result.stdout)


def test_json_output(tools):
    expiration = int(time.time()) + 600
    assert_ok(tools.run("hadown", "-r", "a", "-e", str(expiration), "web"))
    assert_ok(tools.run("hadown", "-r", "b", "-P", "80", "-H", "10.0.0.1", "api"))
    tools.write("legacy", b"old")
    creation = tools.record("web")["creation"]

    result = tools.run("hashowdowned", "--json")
    assert_ok(result, stdout=None)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["service"], r["host"], r["port"], r["reason"], r["expiration"]) for r in records] == [
        ("api", "10.0.0.1", 80, "b", None), ("legacy", None, None, "old", None), ("web", None, None, "a", expiration)]
    assert records[1]["creation"] is None and records[2]["creation"] == creation
    assert {r["status"] for r in records} == {"DOWN"}

    result = tools.run("hastatus", "--json", "web", "db")
    assert result.returncode == 1
    web, db = [json.loads(line) for line in result.stdout.splitlines()]
    assert web == {"status": "DOWN", "service": "web", "host": None, "port": None, "reason": "a",
                   "creation": creation, "expiration": expiration, "state": "down"}
    assert db == {"status": "UP", "service": "db", "host": None, "port": None, "reason": None,
                  "creation": None, "expiration": None, "state": None}
    result = tools.run("haupdown", "-a", "status", "--json", "-P", "80", "-H", "10.0.0.1", "api")
    assert result.returncode == 1
    assert json.loads(result.stdout)["port"] == 80 and json.loads(result.stdout)["host"] == "10.0.0.1"


# ---------------------------------------------------------------- legacy and odd spool files

def test_legacy_and_odd_files(tools):
    tools.write("plain", b"maintenance by bob\n")
    tools.write("empty", b"")
    tools.write("binary", b"\xff\x00\xfe")
    tools.write("multi", b"line one\nline\ttwo")
    tools.write("wrongtypes", b'{"reason": 7, "expiration": "tomorrow", "creation": null}')
    os.mkdir(os.path.join(tools.root, "adir"))
    os.close(os.open(os.path.join(tools.root.encode(), b"undecodable\xff"), os.O_CREAT | os.O_WRONLY))
    result = tools.run("hastatus", "plain", "empty", "binary", "multi", "wrongtypes")
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "DOWN\tinf\tplain\tmaintenance by bob",
        "DOWN\tinf\tempty\t",
        "DOWN\tinf\tbinary\t\ufffd\x00\ufffd",
        "DOWN\tinf\tmulti\tline one\\nline\\ttwo",
        "DOWN\tinf\twrongtypes\t7",
    ]
    result = tools.run("hashowdowned")
    assert_ok(result, stdout=None)
    names = [down_fields(line)[1] for line in result.stdout.splitlines()]
    assert sorted(names) == sorted(["adir", "binary", "empty", "multi", "plain", "undecodable\\udcff",
                                    "wrongtypes"])
    assert_ok(tools.run("hashowdowned", "--json"), stdout=None)


# ---------------------------------------------------------------- who is downing

@pytest.mark.parametrize("extra, reason", [
    ({"SUDO_USER": "alice", "SSH_USER": "bob"}, "alice"),
    ({"SSH_USER": "bob"}, "bob"),
    ({"SUDO_USER": "", "SSH_USER": "bob"}, "bob"),
    ({}, "root"),
])
def test_default_reason(tools, extra, reason):
    if not extra:
        import pwd
        reason = pwd.getpwuid(os.geteuid()).pw_name
    assert_ok(tools.run("hadown", "web", env=extra))
    assert tools.record("web")["reason"] == reason


def test_nonhumans_must_give_a_reason(tools):
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    with open(tools.nonhumans_file, "w") as names:
        names.write(f"# service accounts\n\nnobody\n  {me}  # this machine's account\ndeploy\n")

    result = tools.run("hadown", "web")
    assert (result.returncode, result.stdout) == (1, NOT_HUMAN + "\n")
    result = tools.run("hadown", "web", env={"SUDO_USER": "deploy"})
    assert (result.returncode, result.stdout) == (1, NOT_HUMAN + "\n")
    assert tools.files() == []

    assert_ok(tools.run("hadown", "web", env={"SUDO_USER": "alice"}))
    assert_ok(tools.run("hadown", "-r", "ticket 123", "db"))
    assert tools.record("web")["reason"] == "alice" and tools.record("db")["reason"] == "ticket 123"


def test_missing_nonhumans_file_blocks_nobody(tools):
    assert_ok(tools.run("hadown", "web", env={"HACHECK_NONHUMANS_FILE": tools.root + "/none/such"}))


# ---------------------------------------------------------------- broken spool roots

def test_spool_root_that_cannot_be_used(tools, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad_root = str(blocker / "spool")
    for tool, args in [("hadown", ["-r", "x", "web"]), ("haup", ["web"]), ("hashowdowned", [])]:
        result = subprocess.run(tool_argv(tool) + ["--spool-root", bad_root] + args, env=tools.env(),
                                capture_output=True, text=True, timeout=60)
        assert_one_error_line(result, 1, bad_root)
        assert result.stdout == ""
    # hastatus: neither up (0) nor down (1); the lines say what the daemon answers then (no downtime).
    result = subprocess.run(tool_argv("hastatus") + ["--spool-root", bad_root, "web"], env=tools.env(),
                            capture_output=True, text=True, timeout=60)
    assert_one_error_line(result, 3, f"cannot read spool directory {bad_root}: Not a directory",
                          "hacheck answers every check as if nothing were down")
    assert result.stdout == "UP\tweb\n"
    result = subprocess.run(tool_argv("hadown") + ["--spool-root", str(blocker), "-r", "x", "web"],
                            env=tools.env(), capture_output=True, text=True, timeout=60)
    assert_one_error_line(result, 1, str(blocker), "not a directory")


def test_spool_root_is_created(tools, tmp_path):
    root = tmp_path / "new" / "spool"
    result = subprocess.run(tool_argv("hadown") + ["--spool-root", str(root), "-r", "x", "web"],
                            env=tools.env(), capture_output=True, text=True, timeout=60)
    assert_ok(result)
    assert os.listdir(root) == ["web"]


def test_missing_spool_root_reads_as_nothing_down(tools, tmp_path):
    missing = str(tmp_path / "missing")
    result = subprocess.run(tool_argv("hastatus") + ["--spool-root", missing, "web"], env=tools.env(),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "UP\tweb\n")
    assert missing in result.stderr
    assert not os.path.exists(missing)


# ---------------------------------------------------------------- haupdown

def test_haupdown_does_every_action(tools):
    assert_ok(tools.run("haupdown", "-a", "down", "-r", "x", "web"))
    result = tools.run("haupdown", "--action", "status", "web")
    assert (result.returncode, result.stdout) == (1, "DOWN\tinf\tweb\tx\n")
    assert_ok(tools.run("haupdown", "-a", "status_downed"), "DOWN\tinf\tweb\tx\n")
    assert_ok(tools.run("haupdown", "-a", "up", "web"))
    assert tools.files() == []


# ---------------------------------------------------------------- halist

class RecentHandler(tornado.web.RequestHandler):
    def initialize(self, answer):
        self.answer = answer

    def get(self):
        self.answer["paths"].append(self.request.uri)
        self.set_status(self.answer["status"])
        self.write(self.answer["body"])


async def run_tool_async(tools, tool, *args):
    """Run a tool without blocking the IOLoop that serves it."""
    process = await asyncio.create_subprocess_exec(
        *tools.argv(tool, args, spool=False), env=tools.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, stdout.decode(), stderr.decode()


RECENT = {
    "seen_services": [
        ["web", {"code": 200, "remote_ip": "10.0.0.9", "ts": 1700000000.5}],
        ["api", None],
        ["db", {"code": 599, "remote_ip": "127.0.0.1", "ts": 1700000001.0}],
    ],
    "threshold_seconds": 600,
}


@pytest.mark.gen_test(timeout=60)
async def test_halist_reads_recent_from_the_daemon(tools):
    answer = {"status": 200, "body": json.dumps(RECENT), "paths": []}
    port = unused_port()
    server = tornado.web.Application([(r"/recent", RecentHandler, {"answer": answer})]).listen(
        port, address="127.0.0.1")
    try:
        code, stdout, stderr = await run_tool_async(tools, "halist", "-p", str(port))
        assert (code, stderr) == (0, "")
        assert stdout.splitlines() == [
            "api last_response=null",
            'db last_response={"code": 599, "remote_ip": "127.0.0.1", "ts": 1700000001.0}',
            'web last_response={"code": 200, "remote_ip": "10.0.0.9", "ts": 1700000000.5}',
        ]
        assert answer["paths"] == ["/recent"]
        assert (await run_tool_async(tools, "haupdown", "--port", str(port)))[1] == stdout
        code, stdout, stderr = await run_tool_async(tools, "halist", "--json", "-p", str(port))
        assert (code, stderr) == (0, "")
        assert [json.loads(line) for line in stdout.splitlines()] == [
            {"service": service, "last_response": last} for service, last in sorted(RECENT["seen_services"])
        ]

        answer["body"] = json.dumps({"seen_services": [], "threshold_seconds": 600})
        assert await run_tool_async(tools, "halist", "-p", str(port)) == (0, "", "")

        # An older daemon lists plain names: each is printed alone, as the original did.
        answer["body"] = json.dumps({"seen_services": ["web", "api"], "threshold_seconds": 600})
        assert await run_tool_async(tools, "halist", "-p", str(port)) == (0, "api\nweb\n", "")
        code, stdout, stderr = await run_tool_async(tools, "halist", "--json", "-p", str(port))
        assert (code, stderr) == (0, "")
        assert [json.loads(line) for line in stdout.splitlines()] == [
            {"service": "api", "last_response": None}, {"service": "web", "last_response": None}]

        for body in ("<html>not hacheck</html>", '{"seen_services": {"ab": 1}}', '{"seen": []}', "[]",
                     '{"seen_services": [["web"]]}', '{"seen_services": [1]}'):
            answer["body"] = body
            code, stdout, stderr = await run_tool_async(tools, "halist", "-p", str(port))
            assert (code, stdout) == (1, "") and "did not answer with a /recent JSON" in stderr, body

        answer["status"], answer["body"] = 500, "boom"
        code, stdout, stderr = await run_tool_async(tools, "halist", "-p", str(port))
        assert (code, stdout) == (1, "") and "HTTP 500" in stderr and "Traceback" not in stderr
    finally:
        server.stop()


def test_halist_without_a_daemon(tools):
    port = unused_port()
    result = tools.run("halist", "-p", str(port), spool=False)
    assert_one_error_line(result, 1, f"http://127.0.0.1:{port}/recent", "is hacheck running?")
    assert result.stdout == ""


# ---------------------------------------------------------------- stress

def test_many_concurrent_downs_and_ups_leave_a_clean_spool(tools):
    services = ["web", "api", "db"]
    commands = []
    for number in range(42):
        service = services[number % 3]
        if number % 4 == 3:
            commands.append(("haup", [service]))
        elif number % 4 == 2:
            commands.append(("hadown", ["-r", f"reason {number % 2}", "-P", "80", "-e", "1h", service]))
        else:
            commands.append(("hadown", ["-r", f"reason {number % 5} " + "x" * 2000, service]))
    results = tools.run_parallel(commands)
    assert [r.returncode for r in results] == [0] * len(commands), [r.stderr for r in results]
    # haup may note a per-port downtime it left alone; nothing else may be said.
    assert [line for r in results for line in r.stderr.splitlines() if "still down on its own" not in line] == []

    names = tools.files()
    assert not [name for name in names if name.startswith(".")], names
    assert set(names) <= {f"{service}{suffix}" for service in services for suffix in ("", ":80")}
    assert {name for name in names if name.endswith(":80")} == {"web:80", "api:80", "db:80"}
    for name in names:
        record = tools.record(name)
        assert set(record) == {"reason", "expiration", "creation"}
        assert isinstance(record["reason"], str) and record["reason"].startswith("reason ")
        assert isinstance(record["creation"], float)
        assert record["expiration"] is None or isinstance(record["expiration"], float)
    result = tools.run("hashowdowned", "--json")
    assert_ok(result, stdout=None)
    assert len(result.stdout.splitlines()) == len(names)


def test_reader_leaving_early_is_not_a_traceback(tools):
    for number in range(6000):
        tools.write(f"svc{number}", b"r")
    script = '"$@" | head -n 1; exit "${PIPESTATUS[0]}"'
    result = subprocess.run(["bash", "-c", script, "bash"] + tools.argv("hashowdowned", []), env=tools.env(),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("DOWN\tinf\tsvc")
    assert result.stderr == ""
    assert result.returncode in (0, 1)
