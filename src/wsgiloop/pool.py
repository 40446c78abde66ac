"""The bounded thread pool that runs WSGI apps.

Unlike ``concurrent.futures.ThreadPoolExecutor`` there is no unbounded work queue: the loop hands
a job to the threads only while one is free, and keeps the rest in its own FIFO of waiting
requests. Each connection has at most one request in flight (pipelined requests are not parsed
until the previous response ends), so that FIFO is bounded by ``--limit-concurrency``; and since
the loop knows the pool is saturated, it can stop reading new requests instead of queueing them.
Threads start on demand and are daemons, so a hung app cannot keep the process alive at exit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .bridge import release_wakeup
from .logs import error_log

Job = tuple[Callable[[Any], None], Any]


class ThreadPool:
    """``size`` threads; ``submit``/``done`` are called on the event loop only."""

    __slots__ = (
        "_at_once",
        "_busy",
        "_jobs",
        "_name",
        "_size",
        "_threads",
        "_waited",
        "_waiting",
    )

    def __init__(
        self,
        size: int,
        name: str = "wsgiloop",
        waited: Callable[[float], None] | None = None,
    ) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        # Jobs waiting for a thread, each with when it began to wait (0.0 unless measured).
        self._waiting: deque[tuple[Callable[[Any], None], Any, float]] = deque()
        #: Told how long each job that had to wait for a thread waited (the metrics' saturation
        #: signal); jobs that found one at once are only counted (``started_at_once``).
        self._waited = waited
        self._at_once = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def busy(self) -> int:
        """Jobs handed to threads and not yet reported done."""
        return self._busy

    @property
    def started_at_once(self) -> int:
        """Jobs that found a free thread at once, since the pool started."""
        return self._at_once

    @property
    def waiting(self) -> int:
        """Jobs waiting on the loop for a free thread."""
        return len(self._waiting)

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` on a pool thread now, or as soon as one is free."""
        if self._busy < self._size:
            self._busy += 1
            if len(self._threads) < self._busy:
                self._start_thread()
            self._jobs.put((fn, arg))
            self._at_once += 1  # counted here, not told: the usual case costs no call
        else:
            self._waiting.append((fn, arg, 0.0 if self._waited is None else time.monotonic()))

    def done(self) -> None:
        """A job finished its response: its thread may take the next waiting job."""
        if self._waiting:
            fn, arg, since = self._waiting.popleft()
            self._jobs.put((fn, arg))
            if self._waited is not None:
                self._waited(time.monotonic() - since)
        else:
            self._busy -= 1

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            fn, arg = job
            try:
                fn(arg)
            except BaseException:  # the job handles app errors; this is a bug in wsgiloop
                error_log.exception("Unhandled error in a pool thread")
            release_wakeup()  # an idle thread holds no descriptor
            # An idle thread must not keep its last request (and so its connection) alive.
            del job, fn, arg

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the threads after their current job; wait up to ``timeout`` seconds."""
        self._waiting.clear()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
