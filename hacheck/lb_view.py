"""What every load balancer last said about this host's servers, from HAProxy's ``http-check send-state``.

With ``send-state`` each check carries its sender's view of the server it checks::

    X-Haproxy-Server-State: UP 2/3; address=10.0.0.5; port=8080; name=be_web/srv1; node=lb1;
                            weight=1/2; scur=13/22; qcur=0  (one line)

``LbView`` keeps the last such report per (node, backend, server), with the service and
port of the check that carried it, for ``lb_view_window`` seconds and at most
``lb_view_max_entries`` of them (the oldest go first: a client forging endless node
names cannot grow memory or metric labels). ``/status/lb``, ``/metrics``, ``hastatus --lb``
and ``hadown --wait`` read it.

With ``-n`` every worker keeps the reports it received and publishes them as one file
in a directory the workers share (``publish``, a few times a second, only when something
changed); a reader merges its own reports with the other workers' files, keeping the
newest report per key. So whichever worker answers, the view is the same, a fraction of a
second late at most.
"""

import json
import logging
import os
import re
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 60.0
DEFAULT_MAX_ENTRIES = 10000
# How often a worker publishes its reports to the others (with -n): the lag between workers' views.
PUBLISH_INTERVAL = 0.2
# A node, backend or server name longer than this is not a name HAProxy sent: the report is ignored.
MAX_NAME_CHARS = 255
# The first field: a state word (UP, DOWN, NOLB, "no check"), then an optional "x/y" transition count.
_STATE_PATTERN = re.compile(r"([A-Za-z][A-Za-z ]{0,15}?)(?: ([0-9]{1,9}/[0-9]{1,9}))?")
# The fields of the header the view keeps (address= and port= choose the check's target: handlers).
VIEW_FIELDS = frozenset({"name", "node", "weight", "scur", "qcur"})
# A peer's file larger than this is not read (10,000 entries take about 2 MB).
MAX_PEER_FILE_BYTES = 64 * 1024 * 1024
_SUFFIX = ".json"


class LbReport(NamedTuple):
    """One load balancer's last report on one server, and the check that carried it.

    A named tuple, with the counts kept as sent and read when shown: one is made per check that
    carries the header, and this is the least work to make one.
    """

    node: str
    backend: str
    server: str
    service: str
    port: int
    host: Optional[str]  # the target host whose downtimes the check consulted; None: this machine
    state: str
    transition: Optional[str]  # "1/2" while HAProxy counts towards a change of state
    weight_sent: Optional[str]  # the header's weight=, scur= and qcur= as sent
    scur_sent: Optional[str]
    qcur_sent: Optional[str]
    seen: float  # when the check arrived (unix time)

    @property
    def key(self) -> Tuple[str, str, str]:
        return self.node, self.backend, self.server

    @property
    def routes_traffic(self) -> bool:
        """UP, also while counting towards DOWN ("UP 1/2"): HAProxy still sends it traffic."""
        return self.state == "UP"

    @property
    def weight(self) -> Optional[str]:
        """``1/2`` (the server's weight / the backend's), when sent as two counts."""
        return _ratio(self.weight_sent)

    @property
    def scur(self) -> Optional[int]:
        """The server's current sessions: the number before the "/" of ``scur=13/22``."""
        return _first_count(self.scur_sent)

    @property
    def qcur(self) -> Optional[int]:
        return _first_count(self.qcur_sent)

    def as_json(self) -> dict:
        return {"node": self.node, "backend": self.backend, "server": self.server, "service": self.service,
                "port": self.port, "host": self.host, "state": self.state, "transition": self.transition,
                "weight": self.weight, "scur": self.scur, "qcur": self.qcur, "seen": self.seen}


def _name(text: Optional[str]) -> Optional[str]:
    """``text`` when it can be a name HAProxy sent (printable, bounded), else None."""
    if text and len(text) <= MAX_NAME_CHARS and text.isprintable():
        return text
    return None


def _count(text: str) -> Optional[int]:
    """A count as HAProxy writes it (ASCII digits), or None."""
    if 0 < len(text) <= 9 and text.isdigit() and text.isascii():
        return int(text)
    return None


def _first_count(text: Optional[str]) -> Optional[int]:
    """The number before the "/" of ``scur=13/22``, or a lone number (``qcur=0``); None when malformed."""
    return None if text is None else _count(text.partition("/")[0])


def _ratio(text: Optional[str]) -> Optional[str]:
    """``weight=1/2`` as sent, when it is two counts; else None."""
    if text is None:
        return None
    first, slash, second = text.partition("/")
    return text if slash and _count(first) is not None and _count(second) is not None else None


def report_from_header(state_field: str, fields: Dict[str, str], service: str, port: int, host: Optional[str],
                       seen: float) -> Optional[LbReport]:
    """The report a header's first field (``UP 2/3``) and its ``fields`` (name -> value) make, or None when it
    is not one: no state word, no node, a name without "/" (the check is answered as usual either way).
    Counts are checked when shown (a malformed one shows as null)."""
    node = _name(fields.get("node"))
    backend, slash, server = fields.get("name", "").partition("/")
    if node is None or not slash or _name(backend) is None or _name(server) is None:
        return None
    state = _STATE_PATTERN.fullmatch(state_field)
    if state is None:
        return None
    get = fields.get
    return LbReport(node, backend, server, service, port, host, state.group(1), state.group(2),
                    get("weight"), get("scur"), get("qcur"), seen)


