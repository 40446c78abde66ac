"""How the figures of ``--workers N`` reach the supervisor and add up to one instance.

**The board** is one anonymous shared mapping, made before the first fork (as the heartbeats
are): a slot per worker, each a sequence number and the worker's vector (``metrics.SIZE``
doubles). A worker's ticker writes its whole vector four times a second; a scrape of the
supervisor reads every slot. The sequence number is a seqlock: odd while the worker writes, so
a reader that sees it odd, or changed by the end of its read, reads again. Shared memory rather
than a pipe or a socket because the supervisor has no event loop to read N streams; the figures
have a fixed size and only the latest matter (a newer snapshot replaces an older one, nothing
queues, nothing blocks the worker); and a worker that dies, even by SIGKILL, leaves its last
figures in place.

**The fleet** is the supervisor's side: when a worker exits (``exited``, from the supervisor's
reaping) its last counters and histograms are added to ``retired`` before its slot is cleared
for a replacement, so the instance's totals (retired + every live worker) never go backwards
across a reload or a killed worker. At most the figures of the worker's last 0.25 s are lost
when it is killed; a worker that stops gracefully publishes once more as it exits. The fleet
also keeps the supervisor's own counters and answers the metrics listener from a thread (the
supervisor has no event loop): that thread takes no lock a forked worker could need (it does not
log; its one lock guards ``retired`` and is never used by a worker).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from .exposition import answer, render
from .logs import error_log
from .metrics import CUMULATIVE, SIZE, build_labels, process_vector

if TYPE_CHECKING:
    import socket

    from .config import Config
    from .statsd import Statsd

def metrics_enabled(config: Config) -> bool:
    return config.metrics_bind is not None or config.statsd_host is not None


_STRIDE = 1 + SIZE  # doubles per slot: the sequence number, then the vector
_ZEROS = array("d", bytes(8 * _STRIDE))


class Board:
    """The shared mapping: ``slots`` vectors, each behind its seqlock."""

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, slots * _STRIDE * 8)
        self._view = memoryview(self._map).cast("d")

    def publisher(self, slot: int) -> Callable[[Sequence[float]], None]:
        """The worker's writer of its slot (called by its ticker, in the worker process)."""
        view = self._view
        base = slot * _STRIDE
        data = slice(base + 1, base + _STRIDE)

        def publish(vector: Sequence[float]) -> None:
            seq = view[base] + 1.0
            view[base] = seq  # odd: being written
            view[data] = array("d", vector)
            view[base] = seq + 1.0

        return publish

    def read(self, slot: int) -> list[float]:
        """The slot's last complete vector (all zeros before the worker's first publish)."""
        view = self._view
        base = slot * _STRIDE
        vector: list[float] = []
        for _ in range(1000):
            seq = view[base]
            vector = cast("list[float]", view[base + 1 : base + _STRIDE].tolist())
            if seq % 2 == 0 and view[base] == seq:
                return vector
            time.sleep(0)  # the worker is writing: let it finish
        return vector  # a worker stopped mid-write (killed): each figure is still one it had

    def clear(self, slot: int) -> None:
        base = slot * _STRIDE
        self._view[base : base + _STRIDE] = _ZEROS


class Fleet:
    """The supervisor's figures: the board, the departed workers' totals, its own counters.

    Its hooks (``spawned``, ``exited``, the counters) run on the supervisor's main thread,
    ``in_worker`` in a freshly forked worker, ``render`` and ``healthy`` on the metrics thread.
    """

    def __init__(self, config: Config, slots: int) -> None:
        self.config = config
        self.board = Board(slots)
        self._lock = threading.Lock()
        self._retired: list[float] = [0.0] * SIZE
        self._live: dict[int, int] = {}  # slot → pid
        # The supervisor's own counters (its hooks add to them).
        self.workers_started = 0
        self.workers_exited = 0
        self.workers_timed_out = 0
        self.reloads = 0
        self.stopping = False
        self._listener: socket.socket | None = None
        self._statsd: Statsd | None = None
        self._serving: Callable[[], bool] = lambda: True
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # -- the supervisor's hooks ---------------------------------------------------------------

    def start(self, serving: Callable[[], bool]) -> None:
        """Open the metrics listener and statsd; start the thread that serves them."""
        from .scrape import open_listener
        from .sockets import describe
        from .statsd import Statsd

        self._serving = serving
        config = self.config
        if config.metrics_bind:
            self._listener = sock = open_listener(config.metrics_bind, config.umask)
            error_log.info("Metrics at: %s (%d)", describe(sock), os.getpid())
        if config.statsd_host:
            self._statsd = Statsd(config.statsd_host, config.statsd_prefix, config.dogstatsd_tags)
        self._thread = threading.Thread(target=self._run, name="wsgiloop-metrics", daemon=True)
        self._thread.start()

    def spawned(self, slot: int, pid: int) -> None:
        with self._lock:
            self._live[slot] = pid
            self.workers_started += 1

    def in_worker(self, slot: int) -> Callable[[Sequence[float]], None]:
        """In a freshly forked worker: drop the supervisor's sockets, return its publisher."""
        if self._listener is not None:
            self._listener.close()
        if self._statsd is not None:
            self._statsd.close()
        return self.board.publisher(slot)

    def exited(self, slot: int) -> None:
        """A worker was reaped: fold its last figures into the totals, free its slot."""
        with self._lock:
            if self._live.pop(slot, None) is None:
                return
            last = self.board.read(slot)
            retired = self._retired
            for i in CUMULATIVE:
                retired[i] += last[i]
            self.board.clear(slot)
            self.workers_exited += 1

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._listener is not None:
            self._listener.close()

    # -- the figures --------------------------------------------------------------------------

    def vectors(self) -> tuple[list[float], list[tuple[int, list[float]]]]:
        """The instance's vector and each live worker's, by slot."""
        with self._lock:
            live = sorted(self._live)
            workers = [(slot, self.board.read(slot)) for slot in live]
            instance = list(self._retired)
        for _, vector in workers:
            for i, value in enumerate(vector):
                instance[i] += value
        return instance, workers

    def render(self) -> bytes:
        instance, workers = self.vectors()
        labelled = [(f'worker="{slot}"', vector) for slot, vector in workers]
        supervisor: list[tuple[str, str, str, float]] = [
            ("workers", "gauge", "Worker processes alive.", len(workers)),
            ("workers_started_total", "counter", "Worker processes started.",
             self.workers_started),
            ("workers_exited_total", "counter", "Worker processes that exited, for any reason.",
             self.workers_exited),
            ("workers_timed_out_total", "counter", "Workers killed because their event loop "
             "stopped beating for --timeout.", self.workers_timed_out),
            ("reloads_total", "counter", "Reloads (SIGHUP).", self.reloads),
        ]
        return render(
            instance,
            labelled,
            [('worker="supervisor"', process_vector()), *labelled],
            supervisor,
            build_labels(self.config.loop),
        )

    def healthy(self) -> bool:
        return not self.stopping and self._serving()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        from .scrape import serve_one

        health = self.config.health_path.encode() if self.config.health_path else None
        next_gauge = 0.0
        while not self._done.is_set():
            listener = self._listener
            if listener is None:
                self._done.wait(0.5)
            else:
                serve_one(listener, 0.5, lambda head: answer(head, self.render, health,
                                                             self.healthy))
            statsd = self._statsd
            now = time.monotonic()
            if statsd is not None and now >= next_gauge:
                next_gauge = now + 1.0
                with self._lock:
                    alive = len(self._live)
                statsd.send_workers(alive)
