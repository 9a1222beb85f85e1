"""The ``hacheck`` command: flags, configuration, logging, limits, workers, listening, signals."""

import argparse
import asyncio
import gc
import logging
import os
import select
import signal
import sys
import time
from typing import Callable, List, Optional, Tuple

import tornado.ioloop
import tornado.netutil

import hacheck.reload
import hacheck.server
from hacheck import __version__, metrics, systemd
from hacheck.agent import AgentServer
from hacheck.app import make_app, own_ip_addresses
from hacheck.config import Config, ConfigError
from hacheck.connections import ConnectionLimits, throttle_tornado_connection_lines
from hacheck.names import InvalidName, parse_port
from hacheck.spool import DEFAULT_SPOOL_ROOT, Spool, SpoolError

log = logging.getLogger("hacheck")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# What the -n supervisor handles: stops, and SIGHUP for a reload.
_SUPERVISOR_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
# A worker that dies this soon after starting is restarted only after a pause,
# so a worker that cannot start does not turn into a fork loop.
RESTART_PAUSE = 1.0
# Connections the kernel queues before accept (capped by net.core.somaxconn).
# Tornado's default of 128 overflows when many checks arrive at once, and an
# overflowed connection waits seconds for a SYN-ACK retransmission.
LISTEN_BACKLOG = 4096
# With -n, how long the supervisor waits for every worker to say it reloaded before it reports the reload done.
WORKER_RELOAD_WAIT = 5.0
DEFAULT_BIND_ADDRESS = "0.0.0.0"


class StartupError(Exception):
    """The daemon cannot start; the message is one line for stderr."""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hacheck", description="Health-check proxy for HAProxy.")
    parser.add_argument("-c", "--config-file", help="YAML configuration file")
    parser.add_argument("-p", "--port", type=_port, action="append", dest="ports",
                        help="port to listen on; may be repeated (default 3333)")
    parser.add_argument("-B", "--bind-address", action="append", dest="bind_addresses", metavar="ADDRESS",
                        help=f"address to listen on; may be repeated, e.g. -B 127.0.0.1 -B ::1 "
                             f"(default {DEFAULT_BIND_ADDRESS})")
    parser.add_argument("--spool-root", default=DEFAULT_SPOOL_ROOT,
                        help=f"spool directory (default {DEFAULT_SPOOL_ROOT})")
    parser.add_argument("-n", "--num-procs", type=_positive, default=1,
                        help="worker processes sharing the listening ports (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging and one access-log line per request")
    parser.add_argument("-A", "--agent-port", type=_port, action="append", dest="agent_ports", default=[],
                        help="also answer HAProxy's agent-check on this port; may be repeated")
    parser.add_argument("-S", "--no-spool-on-http", dest="spool_on_http", action="store_false",
                        help="HTTP checks ignore downtimes (only /spool reports them): "
                             "downtimes reach HAProxy through the agent only")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration file (-c) as a start would, print one line, "
                             "exit 0 when valid and 1 when not")
    parser.add_argument("--version", action="version", version=f"hacheck {__version__}")
    args = parser.parse_args(argv)
    # Sockets handed over by systemd win over -p; a -p given anyway is named in the log.
    args.ports_given = bool(args.ports)
    if not args.ports:
        args.ports = [3333]
    args.bind_addresses = list(dict.fromkeys(args.bind_addresses or [DEFAULT_BIND_ADDRESS]))
    args.agent_ports = list(dict.fromkeys(args.agent_ports))
    shared = sorted(set(args.agent_ports) & set(args.ports))
    if shared:
        parser.error(f"port {shared[0]} cannot serve both HTTP (-p) and the agent (-A)")
    return args


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except InvalidName as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def bind(args: argparse.Namespace, reuse_port: bool) -> list:
    """The HTTP ports' listening sockets, on every ``-B`` address."""
    return _bind_all(args.ports, args.bind_addresses, reuse_port, "", backlog=LISTEN_BACKLOG)


