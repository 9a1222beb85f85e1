"""``-n``: the supervisor (``Arbiter``) that owns its workers (``Worker``): starts them, restarts one that dies
(with a pause that grows, up to a limit), reloads the configuration for all of them and stops them.

Signal handlers only queue the signal and wake the loop (``signal.set_wakeup_fd``); the one loop in
``Arbiter.run`` does everything, in order: take the signals, reap, restart, reload, stop. The supervisor
alone reads the configuration file: each worker gets the parsed configuration over its channel (a
``SOCK_SEQPACKET`` socket pair; ``hacheck.process.server.SupervisorLink`` is the worker's side) or, for a worker
started later, at the fork.
"""

import logging
import os
import pickle
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

import hacheck.process.reload
from hacheck.config import Config
from hacheck.process import systemd
from hacheck.process.options import Startup
from hacheck.process.server import MAX_CHANNEL_MESSAGE, STOP_SIGNALS, SupervisorLink, SystemdNotifier, run_worker
from hacheck.web import metrics

log = logging.getLogger("hacheck")

# What the -n supervisor handles: stops, and SIGHUP for a reload.
_SUPERVISOR_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
# How long the supervisor waits for every worker to say it took a reload's configuration before it reports
# the reload done (a worker held up longer takes it when it can: the configuration waits in its channel).
WORKER_RELOAD_WAIT = 5.0
# The pause before a worker that exited is started again: none for the first exit within
# restart_limit_interval, then this, doubling with each further exit, at most RESTART_PAUSE_MAX.
RESTART_PAUSE_FIRST = 0.25
RESTART_PAUSE_MAX = 5.0
# The loop wakes at least this often even when nothing happens (a lost wakeup costs at most this).
IDLE_WAKEUP = 1.0


