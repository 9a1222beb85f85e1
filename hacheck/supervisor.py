"""``-n``: the supervisor that forks the workers, restarts one that dies, and passes reloads and stops on."""

import logging
import os
import select
import signal
import time

from hacheck import metrics, systemd
from hacheck.config import Config
from hacheck.server import STOP_SIGNALS, SystemdNotifier, WorkerNotifier, reload_config, run_worker

log = logging.getLogger("hacheck")

# What the -n supervisor handles: stops, and SIGHUP for a reload.
_SUPERVISOR_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
# A worker that dies this soon after starting is restarted only after a pause,
# so a worker that cannot start does not turn into a fork loop.
RESTART_PAUSE = 1.0
# With -n, how long the supervisor waits for every worker to say it reloaded before it reports the reload done.
WORKER_RELOAD_WAIT = 5.0


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
