"""Every use of a private name of Tornado (or of another third-party library), in one place.

A private name can change in any release. Each one here is looked up before
it is used; when it is missing, the feature that needs it is left out with one
log line, and the daemon serves on. Nothing else in hacheck may use a
third-party name that starts with an underscore.

In use:

- ``IOLoop._run_callback``: the loop runs each callback (and each future's
  done-callback) through it. ``/mutornadomon``'s ``callback_duration`` and
  ``callbacks_processed`` time it, as mutornadomon's own collector does.
  Without it, those two count only the I/O handlers.

The bounded connections (``hacheck.connections``) use public API only: the
``IOStream`` methods a subclass may override, ``HTTP1Connection.detach`` and
the ``HTTPMessageDelegate`` interface.
"""

import logging
from typing import Callable, Optional

import tornado

log = logging.getLogger(__name__)

RUN_CALLBACK = "_run_callback"


def time_loop_callbacks(io_loop, on_callback: Callable[[float], None],
                        clock: Callable[[], float]) -> Optional[Callable[[], None]]:
    """Call ``on_callback(seconds)`` after every callback ``io_loop`` runs; returns the function that undoes it.

    None, with one warning, when this Tornado has no ``IOLoop._run_callback``.
    """
    original = getattr(io_loop, RUN_CALLBACK, None)
    if not callable(original):
        log.warning("Tornado %s has no IOLoop.%s: /mutornadomon's callback_duration and callbacks_processed "
                    "count I/O handlers only", tornado.version, RUN_CALLBACK)
        return None

    def run_timed_callback(callback):
        started = clock()
        try:
            return original(callback)
        finally:
            on_callback(clock() - started)

    setattr(io_loop, RUN_CALLBACK, run_timed_callback)

    def undo() -> None:
        if getattr(io_loop, RUN_CALLBACK, None) is run_timed_callback:
            delattr(io_loop, RUN_CALLBACK)  # the instance attribute: the class's method shows again

    return undo
