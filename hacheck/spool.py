"""The spool: one file per operator downtime, shared by the daemon and the tools.

A file named ``all``, ``<service>``, ``<service>:<port>`` or
``<service>:<host>:<port>`` in the spool root means "down". Its content is JSON
``{"reason", "expiration", "creation"}`` (plus ``"state": "drain"`` for a
downtime that drains instead of cutting), or, for files written by older
versions, plain text that is the whole reason. This module knows nothing about
HTTP or Tornado; it never deletes a file while reading (a reader that removed
an expired downtime could race an operator renewing it).
"""

import concurrent.futures
import datetime
import errno
import functools
import json
import math
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, FrozenSet, Iterable, Iterator, List, Optional, Tuple, TypeVar

from hacheck.names import InvalidName, parse_port

DEFAULT_SPOOL_ROOT = "/var/spool/hacheck"
ALL = "all"
LOCALHOST = "127.0.0.1"

# A spool file is a few hundred bytes; anything longer is read as a prefix so a
# huge or hostile file cannot cost unbounded memory.
MAX_READ_BYTES = 64 * 1024

# The reason of an entry that is not a regular file (a link, a directory, a FIFO, ...):
# it says what the entry is, never what it points to.
_NOT_A_REGULAR_FILE = "unreadable spool entry: not a regular file"
_CUT_MARK = "..."

# Temporary files of atomic writes start with this, and listings skip them.
_TEMP_PREFIX = ".#hacheck-tmp."

# fsync errors that mean "this file system cannot sync a directory" (it then
# has nothing to make durable that way), not that the sync failed.
_NO_DIRECTORY_FSYNC = (errno.EINVAL, errno.ENOTSUP)

# What a downtime does: "down" cuts the service off; "drain" lets established
# connections finish but takes no new ones. Files without a state are "down",
# and "down" is never written, so older readers see a drain as a downtime.
STATE_DOWN = "down"
STATE_DRAIN = "drain"
DOWNTIME_STATES = (STATE_DOWN, STATE_DRAIN)


class InvalidServiceName(ValueError):
    """A service name that cannot be a spool file name."""


class InvalidExpiration(ValueError):
    """An expiration that is neither a unix time nor a duration; the message says what to write."""


class SpoolError(OSError):
    """The spool root cannot be created, read or written; the message names the path."""


@dataclass(frozen=True)
class Downtime:
    """One operator downtime as read from a spool file."""

    reason: str = ""
    expiration: Optional[float] = None
    creation: Optional[float] = None
    state: str = STATE_DOWN

    @property
    def is_drain(self) -> bool:
        return self.state == STATE_DRAIN

    def is_expired(self, now: Optional[float] = None) -> bool:
        if self.expiration is None:
            return False
        return self.expiration <= (time.time() if now is None else now)

    def to_json(self) -> str:
        record = {"reason": self.reason, "expiration": self.expiration, "creation": self.creation}
        if self.is_drain:
            record["state"] = STATE_DRAIN
        return json.dumps(record)


@dataclass(frozen=True)
class SpoolEntry:
    """A downtime together with what it applies to (``host``/``port`` None when unset)."""

    service: str
    host: Optional[str]
    port: Optional[int]
    downtime: Downtime

    @property
    def filename(self) -> str:
        return spool_filename(self.service, self.port, self.host)


def validate_service_name(service: str) -> None:
    """Refuse names that are not a single, ordinary file name inside the spool root."""
    if not isinstance(service, str) or service in ("", ".", ".."):
        raise InvalidServiceName(f"invalid service name {service!r}")
    if "/" in service or "\0" in service:
        raise InvalidServiceName(f"invalid service name {service!r}: '/' and NUL are not allowed")
    if service.startswith(_TEMP_PREFIX):
        raise InvalidServiceName(f"invalid service name {service!r}: reserved prefix")


