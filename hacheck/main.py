"""The ``hacheck`` command: flags, configuration, logging and limits, then one serving process or ``-n`` workers."""

import argparse
import logging
import signal
import sys
from typing import List, Optional

import hacheck.reload
from hacheck import __version__, metrics, systemd
from hacheck.app import own_ip_addresses
from hacheck.config import ConfigError
from hacheck.names import InvalidName, parse_port
from hacheck.server import DEFAULT_BIND_ADDRESS, SystemdNotifier, log_handed_sockets, run_worker
from hacheck.spool import DEFAULT_SPOOL_ROOT, Spool, SpoolError
from hacheck.supervisor import supervise

log = logging.getLogger("hacheck")


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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.check_config:
        result = hacheck.reload.check_config(args.config_file)
        (sys.stdout if result.code == 0 else sys.stderr).write(result.line + "\n")
        if result.refused_status is not None:
            # As the unit's ExecReload (NotifyAccess=exec), the refusal becomes the service's status:
            # otherwise `systemctl status` would go on showing the last successful reload.
            systemd.notify_status(result.refused_status)
        return result.code
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
