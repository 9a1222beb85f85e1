"""The Debian package under a real systemd: Debian bookworm booted with systemd-nspawn.

One container for the whole module; the tests run in order, each on what the
one before left (install, restarts, reloads, an upgrade, purge, then a site
running the original hacheck's package with its own unit). Everything is
measured on loopback inside the container, under a bounded load: 20
connections to /spool and a cached /http check, plus HAProxy checking a backend
through hacheck every 100 ms.

Opt-in (it builds the package and boots a machine): HACHECK_SYSTEM_TEST=1.
.ci/run sets it once. Where nspawn cannot boot the tests skip with the reason,
except under CI=true, where they fail. Needs root, debootstrap, systemd-nspawn
(package systemd-container), nsenter and the package's build dependencies.

The bookworm root is made once per machine with debootstrap from the Debian
mirror apt already uses, and cached under /var/cache/hacheck-ci (keyed by the
package list); each run boots a copy.
"""

import configparser
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import pytest

# The first run on a machine makes the root with debootstrap (minutes on a slow mirror).
pytestmark = pytest.mark.timeout(1500)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OPT_IN = "HACHECK_SYSTEM_TEST"
CACHE = Path("/var/cache/hacheck-ci")
SUITE = "bookworm"
# What the booted container needs (it has no network): systemd to boot, the
# package's dependencies, HAProxy and curl.
ROOT_PACKAGES = ("systemd-sysv", "dbus", "procps", "iproute2", "adduser", "logrotate", "curl", "haproxy",
                 "python3", "python3-tornado", "python3-yaml", "python3-pymysql", "python3-redis",
                 "python3-asyncpg", "python3-prometheus-client")
DEBOOTSTRAP_TIMEOUT = 900
ROOT_MODE = 0o755  # of the container's `/`, as on any installed system
CONTAINER_LIFETIME = 1800  # `timeout` ends the container even if this process dies
BOOT_TIMEOUT = 120
COMMAND_TIMEOUT = 180
HACHECK_PORT = 3333
UPSTREAM_PORT = 8080
HAPROXY_STATS_PORT = 8404
AGENT_PORT = 3334  # the port docs/debian.md's drop-in names
LOAD_PATHS = ("/spool/web/8080/", f"/http/web/{UPSTREAM_PORT}/")
# Besides the 20 clients that open a connection per request (as HAProxy does), clients that keep
# theirs alive between requests: a restart must not lose a request sent on one either.
KEEP_ALIVE_CLIENTS = 20
RESTARTS = 5
RESTART_INTERVAL = 2.5
RELOADS = 5
SECURITY_EXPOSURE_LIMIT = 1.5
ORIGINAL_VERSION = "0.17.0-yelp1"
ORIGINAL_TOOLS = ("hacheck", "hadown", "haup", "hastatus", "hashowdowned", "halist")


