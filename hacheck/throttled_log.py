"""Warnings that repeat (bad requests, refused connections, EMFILE) logged at most once per interval.

A client that sends a thousand bad requests a second must not turn the log
into a thousand lines a second: the first of a kind is logged at once, later
ones of the same kind within ``interval`` seconds are only counted, and the
next line logged for that kind says how many were left out meanwhile.
"""

import logging
import time
from typing import Callable, Dict, Hashable, Tuple

# How often one kind of repeated warning may reach the log (configuration: ``log_repeat_interval``).
DEFAULT_REPEAT_INTERVAL = 10.0
# Kinds remembered at once; past this the table starts again (a kind then logs once more, no harm).
MAX_KINDS = 1024


class ThrottledLog:
    """Logs a message of a given kind at most once per ``interval``, with the count of those suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_REPEAT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self._clock = clock
        # kind -> (when its last line was logged, lines suppressed since)
        self._kinds: Dict[Hashable, Tuple[float, int]] = {}

    def log(self, level: int, kind: Hashable, message: str, *args) -> bool:
        """Log ``message % args`` unless ``kind`` was logged within the interval; True when logged."""
        now = self._clock()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._kinds[kind] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        suppressed = last[1] if last is not None else 0
        self._kinds[kind] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more like this in the last {now - last[0]:.0f}s not logged)"
        self.logger.log(level, message, *args)
        return True

    def warning(self, kind: Hashable, message: str, *args) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def error(self, kind: Hashable, message: str, *args) -> bool:
        return self.log(logging.ERROR, kind, message, *args)
