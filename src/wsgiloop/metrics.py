"""What a worker counts about itself, and the one flat layout those figures travel in.

Choices, and why (the README's "Metrics and health" lists every figure):

- **Plain Python numbers, counted on the loop.** Every event is counted on the event loop thread,
  at a place the connection already passes through (``protocol.HttpProtocol``'s phase moves, the
  pool's hand-over of a job): no lock, no atomic, no shared memory per request. Counting a
  request is a few list-item increments, one clock read and one ``array.append`` of its
  duration; the histograms' buckets are counted from those numbers when a snapshot is taken
  (``Metrics.fold``: sorted in C, one bisect per bucket edge), four times a second. Nothing is
  formatted for a request.
  With metrics off, ``ServerState.metrics`` is None and each event costs one attribute test.
- **One flat vector.** All figures of a worker are one list of numbers in a fixed layout
  (``FAMILIES``, each family a slice of it; a histogram is its bucket counts, not cumulative,
  then its sum). That one shape is what the worker's ticker copies into shared memory (``board``,
  four times a second), what the supervisor adds up, what ``exposition`` renders and what
  ``statsd`` diffs. A fixed layout makes histograms fixed bucket arrays and bounds the labels:
  methods outside ``METHODS`` count as ``other``, statuses by class.
- **Gauges are derived, not tracked.** Connections open is ``len(state.connections)``; idle
  keep-alive connections are those in the ``IDLE`` phase, counted by the ticker's deadline sweep
  that visits every connection anyway; threads busy, requests waiting and in flight come from
  the pool. They are read when a snapshot is taken, so the hot path never touches them.
- **Process figures** (CPU, RSS, open descriptors) are read once a second by the ticker, from
  ``/proc`` (Linux), never per request or per scrape.
- **Not prometheus_client**: its counters take a lock per increment, its multi-process mode keeps
  one mmap file per process in a directory that someone must clean after dead workers, and its
  registry would be a second description of the same fixed layout. The text format is small and
  is rendered by ``exposition`` from the vector.
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from . import __version__
from .lifecycle import DISCARDING, HEAD, NEW, Phase

if TYPE_CHECKING:
    from .pool import ThreadPool
    from .response import Head
    from .wsgi import Exchange

COUNTER: Final = "counter"
GAUGE: Final = "gauge"
HISTOGRAM: Final = "histogram"

#: Where a family's figures go: ``worker``: in each worker's vector, and added up over the
#: workers (counters and histograms also over workers that have exited) for the instance;
#: ``process``: in each worker's vector, shown per process only (not summable across a reload).
WORKER: Final = "worker"
PROCESS: Final = "process"

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: Seconds. Prometheus's default buckets, extended to the default --timeout and beyond.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)
#: Seconds a request waited for a free app thread: from "none" (the first bucket) up.
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Requests the server answers itself and never passes to the app, by the status it answers.
REFUSALS: Final = {
    400: "malformed",
    413: "body_too_large",
    414: "target_too_long",
    431: "head_too_large",
    501: "connect",
    503: "over_limit",
    505: "version",
}
TIMEOUT_KINDS: Final = ("head", "body", "write", "app")


class Family:
    """One metric family: its name (without ``wsgiloop_``), kind, help, labels and its slice of
    the vector (``offset``, ``size``)."""

    __slots__ = ("buckets", "help", "kind", "labels", "name", "offset", "scope", "size")

    def __init__(
        self,
        name: str,
        kind: str,
        help: str,
        labels: tuple[tuple[str, tuple[str, ...]], ...] = (),
        buckets: tuple[float, ...] = (),
        scope: str = WORKER,
    ) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.labels = labels
        self.buckets = buckets
        self.scope = scope
        self.offset = 0
        self.size = self.series() * (len(buckets) + 2 if kind == HISTOGRAM else 1)

    def series(self) -> int:
        count = 1
        for _, values in self.labels:
            count *= len(values)
        return count


FAMILIES: Final = (
    Family(
        "requests_total",
        COUNTER,
        "Responses to requests the app handled, by method and status class (counted when the "
        "response head leaves; also the 503/408 the server sends for an app request it gives "
        "up on).",
        (("method", METHODS), ("status", STATUS_CLASSES)),
    ),
    Family(
        "request_duration_seconds",
        HISTOGRAM,
        "From the parsed request head to the response's first byte (until=first_byte) and to "
        "its last (until=end, complete responses only).",
        (("until", ("first_byte", "end")),),
        DURATION_BUCKETS,
    ),
    Family("requests_in_flight", GAUGE, "Requests handed to the app and not finished yet "
           "(running on a thread or waiting for one)."),
    Family("requests_waiting", GAUGE, "Requests waiting for a free app thread (saturation)."),
    Family(
        "request_wait_seconds",
        HISTOGRAM,
        "Time requests waited for a free app thread before the app was called.",
        (),
        WAIT_BUCKETS,
    ),
    Family("threads_busy", GAUGE, "App threads running a request (hung ones included)."),
    Family("threads", GAUGE, "App threads (--threads)."),
    Family("threads_hung", GAUGE, "App threads still inside a call that --timeout gave up on."),
    Family("connections_open", GAUGE, "Client connections open."),
    Family("connections_idle", GAUGE, "Keep-alive connections idle between two requests."),
    Family("connections_accepted_total", COUNTER, "Client connections accepted."),
    Family("received_bytes_total", COUNTER, "Bytes read from clients (heads and bodies)."),
    Family("sent_bytes_total", COUNTER, "Response bytes: heads, bodies as the app gave them "
           "(sendfile included, chunk framing not), and the server's own error responses."),
    Family(
        "refused_requests_total",
        COUNTER,
        "Requests answered by the server itself and never passed to the app, by reason.",
        (("reason", tuple(dict.fromkeys(REFUSALS.values()))),),
    ),
    Family(
        "timeouts_total",
        COUNTER,
        "Timeouts by kind: head (--header-timeout), body (--body-timeout), write "
        "(--write-timeout), app (--timeout).",
        (("kind", TIMEOUT_KINDS),),
    ),
    Family("client_disconnects_total", COUNTER, "Connections the client closed or reset while "
           "its request was in flight."),
    Family("process_cpu_seconds_total", COUNTER, "User and system CPU time of the process.",
           scope=PROCESS),
    Family("process_resident_memory_bytes", GAUGE, "Resident memory of the process.",
           scope=PROCESS),
    Family("process_open_fds", GAUGE, "Open file descriptors of the process.", scope=PROCESS),
)

_offset = 0
for _family in FAMILIES:
    _family.offset = _offset
    _offset += _family.size
#: Numbers in a worker's vector.
SIZE: Final = _offset
BY_NAME: Final = {family.name: family for family in FAMILIES}
#: The vector's indices that only ever grow (counters and histograms of the worker scope):
#: what a departed worker leaves to the instance's totals.
CUMULATIVE: Final = tuple(
    i
    for family in FAMILIES
    if family.scope == WORKER and family.kind != GAUGE
    for i in range(family.offset, family.offset + family.size)
)

_REQUESTS = BY_NAME["requests_total"].offset
_DURATION = BY_NAME["request_duration_seconds"].offset
_END = _DURATION + len(DURATION_BUCKETS) + 2  # the until="end" series
_WAIT = BY_NAME["request_wait_seconds"].offset
_IN_FLIGHT = BY_NAME["requests_in_flight"].offset
_WAITING = BY_NAME["requests_waiting"].offset
_BUSY = BY_NAME["threads_busy"].offset
_THREADS = BY_NAME["threads"].offset
_HUNG = BY_NAME["threads_hung"].offset
_OPEN = BY_NAME["connections_open"].offset
_IDLE = BY_NAME["connections_idle"].offset
_ACCEPTED = BY_NAME["connections_accepted_total"].offset
_RECEIVED = BY_NAME["received_bytes_total"].offset
_SENT = BY_NAME["sent_bytes_total"].offset
_REFUSED = BY_NAME["refused_requests_total"].offset
_TIMEOUTS = BY_NAME["timeouts_total"].offset
_DISCONNECTS = BY_NAME["client_disconnects_total"].offset
_CPU = BY_NAME["process_cpu_seconds_total"].offset
_RSS = BY_NAME["process_resident_memory_bytes"].offset
_FDS = BY_NAME["process_open_fds"].offset

#: REQUEST_METHOD → where its requests_total series start; a status code → its class's place
#: among them (1xx first; 6xx-9xx count with 5xx): two lookups per response, no arithmetic.
_METHOD_INDEX: Final = {
    name: _REQUESTS + i * len(STATUS_CLASSES) for i, name in enumerate(METHODS)
}
_OTHER_METHOD: Final = _METHOD_INDEX["other"]
_STATUS_CLASS: Final = [min(code // 100, 5) - 1 for code in range(1000)]
_REFUSAL_INDEX: Final = {
    status: _REFUSED + list(dict.fromkeys(REFUSALS.values())).index(reason)
    for status, reason in REFUSALS.items()
}
TIMEOUT_HEAD, TIMEOUT_BODY, TIMEOUT_WRITE, TIMEOUT_APP = range(4)
#: Deadlines that pass outside an exchange and are timeouts (IDLE's is the keep-alive's end).
_DEADLINE_KIND: Final = {NEW: TIMEOUT_HEAD, HEAD: TIMEOUT_HEAD, DISCARDING: TIMEOUT_BODY}
#: Durations statsd gets one by one per tick (gunicorn.request.duration); past this many in a
#: tick the rest is sampled (``|@rate``), so a packet batch stays small at any request rate.
SAMPLES: Final = 256

_monotonic = time.monotonic
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def build_labels(loop_name: str) -> dict[str, str]:
    """The labels of ``wsgiloop_build_info``; ``loop_name``: --loop (auto is resolved)."""
    if loop_name == "auto":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop_name = "asyncio"
        else:
            loop_name = "uvloop"
    return {
        "version": __version__,
        "loop": loop_name,
        "python": ".".join(str(n) for n in sys.version_info[:3]),
    }


class Metrics:
    """One worker's figures. Every method runs on the event loop."""

    __slots__ = ("_both", "_ends", "_firsts", "_waits", "codes", "durations", "requests_seen",
                 "v", "waited")

    def __init__(self) -> None:
        self.v: list[float] = [0] * SIZE
        #: Responses by exact status code (gunicorn.request.status.<code> for statsd).
        self.codes = [0] * 1000
        #: The end durations (ms) of this tick's first SAMPLES responses, and how many ended.
        self.durations = array("d", bytes(8 * SAMPLES))
        self.requests_seen = 0
        # Durations (s) observed since the last fold into the histograms (``fold``): a request
        # appends one number; the buckets are counted per snapshot, in C, by sorting them. The
        # worker's ticker folds every tick, so these hold at most a tick's worth.
        self._both = array("d")  # head and end in one write: first byte = end
        self._firsts = array("d")  # first byte only (the end comes later, or never)
        self._ends = array("d")  # end only (its head was counted in _firsts)
        self._waits = array("d")  # waits for a free thread
        #: Told by the pool how long a request waited for a thread (seconds): a C-level append,
        #: called per request once the pool is saturated.
        self.waited: Callable[[float], None] = self._waits.append

    # -- events (protocol, pool) --------------------------------------------------------------

    def accepted(self) -> None:
        self.v[_ACCEPTED] += 1

    def received(self, size: int) -> None:
        self.v[_RECEIVED] += size

    def head_sent(self, exchange: Exchange, head: Head) -> None:
        """A response head to an app request left (the app's, or the server's 503/408 for it)."""
        self._responded(exchange, head)
        self._firsts.append(_monotonic() - exchange.started)

    def exchange_ended(self, exchange: Exchange, complete: bool, head: Head | None = None) -> None:
        """An app request's pool job ended; ``complete``: its response went out whole.

        ``head``: the response head, when it left in the same write as the end (a list body, the
        usual case), and ``head_sent`` was not called: its first byte and its end are then one
        moment, one clock read and one number for both duration series.
        """
        self.v[_SENT] += exchange.sent
        if head is not None:
            self._responded(exchange, head)
        if complete:
            (self._ends if head is None else self._both).append(_monotonic() - exchange.started)
        elif head is not None:
            self._firsts.append(_monotonic() - exchange.started)

    def _responded(self, exchange: Exchange, head: Head) -> None:
        """Count a response by method and status, and its head's bytes."""
        v = self.v
        code = head.status
        v[_METHOD_INDEX.get(exchange.environ["REQUEST_METHOD"], _OTHER_METHOD)
          + _STATUS_CLASS[code]] += 1  # fmt: skip
        self.codes[code] += 1
        v[_SENT] += len(head.data)

    def fold(self) -> None:
        """Count the durations observed since the last fold into the histogram buckets.

        Each array is sorted once (in C) and bisected once per bucket edge: that costs far less
        than a Python ``bisect`` per request (``bench/instructions.py``: about 500 instructions
        per value sorted, against 1,400 for a C-level ``map`` of ``bisect`` and 2,000 for a
        Python loop), and leaves a request one ``array.append``. A request whose head and end
        left together is in both duration series, from the one sorted ``_both``.
        """
        v = self.v
        both, firsts, ends, waits = self._both, self._firsts, self._ends, self._waits
        if both:
            ordered = sorted(both)
            _count(v, _DURATION, DURATION_BUCKETS, ordered)
            _count(v, _END, DURATION_BUCKETS, ordered)
        if firsts:
            _count(v, _DURATION, DURATION_BUCKETS, sorted(firsts))
        if ends:
            _count(v, _END, DURATION_BUCKETS, sorted(ends))
        if both or ends:
            seen = self.requests_seen
            room = max(0, SAMPLES - seen)  # statsd's sample: the tick's first responses
            for seconds in (both[:room] + ends[: max(0, room - len(both))]) if room else ():
                self.durations[seen] = seconds * 1000.0
                seen += 1
            self.requests_seen += len(both) + len(ends)
        if waits:
            _count(v, _WAIT, WAIT_BUCKETS, sorted(waits))
        for observed in (both, firsts, ends, waits):
            del observed[:]

    def wrote(self, size: int) -> None:
        self.v[_SENT] += size

    def refused(self, status: int) -> None:
        index = _REFUSAL_INDEX.get(status)
        if index is not None:
            self.v[index] += 1

    def timed_out(self, kind: int) -> None:
        self.v[_TIMEOUTS + kind] += 1

    def deadline_passed(self, phase: Phase) -> None:
        """A phase's deadline passed outside an exchange (those count in ``timed_out``)."""
        kind = _DEADLINE_KIND.get(phase)
        if kind is not None:
            self.v[_TIMEOUTS + kind] += 1

    def client_disconnected(self) -> None:
        self.v[_DISCONNECTS] += 1

    # -- once a tick, once a second -----------------------------------------------------------

    def sample_process(self) -> None:
        """Read CPU time, RSS and open descriptors (the ticker, once a second)."""
        v = self.v
        v[_CPU] = time.process_time()
        v[_RSS], v[_FDS] = process_memory_and_fds()

    def snapshot(self, pool: ThreadPool, hung: int, connections: int, idle: int) -> list[float]:
        """The vector now, its gauges filled in from the worker's pool and connections."""
        self.fold()
        v = list(self.v)
        v[_WAIT] += pool.started_at_once  # the first wait bucket: no wait at all
        v[_IN_FLIGHT] = pool.busy + pool.waiting
        v[_WAITING] = pool.waiting
        v[_BUSY] = pool.busy
        v[_THREADS] = pool.size
        v[_HUNG] = hung
        v[_OPEN] = connections
        v[_IDLE] = idle
        return v

    def take_durations(self) -> tuple[Sequence[float], int]:
        """This tick's sampled end durations (ms) and how many responses ended; then reset."""
        seen = self.requests_seen
        self.requests_seen = 0
        return self.durations[: min(seen, SAMPLES)], seen


