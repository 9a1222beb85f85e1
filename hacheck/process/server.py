"""One serving process: its listening sockets (bound, or handed over by systemd), the application,
reload on SIGHUP, and a stop bounded whatever clients do.

Without ``-n`` this is the daemon itself; with ``-n`` every worker the supervisor
(``hacheck.process.supervisor``) forks runs it.
"""

import asyncio
import gc
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
from typing import Callable, List, Optional, Tuple

import tornado.ioloop
import tornado.netutil

import hacheck.process.reload
from hacheck import __version__
from hacheck.config import Config, ConfigError
from hacheck.lb_view import PUBLISH_INTERVAL, LbView
from hacheck.process import systemd
from hacheck.process.options import Startup, StartupOptions
from hacheck.spool import Spool
from hacheck.web import http_server, metrics
from hacheck.web.agent import AgentServer
from hacheck.web.app import make_app
from hacheck.web.connections import ConnectionLimits, throttle_tornado_connection_lines

log = logging.getLogger("hacheck")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Connections the kernel queues before accept (capped by net.core.somaxconn).
# Tornado's default of 128 overflows when many checks arrive at once, and an
# overflowed connection waits seconds for a SYN-ACK retransmission.
LISTEN_BACKLOG = 4096
# The largest message between a worker and its supervisor (a pickled Config is a few KiB).
MAX_CHANNEL_MESSAGE = 1 << 20


class StartupError(Exception):
    """The daemon cannot start; the message is one line for stderr."""


def bind(options: StartupOptions, reuse_port: bool) -> list:
    """The HTTP ports' listening sockets, on every ``-B`` address."""
    return _bind_all(options.ports, options.bind_addresses, reuse_port, "", backlog=LISTEN_BACKLOG)


def bind_agent(options: StartupOptions, reuse_port: bool) -> list:
    """The agent ports' listening sockets (same addresses as HTTP)."""
    return _bind_all(options.agent_ports, options.bind_addresses, reuse_port, " (agent)", backlog=LISTEN_BACKLOG)


def _bind_all(ports: List[int], addresses: List[str], reuse_port: bool, what: str, **options) -> list:
    """Every port on every address; a StartupError naming the first that fails (nothing stays bound)."""
    sockets = []
    for address in addresses:
        for port in ports:
            try:
                sockets += tornado.netutil.bind_sockets(port, address, reuse_port=reuse_port, **options)
            except OSError as err:
                for sock in sockets:
                    sock.close()
                raise StartupError(f"cannot listen on {_host_port(address, port)}{what}: {err.strerror}") from None
    return sockets


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def acquire_sockets(options: StartupOptions, handed: systemd.HandedSockets,
                    reuse_port: bool) -> Tuple[list, list]:
    """The HTTP and agent listening sockets: those systemd handed over, else bound as the flags say."""
    sockets = list(handed.http) or bind(options, reuse_port)
    try:
        agent_sockets = list(handed.agent) or bind_agent(options, reuse_port)
    except StartupError:
        if not handed.http:
            for sock in sockets:
                sock.close()
        raise
    return sockets, agent_sockets


def _where(options: StartupOptions, ports: List[int], handed: list) -> str:
    """Where a kind of socket listens, for the start-up log line."""
    if handed:
        return ", ".join(map(systemd.describe, handed)) + " (sockets from systemd)"
    return f"{','.join(options.bind_addresses)} port {','.join(map(str, ports))}"


def log_handed_sockets(options: StartupOptions, handed: systemd.HandedSockets) -> None:
    """Say once which handed sockets replace which flags."""
    if handed.http and options.ports_given:
        log.info("serving the HTTP socket(s) systemd handed over (%s); -p %s not bound",
                 ", ".join(map(systemd.describe, handed.http)), ",".join(map(str, options.ports)))
    if handed.agent and options.agent_ports:
        log.info("serving the agent socket(s) systemd handed over (%s); -A %s not bound",
                 ", ".join(map(systemd.describe, handed.agent)), ",".join(map(str, options.agent_ports)))


class SystemdNotifier:
    """How a lone process (no -n) reports readiness and reloads: to systemd itself."""

    def ready(self, status: str) -> None:
        systemd.notify_ready(status)

    def reloading(self) -> None:
        systemd.notify_reloading("reloading the configuration")

    def reloaded(self, ok: bool, line: str) -> None:
        systemd.notify_ready(line)


