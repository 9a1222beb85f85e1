"""Fixtures of the ported suites: one real daemon per module, the tools on its spool."""

import pytest

from tests.conftest import start_hacheck
from tests.originals.support import Tools


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory):
    """One real hacheck for a module (tests use their own service names); allows POST /spool."""
    workdir = tmp_path_factory.mktemp("originals")
    spool_root = workdir / "spool"
    spool_root.mkdir()
    daemon = start_hacheck(workdir, config={"cache_time": 100.0, "allow_remote_spool_changes": True},
                           spool_root=str(spool_root))
    yield daemon
    daemon.stop()


@pytest.fixture
def tools(module_daemon):
    """The tools on the module daemon's spool."""
    return Tools(module_daemon.spool_root)