def spool_filename(service: str, port: Optional[int] = None, host: Optional[str] = None) -> str:
    """The file name of a downtime; a host of 127.0.0.1 is the same as no host."""
    validate_service_name(service)
    if port is None:
        if host not in (None, "", LOCALHOST):
            raise ValueError("a downtime for a host needs a port too")
        return service
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}")
    if host in (None, "", LOCALHOST):
        return f"{service}:{port}"
    if "/" in host or "\0" in host:
        raise ValueError(f"invalid host {host!r}")
    return f"{service}:{host}:{port}"


def parse_filename(name: str) -> Tuple[str, Optional[str], Optional[int]]:
    """Split a spool file name back into (service, host, port).

    Names whose suffix is not a port are a plain service name, so legacy files
    with odd names still list as downtimes.
    """
    service, sep, rest = name.partition(":")
    if not sep:
        return name, None, None
    host, sep, port_text = rest.rpartition(":")
    try:
        port = parse_port(port_text, minimum=0)
    except InvalidName:
        return name, None, None
    # Only a port as spool_filename writes it (no leading zeros): a listed entry names the very file.
    if str(port) != port_text:
        return name, None, None
    return service, (host if sep else None), port


# A duration from now, as the tools and POST /spool take it: 90s, 30m, 1.5h, 1d.
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A bare number at or before this (2001-01-01 UTC) is not a unix time anyone means: "-e 3600" is a
# duration without its unit. A later time already past is an expired downtime, written as asked.
EARLIEST_EXPIRATION = 978307200.0


def parse_expiration(text: str, now: Optional[float] = None) -> float:
    """A downtime's expiration as a unix time: a unix time after 2001, or now plus a duration (90s, 30m, 2h, 1d).

    The time may be already past (the downtime is then written expired); InvalidExpiration otherwise.
    """
    now = time.time() if now is None else now
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        seconds = float(duration.group(1)) * _DURATION_UNITS[duration.group(2)]
        if seconds <= 0:
            raise InvalidExpiration(f"expiration {text!r}: a duration must be longer than zero")
        return now + seconds
    try:
        expiration = float(text)
    except ValueError:
        raise InvalidExpiration(
            f"expiration {text[:40]!r} is neither a unix time nor a duration such as 90s, 30m, 2h or 1d"
        ) from None
    if not math.isfinite(expiration):
        raise InvalidExpiration(f"expiration {text!r} is not a finite time")
    if expiration <= EARLIEST_EXPIRATION:
        raise InvalidExpiration(f"expiration {text} ({utc_text(expiration)}) is in the past; "
                                f"for a duration write a unit, e.g. {text}s")
    return expiration


