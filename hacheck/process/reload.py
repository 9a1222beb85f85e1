"""The configuration file, read the one way start-up, ``--check-config`` and a reload (SIGHUP) share.

``load`` validates everything a start with that file would need (every key,
``log_path`` openable, ``rlimit_nofile`` within the hard limit), so a file
that passes ``--check-config`` starts and reloads, and one that fails is
refused in all three places with the same line.
"""

import logging
import logging.handlers
import resource
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from hacheck.config import RESTART_KEYS, Config, ConfigError

log = logging.getLogger("hacheck")

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


@dataclass
class LoadedConfig:
    """A validated configuration, the warnings to log about it, and the log handler it asks for."""

    config: Config
    warnings: List[str]
    log_handler: logging.Handler


def load(path: Optional[str]) -> LoadedConfig:
    """Read and validate ``path`` (None: the defaults); ``ConfigError`` names the key and the file."""
    config, warnings = Config.load(path)
    rlimit_target(config)
    return LoadedConfig(config, warnings, open_log_handler(config))


def open_log_handler(config: Config) -> logging.Handler:
    """The handler ``log_path`` asks for; a file is reopened when logrotate moves it away."""
    if config.log_path == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif config.log_path == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(config.log_path)
        except OSError as err:
            raise ConfigError(f"{config.source}: key 'log_path': cannot open {config.log_path}: "
                              f"{err.strerror}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def install_log_handler(handler: logging.Handler) -> None:
    """Make ``handler`` the only one: the previous file (if any) is closed after the switch."""
    root = logging.getLogger()
    old_handlers = list(root.handlers)
    root.addHandler(handler)
    for old in old_handlers:
        root.removeHandler(old)
        old.close()


def setup_logging(handler: logging.Handler, verbose: bool) -> None:
    install_log_handler(handler)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    # Tornado logs every request at INFO on tornado.access; only -v wants those.
    logging.getLogger("tornado.access").setLevel(logging.INFO if verbose else logging.WARNING)


def rlimit_target(config: Config) -> Optional[int]:
    """The open-files soft limit ``rlimit_nofile`` asks for (None: leave it), checked against the hard limit."""
    wanted = config.rlimit_nofile
    if wanted is None:
        return None
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if wanted == "max":
        return hard
    if hard != resource.RLIM_INFINITY and wanted > hard:
        raise ConfigError(f"{config.source}: key 'rlimit_nofile': {wanted} is above the hard limit {hard}")
    return wanted


def apply_rlimit(config: Config) -> None:
    wanted = rlimit_target(config)
    if wanted is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as err:
        raise ConfigError(f"{config.source}: key 'rlimit_nofile': cannot set {wanted}: {err}") from None
    log.debug("open files limit set to %s (was %s, hard limit %s)", wanted, soft, hard)


@dataclass
class CheckResult:
    """What ``hacheck --check-config`` found: its exit code, the line it prints, and the reload status it reports."""

    code: int
    line: str
    # For systemd's status of the service when the check refuses the file (the unit's ExecReload): None when valid.
    refused_status: Optional[str] = None


def check_config(path: Optional[str]) -> CheckResult:
    """``hacheck --check-config``: exit 0 and a line saying the file is valid, or 1 and a line naming the key."""
    try:
        loaded = load(path)
    except ConfigError as err:
        return CheckResult(1, f"hacheck: {err}", failed_reload_line(err))
    loaded.log_handler.close()
    name = path if path is not None else "no configuration file (defaults)"
    notes = "".join(f"; {warning}" for warning in loaded.warnings)
    return CheckResult(0, f"hacheck: {name}: configuration is valid{notes}")


def failed_reload_line(err: ConfigError) -> str:
    """The log line and systemd status of a reload that was refused, by the daemon or by ``--check-config``."""
    return f"reload failed, running configuration kept: {err}"


def reload(running: Config, path: Optional[str]) -> Tuple[Optional[LoadedConfig], str]:
    """Read ``path`` again for a running daemon: (the configuration to apply or None, the log line).

    An invalid file gives None and a line naming the key and the file: the
    running configuration stays. Keys in ``RESTART_KEYS`` keep their running
    values and are named in the line. The new log handler is installed and
    ``rlimit_nofile`` applied before the line is logged, so it reaches the new file.
    """
    try:
        loaded = load(path)
    except ConfigError as err:
        return None, failed_reload_line(err)
    try:
        apply_rlimit(loaded.config)
    except ConfigError as err:
        loaded.log_handler.close()
        return None, failed_reload_line(err)
    held = [key for key in running.changed_keys(loaded.config) if key in RESTART_KEYS]
    loaded.config = loaded.config.replace(**{key: getattr(running, key) for key in held})
    changed = running.changed_keys(loaded.config)
    install_log_handler(loaded.log_handler)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    line = f"reloaded {path or 'the defaults (no configuration file)'}: "
    line += f"changed {', '.join(changed)}" if changed else "nothing changed"
    if held:
        line += f"; kept until a restart: {', '.join(held)}"
    return loaded, line