class SupervisorLink:
    """A worker's side of its channel to the supervisor (``hacheck.process.supervisor``), which reports to systemd.

    The worker says ``("ready", generation)`` once it listens and ``("reloaded", generation, ok)`` after each
    configuration the supervisor sent it (``("config", generation, Config)``): the supervisor reads the file,
    a worker never does.
    """

    def __init__(self, channel: socket.socket, supervisor_pid: int, generation: int):
        self.channel = channel
        self.supervisor_pid = supervisor_pid
        self.generation = generation

    def ready(self, status: str) -> None:
        self.send(("ready", self.generation))

    def send(self, message: tuple) -> None:
        try:
            self.channel.send(pickle.dumps(message))
        except OSError as err:  # the supervisor is gone: the orphan watch stops this worker
            log.warning("cannot answer the supervisor: %s", err)

    def receive_configs(self, loop: asyncio.AbstractEventLoop, apply: Callable[[Config, int], None]) -> None:
        """Apply each configuration the supervisor sends; of several waiting, only the newest."""
        self.channel.setblocking(False)

        def on_readable() -> None:
            newest = None
            while True:
                try:
                    data = self.channel.recv(MAX_CHANNEL_MESSAGE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:  # the supervisor is gone
                    loop.remove_reader(self.channel.fileno())
                    break
                newest = pickle.loads(data)
            if newest is not None:
                _, generation, config = newest
                self.reloaded(generation, apply_received_config(config, generation, apply))
        loop.add_reader(self.channel.fileno(), on_readable)

    def reloaded(self, generation: int, ok: bool) -> None:
        if ok:
            self.generation = generation
        self.send(("reloaded", generation, ok))


def apply_received_config(config: Config, generation: int, apply: Callable[[Config, int], None]) -> bool:
    """A worker takes the configuration its supervisor read: its own open-files limit and log file, then
    the application's objects. False (the running configuration kept) when this process cannot."""
    try:
        hacheck.process.reload.apply_rlimit(config)
        handler = hacheck.process.reload.open_log_handler(config)
    except ConfigError as err:
        log.error("configuration generation %d not applied, running configuration kept: %s", generation, err)
        return False
    hacheck.process.reload.install_log_handler(handler)
    apply(config, generation)
    log.info("reloaded configuration generation %d from the supervisor", generation)
    return True


def reload_config(config_file: Optional[str], running: Config, apply: Callable[[Config], str], notifier) -> None:
    """SIGHUP: read the configuration file again and ``apply`` a valid one (it returns a note for the log line)."""
    notifier.reloading()
    loaded, line = hacheck.process.reload.reload(running, config_file)
    if loaded is None:
        log.error("%s", line)
    else:
        line += apply(loaded.config)
        log.info("%s", line)
    notifier.reloaded(loaded is not None, line)


async def serve(startup: Startup, config: Config, reuse_port: bool, notifier,
                link: Optional[SupervisorLink] = None) -> None:
    """Listen, serve until a stop signal, then let requests in flight finish (bounded) and return."""
    options, handed = startup.options, startup.handed
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a stop signal that arrives once the port answers must stop cleanly.
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    sockets, agent_sockets = acquire_sockets(options, handed, reuse_port)
    app = _application(startup, config)
    state = app.settings["hacheck_state"]
    throttle_tornado_connection_lines(state.warnings)
    server = http_server.HTTPServer(app, limits=ConnectionLimits.from_config(config), warnings=state.warnings,
                                    xheaders=False)
    server.add_sockets(sockets)
    agent = AgentServer(state.spool, lambda: state.config, activity=state.activity, metrics=state.metrics,
                        warnings=state.warnings)
    _take_reloads(options.config_file, loop, state, server, notifier, link)
    await agent.start(agent_sockets)
    _log_agent_port(options, handed, agent_sockets)
    listening = _where(options, options.ports, handed.http)
    log.info("hacheck %s listening on %s (pid %d)", __version__, listening, os.getpid())
    # Garbage collection's full passes stop the event loop for as long as they take: with a
    # thousand checks in flight that was 50-100 ms, several times a second, and every request
    # waited. Everything made so far (modules, the application) lives as long as the process
    # and is left out of them; and a full pass comes after 100 younger ones instead of 10
    # (young passes stay as frequent, so short-lived cycles go as soon as before).
    gc.freeze()
    gc.set_threshold(700, 10, 100)
    notifier.ready(f"listening on {listening}")
    if link is not None:
        _stop_when_orphaned(link, stop, startup.lb_view_dir)
    await stop.wait()
    # Bounded whatever clients do: answers get healthcheck_timeout plus stop_grace (of the running
    # configuration); connections still sending a request after stop_grace are closed.
    log.info("stopping: no new connections, waiting for %d answer(s) in flight", server.answering())
    grace = state.config.stop_grace
    deadline = loop.time() + state.config.healthcheck_timeout + grace
    # Closes this process's descriptors only (never shutdown()): a socket systemd handed over stays
    # open there, and connections arriving meanwhile wait in its backlog for the next process.
    server.stop()
    agent.stop()
    # A connection accepted just before the stop may not have sent its request yet, and a kept-alive
    # one may carry a request its client just sent: closing either at once would lose a request
    # (HAProxy: a failed check). Each gets stop_grace to send it, and is closed once it is answered
    # (with Connection: close, so that its client opens the next one to the process taking over).
    server.finish_connections()
    idle_deadline = min(deadline, loop.time() + grace)
    while server.unanswered() > 0 and loop.time() < idle_deadline:
        await asyncio.sleep(0.05)
    server.close_unanswered(grace)
    while (server.connections() > 0 or server.lingering() > 0) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    server.close_all()
    await agent.wait_closed(max(0.1, deadline - loop.time()))
    state.close()
    log.info("stopped")


def _application(startup: Startup, config: Config):
    """The Tornado application this process serves, and the load balancers' view it keeps."""
    options = startup.options
    lb_view = LbView(shared_dir=startup.lb_view_dir)
    app = make_app(config, Spool(options.spool_root), own_ips=startup.own_ips, access_log=options.verbose,
                   with_mutornadomon=True, spool_on_http=options.spool_on_http, lb_view=lb_view)
    # Reports older than the window go; with -n each worker's reach the others (a fraction of a second late).
    tornado.ioloop.PeriodicCallback(lb_view.publish, PUBLISH_INTERVAL * 1000).start()
    return app


def _log_agent_port(options: StartupOptions, handed: systemd.HandedSockets, agent_sockets: list) -> None:
    if agent_sockets:
        log.info("agent-check answers on %s%s", _where(options, options.agent_ports, handed.agent),
                 "; HTTP checks ignore downtimes (-S)" if not options.spool_on_http else "")
    elif not options.spool_on_http:
        log.warning("-S without -A: HTTP checks ignore downtimes and no agent port reports them")


def _take_reloads(config_file: Optional[str], loop: asyncio.AbstractEventLoop, state, server, notifier,
                  link: Optional[SupervisorLink]) -> None:
    """A lone process reads the file again on SIGHUP; a worker applies what its supervisor sends."""
    def apply_config(new_config: Config, generation: Optional[int] = None) -> str:
        state.apply_config(new_config, generation)
        server.apply_config(new_config)
        return ""
    if link is None:
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_config(config_file, state.config, apply_config,
                                                                     notifier))
    else:
        state.set_config_generation(link.generation)
        link.receive_configs(loop, apply_config)


def _stop_when_orphaned(link: SupervisorLink, stop: asyncio.Event, lb_view_dir: Optional[str]) -> None:
    """A worker whose supervisor was killed outright stops too instead of lingering on the port (and
    removes the directories the supervisor would have)."""
    def check() -> None:
        if os.getppid() != link.supervisor_pid:
            log.warning("supervisor %d is gone; stopping", link.supervisor_pid)
            metrics.remove_orphaned_multiprocess_dir()
            if lb_view_dir is not None:
                shutil.rmtree(lb_view_dir, ignore_errors=True)
            stop.set()
    tornado.ioloop.PeriodicCallback(check, 1000).start()


def run_worker(startup: Startup, config: Config, reuse_port: bool, notifier,
               link: Optional[SupervisorLink] = None) -> int:
    """Serve until stopped in this process (the lone one, or a worker of -n): 0, or 1 when it cannot start."""
    try:
        asyncio.run(serve(startup, config, reuse_port, notifier, link))
    except StartupError as err:
        log.error("%s", err)
        if config.log_path not in ("stdout", "stderr"):
            # The log is a file: say it also where the person starting the daemon looks.
            sys.stderr.write(f"hacheck: {err}\n")
        return 1
    return 0
