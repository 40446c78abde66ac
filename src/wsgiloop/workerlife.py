"""How a worker process lives, as the supervisor sees it: its phases and the moves between them.

The connection's life has ``lifecycle``; this is the same discipline for the supervisor's
workers, sans-IO: the phases are named sentinels, the allowed moves one table (``NEXT``), and
``Worker.enter`` the one place a phase changes. The supervisor decides the moves and sends the
signals that go with them; it asks the worker's phase instead of keeping flags of its own::

    BOOTING ──first heartbeat──▶ SERVING ──told to retire (reload, SIGTTOU)──▶ RETIRING
       │                            │                                          │
       └─────────── --timeout without a heartbeat (or a retire deadline) ──────┤
                                                                               ▼
                      ABORTING (SIGABRT: a worker_abort hook runs) ──1 s──▶ KILLED (SIGKILL)

- ``BOOTING``: forked, loading the app; it has not beaten yet. Retiring it is allowed (SIGTTOU
  takes the newest worker).
- ``SERVING``: it beats (every 0.25 s) and accepts connections.
- ``RETIRING``: sent SIGTERM; it drains. Deadline: ``--graceful-timeout`` + 5 s, then KILLED.
- ``ABORTING``: its heartbeat stopped for ``--timeout``, and a ``worker_abort`` hook is
  defined: sent SIGABRT, so the hook runs; SIGKILL follows after a second (``ABORT_GRACE``).
- ``KILLED``: sent SIGKILL; the supervisor waits to reap it.

Two facts are not phases, because they outlast them: whether the worker ever served (a worker
that exits with ``APP_LOAD`` before it did could not load the app), and whether it was told to
leave (a retiring worker that is then killed is still not one of the workers the supervisor
counts, and its exit is expected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .lifecycle import Phase

BOOTING: Final = Phase("BOOTING")
SERVING: Final = Phase("SERVING")
RETIRING: Final = Phase("RETIRING")
ABORTING: Final = Phase("ABORTING")
KILLED: Final = Phase("KILLED")

#: The allowed moves; anything else is a bug in the supervisor and fails loudly.
NEXT: Final[dict[Phase, frozenset[Phase]]] = {
    BOOTING: frozenset({SERVING, RETIRING, ABORTING, KILLED}),
    SERVING: frozenset({RETIRING, ABORTING, KILLED}),
    RETIRING: frozenset({ABORTING, KILLED}),
    ABORTING: frozenset({KILLED}),
    KILLED: frozenset(),
}

#: Seconds between SIGABRT (the worker_abort hook) and the SIGKILL for a worker too stuck to
#: run it.
ABORT_GRACE: Final = 1.0


class WorkerPhaseError(RuntimeError):
    """A move that ``NEXT`` does not allow: the supervisor lost track of a worker."""


@dataclass
class Worker:
    """One worker process, as its supervisor knows it."""

    pid: int
    slot: int
    born: float
    generation: int
    phase: Phase = BOOTING
    #: It has beaten at least once (and so loaded the app).
    served: bool = False
    #: It was told to leave (RETIRING, and whatever follows): its exit is expected.
    leaving: bool = False
    #: When the phase began (for ABORTING: when SIGABRT went).
    since: float = 0.0
    #: When its heartbeat timeout starts counting if it has not beaten since (see STALL).
    baseline: float = 0.0
    retire_deadline: float = 0.0  # when a retiring worker is killed if it is still draining

    def enter(self, phase: Phase, now: float) -> None:
        """Move to ``phase``, checked against ``NEXT``."""
        if phase not in NEXT[self.phase]:
            raise WorkerPhaseError(
                f"worker {self.pid} cannot move from {self.phase!r} to {phase!r}"
            )
        self.phase = phase
        self.since = now
        if phase is RETIRING:
            self.leaving = True

    def beat_seen(self, now: float) -> None:
        """Its first heartbeat: it has loaded the app and serves (unless already retiring)."""
        self.served = True
        if self.phase is BOOTING:
            self.enter(SERVING, now)

    @property
    def being_killed(self) -> bool:
        """A signal that ends it without a drain (SIGABRT or SIGKILL) has been sent."""
        return self.phase is ABORTING or self.phase is KILLED