def utc_text(timestamp: float) -> str:
    """A unix time for people, e.g. ``2026-01-01 00:00:00 UTC``."""
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _as_time(value) -> Optional[float]:
    """A unix time from JSON, or None for anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer too big for a float
        return None
    return value if math.isfinite(value) else None


def parse_downtime(content: bytes) -> Downtime:
    """Read a spool file's bytes; never raises.

    JSON objects give their fields (wrong types are ignored); anything else,
    empty, binary or plain text, is a legacy file whose whole content is the reason.
    """
    text = content.decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        record = None
    if not isinstance(record, dict):
        return Downtime(reason=text.rstrip("\r\n"))
    reason = record.get("reason")
    if reason is None:
        reason = ""
    elif not isinstance(reason, str):
        reason = json.dumps(reason)
    return Downtime(
        reason=reason,
        expiration=_as_time(record.get("expiration")),
        creation=_as_time(record.get("creation")),
        # Anything but "drain" (missing, unknown, wrong type) is the safe side: down.
        state=STATE_DRAIN if record.get("state") == STATE_DRAIN else STATE_DOWN,
    )


def shown_reason(reason: str, limit: int) -> str:
    """A downtime's reason as clients see it (HTTP answers, the agent): at most ``limit`` characters.

    The one rule for cutting a reason short; a cut reason ends with "...". The tools show reasons whole.
    """
    if len(reason) <= limit:
        return reason
    if limit <= len(_CUT_MARK):
        return reason[:limit]
    return reason[:limit - len(_CUT_MARK)] + _CUT_MARK


# A directory listing is trusted again only when the directory last changed at
# least this long before it was read: file systems stamp times from a coarse
# clock, so a change in the same tick as the listing could leave the stamp as it was.
LISTING_SETTLE_SECONDS = 2.0
# And never for longer than this, whatever the stat says (a clock stepped back,
# a file system that does not stamp directories): a change counts within a second.
LISTING_MAX_AGE_SECONDS = 1.0


@dataclass(frozen=True)
class _Listing:
    """The spool root's names with the directory stat they were read under."""

    identity: Tuple[int, int, int, int]  # device, inode, mtime and ctime in nanoseconds
    names: FrozenSet[str]
    expires_at: float  # time.monotonic()

    @staticmethod
    def identity_of(status: os.stat_result) -> Tuple[int, int, int, int]:
        return status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns

    @classmethod
    def of(cls, status: os.stat_result, names: FrozenSet[str]) -> Optional["_Listing"]:
        """A reusable listing, or None while the directory changed too recently to trust its stamps.

        Every later creation, removal or rename in the directory changes its
        mtime and ctime to a later tick, so an unchanged stat means unchanged names.
        """
        if not _settled(status):
            return None
        return cls(cls.identity_of(status), names, time.monotonic() + LISTING_MAX_AGE_SECONDS)


def _settled(status: os.stat_result) -> bool:
    """Whether the directory last changed long enough ago for its stat to stand for its content."""
    last_change_ns = max(status.st_mtime_ns, status.st_ctime_ns)
    return time.time_ns() - last_change_ns >= LISTING_SETTLE_SECONDS * 1e9


# /metrics reads every file again at most this long after the last read even when
# the directory's stat did not change: a file rewritten in place (older tools did
# that) changes no stat of the directory.
ENTRIES_MAX_AGE_SECONDS = 30.0


@dataclass(frozen=True)
class _EntriesSnapshot:
    """Every downtime in the spool root, expired ones too, with the directory stat they were read under."""

    identity: Tuple[int, int, int, int]
    entries: Tuple[SpoolEntry, ...]
    expires_at: float  # time.monotonic()

    def current(self, status: os.stat_result) -> bool:
        return time.monotonic() < self.expires_at and self.identity == _Listing.identity_of(status)


