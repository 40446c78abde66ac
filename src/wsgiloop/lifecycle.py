"""How a connection lives: its phases, the moves between them, and the deadline of each.

Everything that says *where* a connection is in its life lives here, sans-IO, in the manner of
h11's ``_state.py``: the phases are named sentinels, the allowed moves are one table
(``NEXT``), the deadline that applies in each phase is another (``phase_timeouts``), and the facts
of the request in flight are one object (``Cycle``) made per request. The asyncio protocol
(``protocol.HttpProtocol``) holds one phase and one cycle, moves between phases only through
``HttpProtocol._enter``, which checks each move against ``NEXT``, and asks these objects instead of
keeping booleans of its own.

The phases and what moves a connection between them::

    (PROXY ──header──▶) NEW ──first byte──▶ HEAD ──head parsed and accepted──▶ EXCHANGE
                         ▲                                    │ response ended
                         │ first byte                         ▼
                        IDLE ◀─────── keep-alive, body read ──┤
                         ▲                                    │ keep-alive, body unread
                         └──── rest of the body dropped ─── DISCARDING

    (a next request already buffered behind the response goes straight to HEAD)
    HEAD: bad head or 408; EXCHANGE: body unread, no keep-alive;
    DISCARDING: more than --max-discard  ──▶ LINGERING ──▶ CLOSED
    any phase ──▶ CLOSED: a timeout, the client's EOF, an abort, the connection lost

- ``PROXY``: with ``--proxy-protocol``, from a trusted balancer: waiting for its PROXY header
  (optional: plain HTTP moves on to ``NEW`` at once). Deadline: ``--header-timeout``.
- ``NEW``: accepted, no byte yet. Deadline: ``--header-timeout``; then closed without a word.
- ``IDLE``: between two requests of a keep-alive connection. Deadline: ``--keep-alive``; then
  closed, or, once a graceful stop has begun, half-closed into ``LINGERING`` (a request sent
  meanwhile is answered with ``Connection: close``), so a client never writes into a reset.
- ``HEAD``: bytes of a request head are arriving. Deadline: ``--header-timeout``, then ``408``.
- ``EXCHANGE``: the request is the app's, on a pool thread; its body (if any) streams in, its
  response streams out. Deadline: the earliest of the app's, the body's and the write's
  (``exchange_deadline``).
- ``DISCARDING``: the response is complete but the app left body bytes unread; they are dropped
  (at most ``--max-discard``) to reach the next request. Deadline: ``--header-timeout``.
- ``LINGERING``: answered and half-closed; the client's input is read and dropped until its EOF,
  so that closing cannot turn into a reset that destroys the answer. Deadline: ``LINGER``.
- ``CLOSED``: the transport is closed or lost. An app thread may still be running the last
  request; its output goes nowhere and its pool slot is freed when it ends.

Not phases: whether reading or writing is paused is flow control, orthogonal to the phase (the
protocol's ``reading``/``write_paused``/``draining``); whether a pool job is outstanding is whether
the protocol holds an ``Exchange``, which outlives ``EXCHANGE`` when a connection closes under it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .config import Config
    from .response import Head
    from .strict import ChunkedValidator

#: Seconds a closing connection keeps reading (and dropping) what the client still sends, so the
#: close does not turn into a reset that destroys the answer before the client has read it. Long
#: enough for a client to read a small error response and stop sending; short enough that a flood
#: of bad requests holds few descriptors (nginx waits up to 5 s between reads, 30 s in all).
LINGER = 2.0


class Phase:
    """A named sentinel (h11 style): compared by identity, printed by name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PROXY: Final = Phase("PROXY")
NEW: Final = Phase("NEW")
IDLE: Final = Phase("IDLE")
HEAD: Final = Phase("HEAD")
EXCHANGE: Final = Phase("EXCHANGE")
DISCARDING: Final = Phase("DISCARDING")
LINGERING: Final = Phase("LINGERING")
CLOSED: Final = Phase("CLOSED")

#: The allowed moves. Anything else is a bug in the protocol, and fails loudly (``PhaseError``).
#: Every phase may close (CLOSED → CLOSED too: a connection we closed is then lost).
NEXT: Final[dict[Phase, frozenset[Phase]]] = {
    PROXY: frozenset({NEW, CLOSED}),
    NEW: frozenset({HEAD, CLOSED}),
    IDLE: frozenset({HEAD, LINGERING, CLOSED}),
    HEAD: frozenset({EXCHANGE, LINGERING, CLOSED}),
    # A next request already buffered (pipelined) goes straight to HEAD.
    EXCHANGE: frozenset({IDLE, HEAD, DISCARDING, LINGERING, CLOSED}),
    DISCARDING: frozenset({IDLE, HEAD, LINGERING, CLOSED}),
    LINGERING: frozenset({CLOSED}),
    CLOSED: frozenset({CLOSED}),
}