def bind_agent(args: argparse.Namespace, reuse_port: bool) -> list:
    """The agent ports' listening sockets (same addresses as HTTP)."""
    return _bind_all(args.agent_ports, args.bind_addresses, reuse_port, " (agent)", backlog=LISTEN_BACKLOG)


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


def acquire_sockets(args: argparse.Namespace, handed: systemd.HandedSockets,
                    reuse_port: bool) -> Tuple[list, list]:
    """The HTTP and agent listening sockets: those systemd handed over, else bound as the flags say."""
    sockets = list(handed.http) or bind(args, reuse_port)
    try:
        agent_sockets = list(handed.agent) or bind_agent(args, reuse_port)
    except StartupError:
        if not handed.http:
            for sock in sockets:
                sock.close()
        raise
    return sockets, agent_sockets


def _where(args: argparse.Namespace, ports: List[int], handed: list) -> str:
    """Where a kind of socket listens, for the start-up log line."""
    if handed:
        return ", ".join(map(systemd.describe, handed)) + " (sockets from systemd)"
    return f"{','.join(args.bind_addresses)} port {','.join(map(str, ports))}"


def log_handed_sockets(args: argparse.Namespace, handed: systemd.HandedSockets) -> None:
    """Say once which handed sockets replace which flags."""
    if handed.http and args.ports_given:
        log.info("serving the HTTP socket(s) systemd handed over (%s); -p %s not bound",
                 ", ".join(map(systemd.describe, handed.http)), ",".join(map(str, args.ports)))
    if handed.agent and args.agent_ports:
        log.info("serving the agent socket(s) systemd handed over (%s); -A %s not bound",
                 ", ".join(map(systemd.describe, handed.agent)), ",".join(map(str, args.agent_ports)))


class SystemdNotifier:
    """How a lone process (no -n) reports readiness and reloads: to systemd itself."""

    def ready(self, status: str) -> None:
        systemd.notify_ready(status)

    def reloading(self) -> None:
        systemd.notify_reloading("reloading the configuration")

    def reloaded(self, ok: bool, line: str) -> None:
        systemd.notify_ready(line)


class WorkerNotifier:
    """How a worker reports to its supervisor (which reports to systemd): one byte down a pipe."""

    def __init__(self, ready_fd: int, reload_ack_fd: int):
        self.ready_fd = ready_fd
        self.reload_ack_fd = reload_ack_fd

    def ready(self, status: str) -> None:
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

    def reloading(self) -> None:
        pass

    def reloaded(self, ok: bool, line: str) -> None:
        os.write(self.reload_ack_fd, b"1" if ok else b"0")


def reload_config(config_file: Optional[str], running: Config, apply: Callable[[Config], str], notifier) -> None:
    """SIGHUP: read the configuration file again and ``apply`` a valid one (it returns a note for the log line)."""
    notifier.reloading()
    loaded, line = hacheck.reload.reload(running, config_file)
    if loaded is None:
        log.error("%s", line)
    else:
        line += apply(loaded.config)
        log.info("%s", line)
    notifier.reloaded(loaded is not None, line)