@functools.lru_cache(maxsize=4096)
def _candidates(service: str, port: Optional[int], host: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """(name, file name) of the entries that can keep ``service`` down, in the order they are looked at.

    The one place the lookup order is declared: ``all``, the service, the service on
    the port, then on the host and port. A check that names a host (X-Nerve-Check-IP,
    send-state's ``address=``) is still reached by a per-port downtime: nerve-tools'
    updown writes ``hadown -P <port> <service>`` without a host. The broadest entry is
    looked at first, as the originals did, so the one named in an answer stays theirs.
    Remembered: HAProxy asks about the same few services over and over.
    """
    candidates = [(ALL, None, None), (service, None, None)]
    if port is not None:
        candidates.append((service, port, None))
        if host not in (None, "", LOCALHOST):
            candidates.append((service, port, host))
    return tuple((name, spool_filename(name, entry_port, entry_host)) for name, entry_port, entry_host in candidates)


# The kind of the throttled ERROR line for a spool root that cannot be read (HTTP checks and the agent alike).
UNREADABLE_WARNING = "spool unreadable"


def report_unreadable(warnings, err: SpoolError) -> None:
    """Log, at most once per ``log_repeat_interval`` (``warnings`` is the daemon's ThrottledLog), that
    the root cannot be read and that answers go on as if nothing were down, as the originals did:
    an unreadable root is usually a packaging or permission mistake made on every host at once."""
    warnings.error(UNREADABLE_WARNING, "%s: downtimes are ignored, every check and agent request is answered "
                   "as if nothing were down (/status spool.readable, /metrics hacheck_spool_readable)", err)


class Spool:
    """The spool directory: reading, atomic writing, and listing of downtimes."""

    def __init__(self, root: str = DEFAULT_SPOOL_ROOT):
        self.root = root
        self._listing: Optional[_Listing] = None
        self._entries_snapshot: Optional[_EntriesSnapshot] = None

    def ensure_root(self, mode: int = 0o750) -> None:
        """Create the root when missing; raise SpoolError naming it when that fails."""
        try:
            os.makedirs(self.root, mode=mode, exist_ok=True)
        except FileExistsError as err:  # something that is not a directory is in the way
            raise SpoolError(f"spool path {self.root} is not a directory") from err
        except OSError as err:
            raise SpoolError(f"cannot create spool directory {self.root}: {err.strerror}") from err
        if not os.path.isdir(self.root):
            raise SpoolError(f"spool path {self.root} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.root} is not readable")

    def check_root(self) -> bool:
        """True when the root is a readable directory, False when it does not exist.

        Anything else (a regular file, a path through one, no permission) raises
        SpoolError naming the path, so a reader can tell "nothing is down" from
        "cannot tell".
        """
        try:
            os.stat(self.root)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise SpoolError(f"cannot use spool directory {self.root}: {err.strerror}") from err
        if not os.path.isdir(self.root):
            raise SpoolError(f"spool path {self.root} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.root} is not readable")
        return True

    def unreadable_reason(self) -> Optional[str]:
        """Why downtimes cannot be looked up in the root (as SpoolError says it), or None when they can.

        A missing root can be: nothing is down. Looks the way a lookup does (a name
        in the root), so it agrees with ``find_downtime`` whoever runs it, root included.
        """
        try:
            os.lstat(os.path.join(self.root, ALL))
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"cannot read spool directory {self.root}: {err.strerror}"
        return None

    def path(self, service: str, port: Optional[int] = None, host: Optional[str] = None) -> str:
        return os.path.join(self.root, spool_filename(service, port, host))

    def read(self, service: str, port: Optional[int] = None, host: Optional[str] = None) -> Optional[Downtime]:
        """The downtime stored for exactly this entry, expired or not; None when there is none."""
        return self._read_file(self.path(service, port, host))

    def _read_file(self, path: str) -> Optional[Downtime]:
        """The downtime in the entry at ``path``; None when there is none; SpoolError when the spool
        root cannot be read.

        Only a regular file is read, and never through a symbolic link: a link
        could point at any file the daemon can read (its configuration, say), and
        the reason is shown to clients. Such an entry, like any unreadable one,
        is a downtime whose reason says only what kind of entry it is.
        """
        try:
            # lstat first: opening a FIFO would block the daemon until a writer
            # came, and opening a device could do anything.
            try:
                mode = os.lstat(path).st_mode
            except (PermissionError, NotADirectoryError) as err:
                # Whether a file is there depends only on the directory: the whole spool is unreadable.
                raise SpoolError(f"cannot read spool directory {self.root}: {err.strerror}") from None
            if not stat.S_ISREG(mode):
                return Downtime(reason="unreadable spool entry: a directory" if stat.S_ISDIR(mode)
                                else _NOT_A_REGULAR_FILE)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            with open(fd, "rb") as spool_file:
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
                    return Downtime(reason=_NOT_A_REGULAR_FILE)
                return parse_downtime(spool_file.read(MAX_READ_BYTES))
        except FileNotFoundError:
            return None
        except SpoolError:
            raise  # an OSError too, but about the whole spool, not this entry
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:  # no file can have this name
                return None
            if err.errno == errno.ELOOP:  # swapped for a link since the lstat (O_NOFOLLOW)
                return Downtime(reason=_NOT_A_REGULAR_FILE)
            # Present but unreadable (permissions, out of descriptors, ...): a file
            # there means down, so stay on the safe side and say why.
            return Downtime(reason=f"unreadable spool entry: {err.strerror}")

    def active(self, service: str, port: Optional[int] = None, host: Optional[str] = None,
               now: Optional[float] = None) -> Optional[Downtime]:
        """The downtime of exactly this entry when it has not expired."""
        downtime = self.read(service, port, host)
        if downtime is None or downtime.is_expired(now):
            return None
        return downtime

    def find_downtime(self, service: str, port: Optional[int] = None, host: Optional[str] = None,
                      now: Optional[float] = None) -> Optional[Tuple[str, Downtime]]:
        """The first downtime that keeps ``service`` (on ``host``:``port``) down.

        Looks at ``all``, then the service, then the service on that port, then on
        that host and port (see ``_candidates``). Returns (name of the entry that
        matched, downtime), or None when up. A downtime that cuts wins over one that
        drains, wherever each is found. SpoolError when the root cannot be read:
        what that means for an answer is the caller's choice (see ``report_unreadable``).
        """
        now = time.time() if now is None else now
        present = self._names_present()
        first_drain = None
        for name, filename in _candidates(service, port, host):
            if present is not None and filename not in present:
                continue
            downtime = self._read_file(os.path.join(self.root, filename))
            if downtime is None or downtime.is_expired(now):
                continue
            if not downtime.is_drain:
                return name, downtime
            if first_drain is None:
                first_drain = (name, downtime)
        return first_drain

    def _names_present(self) -> Optional[FrozenSet[str]]:
        """The names in the spool root now, or None when it cannot be listed.

        The hot path looks the candidates up in a listing instead of trying each
        file: a missing file then costs no failed stat() and no exception. The
        listing is reused while one stat() of the directory shows it unchanged
        (see ``_Listing``), so an unchanged spool costs one system call per request.
        """
        try:
            status = os.stat(self.root)
        except OSError:
            return None  # fall back to trying each file, which reports why it is unreadable
        listing = self._listing
        if listing is not None and time.monotonic() < listing.expires_at \
                and listing.identity == _Listing.identity_of(status):
            return listing.names
        try:
            names = frozenset(os.listdir(self.root))
        except OSError:
            return None
        self._listing = _Listing.of(status, names)
        return names

    def down(self, service: str, reason: str = "", expiration: Optional[float] = None,
             port: Optional[int] = None, host: Optional[str] = None,
             creation: Optional[float] = None, now: Optional[float] = None,
             state: str = STATE_DOWN) -> Downtime:
        """Write a downtime atomically; ``state`` "drain" drains instead of cutting.

        Downing again with the same reason (and state) keeps the first creation
        time, so a renewal extends the expiration without resetting "down since".
        """
        if state not in DOWNTIME_STATES:
            raise ValueError(f"invalid downtime state {state!r} (expected one of {', '.join(DOWNTIME_STATES)})")
        now = time.time() if now is None else now
        path = self.path(service, port, host)
        if creation is None:
            previous = self._read_file(path)
            if (previous is not None and previous.reason == reason and previous.state == state
                    and not previous.is_expired(now)):
                creation = previous.creation
        downtime = Downtime(reason=reason, expiration=expiration,
                            creation=now if creation is None else creation, state=state)
        self._write_atomically(path, downtime.to_json().encode("utf-8"))
        return downtime

    def up(self, service: str, port: Optional[int] = None, host: Optional[str] = None) -> bool:
        """Remove a downtime; True when there was one. Not being down is not an error."""
        path = self.path(service, port, host)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError as err:
            raise SpoolError(f"cannot remove {path}: it is a directory") from err
        except OSError as err:
            raise SpoolError(f"cannot remove {path}: {err.strerror}") from err
        self._sync_root(f"removed {path}")
        return True

    def _sync_root(self, done: str) -> None:
        """fsync the spool root, so the rename or unlink just made in it survives a power loss.

        A file's own fsync makes its content durable, not its name: until the
        directory is synced, a crash can bring back a removed downtime or lose
        a new one. ``done`` says what was done, for the error.
        """
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise SpoolError(f"{done}, but cannot open {self.root} to make it durable: {err.strerror}") from err
        try:
            os.fsync(fd)
        except OSError as err:
            if err.errno not in _NO_DIRECTORY_FSYNC:
                raise SpoolError(f"{done}, but cannot make it durable: fsync {self.root}: {err.strerror}") from err
        finally:
            os.close(fd)

    def _write_atomically(self, path: str, content: bytes) -> None:
        """Write to a temporary file in the same directory, then rename over the target."""
        try:
            fd, temp_path = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.root)
        except OSError as err:
            raise SpoolError(f"cannot write to spool directory {self.root}: {err.strerror}") from err
        try:
            with os.fdopen(fd, "wb") as temp_file:
                temp_file.write(content)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.chmod(temp_path, 0o644)
            os.replace(temp_path, path)
        except OSError as err:
            try:
                os.unlink(temp_path)
            except OSError:
                pass
            raise SpoolError(f"cannot write {path}: {err.strerror}") from err
        self._sync_root(f"wrote {path}")

    def entries(self, now: Optional[float] = None, include_expired: bool = False) -> List[SpoolEntry]:
        """Every downtime in the spool, sorted by file name."""
        now = time.time() if now is None else now
        return sorted(self._iter_entries(now, include_expired), key=lambda entry: entry.filename)

    def entries_for_count(self, now: Optional[float] = None) -> List[SpoolEntry]:
        """The active downtimes, unsorted, reading the files again only when the directory changed.

        For ``/metrics``, scraped often: with thousands of downtimes, reading
        every file per scrape would hold the event loop. Expired downtimes stay
        in the snapshot and are left out here, since expiring changes no stat.
        """
        now = time.time() if now is None else now
        try:
            status = os.stat(self.root)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise SpoolError(f"cannot read spool directory {self.root}: {err.strerror}") from err
        snapshot = self._entries_snapshot
        if snapshot is not None and snapshot.current(status):
            entries: Iterable[SpoolEntry] = snapshot.entries
        else:
            entries = tuple(self._iter_entries(now, include_expired=True))
            self._entries_snapshot = _EntriesSnapshot(
                _Listing.identity_of(status), entries, time.monotonic() + ENTRIES_MAX_AGE_SECONDS,
            ) if _settled(status) else None
        return [entry for entry in entries if not entry.downtime.is_expired(now)]

    def _iter_entries(self, now: float, include_expired: bool) -> Iterator[SpoolEntry]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        except OSError as err:
            raise SpoolError(f"cannot read spool directory {self.root}: {err.strerror}") from err
        for name in names:
            if name.startswith(_TEMP_PREFIX):
                continue
            downtime = self._read_file(os.path.join(self.root, name))
            if downtime is None or (not include_expired and downtime.is_expired(now)):
                continue
            service, host, port = parse_filename(name)
            yield SpoolEntry(service=service, host=host, port=port, downtime=downtime)


Changed = TypeVar("Changed")


class SpoolWriter:
    """Runs the daemon's spool changes on a thread of their own, one after another in the order they came.

    A change fsyncs the file and the directory, which takes as long as the disk
    does; on the event loop it would hold every other check for that long.
    """

    def __init__(self) -> None:
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def submit(self, change: Callable[[], Changed]) -> "concurrent.futures.Future[Changed]":
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-write")
        return self._executor.submit(change)

    def close(self) -> None:
        """Wait for the changes already submitted: a stop must not lose a downtime it acknowledged."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
