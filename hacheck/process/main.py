"""The ``hacheck`` command: flags, configuration, logging and limits, then one serving process or ``-n`` workers."""

import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
from typing import List, Optional

import hacheck.process.reload
from hacheck.config import ConfigError
from hacheck.process import options, systemd
from hacheck.process.server import SystemdNotifier, log_handed_sockets, run_worker
from hacheck.process.supervisor import supervise
from hacheck.spool import Spool, SpoolError
from hacheck.web import metrics
from hacheck.web.app import own_ip_addresses

log = logging.getLogger("hacheck")


def main(argv: Optional[List[str]] = None) -> int:
    flags = options.parse(argv)
    if flags.check_config:
        result = hacheck.process.reload.check_config(flags.config_file)
        (sys.stdout if result.code == 0 else sys.stderr).write(result.line + "\n")
        if result.refused_status is not None:
            # As the unit's ExecReload (NotifyAccess=exec), the refusal becomes the service's status:
            # otherwise `systemctl status` would go on showing the last successful reload.
            systemd.notify_status(result.refused_status)
        return result.code
    # A reload signal that comes before the daemon can reload must not stop it (the default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        loaded = hacheck.process.reload.load(flags.config_file)
        hacheck.process.reload.setup_logging(loaded.log_handler, flags.verbose)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        hacheck.process.reload.apply_rlimit(loaded.config)
        Spool(flags.spool_root).ensure_root()
        handed = systemd.listen_sockets()
    except (ConfigError, SpoolError, systemd.SocketActivationError) as err:
        sys.stderr.write(f"hacheck: {err}\n")
        return 1
    log_handed_sockets(flags, handed)
    config = loaded.config
    startup = options.Startup(options=flags, handed=handed, own_ips=own_ip_addresses())
    if flags.num_procs == 1:
        metrics.clear_multiprocess_env()
        return run_worker(startup, config, False, SystemdNotifier())
    # Before any worker imports prometheus_client: every worker's metrics go to one private directory.
    try:
        metrics_dir = metrics.create_multiprocess_dir()
    except OSError as err:
        sys.stderr.write(f"hacheck: cannot create a directory for the workers' metrics: {err}\n")
        return 1
    try:
        lb_view_dir = tempfile.mkdtemp(prefix="hacheck-lb-view-")
    except OSError as err:
        metrics.remove_multiprocess_dir(metrics_dir)
        sys.stderr.write(f"hacheck: cannot create a directory for the workers' load balancer reports: {err}\n")
        return 1
    try:
        return supervise(dataclasses.replace(startup, lb_view_dir=lb_view_dir), config)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)
        shutil.rmtree(lb_view_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
