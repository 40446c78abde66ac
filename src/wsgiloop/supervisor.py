"""``--workers N``: a pre-fork supervisor in gunicorn's manner.

The supervisor opens the listening sockets, forks N workers that share them, and then only
watches: it replaces a worker that dies (backing off when they die young, so a crashing app does
not spin the CPU), kills one whose event loop stops beating for ``--timeout`` seconds, and turns
signals into actions:

=========  ============================================================================
SIGTERM    graceful shutdown: workers finish in-flight requests (``--graceful-timeout``)
SIGINT     same as SIGTERM
SIGQUIT    fast shutdown: workers exit at once
SIGHUP     reload: start fresh workers (re-importing the app) one at a time, retiring an
           old one gracefully only after its replacement is serving; no request is dropped.
           If the new code cannot be loaded, the old workers go on serving (see _boot_failed)
SIGTTIN    one more worker
SIGTTOU    one worker fewer
SIGUSR1    reopen the log files, here and in every worker (logrotate's postrotate)
=========  ============================================================================

With ``--reload`` (development) a watcher thread (``reloader``) turns a changed file into the
same reload as SIGHUP. Server hooks (``hooks``) run where gunicorn runs them: ``pre_fork``,
``child_exit``, ``nworkers_changed``, ``on_reload`` here; ``post_fork``, ``post_worker_init`` and
``worker_exit`` in the worker.

The supervisor never runs an event loop or imports the app (unless ``--preload``), so it stays
small and a broken deploy fails in the workers, where it is logged, not in the process that
holds the sockets. The first worker of a generation (at start, after SIGHUP) is a canary: the
others start only once it serves, so an app that cannot load fails once, with one error line.
Where each worker is in its life (booting, serving, retiring, being killed) is its phase in
``workerlife``, changed only through ``Worker.enter``.

Heartbeats are monotonic timestamps in an anonymous shared mapping: one 8-byte slot per worker,
no files, no pipes. A worker beats every tick of its event loop, also while it drains at a
stop or a retirement. When the supervisor itself has not run for a while (the whole process
group was stopped with SIGSTOP/Ctrl-Z, the machine or VM was suspended and the monotonic clock
jumped), its workers were most likely frozen too: their silence then says nothing about them,
so the timeout counts afresh from the moment the supervisor runs again.

At a stop (SIGTERM, SIGINT, SIGQUIT) the supervisor closes its listening sockets first and the
workers close theirs at once, so new connections are refused rather than queued for nobody;
a socket file it created is removed. A socket inherited from systemd stays open in systemd,
whose queue then holds new connections for the next instance.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from . import exitcodes, handover
from .board import Fleet, metrics_enabled
from .config import Config
from .hooks import ServerView, WorkerView
from .logs import error_log, reopen_files, set_pid
from .process import become_worker, own_sockets
from .sockets import Listeners
from .workerlife import ABORT_GRACE, ABORTING, KILLED, RETIRING, Worker

MAX_SLOTS = 1024
#: A supervisor turn takes 0.1 s; one that comes this much later means the supervisor (and most
#: likely its workers) did not run meanwhile: heartbeats missed then are no sign of a hang.
STALL = 1.0
_SLOT = struct.Struct("d")
_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)


class Supervisor:
    """The master process of ``--workers N``."""

    def __init__(
        self,
        load_app: Callable[[], Any],
        config: Config,
        server: ServerView | None = None,
        ids: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.load_app = load_app
        self.config = config
        self.hooks = config.hooks
        self.server = server or ServerView(config, config.workers)  # what hooks get
        self.ids = ids  # --user/--group, taken by each worker once it is forked
        self.age = 0  # workers started so far (gunicorn's worker.age)
        self.target = config.workers
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.beats = mmap.mmap(-1, MAX_SLOTS * _SLOT.size)
        self.pending: list[int] = []
        self.failures = 0  # consecutive workers that died young: sets the back-off
        self.next_spawn = 0.0
        self.stopping: str | None = None
        self.exit_status = 0
        self.listeners = Listeners([])
        self.last_turn = 0.0
        self.wake_r, self.wake_w = os.pipe()
        # Metrics (board.Fleet): the workers' shared figures, served by a thread of its own.
        self.fleet = Fleet(config, MAX_SLOTS) if metrics_enabled(config) else None

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        from . import systemd
        from .server import open_sockets
        from .sockets import describe

        set_pid(os.getpid())
        # Signals first: a SIGTERM sent as soon as the server says it listens is a stop, not
        # the default action's kill (which would leave the pid file and the socket behind).
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        handover.unblock_signals()  # a handover into --workers N: now they are handled
        self.listeners = open_sockets(self.config)  # ListenError: nothing started yet
        own_sockets(self.listeners.sockets, *self.ids)
        error_log.info("Starting wsgiloop supervisor (pid: %d)", os.getpid())
        for sock in self.listeners.sockets:
            error_log.info("Listening at: %s (%d)", describe(sock, self.config.url_scheme),
                           os.getpid())
        self.hooks.run("when_ready", self.server)
        self.hooks.run("nworkers_changed", self.server, self.target, None)
        watcher = None
        if self.config.reload:
            from .reloader import Watcher

            watcher = Watcher(self.config, self._request_reload)
            watcher.start()
        if self.fleet is not None:
            self.fleet.start(lambda: any(w.served for w in list(self.workers.values())))
        notified = False
        self.last_turn = time.monotonic()
        try:
            while True:
                self._notice_stall()
                self._handle_signals()
                self._reap()
                if self.stopping is not None:
                    if not self.workers:
                        break
                    self._enforce_stop_deadline()
                else:
                    self._enforce_retire_deadlines()
                    self._maintain()
                    self._check_heartbeats()
                    if not notified and sum(w.served for w in self.workers.values()) >= self.target:
                        notified = True
                        systemd.notify("READY=1\nSTATUS=serving")
                        error_log.info("All %d workers are serving", self.target)
                self._sleep(0.1)
        finally:
            if watcher is not None:
                watcher.stop()
            systemd.notify("STOPPING=1")
            self.listeners.close()
            if self.fleet is not None:
                self.fleet.close()
        error_log.info("Shutdown complete")
        return self.exit_status

    def _sleep(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def _notice_stall(self) -> None:
        """After a turn that came far too late, restart every worker's heartbeat timeout."""
        now = time.monotonic()
        if now - self.last_turn > STALL:
            error_log.debug("The supervisor did not run for %.1fs", now - self.last_turn)
            for worker in self.workers.values():
                worker.baseline = now
        self.last_turn = now

    def _request_reload(self, changed: str) -> None:
        """From the --reload watcher's thread: reload as SIGHUP does (queued, then woken)."""
        error_log.info("%s changed: reloading", changed)
        self.pending.append(signal.SIGHUP)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    # -- signals -----------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self.pending:
            sig = self.pending.pop(0)
            if sig == signal.SIGCHLD:
                continue  # _reap runs every turn anyway
            name = signal.Signals(sig).name
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop("graceful", name)
            elif sig == signal.SIGQUIT:
                self._begin_stop("fast", name)
            elif self.stopping is not None:
                continue
            elif sig == signal.SIGHUP:
                error_log.info("Received SIGHUP: reloading workers")
                self.generation += 1
                self.hooks.run("on_reload", self.server)
                if self.fleet is not None:
                    self.fleet.reloads += 1
            elif sig == signal.SIGTTIN:
                self.target += 1
                error_log.info("Received SIGTTIN: workers %d", self.target)
                self.hooks.run("nworkers_changed", self.server, self.target, self.target - 1)
            elif sig == signal.SIGTTOU:
                if self.target > 1:
                    self.target -= 1
                    self.hooks.run("nworkers_changed", self.server, self.target, self.target + 1)
                error_log.info("Received SIGTTOU: workers %d", self.target)
            elif sig == signal.SIGUSR1:
                reopen_files()
                for worker in self.workers.values():
                    self._kill(worker.pid, signal.SIGUSR1)

    def _begin_stop(self, mode: str, name: str) -> None:
        if self.stopping == "fast" or self.stopping == mode:
            return
        if name.startswith("SIG"):
            error_log.info("Received %s: %s shutdown", name, mode)
        else:
            error_log.info("%s: %s shutdown", name, mode)
        # Refuse new connections from now on (the workers close their copies on the signal);
        # a socket inherited from systemd stays open there, queueing them for the successor.
        self.listeners.close()
        self.stopping = mode
        if self.fleet is not None:
            self.fleet.stopping = True  # the health path answers 503 from now on
        self.stop_deadline = time.monotonic() + (
            self.config.graceful_timeout + 5 if mode == "graceful" else 5
        )
        from . import systemd

        systemd.notify("STOPPING=1")
        sig = signal.SIGTERM if mode == "graceful" else signal.SIGQUIT
        for worker in self.workers.values():
            self._kill(worker.pid, sig)

    def _enforce_retire_deadlines(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.phase is RETIRING and now > worker.retire_deadline:
                error_log.warning("Worker %d did not retire in time: killing it", worker.pid)
                worker.enter(KILLED, now)
                self._kill(worker.pid, signal.SIGKILL)

    def _enforce_stop_deadline(self) -> None:
        if time.monotonic() > self.stop_deadline:
            for worker in self.workers.values():
                error_log.warning("Worker %d did not stop in time: killing it", worker.pid)
                self._kill(worker.pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5

    # -- workers -----------------------------------------------------------------------------

    def _maintain(self) -> None:
        """Converge on ``target`` workers of the current generation, one step per turn."""
        now = time.monotonic()
        for worker in self.workers.values():
            if not worker.served and _SLOT.unpack_from(self.beats, worker.slot * 8)[0] > 0:
                worker.beat_seen(now)
                error_log.debug("Worker %d is serving", worker.pid)
        current = [w for w in self.workers.values() if not w.leaving]
        fresh = [w for w in current if w.generation == self.generation]
        stale = [w for w in current if w.generation != self.generation]
        if fresh and not any(w.served for w in fresh):
            return  # the canary of this generation is loading the app: the rest wait for it
        if stale:
            # Reload: one new worker at a time, and an old one retires only once the new one
            # serves, so capacity never drops below the target.
            starting = [w for w in fresh if not w.served]
            if starting:
                return
            if len(fresh) + len(stale) > self.target or len(fresh) >= self.target:
                self._retire(stale[0])
            elif now >= self.next_spawn:
                self._spawn()
            return
        if len(current) < self.target and now >= self.next_spawn:
            self._spawn()
        elif len(current) > self.target:
            self._retire(max(current, key=lambda w: w.born))

    def _retire(self, worker: Worker) -> None:
        now = time.monotonic()
        worker.enter(RETIRING, now)
        worker.retire_deadline = now + self.config.graceful_timeout + 5
        error_log.info("Retiring worker %d", worker.pid)
        self._kill(worker.pid, signal.SIGTERM)

    def _free_slot(self) -> int:
        used = {w.slot for w in self.workers.values()}
        for slot in range(MAX_SLOTS):
            if slot not in used:
                return slot
        raise RuntimeError("too many workers")

    def _spawn(self) -> None:
        slot = self._free_slot()
        _SLOT.pack_into(self.beats, slot * 8, 0.0)
        self.age += 1
        view = WorkerView(self.config, self.age)
        self.hooks.run("pre_fork", self.server, view)
        # Signals stay blocked across the fork: one that came between the fork and the child's
        # reset of its handlers would run the supervisor's handler in the child, where it is
        # lost, and a SIGTERM sent during a boot would leave that worker serving on.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            now = time.monotonic()
            self.workers[pid] = Worker(pid, slot, now, self.generation, since=now, baseline=now)
            view.pid = pid
            self.server.WORKERS[pid] = view
            if self.fleet is not None:
                self.fleet.spawned(slot, pid)
            error_log.info("Booting worker with pid: %d", pid)
            return
        view.pid = os.getpid()
        view.ppid = os.getppid()
        # -- in the child ---------------------------------------------------------------------
        status = 1
        try:
            status = self._worker_main(slot, view)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            error_log.exception("Worker crashed")
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _worker_main(self, slot: int, view: WorkerView) -> int:
        from .server import run

        for sig in _SIGNALS:
            # SIGHUP: reloads are the supervisor's. A worker ignores it for good (a closed
            # terminal or `kill -HUP -PGID` signals the whole group: the supervisor reloads,
            # and the worker retires when told to, its requests finished).
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # blocked by _spawn for the fork
        os.close(self.wake_r)
        os.close(self.wake_w)
        set_pid(os.getpid())
        random.seed()
        try:
            app = become_worker(self.config, self.ids, self.server, view, self.load_app)
        except Exception as exc:  # the loader's message is the one line (see cli.load_app)
            error_log.error("Error: %s", exc)
            error_log.debug("The app failed to load", exc_info=True)
            return exitcodes.APP_LOAD
        beats = self.beats
        offset = slot * 8
        pack = _SLOT.pack_into
        clock = time.monotonic

        def heartbeat() -> None:
            pack(beats, offset, clock())

        publish = self.fleet.in_worker(slot) if self.fleet is not None else None
        config = self.config
        max_requests = config.max_requests
        if max_requests and config.max_requests_jitter:
            max_requests += random.randint(0, config.max_requests_jitter)
        try:
            return run(
                app,
                config,
                listeners=self.listeners.for_worker(),  # the files are the supervisor's
                heartbeat=heartbeat,
                max_requests=max_requests,
                on_ready=heartbeat,
                worker=view,
                publish=publish,
                slot=slot,
            )
        finally:
            self.hooks.run("worker_exit", self.server, view)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            view = self.server.WORKERS.pop(pid, None)
            if view is not None:
                view.alive = False
                self.hooks.run("child_exit", self.server, view)
            if self.fleet is not None:
                self.fleet.exited(worker.slot)  # its figures join the retired totals
            code = os.waitstatus_to_exitcode(status)
            if code == exitcodes.APP_LOAD and not worker.served and self.stopping is None:
                self._boot_failed(worker)
                continue
            expected = worker.leaving or self.stopping is not None
            if not expected:
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                if code == 0:
                    error_log.info("Worker %d exited (%s); replacing it", pid, how)
                else:
                    error_log.error("Worker %d died (%s); replacing it", pid, how)
                lived = time.monotonic() - worker.born
                if code != 0 and lived < 5:
                    self.failures += 1
                    delay = min(30.0, 0.1 * 2 ** self.failures)
                    error_log.warning("Workers die young: next start in %.1fs", delay)
                    self.next_spawn = time.monotonic() + delay
                else:
                    self.failures = 0

    def _boot_failed(self, worker: Worker) -> None:
        """A new worker could not load the app (it logged why, in one line).

        With nothing serving (the start, or every worker gone) there is nothing to keep: stop
        with ``exitcodes.APP_LOAD``. Otherwise the workers that serve go on serving the code
        they loaded: a reload into code that does not load is abandoned (the next SIGHUP tries
        again), and a replacement that does not load is retried with the young-death back-off.
        """
        serving = [w for w in self.workers.values() if w.served and not w.leaving]
        if not serving:
            self.exit_status = exitcodes.APP_LOAD
            self._begin_stop(
                "graceful", f"Worker {worker.pid} could not load the app and none is serving"
            )
            return
        current = [w for w in self.workers.values() if not w.leaving]
        if any(w.generation != self.generation for w in current):
            error_log.warning(
                "Reload abandoned: the new code does not load; %d worker(s) go on serving the "
                "code they loaded; send SIGHUP to try again",
                len(serving),
            )
            for w in current:
                w.generation = self.generation  # nothing is stale any more: nothing retires
        self.failures += 1
        self.next_spawn = time.monotonic() + min(30.0, 0.1 * 2**self.failures)

    def _check_heartbeats(self) -> None:
        timeout = self.config.timeout
        if not timeout:
            return
        now = time.monotonic()
        for worker in self.workers.values():
            beat = _SLOT.unpack_from(self.beats, worker.slot * 8)[0]
            last = max(beat, worker.baseline)
            if now - last > timeout and not worker.being_killed:
                error_log.critical("WORKER TIMEOUT (pid: %d): killing it", worker.pid)
                if self.fleet is not None:
                    self.fleet.workers_timed_out += 1
                # With a worker_abort hook, SIGABRT first (the worker runs it and exits), and
                # SIGKILL a second later for a worker too stuck even for that.
                if self.hooks.worker_abort is not None:
                    worker.enter(ABORTING, now)
                    self._kill(worker.pid, signal.SIGABRT)
                else:
                    worker.enter(KILLED, now)
                    self._kill(worker.pid, signal.SIGKILL)
            elif worker.phase is ABORTING and now - worker.since > ABORT_GRACE:
                worker.enter(KILLED, now)
                self._kill(worker.pid, signal.SIGKILL)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


def run_supervisor(
    load_app: Callable[[], Any],
    config: Config,
    server: ServerView | None = None,
    ids: tuple[int | None, int | None] = (None, None),
) -> int:
    """Run ``config.workers`` workers under a supervisor until told to stop."""
    if config.preload:
        app = load_app()
        return Supervisor(lambda: app, config, server, ids).run()
    return Supervisor(load_app, config, server, ids).run()
