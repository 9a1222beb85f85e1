"""ThrottledLog: one line per kind per interval, and the count of those left out."""

import logging

from hacheck.throttled_log import ThrottledLog
from tests.conftest import FakeClock


def test_repeats_within_the_interval_are_counted_not_logged(caplog):
    clock = FakeClock()
    throttled = ThrottledLog(logging.getLogger("test.throttle"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        assert throttled.warning("bad", "bad request from %s", "a")
        for _ in range(5):
            clock.now += 1
            assert not throttled.warning("bad", "bad request from %s", "b")
        assert throttled.warning("other", "something else")
        clock.now += 5
        assert throttled.warning("bad", "bad request from %s", "c")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["bad request from a", "something else",
                     "bad request from c (5 more like this in the last 10s not logged)"]
