"""The supervisor's view of a worker's life (``workerlife``), without processes: the moves the
supervisor makes, and the ones it must never make."""

from __future__ import annotations

import pytest

from wsgiloop.workerlife import (
    ABORTING,
    BOOTING,
    KILLED,
    NEXT,
    RETIRING,
    SERVING,
    Worker,
    WorkerPhaseError,
)


def worker() -> Worker:
    return Worker(pid=42, slot=0, born=0.0, generation=1)


def test_a_worker_serves_from_its_first_heartbeat_then_retires_and_stays_leaving():
    w = worker()
    assert (w.phase, w.served, w.leaving) == (BOOTING, False, False)
    w.beat_seen(1.0)
    assert (w.phase, w.served) == (SERVING, True)
    w.enter(RETIRING, 2.0)
    assert w.leaving and w.since == 2.0
    w.enter(KILLED, 3.0)  # the retire deadline passed
    assert w.leaving and w.being_killed  # still one the supervisor no longer counts


def test_a_booting_worker_may_be_retired_and_its_first_beat_does_not_undo_that():
    w = worker()
    w.enter(RETIRING, 1.0)  # SIGTTOU takes the newest worker, which may still be loading
    w.beat_seen(2.0)
    assert (w.phase, w.served, w.leaving) == (RETIRING, True, True)


def test_a_hung_worker_is_aborted_then_killed_and_nothing_brings_it_back():
    w = worker()
    w.beat_seen(1.0)
    w.enter(ABORTING, 5.0)
    assert w.being_killed and w.since == 5.0 and not w.leaving
    w.enter(KILLED, 6.0)
    for phase in NEXT:
        with pytest.raises(WorkerPhaseError, match="cannot move from KILLED"):
            w.enter(phase, 7.0)


@pytest.mark.parametrize(
    ("current", "new"),
    [(SERVING, BOOTING), (RETIRING, SERVING), (ABORTING, RETIRING), (ABORTING, SERVING)],
)
def test_an_impossible_move_fails_loudly(current, new):
    w = worker()
    w.phase = current
    with pytest.raises(WorkerPhaseError, match=f"from {current.name} to {new.name}"):
        w.enter(new, 1.0)