class PhaseError(RuntimeError):
    """A move that ``NEXT`` does not allow: the protocol lost track of its connection."""


def check_move(current: Phase, new: Phase) -> None:
    """Raise ``PhaseError`` unless ``current`` → ``new`` is an allowed move."""
    if new not in NEXT[current]:
        raise PhaseError(f"connection cannot move from {current!r} to {new!r}")


def phase_timeouts(config: Config) -> dict[Phase, float | None]:
    """Seconds from entering each phase to its deadline; None: no deadline of its own (CLOSED,
    and EXCHANGE, whose deadline ``exchange_deadline`` recomputes as the exchange goes).

    Computed once per worker: entering a phase is then one lookup and one addition.
    """
    return {
        PROXY: config.header_timeout,
        NEW: config.header_timeout,
        IDLE: config.keepalive_timeout,
        HEAD: config.header_timeout,
        EXCHANGE: None,
        DISCARDING: config.header_timeout,
        LINGERING: LINGER,
        CLOSED: None,
    }


class Cycle:
    """The facts of one request in flight, on the loop side; a new one for each request.

    Its fields are written while the head is checked (``HttpProtocol._on_request``) and then
    only read, except the few that the exchange moves on: ``length_left``, ``awaiting_continue``,
    ``continue_sent``, ``responded``, ``keep_alive`` (the response may withdraw the client's wish),
    ``discarded`` and the timestamps.
    """

    __slots__ = (
        "app_deadline",
        "awaiting_continue",
        "bodiless",
        "body_seen",
        "continue_sent",
        "delimited",
        "discarded",
        "head_request",
        "http11",
        "keep_alive",
        "length_left",
        "responded",
        "validator",
    )

    def __init__(self, head_request: bool) -> None:
        self.head_request = head_request  # a HEAD: no response to it has a body, errors included
        self.http11 = True
        # The client's wish, then the response's (``keeps_alive``).
        self.keep_alive = True
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), and h11's
        # EndOfMessage for it is left unasked for.
        self.bodiless = False
        # A Content-Length body is counted out by the protocol rather than by h11: whether this
        # one is, how many of its bytes are still to come, and whether the client still holds it
        # back for a 100 Continue (h11 no longer sees the body to tell).
        self.delimited = False
        self.length_left = 0
        self.awaiting_continue = False
        self.continue_sent = False
        self.responded = False  # a response head (the app's or ours) went out
        self.discarded = 0  # unread body bytes dropped after the response (DISCARDING)
        # The shadow validator of a chunked body, fed the bytes h11 gets (see strict).
        self.validator: ChunkedValidator | None = None
        # When the app must have answered (0: no --timeout, or it has), when body bytes last came.
        self.app_deadline = 0.0
        self.body_seen = 0.0

    def keeps_alive(self, head: Head, until_close: bool, stopping: bool, waiting: bool) -> bool:
        """Whether the connection may take another request after this response (RFC 9112 9.3).

        ``until_close``: the response is delimited by closing the connection (no length, not
        chunked, and it has a body). ``waiting``: the client still holds its body back for a
        100 Continue that never went out; after a final answer it may never send that body, so
        where a next request would start is unknown (RFC 9110 10.1.1).
        """
        return not (
            head.close
            or not self.keep_alive
            or stopping
            or until_close
            or (waiting and not self.continue_sent and not self.bodiless)
        )


_NEVER = float("inf")


def exchange_deadline(
    cycle: Cycle,
    config: Config,
    reading: bool,
    body_complete: bool,
    write_paused: float,
) -> float:
    """The deadline of an ``EXCHANGE``: the earliest of its three timeouts (0.0: none).

    - the app must start its response within ``--timeout`` (``cycle.app_deadline``);
    - the client must not stall the body it is sending for ``--body-timeout``, counted only
      while the body is being read: when the app reads slowly and reading is paused, the client
      is not late;
    - the client must read some of the response within ``--write-timeout`` once the transport
      has paused the app (``write_paused``, the moment it did; 0.0: not paused).
    """
    deadline = cycle.app_deadline or _NEVER
    if reading and not cycle.bodiless and not body_complete and config.body_timeout:
        deadline = min(deadline, cycle.body_seen + config.body_timeout)
    if write_paused and config.write_timeout:
        deadline = min(deadline, write_paused + config.write_timeout)
    return 0.0 if deadline == _NEVER else deadline
