"""Every use of a private name of another library (Tornado, CPython, prometheus-client), in one place.

A private name can change in any release. Each one here is looked up before
it is used; when it is missing, the feature that needs it is left out with one
log line (or a fallback), and the daemon serves on. Nothing else in hacheck
touches a name of another library that starts with an underscore, nor
replaces another library's method on a live object: ruff's SLF001 and
tests/test_private_names.py keep it so.

In use:

- Tornado's ``IOLoop._run_callback``: the loop runs each callback (and each
  future's done-callback) through it. ``/mutornadomon``'s ``callback_duration``
  and ``callbacks_processed`` time it, as mutornadomon's own collector does.
  Without it, those two count only the I/O handlers.
- Tornado's ``IOLoop.add_handler``, replaced on the running loop so that the
  I/O handlers added from then on are timed the same way (public method,
  patched: the patch lives here).
- ``HTTPServer.conn_params``, the ``HTTP1ConnectionParameters`` every
  connection of a Tornado HTTP server shares (set in its ``initialize``, not
  documented): the connection bounds set Tornado's own backstops in it, and a
  stop turns keep-alive off in it.
- CPython's ``sys._clear_internal_caches`` (3.13) or ``sys._clear_type_cache``:
  the cache's compaction empties the type cache before collecting, so that
  memory freed by a huge burst goes back to the system.
- prometheus-client's ``values.ValueClass``: whether it was imported in
  multiprocess mode (it decides once, at import), so that a worker never
  counts in memory what the others write to files.

The bounded connections (``hacheck.web.connections``) use public API only: the
``IOStream`` methods a subclass may override, ``HTTP1Connection.detach`` and
the ``HTTPMessageDelegate`` interface. The accept loop
(``hacheck.web.http_server.add_pausing_accept_handler``) does what Tornado's
``TCPServer`` does when it accepts, with ``handle_stream``, its documented
extension point.
"""

import logging
import sys
from typing import Any, Callable, Optional

import tornado
import tornado.http1connection

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


def replace_add_handler(io_loop, wrap: Callable[[Callable], Callable]) -> Callable[[], None]:
    """From now on ``io_loop.add_handler(fd, handler, events)`` adds ``wrap(handler)``; returns the undo."""
    original = io_loop.add_handler

    def add_wrapped_handler(fd, handler, events):
        original(fd, wrap(handler), events)

    io_loop.add_handler = add_wrapped_handler

    def undo() -> None:
        if io_loop.add_handler is add_wrapped_handler:
            del io_loop.add_handler  # the instance attribute: the class's method shows again

    return undo


CONN_PARAMS = "conn_params"


def connection_parameters(server) -> tornado.http1connection.HTTP1ConnectionParameters:
    """The parameters every connection of the Tornado HTTP server ``server`` shares (read at each request).

    A Tornado without the attribute gets one: it is then handed to the connections
    accepted from now on, as Tornado 6.2 to 6.5 do with theirs.
    """
    params = getattr(server, CONN_PARAMS, None)
    if not isinstance(params, tornado.http1connection.HTTP1ConnectionParameters):
        log.warning("Tornado %s's HTTP server has no %s: hacheck sets its own", tornado.version, CONN_PARAMS)
        params = tornado.http1connection.HTTP1ConnectionParameters()
        setattr(server, CONN_PARAMS, params)
    return params


def _type_cache_clearer() -> Optional[Callable[[], None]]:
    # CPython's own (documented, underscored) call; Python 3.13 deprecates it for _clear_internal_caches.
    # Another interpreter may have neither: compacting then only skips this step.
    for name in ("_clear_internal_caches", "_clear_type_cache"):
        found = getattr(sys, name, None)
        if callable(found):
            return found
    return None


clear_type_cache: Optional[Callable[[], None]] = _type_cache_clearer()


def prometheus_values_in_memory(values: Any) -> Optional[bool]:
    """Whether prometheus-client (its ``values`` module) keeps metric values in memory, not in
    multiprocess files; None when this version does not say (``ValueClass`` or ``MutexValue`` missing)."""
    value_class = getattr(values, "ValueClass", None)
    mutex_value = getattr(values, "MutexValue", None)
    if value_class is None or mutex_value is None:
        return None
    return value_class is mutex_value