def _exit_description(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"exit code {code}"


class Worker:
    """One worker process: its start (fork), its channel to the supervisor, its reloads and its stop."""

    def __init__(self, generation: int):
        self.pid = 0
        self.channel: Optional[socket.socket] = None
        self.ready = False
        # The configuration generation it started with or last said it took.
        self.generation = generation
        self.started_at = 0.0

    def start(self, run: Callable[[SupervisorLink], int], close_in_child: List[int]) -> None:
        """Fork; the child runs ``run`` with its side of the channel and exits with what it returns."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        supervisor_pid = os.getpid()
        # A stop or reload signal that came between the fork and the child's own handlers would run
        # the supervisor's handler in the child and be lost (a worker nobody stops), or come to the
        # supervisor before it knows the new pid: held back on both sides until each is ready for it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            _run_child(run, SupervisorLink(child_end, supervisor_pid, self.generation), close_in_child)
        child_end.close()
        parent_end.setblocking(False)
        self.pid, self.channel, self.started_at = pid, parent_end, time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)

    def send_config(self, generation: int, config: Config) -> bool:
        """Hand ``config`` over; False when the worker's channel is full or gone."""
        try:
            self.channel.send(pickle.dumps(("config", generation, config)))
        except OSError as err:
            log.warning("cannot send configuration generation %d to worker %d: %s", generation, self.pid, err)
            return False
        return True

    def messages(self) -> List[tuple]:
        """What the worker said since the last call."""
        received = []
        while True:
            try:
                data = self.channel.recv(MAX_CHANNEL_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return received
            except OSError:
                data = b""
            if not data:
                return received
            received.append(pickle.loads(data))

    def stop(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def _run_child(run: Callable[[SupervisorLink], int], link: SupervisorLink, close_in_child: List[int]) -> None:
    """The worker's side of the fork; never returns. An unexpected error is logged before the exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in close_in_child:
            os.close(fd)
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The supervisor reads the file and sends what it read: a SIGHUP sent to a worker changes nothing.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SUPERVISOR_SIGNALS)
        code = run(link)
    except BaseException:
        log.exception("worker %d stopped by an unexpected error", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


@dataclass
class Reload:
    """A reload the supervisor passed on and whose answers it waits for."""

    generation: int
    line: str
    asked: int
    waiting: Set[int]
    deadline: float
    starting: int = 0
    took: Set[int] = field(default_factory=set)
    kept: Set[int] = field(default_factory=set)

    def done(self, now: float) -> bool:
        return not self.waiting or now >= self.deadline

    def summary(self) -> str:
        if not self.asked:
            note = "; no worker running to reload"
        elif len(self.took) == self.asked:
            note = f"; all {len(self.took)} workers reloaded"
        else:
            note = f"; only {len(self.took)} of {self.asked} workers reloaded"
        if self.kept:
            note += f" (kept their configuration: {', '.join(map(str, sorted(self.kept)))})"
        if self.waiting:
            note += (f" (no answer within {WORKER_RELOAD_WAIT:g} s from worker(s) "
                     f"{', '.join(map(str, sorted(self.waiting)))}: they take it when they can)")
        if self.starting:
            note += f"; {self.starting} starting worker(s) take it once ready"
        return note + f" (configuration generation {self.generation})"


class Arbiter:
    """Runs ``-n`` workers sharing the listening sockets (handed over by systemd, or each binds them with
    SO_REUSEPORT); ``run`` returns the exit code."""

    def __init__(self, startup: Startup, config: Config):
        self.startup = startup
        self.config, self.generation = config, 1
        self.workers: Dict[int, Worker] = {}
        self.signals: List[int] = []
        self.starting_up = True  # until every worker of the first start is ready
        self.stop_signal: Optional[int] = None
        self.exit_code = 0
        self.restarts_due: List[float] = []  # when each missing worker is started again
        self.exits: List[float] = []  # when workers exited unexpectedly, within restart_limit_interval
        self.reload_wanted = False
        self.reload: Optional[Reload] = None
        self.notifier = SystemdNotifier()
        self.wakeup_read, self.wakeup_write = os.pipe()

    # --- signals: only queued here, handled by the loop ---

    def _queue_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)

    def _install_signals(self) -> None:
        for fd in (self.wakeup_read, self.wakeup_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wakeup_write, warn_on_full_buffer=False)
        for signum in (*_SUPERVISOR_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)

    def _take_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self.reload_wanted = True  # several before the next reload: one reload
            elif signum in STOP_SIGNALS:
                self._stop(signum)

    def _stop(self, signum: int, exit_code: int = 0) -> None:
        """Pass the stop on to every worker; the loop ends once they are gone."""
        if self.stop_signal is None:
            self.stop_signal = signum
            self.exit_code = exit_code
            self.restarts_due.clear()
            self.reload = None
        for worker in self.workers.values():
            worker.stop(signum)

    # --- the loop ---

    def run(self) -> int:
        self._install_signals()
        try:
            for _ in range(self.startup.options.num_procs):
                self._start_worker()
            while True:
                self._take_signals()
                self._reap()
                if self.stop_signal is None:
                    self._restart()
                    self._reload()
                elif not self.workers:
                    break
                self._wait()
        finally:
            signal.set_wakeup_fd(-1)
            for worker in self.workers.values():
                worker.close()
        return self.exit_code

    def _wait(self) -> None:
        """Until a signal, a worker's message or the next thing due (a restart, a reload's deadline)."""
        if self.signals:
            return
        timeout = IDLE_WAKEUP
        if self.restarts_due:
            timeout = min(timeout, max(0.0, min(self.restarts_due) - time.monotonic()))
        if self.reload is not None:
            timeout = min(timeout, max(0.0, self.reload.deadline - time.monotonic()))
        channels = {worker.channel.fileno(): worker for worker in self.workers.values()}
        readable, _, _ = select.select([self.wakeup_read, *channels], [], [], timeout)
        for fd in readable:
            if fd == self.wakeup_read:
                try:
                    while os.read(self.wakeup_read, 4096):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._hear(channels[fd])

    def _start_worker(self) -> None:
        worker = Worker(self.generation)
        close_in_child = [self.wakeup_read, self.wakeup_write,
                          *(other.channel.fileno() for other in self.workers.values())]
        config = self.config
        worker.start(lambda link: run_worker(self.startup, config, True, link, link),
                     close_in_child)
        self.workers[worker.pid] = worker

    def _hear(self, worker: Worker) -> None:
        """A worker said it is ready, or answered a reload."""
        for message in worker.messages():
            if message[0] == "ready":
                self._worker_ready(worker, message[1])
            elif message[0] == "reloaded":
                _, generation, ok = message
                if ok:
                    worker.generation = generation
                reload = self.reload
                if reload is not None and generation == reload.generation and worker.pid in reload.waiting:
                    reload.waiting.discard(worker.pid)
                    (reload.took if ok else reload.kept).add(worker.pid)

    def _worker_ready(self, worker: Worker, generation: int) -> None:
        worker.ready = True
        if generation != self.generation and self.stop_signal is None:
            worker.send_config(self.generation, self.config)  # a reload came while it was starting
        if self.starting_up and all(other.ready for other in self.workers.values()) \
                and len(self.workers) == self.startup.options.num_procs:
            self.starting_up = False
            if self.stop_signal is None:
                systemd.notify_ready(f"serving with {len(self.workers)} workers")

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._hear(worker)  # what it said before it exited
            worker.close()
            metrics.worker_exited(pid)
            if self.reload is not None:
                self.reload.waiting.discard(pid)
            if self.stop_signal is None:
                self._worker_exited(worker, status)

    def _worker_exited(self, worker: Worker, status: int) -> None:
        """Restart it after a pause, or give up: at the first start, or past the restart limit."""
        how = _exit_description(status)
        if self.starting_up and not worker.ready:
            log.error("worker %d could not start (%s); stopping", worker.pid, how)
            self._stop(signal.SIGTERM, exit_code=1)
            return
        now = time.monotonic()
        config = self.config
        self.exits = [at for at in self.exits if now - at < config.restart_limit_interval] + [now]
        if len(self.exits) > config.restart_limit_burst:
            log.error("worker %d exited (%s): %d worker exits within %g s, more than restart_limit_burst (%d); "
                      "stopping", worker.pid, how, len(self.exits), config.restart_limit_interval,
                      config.restart_limit_burst)
            self._stop(signal.SIGTERM, exit_code=1)
            return
        pause = 0.0 if len(self.exits) == 1 else \
            min(RESTART_PAUSE_MAX, RESTART_PAUSE_FIRST * 2 ** (len(self.exits) - 2))
        log.error("worker %d exited unexpectedly (%s); starting a new one%s", worker.pid, how,
                  f" in {pause:g} s" if pause else "")
        self.restarts_due.append(now + pause)

    def _restart(self) -> None:
        now = time.monotonic()
        due = [at for at in self.restarts_due if at <= now]
        self.restarts_due = [at for at in self.restarts_due if at > now]
        for _ in due:
            self._start_worker()

    def _reload(self) -> None:
        """Finish the reload under way once every worker answered (or the wait is over), then start
        the next one if a SIGHUP came meanwhile: reloads run one after another."""
        if self.reload is not None and self.reload.done(time.monotonic()):
            line = self.reload.line + self.reload.summary()
            self.reload = None
            log.info("%s", line)
            self.notifier.reloaded(True, line)
        if self.reload is None and self.reload_wanted:
            self.reload_wanted = False
            self._begin_reload()

    def _begin_reload(self) -> None:
        """Read and validate the file once; hand the same configuration to every worker."""
        self.notifier.reloading()
        loaded, line = hacheck.process.reload.reload(self.config, self.startup.options.config_file)
        if loaded is None:
            log.error("%s", line)
            self.notifier.reloaded(False, line)
            return
        self.config, self.generation = loaded.config, self.generation + 1
        ready = [worker for worker in self.workers.values() if worker.ready]
        # A worker whose channel refused the configuration counts as asked and not reloaded.
        sent = {worker.pid for worker in ready if worker.send_config(self.generation, self.config)}
        starting = len(self.workers) - len(ready)
        self.reload = Reload(self.generation, line, len(ready), sent, time.monotonic() + WORKER_RELOAD_WAIT, starting)
        self._reload()  # no worker to wait for: done now


def supervise(startup: Startup, config: Config) -> int:
    """Run ``-n`` workers until a stop signal (exit 0) or until they keep exiting (exit 1)."""
    return Arbiter(startup, config).run()
