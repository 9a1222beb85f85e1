"""The ``hacheck`` command: flags, configuration, logging, limits, workers, listening, signals."""

import argparse
import asyncio
import gc
import logging
import logging.handlers
import os
import resource
import signal
import sys
import time
from typing import List, Optional

import tornado.ioloop
import tornado.netutil

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
# A worker that dies this soon after starting is restarted only after a pause,
# so a worker that cannot start does not turn into a fork loop.
RESTART_PAUSE = 1.0
# After healthcheck_timeout, the time a stop gives answers in flight to reach their clients.
STOP_GRACE = 1.0
# Connections the kernel queues before accept (capped by net.core.somaxconn).
# Tornado's default of 128 overflows when many checks arrive at once, and an
# overflowed connection waits seconds for a SYN-ACK retransmission.
LISTEN_BACKLOG = 4096
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
    parser.add_argument("--version", action="version", version=f"hacheck {__version__}")
    args = parser.parse_args(argv)
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


def setup_logging(config: Config, verbose: bool) -> None:
    """Send logs to ``log_path``; a file is reopened when logrotate moves it away."""
    if config.log_path == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif config.log_path == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(config.log_path)
        except OSError as err:
            raise StartupError(f"cannot open log_path {config.log_path} (from {config.source}): "
                               f"{err.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Tornado logs every request at INFO on tornado.access; only -v wants those.
    logging.getLogger("tornado.access").setLevel(logging.INFO if verbose else logging.WARNING)


def apply_rlimit(config: Config) -> None:
    wanted = config.rlimit_nofile
    if wanted is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted == "max":
        wanted = hard
    elif hard != resource.RLIM_INFINITY and wanted > hard:
        raise StartupError(f"{config.source}: key 'rlimit_nofile': {wanted} is above the hard limit {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as err:
        raise StartupError(f"{config.source}: key 'rlimit_nofile': cannot set {wanted}: {err}") from None
    log.debug("open files limit set to %s (was %s, hard limit %s)", wanted, soft, hard)


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


async def serve(args: argparse.Namespace, config: Config, own_ips: frozenset, reuse_port: bool,
                on_ready, supervisor_pid: Optional[int] = None) -> None:
    """Listen, serve until a stop signal, then let requests in flight finish (bounded) and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers first: a stop signal that arrives once the port answers must stop cleanly.
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    sockets = bind(args, reuse_port)
    try:
        agent_sockets = bind_agent(args, reuse_port)
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    app = make_app(config, Spool(args.spool_root), own_ips=own_ips, access_log=args.verbose,
                   with_mutornadomon=True, spool_on_http=args.spool_on_http)
    state = app.settings["hacheck_state"]
    throttle_tornado_connection_lines(state.warnings)
    server = hacheck.server.HTTPServer(app, limits=ConnectionLimits.from_config(config), warnings=state.warnings,
                                       xheaders=False)
    server.add_sockets(sockets)
    agent = AgentServer(state.spool, activity=state.activity, metrics=state.metrics, warnings=state.warnings,
                        max_reason_chars=config.max_reason_chars)
    await agent.start(agent_sockets)
    if args.agent_ports:
        log.info("agent-check answers on %s port %s%s", ",".join(args.bind_addresses),
                 ",".join(map(str, args.agent_ports)),
                 "; HTTP checks ignore downtimes (-S)" if not args.spool_on_http else "")
    elif not args.spool_on_http:
        log.warning("-S without -A: HTTP checks ignore downtimes and no agent port reports them")
    log.info("hacheck %s listening on %s port %s (pid %d)", __version__, ",".join(args.bind_addresses),
             ",".join(map(str, args.ports)), os.getpid())
    # Garbage collection's full passes stop the event loop for as long as they take: with a
    # thousand checks in flight that was 50-100 ms, several times a second, and every request
    # waited. Everything made so far (modules, the application) lives as long as the process
    # and is left out of them; and a full pass comes after 100 younger ones instead of 10
    # (young passes stay as frequent, so short-lived cycles go as soon as before).
    gc.freeze()
    gc.set_threshold(700, 10, 100)
    on_ready()
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
    # Bounded whatever clients do: connections still sending a request (or idle) close at once,
    # answers in flight get healthcheck_timeout plus STOP_GRACE, then everything closes.
    log.info("stopping: no new connections, waiting for %d answer(s) in flight", server.answering())
    deadline = loop.time() + config.healthcheck_timeout + STOP_GRACE
    server.stop()
    agent.stop()
    server.close_unanswered()
    while server.answering() > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    server.close_all()
    await agent.wait_closed(max(0.1, deadline - loop.time()))
    state.close()
    log.info("stopped")


def run_worker(args, config, own_ips, reuse_port: bool, on_ready, supervisor_pid: Optional[int] = None) -> int:
    try:
        asyncio.run(serve(args, config, own_ips, reuse_port, on_ready, supervisor_pid))
    except StartupError as err:
        log.error("%s", err)
        if config.log_path not in ("stdout", "stderr"):
            # The log is a file: say it also where the person starting the daemon looks.
            sys.stderr.write(f"hacheck: {err}\n")
        return 1
    return 0


def supervise(args, config, own_ips) -> int:
    """Run ``-n`` workers that each bind the ports (SO_REUSEPORT); restart any that dies unexpectedly."""
    workers = {}  # pid -> start time
    stopping = []

    supervisor_pid = os.getpid()

    def spawn() -> int:
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)

            def ready() -> None:
                os.write(ready_write, b"1")
                os.close(ready_write)
            code = 1
            try:
                code = run_worker(args, config, own_ips, True, ready, supervisor_pid)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_write)
        workers[pid] = time.monotonic()
        with os.fdopen(ready_read, "rb") as ready_pipe:
            became_ready = ready_pipe.read(1) == b"1"
        return pid if became_ready else -pid

    def forward(signum, frame) -> None:
        stopping.append(signum)
        for pid in list(workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    for _ in range(args.num_procs):
        if stopping:
            break
        if spawn() < 0 and not stopping:
            forward(signal.SIGTERM, None)
            _reap_all(workers)
            return 1
    if not stopping:
        systemd.notify("READY=1")
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
    try:
        config, warnings = Config.load(args.config_file)
        setup_logging(config, args.verbose)
        for warning in warnings:
            log.warning("%s", warning)
        apply_rlimit(config)
        Spool(args.spool_root).ensure_root()
    except (ConfigError, StartupError, SpoolError) as err:
        sys.stderr.write(f"hacheck: {err}\n")
        return 1
    own_ips = own_ip_addresses()
    if args.num_procs == 1:
        metrics.clear_multiprocess_env()
        return run_worker(args, config, own_ips, False, lambda: systemd.notify("READY=1"))
    # Before any worker imports prometheus_client: every worker's metrics go to one private directory.
    try:
        metrics_dir = metrics.create_multiprocess_dir()
    except OSError as err:
        sys.stderr.write(f"hacheck: cannot create a directory for the workers' metrics: {err}\n")
        return 1
    try:
        return supervise(args, config, own_ips)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