def _count(v: list[float], offset: int, bounds: Sequence[float], ordered: list[float]) -> None:
    """Add the values of ``ordered`` (sorted) to the histogram at ``offset`` of ``v``: its
    buckets (``le`` each bound, then +Inf), then its sum."""
    below = 0
    for i, bound in enumerate(bounds):
        upto = bisect_right(ordered, bound, below)
        v[offset + i] += upto - below
        below = upto
    v[offset + len(bounds)] += len(ordered) - below
    v[offset + len(bounds) + 1] += sum(ordered)  # (math.fsum costs 4x; its last digits of a
    # sum of durations matter to nobody)


def process_memory_and_fds() -> tuple[int, int]:
    """Resident bytes and open descriptors of this process (0, 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0, 0
    return rss, fds


def process_vector() -> list[float]:
    """A vector with only this process's figures (the supervisor's own)."""
    v: list[float] = [0] * SIZE
    v[_CPU] = time.process_time()
    v[_RSS], v[_FDS] = process_memory_and_fds()
    return v


def requests_total(v: Sequence[float]) -> float:
    """All responses counted in ``v`` (statsd's gunicorn.requests)."""
    family = BY_NAME["requests_total"]
    return sum(v[family.offset : family.offset + family.size])


#: Gauges statsd sends each tick, by statsd name.
STATSD_GAUGES: Final = (
    ("threads.busy", _BUSY),
    ("threads.total", _THREADS),
    ("requests.waiting", _WAITING),
    ("requests.in_flight", _IN_FLIGHT),
    ("connections.open", _OPEN),
    ("connections.idle", _IDLE),
)
#: Counters statsd sends as per-tick increments, by statsd name.
STATSD_COUNTERS: Final = (
    ("connections.accepted", _ACCEPTED),
    ("client_disconnects", _DISCONNECTS),
    *((f"timeouts.{kind}", _TIMEOUTS + i) for i, kind in enumerate(TIMEOUT_KINDS)),
    *(
        (f"refused.{reason}", _REFUSED + i)
        for i, reason in enumerate(dict.fromkeys(REFUSALS.values()))
    ),
)
#: Requests that waited for a thread at all (the wait histogram's count past its first bucket).
WAITED_RANGE: Final = (_WAIT + 1, _WAIT + len(WAIT_BUCKETS) + 1)
