"""The ``hacheck`` command's flags, parsed once into one frozen object.

``StartupOptions`` is what the flags say; ``Startup`` adds what the process
learns before it serves (the sockets systemd handed over, this machine's own
addresses). Both are built once in ``main`` and handed down to the serving
process or the supervisor and its workers; nothing changes them afterwards
(a reload changes the configuration, never these).
"""

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from hacheck import __version__
from hacheck.names import InvalidName, parse_port
from hacheck.process import systemd
from hacheck.spool import DEFAULT_SPOOL_ROOT

DEFAULT_PORT = 3333
DEFAULT_BIND_ADDRESS = "0.0.0.0"


@dataclass(frozen=True)
class StartupOptions:
    """The flags of one ``hacheck`` run (docs/daemon.md, "Flags")."""

    config_file: Optional[str] = None
    ports: Tuple[int, ...] = (DEFAULT_PORT,)
    # Whether -p was given: sockets handed over by systemd win over it, and the log says so.
    ports_given: bool = False
    bind_addresses: Tuple[str, ...] = (DEFAULT_BIND_ADDRESS,)
    spool_root: str = DEFAULT_SPOOL_ROOT
    num_procs: int = 1
    verbose: bool = False
    agent_ports: Tuple[int, ...] = ()
    # False with -S: HTTP checks leave downtimes to the agent port.
    spool_on_http: bool = True
    check_config: bool = False


@dataclass(frozen=True)
class Startup:
    """What every serving process starts from: the options, the sockets systemd handed over, this
    machine's own addresses (checks aimed at them go to 127.0.0.1), and the workers' shared directory."""

    options: StartupOptions
    handed: systemd.HandedSockets
    own_ips: frozenset
    # With -n: the private directory where the workers share the load balancers' reports (None: one process).
    lb_view_dir: Optional[str] = None


def parse(argv: Optional[List[str]]) -> StartupOptions:
    """The options the command line ``argv`` gives (None: ``sys.argv``); exits 2 with one line on a usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    agent_ports = tuple(dict.fromkeys(args.agent_ports))
    ports = tuple(args.ports or (DEFAULT_PORT,))
    shared = sorted(set(agent_ports) & set(ports))
    if shared:
        parser.error(f"port {shared[0]} cannot serve both HTTP (-p) and the agent (-A)")
    return StartupOptions(
        config_file=args.config_file, ports=ports, ports_given=bool(args.ports),
        bind_addresses=tuple(dict.fromkeys(args.bind_addresses or [DEFAULT_BIND_ADDRESS])),
        spool_root=args.spool_root, num_procs=args.num_procs, verbose=args.verbose, agent_ports=agent_ports,
        spool_on_http=args.spool_on_http, check_config=args.check_config,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hacheck", description="Health-check proxy for HAProxy.")
    parser.add_argument("-c", "--config-file", help="YAML configuration file")
    parser.add_argument("-p", "--port", type=_port, action="append", dest="ports",
                        help=f"port to listen on; may be repeated (default {DEFAULT_PORT})")
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
    return parser


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except InvalidName as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)