async def serve(args: argparse.Namespace, config: Config, own_ips: frozenset, handed: systemd.HandedSockets,
                reuse_port: bool, notifier, supervisor_pid: Optional[int] = None) -> None:
    """Listen, serve until a stop signal, then let requests in flight finish (bounded) and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a stop signal that arrives once the port answers must stop cleanly.
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    sockets, agent_sockets = acquire_sockets(args, handed, reuse_port)
    app = make_app(config, Spool(args.spool_root), own_ips=own_ips, access_log=args.verbose,
                   with_mutornadomon=True, spool_on_http=args.spool_on_http)
    state = app.settings["hacheck_state"]
    throttle_tornado_connection_lines(state.warnings)
    server = hacheck.server.HTTPServer(app, limits=ConnectionLimits.from_config(config), warnings=state.warnings,
                                       xheaders=False)
    server.add_sockets(sockets)
    agent = AgentServer(state.spool, lambda: state.config, activity=state.activity, metrics=state.metrics,
                        warnings=state.warnings)

    def apply_config(new_config: Config) -> str:
        state.apply_config(new_config)
        server.apply_config(new_config)
        return ""
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_config(args.config_file, state.config, apply_config,
                                                                 notifier))
    await agent.start(agent_sockets)
    if agent_sockets:
        log.info("agent-check answers on %s%s", _where(args, args.agent_ports, handed.agent),
                 "; HTTP checks ignore downtimes (-S)" if not args.spool_on_http else "")
    elif not args.spool_on_http:
        log.warning("-S without -A: HTTP checks ignore downtimes and no agent port reports them")
    listening = _where(args, args.ports, handed.http)
    log.info("hacheck %s listening on %s (pid %d)", __version__, listening, os.getpid())
    # Garbage collection's full passes stop the event loop for as long as they take: with a
    # thousand checks in flight that was 50-100 ms, several times a second, and every request
    # waited. Everything made so far (modules, the application) lives as long as the process
    # and is left out of them; and a full pass comes after 100 younger ones instead of 10
    # (young passes stay as frequent, so short-lived cycles go as soon as before).
    gc.freeze()
    gc.set_threshold(700, 10, 100)
    notifier.ready(f"listening on {listening}")
    if supervisor_pid is not None:
        # A worker whose supervisor was killed outright stops too instead of lingering on the port.
        def stop_when_orphaned() -> None:
            if os.getppid() != supervisor_pid:
                log.warning("supervisor %d is gone; stopping", supervisor_pid)
                metrics.remove_orphaned_multiprocess_dir()
                stop.set()
        orphan_watch = tornado.ioloop.PeriodicCallback(stop_when_orphaned, 1000)
        orphan_watch.start()
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
    # A connection accepted just before the stop may not have sent its request yet: closing it at
    # once would answer nothing (HAProxy: a failed check). It gets stop_grace to send it;
    # each connection closes once answered.
    server.finish_connections()
    idle_deadline = min(deadline, loop.time() + grace)
    while server.unanswered() > 0 and loop.time() < idle_deadline:
        await asyncio.sleep(0.05)
    server.close_unanswered()
    while server.answering() > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    server.close_all()
    await agent.wait_closed(max(0.1, deadline - loop.time()))
    state.close()
    log.info("stopped")


def run_worker(args, config, own_ips, handed: systemd.HandedSockets, reuse_port: bool, notifier,
               supervisor_pid: Optional[int] = None) -> int:
    try:
        asyncio.run(serve(args, config, own_ips, handed, reuse_port, notifier, supervisor_pid))
    except StartupError as err:
        log.error("%s", err)
        if config.log_path not in ("stdout", "stderr"):
            # The log is a file: say it also where the person starting the daemon looks.
            sys.stderr.write(f"hacheck: {err}\n")
        return 1
    return 0


def supervise(args, config, own_ips, handed: systemd.HandedSockets) -> int:
    """Run ``-n`` workers; restart any that dies unexpectedly; pass reloads and stops on to them.

    The workers share the sockets systemd handed over, or else each binds the ports (SO_REUSEPORT).
    """
    workers = {}  # pid -> start time
    stopping = []
    running_config = config
    reloads = 0  # how many reloads the supervisor has passed on so far
    starting = set()  # workers forked but not ready yet: they cannot reload until they are
    supervisor_pid = os.getpid()
    # Every worker writes one byte here per reload: b"1" reloaded, b"0" kept its configuration.
    reload_ack_read, reload_ack_write = os.pipe()
    os.set_blocking(reload_ack_read, False)

    def spawn() -> int:
        ready_read, ready_write = os.pipe()
        reloads_at_fork = reloads
        # A stop or reload signal that came between the fork and the child's own handlers would run
        # the supervisor's handler in the child and be lost (a worker nobody stops), or come to the
        # supervisor before it knows the new pid: held back on both sides until each is ready for it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            os.close(reload_ack_read)
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            # Until the worker's own handler is in place, a reload must neither stop it nor run the supervisor's.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
            code = 1
            try:
                code = run_worker(args, running_config, own_ips, handed, True,
                                  WorkerNotifier(ready_write, reload_ack_write), supervisor_pid)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_write)
        workers[pid] = time.monotonic()
        starting.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
        with os.fdopen(ready_read, "rb") as ready_pipe:
            became_ready = ready_pipe.read(1) == b"1"
        starting.discard(pid)
        if became_ready and reloads != reloads_at_fork:
            os.kill(pid, signal.SIGHUP)  # it started with the configuration from before the reload
        return pid if became_ready else -pid

    def forward(signum, frame) -> None:
        stopping.append(signum)
        for pid in list(workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def reload_workers(new_config: Config) -> str:
        """Keep ``new_config`` for new workers, SIGHUP every worker and wait (bounded) until each has answered.

        Returns a note for the log line.
        """
        nonlocal running_config, reloads
        running_config = new_config
        reloads += 1
        try:
            while os.read(reload_ack_read, 4096):  # answers that came too late for an earlier reload
                pass
        except BlockingIOError:
            pass
        ready = [pid for pid in workers if pid not in starting]
        expected = len(ready)
        for pid in ready:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                expected -= 1
        answers = b""
        deadline = time.monotonic() + WORKER_RELOAD_WAIT
        while len(answers) < expected and not stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if select.select([reload_ack_read], [], [], remaining)[0]:
                try:
                    answers += os.read(reload_ack_read, 4096)
                except BlockingIOError:
                    pass
        reloaded = answers.count(b"1")
        note = f"; all {reloaded} workers reloaded" if reloaded == len(ready) else \
            f"; only {reloaded} of {len(ready)} workers reloaded (see their log lines)"
        if starting:
            note += f"; {len(starting)} starting worker(s) reload once ready"
        return note

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_config(args.config_file, running_config,
                                                                     reload_workers, SystemdNotifier()))
    for _ in range(args.num_procs):
        if stopping:
            break
        if spawn() < 0 and not stopping:
            forward(signal.SIGTERM, None)
            _reap_all(workers)
            return 1
    if not stopping:
        systemd.notify_ready(f"serving with {len(workers)} workers")
    exit_code = 0
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = workers.pop(pid, None)
        if started is None:
            continue
        metrics.worker_exited(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d exited unexpectedly (%s); starting a new one", pid,
                  f"signal {-code}" if code < 0 else f"exit code {code}")
        if time.monotonic() - started < RESTART_PAUSE:
            time.sleep(RESTART_PAUSE)
        if stopping:
            continue
        if spawn() < 0 and not stopping:
            log.error("replacement worker could not start")
            exit_code = 1
    return exit_code


def _reap_all(workers: dict) -> None:
    while workers:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            return
        workers.pop(pid, None)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.check_config:
        code, line = hacheck.reload.check_config(args.config_file)
        (sys.stdout if code == 0 else sys.stderr).write(line + "\n")
        return code
    # A reload signal that comes before the daemon can reload must not stop it (the default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        loaded = hacheck.reload.load(args.config_file)
        hacheck.reload.setup_logging(loaded.log_handler, args.verbose)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        hacheck.reload.apply_rlimit(loaded.config)
        Spool(args.spool_root).ensure_root()
        handed = systemd.listen_sockets()
    except (ConfigError, SpoolError, systemd.SocketActivationError) as err:
        sys.stderr.write(f"hacheck: {err}\n")
        return 1
    log_handed_sockets(args, handed)
    config = loaded.config
    own_ips = own_ip_addresses()
    if args.num_procs == 1:
        metrics.clear_multiprocess_env()
        return run_worker(args, config, own_ips, handed, False, SystemdNotifier())
    # Before any worker imports prometheus_client: every worker's metrics go to one private directory.
    try:
        metrics_dir = metrics.create_multiprocess_dir()
    except OSError as err:
        sys.stderr.write(f"hacheck: cannot create a directory for the workers' metrics: {err}\n")
        return 1
    try:
        return supervise(args, config, own_ips, handed)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
