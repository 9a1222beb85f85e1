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


def require_command(command: str) -> str:
    path = shutil.which(command)
    require(path is not None, f"command {command!r} is not installed")
    return path


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


def tool_argv(name: str) -> list:
    """The argv that runs the tool ``name`` (``hadown``, ``hacheck``, ...) from this checkout's ``bin/``."""
    return [sys.executable, str(REPO_ROOT / "bin" / name)]


def tool_env(**extra: str) -> dict:
    """The environment for ``tool_argv``: this checkout first on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