def _worker_alive(path: str) -> bool:
    """Whether the worker that publishes ``path`` (named by its pid) still runs."""
    try:
        os.kill(int(os.path.basename(path)[:-len(_SUFFIX)]), 0)
    except ValueError:
        return False  # not a worker's file
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of that pid runs, as another user
    return True


class LbView:
    """The reports this process received, and (``shared_dir``) the other workers' published ones."""

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = DEFAULT_MAX_ENTRIES,
                 shared_dir: Optional[str] = None):
        self.window = window
        self.max_entries = max_entries
        # Least recently reported first: the first to go when full, and when too old.
        self._reports: OrderedDict[Tuple[str, str, str], LbReport] = OrderedDict()
        self._changed = False
        self.shared_dir = shared_dir
        self._own_file = None if shared_dir is None else os.path.join(shared_dir, f"{os.getpid()}{_SUFFIX}")
        # Each peer file's reports, read again only when the file changed: path -> ((mtime_ns, size), reports).
        self._peer_files: Dict[str, Tuple[Tuple[int, int], List[LbReport]]] = {}

    def configure(self, window: float, max_entries: int) -> None:
        """The window and bound of the running configuration (start and reload)."""
        self.window, self.max_entries = window, max_entries
        self._trim(time.time())

    def record(self, report: LbReport) -> None:
        """Keep ``report`` as its sender's last one (the request path: a few dictionary operations)."""
        reports = self._reports
        key = report.key
        if key in reports:
            del reports[key]
        reports[key] = report
        if len(reports) > self.max_entries:
            reports.popitem(last=False)
        self._changed = True

    def _trim(self, now: float) -> None:
        """Forget reports older than the window, and any beyond the bound (after a reload lowered it)."""
        reports = self._reports
        oldest = now - self.window
        while reports and (len(reports) > self.max_entries or next(iter(reports.values())).seen < oldest):
            reports.popitem(last=False)
            self._changed = True

    def entries(self, service: Optional[str] = None, now: Optional[float] = None) -> List[LbReport]:
        """The reports within the window (every worker's), newest per key, at most ``max_entries``, sorted
        by node, backend and server; only ``service``'s when given."""
        now = time.time() if now is None else now
        self._trim(now)
        newest: Dict[Tuple[str, str, str], LbReport] = dict(self._reports)
        oldest = now - self.window
        for report in self._peer_reports(now):
            if report.seen >= oldest:
                known = newest.get(report.key)
                if known is None or report.seen > known.seen:
                    newest[report.key] = report
        chosen = list(newest.values())
        if len(chosen) > self.max_entries:
            chosen = sorted(chosen, key=lambda report: report.seen)[-self.max_entries:]
        if service is not None:
            chosen = [report for report in chosen if report.service == service]
        return sorted(chosen, key=lambda report: report.key)

    # --- sharing between the workers of -n ---

    def publish(self) -> None:
        """Write this worker's reports for the others, when they changed (every ``PUBLISH_INTERVAL``)."""
        self._trim(time.time())
        if self._own_file is None or not self._changed:
            return
        self._changed = False
        temporary = f"{self._own_file}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as published:
                json.dump(list(self._reports.values()), published)  # each report as a list
            os.replace(temporary, self._own_file)
        except OSError as err:
            log.warning("cannot share the load balancers' reports with the other workers: %s", err)

    def _peer_reports(self, now: float) -> Iterable[LbReport]:
        if self.shared_dir is None:
            return ()
        try:
            names = [name for name in os.listdir(self.shared_dir) if name.endswith(_SUFFIX)]
        except OSError as err:
            log.warning("cannot read the other workers' load balancer reports: %s", err)
            return ()
        paths = {os.path.join(self.shared_dir, name) for name in names} - {self._own_file}
        for gone in set(self._peer_files) - paths:
            del self._peer_files[gone]
        found: List[LbReport] = []
        for path in paths:
            found += self._peer_file(path, now)
        return found

    def _peer_file(self, path: str, now: float) -> List[LbReport]:
        """One peer's reports, parsed again only when its file changed. A file not written for longer
        than the window holds only forgotten reports: skipped, and removed once its worker is gone (a
        live one may be writing it again right now)."""
        try:
            status = os.stat(path)
            if status.st_mtime < now - self.window:
                self._peer_files.pop(path, None)
                if not _worker_alive(path):
                    os.unlink(path)
                return []
            signature = (status.st_mtime_ns, status.st_size)
            cached = self._peer_files.get(path)
            if cached is not None and cached[0] == signature:
                return cached[1]
            if status.st_size > MAX_PEER_FILE_BYTES:
                return []
            with open(path, encoding="utf-8") as published:
                reports = [LbReport(*row) for row in json.load(published)]
        except (OSError, ValueError, TypeError) as err:
            # Gone between the listing and the read (a worker replaced it), or half a file: next time.
            log.debug("skipping %s: %s", path, err)
            return []
        self._peer_files[path] = (signature, reports)
        return reports
