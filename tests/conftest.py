"""Fixtures shared by every test room: free ports, spool roots, required services."""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` on a developer machine; in CI a missing requirement fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_port(name: str, port: int) -> None:
    require(port_open(port), f"{name} is not listening on 127.0.0.1:{port} (see .ci/services.sh)")


# Where root's tools live (haproxy, ip, runuser): not on every non-root user's PATH.
SYSTEM_BIN_DIRS = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))


def require_command(command: str) -> str:
    path = shutil.which(command) or shutil.which(command, path=SYSTEM_BIN_DIRS)
    require(path is not None, f"command {command!r} is not installed (not on PATH, nor in {SYSTEM_BIN_DIRS})")
    return path


def importable(module: str) -> bool:
    """Whether ``module`` imports (mutornadomon installed --no-deps may lack what it imports)."""
    try:
        __import__(module)
    except Exception:
        return False
    return True


def wait_until(condition, what: str, timeout: float = 20.0):
    """``condition()``'s first true value, asked every 50 ms; AssertionError naming ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set:
    """The pids of process ``pid``'s children (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return {int(child) for child in listing.read().split()}
    except FileNotFoundError:
        return set()


def unused_port() -> int:
    """A TCP port nothing listens on right now (bind to 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return unused_port()


@pytest.fixture
def spool_root(tmp_path) -> str:
    root = tmp_path / "spool"
    root.mkdir()
    return str(root)


@pytest.fixture
def spool(spool_root):
    """A ``hacheck.spool.Spool`` on the temporary ``spool_root``."""
    from hacheck.spool import Spool

    return Spool(spool_root)


class FakeClock:
    """A clock the test moves by hand: ``clock.now += 10``."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def tool_argv(name: str) -> list:
    """The argv that runs the tool ``name`` (``hadown``, ``hacheck``, ...) from this checkout's ``bin/``."""
    return [sys.executable, str(REPO_ROOT / "bin" / name)]


def tool_env(**extra: str) -> dict:
    """The environment for ``tool_argv``: this checkout first on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# --- a running hacheck daemon ------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line("markers", "hacheck_config(**keys): configuration for the daemon under test")


def raw_exchange(port: int, request: bytes, timeout: float = 15.0) -> bytes:
    """Send ``request`` as it is and read until the daemon closes; a refusal mid-send still reads the answer."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: read what it said, if anything
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def http_request(port: int, path: str, method: str = "GET", headers=None, body=None,
                 host: str = "127.0.0.1", timeout: float = 15.0):
    """One request to a daemon on ``host``:``port``; returns (status, body text, headers)."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), response.headers
    finally:
        connection.close()


class RunningDaemon:
    """A ``hacheck`` process started by the ``hacheck_daemon`` fixture."""

    def __init__(self, process, port: int, spool_root: str, output_path: Path, config_path):
        self.process = process
        self.port = port
        self.spool_root = spool_root
        self.output_path = output_path
        self.config_path = config_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str, **kwargs):
        return http_request(self.port, path, **kwargs)

    def output(self) -> str:
        """What the process wrote to stdout and stderr so far."""
        return self.output_path.read_text(errors="replace")

    def stop(self, signum=None, timeout: float = 20.0) -> int:
        """Send ``signum`` (SIGTERM) and wait; returns the exit code."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signum or signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"hacheck did not stop within {timeout}s:\n{self.output()}") from None
        return self.process.returncode


# Runs as ``python -c SOCKET_ACTIVATION_WRAPPER COUNT FD... NAMES ARGV...``: puts the listening
# sockets at descriptors 3, 4, ... and execs ARGV with LISTEN_FDS, LISTEN_FDNAMES and (unless
# the environment already has one) LISTEN_PID set to its own pid, as systemd does for a service.
SOCKET_ACTIVATION_WRAPPER = """
import fcntl, os, sys
count = int(sys.argv[1])
sources = [int(fd) for fd in sys.argv[2:2 + count]]
names, argv = sys.argv[2 + count], sys.argv[3 + count:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in sources]
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(count), LISTEN_FDNAMES=names)
os.environ.setdefault("LISTEN_PID", str(os.getpid()))
os.execv(argv[0], argv)
"""


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A bound, listening TCP socket on an unused port, as systemd holds one for a socket unit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def start_hacheck(tmp_path: Path, config=None, args=(), spool_root=None, port=None, wait: bool = True,
                  env=None, ready_host: str = "127.0.0.1", handed=()) -> RunningDaemon:
    """Start the real ``hacheck`` on an unused port with a temporary spool; wait until it answers.

    ``config`` is a dict written as YAML (or a path string); ``args`` are extra flags. When
    no ``port`` is given and the one picked was taken meanwhile (another test's connection got
    it as its own port), the daemon is started again on another.
    ``handed`` is a list of (listening socket, FileDescriptorName) given to it as systemd's
    socket activation does; no ``-p`` is passed then, and the port is the first socket's.
    """
    for attempt in range(3):
        try:
            return _start_hacheck(tmp_path, config, args, spool_root, port, wait, env, ready_host, handed)
        except PortTaken:
            if port is not None or attempt == 2:
                raise


class PortTaken(AssertionError):
    """The daemon could not listen on the port picked for it."""


def _start_hacheck(tmp_path, config, args, spool_root, port, wait, env, ready_host, handed) -> RunningDaemon:
    import subprocess
    import time
    import uuid

    import yaml

    if handed and port is None:
        port = handed[0][0].getsockname()[1]
    port = port or unused_port()
    spool_root = spool_root or str(tmp_path / f"spool-{uuid.uuid4().hex[:8]}")
    config_path = None
    if isinstance(config, dict):
        config_path = tmp_path / f"hacheck-{uuid.uuid4().hex[:8]}.yaml"
        config_path.write_text(yaml.safe_dump(config))
    elif config is not None:
        config_path = Path(config)
    argv = tool_argv("hacheck") + ([] if handed else ["-p", str(port)]) + ["--spool-root", spool_root]
    if config_path is not None:
        argv += ["-c", str(config_path)]
    argv += list(args)
    if handed:
        argv = [sys.executable, "-c", SOCKET_ACTIVATION_WRAPPER, str(len(handed)),
                *(str(sock.fileno()) for sock, _ in handed), ":".join(name for _, name in handed), *argv]
    output_path = tmp_path / f"hacheck-output-{uuid.uuid4().hex[:8]}.txt"
    with open(output_path, "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=tool_env(**(env or {})), pass_fds=[sock.fileno() for sock, _ in handed])
    daemon = RunningDaemon(process, port, spool_root, output_path, config_path)
    if not wait:
        return daemon
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = daemon.output()
            failure = PortTaken if "Address already in use" in output else AssertionError
            raise failure(f"hacheck exited with {process.returncode} at start:\n{output}")
        if port_open(port, ready_host, timeout=0.2):
            try:
                if http_request(port, "/status", host=ready_host, timeout=2)[0] == 200:
                    return daemon
            except OSError:
                pass
        time.sleep(0.05)
    daemon.stop()
    raise AssertionError(f"hacheck did not answer within 20s:\n{daemon.output()}")


@pytest.fixture
def hacheck_daemon(tmp_path):
    """A factory starting real ``hacheck`` processes (see ``start_hacheck``); all are stopped afterwards."""
    started = []

    def start(**kwargs) -> RunningDaemon:
        daemon = start_hacheck(tmp_path, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        try:
            daemon.stop(timeout=10)
        except AssertionError:
            pass  # stop() killed it; the test itself already passed or failed