def console_scripts() -> dict:
    """This tree's console scripts (setup.cfg): tool name -> ``module:function``."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


# Each tool of the stand-in's virtualenv and the function it runs: the stand-in holds this tree's
# own code (see build_original_standin), so these are this tree's entry points.
ORIGINAL_ENTRY_POINTS = {tool: console_scripts()[tool] for tool in ORIGINAL_TOOLS}
SITE_UNIT = "/etc/systemd/system/hacheck.service"
SITE_UNIT_TEXT = """\
[Unit]
Description=hacheck (the site's own unit, written for the original package)
After=network.target

[Service]
ExecStart=/usr/bin/hacheck -c /etc/hacheck.yaml -p 3333
Restart=always

[Install]
WantedBy=multi-user.target
"""
AGENT_SERVER = (f"server agent1 127.0.0.1:{UPSTREAM_PORT} check port {HACHECK_PORT} inter 300ms fall 1 rise 1 "
                f'agent-check agent-port {AGENT_PORT} agent-send "agentsvc/{UPSTREAM_PORT}\\n" agent-inter 300ms')
HAPROXY_CFG = f"""\
global
    stats socket /run/haproxy/admin.sock mode 660 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    # Without it a check times out after `inter` (100 ms): a restart's pause
    # (connections wait in the socket's backlog) would fail checks that succeed.
    timeout check 5s

listen stats
    bind 127.0.0.1:{HAPROXY_STATS_PORT}
    stats enable
    stats uri /stats

frontend web
    bind 127.0.0.1:8000
    default_backend web

backend web
    option httpchk GET /http/web/{UPSTREAM_PORT}/
    server web1 127.0.0.1:{UPSTREAM_PORT} check port {HACHECK_PORT} inter 100ms fall 1 rise 1

# What an agent-check site configures (docs/haproxy.md); its agent port opens with the drop-in.
backend agent
    option httpchk GET /http/agentsvc/{UPSTREAM_PORT}/
    {AGENT_SERVER}
"""


def unavailable(reason: str):
    """Skip with the reason; under CI=true that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the systemd test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def run_host(argv: List[str], timeout: float = COMMAND_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def debian_mirror() -> Optional[str]:
    """The URI of apt's own source for Debian bookworm on this machine (sources.list or deb822)."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                fields = [f for f in line.split("#", 1)[0].split() if not f.startswith("[")]
                if len(fields) >= 3 and fields[0] == "deb" and fields[2] == SUITE:
                    return fields[1]
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            keys = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith((" ", "#")):
                    key, _, value = line.partition(":")
                    keys[key.strip().lower()] = value.split()
            if "deb" in keys.get("types", []) and SUITE in keys.get("suites", []) and keys.get("uris"):
                return keys["uris"][0]
    return None


def cached_root() -> Path:
    """The debootstrapped bookworm root for these packages, made on first use (an old one's mode mended)."""
    key = hashlib.sha256(" ".join((SUITE, *sorted(ROOT_PACKAGES))).encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if (root / "sbin" / "init").exists():
        mend_root_mode(root)
        return root
    mirror = debian_mirror()
    if mirror is None:
        unavailable(f"no Debian {SUITE} source in /etc/apt to debootstrap from")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=CACHE))
    # mkdtemp makes it 0700, and it becomes the container's `/`: dbus-daemon (user
    # messagebus) could not read its configuration, and the boot would never finish.
    partial.chmod(ROOT_MODE)
    result = run_host(["debootstrap", "--variant=minbase", "--include=" + ",".join(ROOT_PACKAGES),
                       SUITE, str(partial), mirror], timeout=DEBOOTSTRAP_TIMEOUT)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        unavailable(f"debootstrap from {mirror} failed: {(result.stdout + result.stderr)[-800:]}")
    # Apt inside has no network anyway; and a clean root boots faster.
    shutil.rmtree(partial / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    partial.rename(root)
    return root


def mend_root_mode(root: Path) -> None:
    """Make ``root`` (a container's `/`) mode 0755; roots cached by older versions of this test are 0700."""
    mode = root.stat().st_mode & 0o7777
    if mode != ROOT_MODE:
        # A warning, so that the run's summary shows it.
        warnings.warn(f"{root}: mode {mode:04o}, mended to {ROOT_MODE:04o} (the container's / must be "
                      "readable by all; roots cached before this check were made 0700)", stacklevel=2)
        root.chmod(ROOT_MODE)


def build_packages(out: Path) -> Dict[str, Path]:
    """This tree's package, a newer build of it (version bumped by repacking), and the original's stand-in."""
    result = run_host(["bash", str(REPO / ".ci" / "build-deb.sh"), str(out)], timeout=600)
    if result.returncode != 0:
        unavailable(f"cannot build the package: {result.stderr[-800:]}")
    deb = Path(result.stdout.strip().splitlines()[-1])
    version = run_host(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    tree = out / "newer"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {version}\n", f"Version: {version}+ci1\n"))
    newer = out / f"hacheck_{version}+ci1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer)], check=True,
                   capture_output=True)
    return {"current": deb, "newer": newer, "original": build_original_standin(out),
            "version": version}


def build_original_standin(out: Path) -> Path:
    """A package laid out like the original's: name hacheck, 0.17.0-yelp1, amd64, built by dh-virtualenv.

    Its virtualenv holds this tree's own code (the old install's), its tools are
    symlinks from /usr/bin into it, and it has no unit and no maintainer scripts.
    """
    tree = out / "original"
    venv = tree / "usr" / "share" / "python" / "hacheck"
    site = venv / "lib" / "python3.11" / "site-packages"
    shutil.copytree(REPO / "hacheck", site / "hacheck", ignore=shutil.ignore_patterns("__pycache__"))
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (tree / "usr" / "bin").mkdir(parents=True)
    for tool in ORIGINAL_TOOLS:
        module, function = ORIGINAL_ENTRY_POINTS[tool].split(":")
        script = venv / "bin" / tool
        script.write_text(f"#!/usr/share/python/hacheck/bin/python\nimport sys\n"
                          f"sys.path.insert(0, {str(site).replace(str(tree), '')!r})\n"
                          f"from {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)
        (tree / "usr" / "bin" / tool).symlink_to(f"/usr/share/python/hacheck/bin/{tool}")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: hacheck\nVersion: {ORIGINAL_VERSION}\nArchitecture: amd64\n"
        "Maintainer: stand-in <ci@hacheck.invalid>\nDepends: python3, python3-tornado, python3-yaml\n"
        "Description: stand-in of the original hacheck package (dh-virtualenv layout)\n")
    deb = out / f"hacheck_{ORIGINAL_VERSION}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def children(pid: int) -> List[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class Container:
    """A booted copy of the cached root; commands run in it with nsenter on its init."""

    def __init__(self, work: Path, root: Path):
        self.work = work
        self.root = root
        self.process: Optional[subprocess.Popen] = None
        self.nspawn_pid = 0
        self.init_pid = 0
        self.figures: List[tuple] = []
        self.version = ""  # the package's version, as built
        self.files_before_purge: Dict[str, str] = {}  # the original's site, before the purge

    def boot(self) -> None:
        log = open(self.work / "nspawn.log", "wb")
        # timeout ends the container should this process die without stopping it.
        self.process = subprocess.Popen(
            ["timeout", str(CONTAINER_LIFETIME), "systemd-nspawn", "-D", str(self.root), "--boot",
             "--private-network", "--register=no", "--keep-unit", "--machine", self.root.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = "not started"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if not self.init_pid:
                nspawn = children(self.process.pid)
                self.nspawn_pid = nspawn[0] if nspawn else 0
                init = children(self.nspawn_pid) if self.nspawn_pid else []
                self.init_pid = init[0] if init else 0
            if self.init_pid:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        waiting = self.boot_diagnosis() if self.init_pid and self.process.poll() is None else ""
        tail = (self.work / "nspawn.log").read_text(errors="replace")[-1500:]
        self.stop()
        unavailable(f"systemd-nspawn could not boot {SUITE} (state {state!r}):\n{waiting}"
                    f"== console (last 1500 characters):\n{tail}")

    def boot_diagnosis(self) -> str:
        """What a boot that does not finish waits for: systemd's jobs, the failed units and their logs."""
        commands = ("systemctl list-jobs --no-pager", "systemctl --failed --no-pager",
                    "journalctl -b --no-pager -q -p warning -n 30 -o short-monotonic")
        parts = []
        for command in commands:
            try:
                result = self.run(command, check=False, timeout=30)
                output = (result.stdout + result.stderr).strip()
            except subprocess.TimeoutExpired:
                output = "(no answer within 30 s)"
            parts.append(f"== {command}:\n{output[-2500:]}\n")
        return "".join(parts)

    def run(self, command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a shell command inside the container (all its namespaces, a clean environment)."""
        argv = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive", "sh", "-c", command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container: {command}: exit {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def host_in_network(self, argv: List[str], **kwargs) -> subprocess.Popen:
        """Start a host program in the container's network namespace."""
        return subprocess.Popen(["nsenter", "-t", str(self.init_pid), "-n", *argv], **kwargs)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None and self.nspawn_pid:
            os.kill(self.nspawn_pid, signal.SIGTERM)  # nspawn powers the container off
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            if self.nspawn_pid:
                os.kill(self.nspawn_pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(30)
        self.process = None

    # What the tests look at.

    def main_pid(self) -> int:
        return int(self.run("systemctl show -P MainPID hacheck").stdout.strip())

    def show(self, unit: str, prop: str) -> str:
        return self.run(f"systemctl show -P {prop} {unit}").stdout.strip()

    def wait_answers(self, path: str = "/spool/ready/1/", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.run(f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{HACHECK_PORT}{path}",
                              check=False)
            if result.stdout == "200":
                return
            time.sleep(0.2)
        raise AssertionError(f"hacheck did not answer {path} with 200 within {timeout}s")

    def haproxy_server(self, backend: str = "web", server: str = "web1") -> Dict[str, str]:
        """HAProxy's stats row for a server it checks through hacheck (by default the one under load)."""
        csv = self.run(f"curl -sf -m 10 'http://127.0.0.1:{HAPROXY_STATS_PORT}/stats;csv'").stdout.splitlines()
        names = csv[0].lstrip("# ").split(",")
        for line in csv[1:]:
            row = dict(zip(names, line.split(",")))
            if row.get("pxname") == backend and row.get("svname") == server:
                return row
        raise AssertionError(f"no {backend}/{server} row in HAProxy's stats:\n{csv}")

    def wait_haproxy_status(self, backend: str, server: str, status: str, timeout: float = 30) -> None:
        """Wait until HAProxy shows the server as ``status`` (or ``status (agent)``, set by the agent)."""
        deadline = time.monotonic() + timeout
        row = {}
        while time.monotonic() < deadline:
            row = self.haproxy_server(backend, server)
            if row["status"] in (status, f"{status} (agent)"):
                return
            time.sleep(0.2)
        raise AssertionError(f"HAProxy shows {backend}/{server} as {row.get('status')!r}, not {status!r}: "
                             f"check {row.get('check_status')} {row.get('last_chk')!r}, "
                             f"agent {row.get('agent_status')} {row.get('agent_desc')!r}")

    def wait_haproxy_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.haproxy_server()["status"] == "UP":
                return
            time.sleep(0.2)
        raise AssertionError(f"HAProxy's server is not UP: {self.haproxy_server()}")

    def under_load(self, event: str, action) -> dict:
        """Run ``action`` under the load and HAProxy's checks; record and return the figures."""
        self.wait_haproxy_up()
        chkfail = int(self.haproxy_server()["chkfail"])
        load = self.host_in_network(
            [sys.executable, str(HERE / "load.py"), "--port", str(HACHECK_PORT), "--max-seconds", "240",
             "--keep-alive", str(KEEP_ALIVE_CLIENTS), *LOAD_PATHS], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            action()
            time.sleep(1.0)
        finally:
            load.send_signal(signal.SIGTERM)
            output, _ = load.communicate(timeout=60)
        figures = json.loads(output)
        server = self.haproxy_server()
        figures["chkfail"] = int(server["chkfail"]) - chkfail
        if figures["chkfail"]:
            figures["last check"] = f"{server['check_status']} {server['last_chk']}"
        self.figures.append((event, figures))
        print(f"{event}: {figures}")
        return figures

    def journal(self) -> str:
        return self.run("journalctl -q --no-pager -o short -u hacheck.service -u hacheck.socket").stdout

    def answers(self, lines: List[str]) -> dict:
        return json.loads(self.run("python3 /root/ci/answers.py", input="\n".join(lines)).stdout)

    def write(self, path: str, text: str) -> None:
        """Write a file inside the container (its owner and mode stay when it exists)."""
        self.run(f"cat > {path}", input=text)


@pytest.fixture(scope="module")
def box():
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"boots a Debian {SUITE} machine: set {OPT_IN}=1 (.ci/run does)")
    if os.geteuid() != 0:
        unavailable("needs root (debootstrap, systemd-nspawn)")
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter", "dpkg-buildpackage", "timeout")
               if shutil.which(tool) is None]
    if missing:
        unavailable(f"missing {', '.join(missing)} (apt-get install debootstrap systemd-container)")
    work = Path(tempfile.mkdtemp(prefix="hacheck-nspawn-", dir="/var/tmp"))
    container = None
    try:
        debs = build_packages(work / "debs")
        root = work / f"hacheck-ci-{os.getpid()}"
        subprocess.run(["cp", "-a", "--reflink=auto", str(cached_root()), str(root)], check=True)
        ci = root / "root" / "ci"
        ci.mkdir(parents=True)
        for name in ("current", "newer", "original"):
            shutil.copy(debs[name], ci / f"{name}.deb")
        for script in (HERE / "container").glob("*.py"):
            shutil.copy(script, ci / script.name)
        (root / "etc" / "haproxy" / "haproxy.cfg").write_text(HAPROXY_CFG)
        # A host name that resolves, as the Debian installer sets it up (hacheck looks up its own).
        (root / "etc" / "hostname").write_text("hacheck-ci\n")
        (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\thacheck-ci\n")
        container = Container(work, root)
        container.version = debs["version"]
        container.boot()
        container.run(f"systemd-run --quiet --unit=ci-upstream python3 /root/ci/upstream.py {UPSTREAM_PORT}")
        yield container
    finally:
        if container is not None:
            container.stop()
        # Nothing of the container may still be mounted under the copy before it goes.
        mounts = Path("/proc/mounts").read_text()
        if f" {work}/" not in mounts:
            shutil.rmtree(work, ignore_errors=True)


def test_install_while_the_port_is_taken_says_so_and_still_installs(box):
    """README's order: a hacheck started by hand holds 3333 when the package comes."""
    box.run(f"systemd-run --quiet --unit=ci-port-holder python3 -m http.server {HACHECK_PORT}")
    holder = int(box.show("ci-port-holder", "MainPID"))
    deadline = time.monotonic() + 20
    while not box.run(f"ss -Hltn 'sport = :{HACHECK_PORT}'").stdout.strip():
        assert time.monotonic() < deadline, f"nothing listens on {HACHECK_PORT}"
        time.sleep(0.2)
    result = box.run("apt-get install -y -q /root/ci/current.deb", check=False)
    output = result.stdout + result.stderr
    # apt's exit status stays 0: the package is installed and configured, only its socket waits for the port.
    assert result.returncode == 0, output
    assert box.run("dpkg-query -W -f '${db:Status-Status}' hacheck").stdout == "installed"
    assert "hacheck: hacheck.socket could not start, so hacheck is not running:" in output, output
    assert f"Failed to create listening socket ([::]:{HACHECK_PORT}): Address already in use" in output, output
    assert f"hacheck: port {HACHECK_PORT} is taken by python3 (pid {holder})" in output, output
    assert "then: systemctl start hacheck.socket hacheck.service" in output, output
    assert "Could not execute systemctl" not in output, output
    assert box.run("systemctl is-active hacheck.socket", check=False).stdout.strip() == "failed"
    # What the message says to do works.
    box.run("systemctl stop ci-port-holder && systemctl start hacheck.socket hacheck.service")
    box.wait_answers()
    # The next test installs on a machine that never had the package.
    box.run("apt-get purge -y -q hacheck && systemctl reset-failed")
    assert box.run("test -e /var/spool/hacheck", check=False).returncode != 0


def test_install_enables_and_starts_the_socket_and_the_service(box):
    box.run("apt-get install -y -q /root/ci/current.deb")
    for unit in ("hacheck.socket", "hacheck.service"):
        assert box.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        assert box.run(f"systemctl is-active {unit}").stdout.strip() == "active"
    assert box.show("hacheck.socket", "Listen") == f"[::]:{HACHECK_PORT} (Stream)"
    assert box.show("hacheck.socket", "FileDescriptorName") == "http"
    box.wait_answers()
    # HAProxy (started at boot, before hacheck) checks through it from now on.
    box.run("systemctl restart haproxy")
    box.wait_haproxy_up()


def test_security_exposure_is_no_worse_than_before(box):
    output = box.run("systemd-analyze security hacheck").stdout
    exposure = float(re.search(r"Overall exposure level for hacheck.service: ([0-9.]+)", output).group(1))
    box.figures.append(("systemd-analyze security hacheck", {"exposure": exposure}))
    assert exposure <= SECURITY_EXPOSURE_LIMIT


def test_restarts_refuse_no_connection_and_fail_no_check(box):
    pids = [box.main_pid()]

    def restarts():
        for _ in range(RESTARTS):
            box.run("systemctl restart hacheck")
            pids.append(box.main_pid())
            # systemd refuses a sixth start within 10 s (StartLimitBurst=5).
            time.sleep(RESTART_INTERVAL)

    figures = box.under_load(f"{RESTARTS} x systemctl restart hacheck", restarts)
    assert len(set(pids)) == RESTARTS + 1, pids
    assert box.show("hacheck.socket", "ActiveState") == "active"
    assert figures["requests"] > 0
    assert (figures["failed"], figures["chkfail"]) == (0, 0), figures


def probe_reloaded_header(box, header: str, timeout: float = 20) -> None:
    """Wait until hacheck's checks carry ``header`` (set by service_name_header): the upstream then says 200."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1  # a new path each time: never a cached answer
        path = f"/http/probe/{UPSTREAM_PORT}/need/{header}/{attempt}"
        code = box.run(f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{HACHECK_PORT}{path}").stdout
        if code == "200":
            return
        time.sleep(0.2)
    raise AssertionError(f"hacheck's checks do not send {header} within {timeout}s of the reload")


# systemd's status of hacheck.service (`Status:` in systemctl status) after a reload and after a refused one.
RELOADED_STATUS = "reloaded /etc/hacheck/hacheck.yaml: changed service_name_header"
REFUSED_STATUS = ("reload failed, running configuration kept: /etc/hacheck/hacheck.yaml: key 'cache_time': "
                  "expected a number of seconds, got 'soon'")


def test_reloads_take_effect_without_a_failed_request(box):
    pid = box.main_pid()

    def reloads():
        for number in range(1, RELOADS + 1):
            box.write("/etc/hacheck/hacheck.yaml", f"service_name_header: X-Reload-{number}\n")
            box.run("systemctl reload hacheck")
            probe_reloaded_header(box, f"X-Reload-{number}")

    figures = box.under_load(f"{RELOADS} x systemctl reload hacheck (changed valid config, observed)", reloads)
    assert box.main_pid() == pid
    assert (figures["failed"], figures["chkfail"]) == (0, 0), figures
    assert box.show("hacheck.service", "StatusText") == RELOADED_STATUS


def test_reload_with_an_invalid_config_fails_and_keeps_the_running_one(box):
    pid = box.main_pid()
    reload = {}

    def invalid_reload():
        box.write("/etc/hacheck/hacheck.yaml", f"service_name_header: X-Reload-{RELOADS}\ncache_time: soon\n")
        reload["result"] = box.run("systemctl reload hacheck", check=False)

    figures = box.under_load("systemctl reload hacheck with an invalid config", invalid_reload)
    assert reload["result"].returncode != 0
    assert box.show("hacheck.service", "ActiveState") == "active"
    assert box.main_pid() == pid
    probe_reloaded_header(box, f"X-Reload-{RELOADS}")  # the old configuration still holds
    status = box.run("systemctl status --no-pager -n 20 hacheck", check=False).stdout
    # The failure, whole, as the service's status: not the last successful reload's.
    assert f'Status: "{REFUSED_STATUS}"' in status, status
    assert box.show("hacheck.service", "StatusText") == REFUSED_STATUS
    assert (figures["failed"], figures["chkfail"]) == (0, 0), figures
    box.write("/etc/hacheck/hacheck.yaml", "# all defaults\n")
    box.run("systemctl reload hacheck")
    deadline = time.monotonic() + 20  # the status follows the daemon's reload, a moment after systemctl returns
    while box.show("hacheck.service", "StatusText") != RELOADED_STATUS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert box.show("hacheck.service", "StatusText") == RELOADED_STATUS


def test_upgrade_to_a_newer_build_refuses_no_connection(box):
    pid = box.main_pid()
    socket_since = box.show("hacheck.socket", "ActiveEnterTimestampMonotonic")
    figures = box.under_load("apt-get install of a newer build over the running one",
                             lambda: box.run("apt-get install -y -q /root/ci/newer.deb"))
    assert box.run("dpkg-query -W -f '${Version}' hacheck").stdout == f"{box.version}+ci1"
    assert box.main_pid() != pid, "the upgrade did not restart hacheck"
    assert box.show("hacheck.socket", "ActiveEnterTimestampMonotonic") == socket_since, "the socket was restarted"
    assert (figures["failed"], figures["chkfail"]) == (0, 0), figures


AGENT_DROP_IN = "/etc/systemd/system/hacheck.service.d/agent.conf"


def documented_agent_drop_in() -> str:
    """The agent port's drop-in exactly as docs/debian.md shows it (its code block naming the agent socket)."""
    lines = (REPO / "docs" / "debian.md").read_text().splitlines()
    start = end = next(n for n, line in enumerate(lines) if line.strip().startswith("Wants=hacheck-agent@"))

    def in_block(n: int) -> bool:  # the list item's code block: indented 6, blank lines inside
        return 0 <= n < len(lines) and (lines[n].startswith(" " * 6) or not lines[n].strip())
    while in_block(start - 1):
        start -= 1
    while in_block(end + 1):
        end += 1
    return "\n".join(line[6:] for line in lines[start:end + 1]).strip() + "\n"


def test_an_agent_port_from_the_documented_drop_in(box):
    drop_in = documented_agent_drop_in()
    assert f"Wants=hacheck-agent@{AGENT_PORT}.socket" in drop_in and " -S" in drop_in, drop_in
    box.run("mkdir -p /etc/systemd/system/hacheck.service.d")
    box.write(AGENT_DROP_IN, drop_in)
    box.run("systemctl daemon-reload && systemctl restart hacheck && hadown -r 'agent test' agentsvc")
    assert box.show(f"hacheck-agent@{AGENT_PORT}.socket", "FileDescriptorName") == "agent"
    answer = box.run("python3 -c 'import socket, sys; s = socket.create_connection((\"127.0.0.1\", "
                     f"{AGENT_PORT}), 10); s.sendall(b\"agentsvc\\n\"); print(s.recv(200).decode())'").stdout
    assert answer.startswith("maint #agent test"), answer
    # -S: the HTTP check reports the service only; HAProxy shows what the agent says.
    assert box.answers([f"/http/agentsvc/{UPSTREAM_PORT}/"])[f"/http/agentsvc/{UPSTREAM_PORT}/"][0] == 200
    box.wait_haproxy_status("agent", "agent1", "MAINT")
    box.run("hadown --drain -r 'agent drain' agentsvc")
    box.wait_haproxy_status("agent", "agent1", "DRAIN")
    box.run("haup agentsvc")
    box.wait_haproxy_status("agent", "agent1", "UP")
    box.run(f"rm -r {AGENT_DROP_IN} /etc/systemd/system/hacheck.service.d "
            f"&& systemctl stop hacheck-agent@{AGENT_PORT}.socket && systemctl daemon-reload "
            "&& systemctl restart hacheck")


def test_purge_leaves_nothing_but_the_spool(box):
    box.run("hadown -r 'kept across purge' kept")
    box.run("apt-get purge -y -q hacheck")
    assert box.run("dpkg-query -W hacheck", check=False).returncode != 0
    for path in ("/lib/systemd/system/hacheck.service", "/lib/systemd/system/hacheck.socket",
                 "/etc/systemd/system/multi-user.target.wants/hacheck.service",
                 "/etc/systemd/system/sockets.target.wants/hacheck.socket", "/etc/hacheck", "/var/log/hacheck",
                 "/var/lib/systemd/deb-systemd-helper-enabled/hacheck.service.dsh-also",
                 "/var/lib/systemd/deb-systemd-helper-enabled/hacheck.socket.dsh-also", "/usr/bin/hacheck"):
        assert box.run(f"test -e {path} || test -L {path}", check=False).returncode != 0, f"{path} is left"
    assert box.run("getent passwd hacheck", check=False).returncode != 0
    assert box.run("systemctl is-active hacheck.socket hacheck.service", check=False).stdout.split() == [
        "inactive", "inactive"]
    assert box.run("cat /var/spool/hacheck/kept").stdout.startswith('{"reason": "kept across purge"')
    box.run("rm -r /var/spool/hacheck")


# The original's site: its own unit, /etc/hacheck.yaml, downtimes written by
# the original's tools (JSON) and by hand (plain text, as older versions did).
ORIGINAL_SPOOL = {
    "alpha": "plain-text reason written by hand\n",
    "epsilon:8081": "plain text on one port\n",
}
ORIGINAL_DOWNTIMES = ("hadown -r 'json reason' beta -P 8080",
                      "hadown -r 'json host and port' gamma -P 9000 -H 10.1.2.3",
                      "hadown -r 'until later' -e 4102444800 delta")
ANSWER_LINES = ["/spool/alpha/80/", "/http/alpha/8080/", "/spool/beta/8080/", "/spool/beta/8081/",
                "/spool/gamma/9000/", "/spool/gamma/9000/ X-Nerve-Check-IP: 10.1.2.3", "/spool/delta/1/",
                "/spool/epsilon/8081/", "/spool/epsilon/8082/", "/spool/zeta/1/"]
TOOL_COMMANDS = ("hastatus alpha beta delta zeta; echo exit $?", "hastatus -P 8080 beta; echo exit $?",
                 "hashowdowned | sort; echo exit $?")


def site_view(box) -> dict:
    return {"answers": box.answers(ANSWER_LINES),
            "tools": {command: box.run(command).stdout for command in TOOL_COMMANDS}}


def site_files(box) -> dict:
    """The site's own unit, its enable link, /etc/hacheck.yaml and the spool, as they are."""
    return {"unit": box.run(f"cat {SITE_UNIT}").stdout,
            "link": box.run("readlink /etc/systemd/system/multi-user.target.wants/hacheck.service").stdout,
            "config": box.run("cat /etc/hacheck.yaml").stdout,
            "spool": box.run("cd /var/spool/hacheck && for f in *; do echo \"== $f\"; cat \"$f\"; done").stdout}


def test_upgrade_of_the_originals_package_keeps_the_site_unit_and_every_answer(box):
    box.run("dpkg -i /root/ci/original.deb")
    assert box.run("readlink /usr/bin/hacheck").stdout.strip() == "/usr/share/python/hacheck/bin/hacheck"
    box.write("/etc/hacheck.yaml", "cache_time: 5\n")
    box.write(SITE_UNIT, SITE_UNIT_TEXT)
    box.run("mkdir -p /var/spool/hacheck")
    for name, text in ORIGINAL_SPOOL.items():
        box.write(f"/var/spool/hacheck/{name}", text)
    for command in ORIGINAL_DOWNTIMES:
        box.run(command)
    box.run("systemctl daemon-reload && systemctl enable --now hacheck")
    box.wait_answers()
    old_pid = box.main_pid()
    assert "/usr/share/python/hacheck" in box.run(f"cat /proc/{old_pid}/cmdline | tr '\\0' ' '").stdout
    before = site_view(box)
    files = site_files(box)

    box.run("apt-get install -y -q /root/ci/current.deb")
    box.wait_answers()
    assert box.show("hacheck.service", "FragmentPath") == SITE_UNIT
    new_pid = box.main_pid()
    assert new_pid != old_pid, "the site's service still runs the original's code"
    cmdline = box.run(f"cat /proc/{new_pid}/cmdline | tr '\\0' ' '").stdout
    assert cmdline == "/usr/bin/python3 /usr/bin/hacheck -c /etc/hacheck.yaml -p 3333 ", cmdline
    assert box.run("test -e /usr/share/python/hacheck", check=False).returncode != 0
    assert box.run("systemctl is-enabled hacheck.socket", check=False).stdout.strip() == "disabled"
    assert box.show("hacheck.socket", "ActiveState") == "inactive"
    after = site_view(box)
    assert after == before
    box.figures.append(("upgrade of the original's stand-in (site unit running)",
                        {"answers compared": len(ANSWER_LINES) + len(TOOL_COMMANDS),
                         "identical": after == before}))
    # The tools work on the original's downtimes.
    box.run("haup alpha && hadown -r 'new one' eta && haup -P 8080 beta")
    answers = box.answers(["/spool/alpha/80/", "/spool/beta/8080/", "/spool/eta/1/"])
    assert [answer[0] for answer in answers.values()] == [200, 200, 503], answers
    box.run("hadown -r 'back as before' alpha && haup eta && hadown -r 'json reason' beta -P 8080")
    box.files_before_purge = site_files(box)
    assert files["link"].strip() == SITE_UNIT
    for kept in ("unit", "link", "config"):
        assert box.files_before_purge[kept] == files[kept], kept


def test_purge_leaves_the_sites_unit_its_link_config_and_spool(box):
    before = box.files_before_purge
    box.run("apt-get purge -y -q hacheck")
    assert site_files(box) == before
    assert box.run("systemctl is-enabled hacheck").stdout.strip() == "enabled"


def test_a_site_that_deletes_its_unit_gets_the_packages_socket_and_unit(box):
    box.run("apt-get install -y -q /root/ci/current.deb")
    # The site's unit (no socket) was started by the install: apt returns before the daemon listens.
    box.wait_answers()
    assert box.show("hacheck.service", "FragmentPath") == SITE_UNIT
    before = site_view(box)
    box.run(f"systemctl disable --now hacheck && rm {SITE_UNIT} && systemctl daemon-reload "
            "&& dpkg-reconfigure hacheck")
    box.wait_answers()
    assert box.show("hacheck.service", "FragmentPath") == "/lib/systemd/system/hacheck.service"
    for unit in ("hacheck.socket", "hacheck.service"):
        assert box.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        assert box.run(f"systemctl is-active {unit}").stdout.strip() == "active"
    assert site_view(box) == before


def test_purge_keeps_a_sites_link_made_after_the_package_enabled_its_units(box):
    # The package's units are enabled (the test before); the site goes back to a unit of its own.
    box.write(SITE_UNIT, SITE_UNIT_TEXT)
    box.run("systemctl daemon-reload && systemctl reenable hacheck && systemctl restart hacheck")
    link = "/etc/systemd/system/multi-user.target.wants/hacheck.service"
    assert box.run(f"readlink {link}").stdout.strip() == SITE_UNIT
    box.run("apt-get purge -y -q hacheck")
    assert box.run(f"readlink {link}").stdout.strip() == SITE_UNIT
    assert box.run(f"cat {SITE_UNIT}").stdout == SITE_UNIT_TEXT
    assert box.run("test -L /etc/systemd/system/sockets.target.wants/hacheck.socket", check=False).returncode != 0


def test_journal_has_no_warning_or_error(box):
    journal = box.journal()
    assert "hacheck" in journal
    bad = [line for line in journal.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)]
    assert not bad, "\n".join(bad)


def test_figures(box):
    lines = ["", "| event | figures |", "|---|---|"]
    lines += [f"| {event} | {json.dumps(figures)} |" for event, figures in box.figures]
    sys.__stdout__.write("\n".join(lines) + "\n")
    (CACHE / "last-figures.md").write_text("\n".join(lines) + "\n")
