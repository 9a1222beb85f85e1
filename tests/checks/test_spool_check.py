"""The `spool` check: nothing beyond the spool, so it contacts nothing and is up."""

import pytest

from hacheck.checks import spool
from hacheck.checks.base import Target, run_check
from tests.checks.upstreams import checking
from tests.conftest import unused_port


@pytest.mark.gen_test
async def test_spool_check_is_200_with_empty_body_without_contacting_the_target():
    with checking() as context:
        result = await run_check(spool.check, Target("127.0.0.1", unused_port()), "", context)
    assert (result.code, result.message) == (200, "")
