"""The connection's life as one state machine (``wsgiloop.lifecycle``).

Sans-IO checks of the tables and rules, then the moves a real ``HttpProtocol`` makes for the
byte streams that take each path (driven without sockets by ``fuzz.sansio``, every move
recorded), and the import graph the seam between the loop and the app threads keeps acyclic.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import read_response
from fuzz.sansio import Driver, FakeTransport
from test_supervisor import wait_for

from wsgiloop import lifecycle, protocol
from wsgiloop.config import Config
from wsgiloop.lifecycle import (
    CLOSED,
    DISCARDING,
    EXCHANGE,
    HEAD,
    IDLE,
    LINGERING,
    NEW,
    NEXT,
    PROXY,
    Cycle,
    Phase,
    PhaseError,
    check_move,
    exchange_deadline,
    phase_timeouts,
)
from wsgiloop.response import Head

PHASES = [PROXY, NEW, IDLE, HEAD, EXCHANGE, DISCARDING, LINGERING, CLOSED]
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


# -- the tables ---------------------------------------------------------------------------------


def test_every_phase_has_its_moves_and_its_timeout() -> None:
    assert set(NEXT) == set(PHASES)
    assert set(phase_timeouts(Config())) == set(PHASES)
    for targets in NEXT.values():
        assert targets <= set(PHASES)


def test_every_phase_can_close_and_closed_is_final() -> None:
    for phase in PHASES:
        assert CLOSED in NEXT[phase], phase
    assert NEXT[CLOSED] == {CLOSED}


def test_every_phase_is_reachable_from_the_first_ones() -> None:
    # A connection starts in NEW, or in PROXY when a trusted balancer must send its header.
    seen = {NEW, PROXY}
    todo = [NEW, PROXY]
    while todo:
        for target in NEXT[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(PHASES)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (NEW, EXCHANGE),  # a request is always parsed in HEAD first
        (NEW, IDLE),
        (IDLE, EXCHANGE),
        (HEAD, DISCARDING),
        (HEAD, IDLE),
        (LINGERING, HEAD),  # nothing more is read after an answer that closes
        (LINGERING, IDLE),
        (CLOSED, HEAD),
        (CLOSED, LINGERING),
        (DISCARDING, EXCHANGE),
        (PROXY, HEAD),  # the header is complete before any request byte is looked at
        (NEW, PROXY),
    ],
)
def test_an_impossible_move_fails_loudly(current: Phase, new: Phase) -> None:
    with pytest.raises(PhaseError, match=f"from {current.name} to {new.name}"):
        check_move(current, new)


def test_a_protocol_refuses_an_impossible_move_with_the_same_error() -> None:
    driver = Driver()
    proto = protocol.HttpProtocol(driver.state)
    proto.connection_made(FakeTransport())  # type: ignore[arg-type]
    try:
        with pytest.raises(PhaseError, match="from NEW to IDLE"):
            proto._enter(IDLE)
        assert proto.phase is NEW  # the move did not happen
    finally:
        proto.connection_lost(None)
        driver.close()


def test_deadlines_come_from_the_settings_of_each_phase() -> None:
    config = Config(header_timeout=7.0, keepalive_timeout=3.0)
    timeouts = phase_timeouts(config)
    assert timeouts[PROXY] == timeouts[NEW] == timeouts[HEAD] == timeouts[DISCARDING] == 7.0
    assert timeouts[IDLE] == 3.0
    assert timeouts[LINGERING] == lifecycle.LINGER
    assert timeouts[EXCHANGE] is None  # exchange_deadline's
    assert timeouts[CLOSED] is None


# -- the rules of a request in flight ---------------------------------------------------------


def head(close: bool = False) -> Head:
    return Head(b"HTTP/1.1 200 OK\r\n", 1, close, 200)


@pytest.mark.parametrize(
    ("change", "keeps"),
    [
        ({}, True),
        ({"head_close": True}, False),  # the app sent Connection: close
        ({"client_close": True}, False),  # the client asked to close (or is HTTP/1.0)
        ({"stopping": True}, False),
        ({"until_close": True}, False),  # the body ends where the connection does
        ({"waiting": True}, False),  # a final answer while the client holds its body back
        ({"waiting": True, "continue_sent": True}, True),
        ({"waiting": True, "bodiless": True}, True),
    ],
)
def test_keep_alive_is_decided_from_the_cycle_and_the_response(
    change: dict[str, bool], keeps: bool
) -> None:
    cycle = Cycle(head_request=False)
    cycle.keep_alive = not change.get("client_close", False)
    cycle.continue_sent = change.get("continue_sent", False)
    cycle.bodiless = change.get("bodiless", False)
    assert (
        cycle.keeps_alive(
            head(change.get("head_close", False)),
            until_close=change.get("until_close", False),
            stopping=change.get("stopping", False),
            waiting=change.get("waiting", False),
        )
        is keeps
    )


def test_the_exchange_deadline_is_the_earliest_of_its_timeouts() -> None:
    config = Config(body_timeout=30.0, write_timeout=60.0)
    cycle = Cycle(head_request=False)
    cycle.body_seen = 100.0
    # A body being read: the body's stall deadline.
    assert exchange_deadline(cycle, config, True, False, 0.0) == 130.0
    # The app's own deadline comes first.
    cycle.app_deadline = 110.0
    assert exchange_deadline(cycle, config, True, False, 0.0) == 110.0
    cycle.app_deadline = 0.0
    # Reading paused (the app reads slowly) or body complete: the client is not late.
    assert exchange_deadline(cycle, config, False, False, 0.0) == 0.0
    assert exchange_deadline(cycle, config, True, True, 0.0) == 0.0
    # The transport paused the app's writes at 120: the client must read by 180.
    assert exchange_deadline(cycle, config, False, True, 120.0) == 180.0
    # No body at all: no body deadline.
    cycle.bodiless = True
    assert exchange_deadline(cycle, config, True, False, 0.0) == 0.0


def test_zero_disables_the_body_and_write_timeouts() -> None:
    config = Config(body_timeout=0.0, write_timeout=0.0)
    cycle = Cycle(head_request=False)
    assert exchange_deadline(cycle, config, True, False, 5.0) == 0.0


# -- the moves of a real protocol -------------------------------------------------------------


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every phase a connection enters, in order (the protocol's checks still run)."""
    trace: list[str] = []
    enter = protocol.HttpProtocol._enter

    def record(self: protocol.HttpProtocol, new: Phase) -> None:
        enter(self, new)
        trace.append(new.name)

    monkeypatch.setattr(protocol.HttpProtocol, "_enter", record)
    yield trace


def ignores_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def run(pieces: list[bytes], app: Any = None, eof: bool = True) -> list[int]:
    driver = Driver() if app is None else Driver(app)
    try:
        outcome = driver.run(pieces, eof=eof)
    finally:
        driver.close()
    assert not outcome.problems, outcome.problems
    return outcome.statuses


def test_keep_alive_requests_go_round_through_idle(moves: list[str]) -> None:
    assert run([GET, GET]) == [200, 200]
    assert moves == ["HEAD", "EXCHANGE", "IDLE", "HEAD", "EXCHANGE", "IDLE", "CLOSED", "CLOSED"]


def test_a_pipelined_request_goes_straight_to_head(moves: list[str]) -> None:
    assert run([GET + GET]) == [200, 200]
    assert moves == ["HEAD", "EXCHANGE", "HEAD", "EXCHANGE", "IDLE", "CLOSED", "CLOSED"]


def test_a_body_the_app_leaves_unread_is_discarded(moves: list[str], serve: Any) -> None:
    # Over a real socket: the app answers before the rest of the body has even been sent.
    server = serve(ignores_body)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
    assert read_response(sock)[0] == 200
    sock.sendall(b"56789" + GET)
    assert read_response(sock)[0] == 200
    sock.close()
    assert wait_for(lambda: moves[-1:] == ["CLOSED"], timeout=5)
    assert moves[:5] == ["HEAD", "EXCHANGE", "DISCARDING", "HEAD", "EXCHANGE"]


def test_a_chunked_body_left_unread_is_discarded_through_h11(
    moves: list[str], serve: Any
) -> None:
    server = serve(ignores_body)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert read_response(sock)[0] == 200
    sock.sendall(b"0\r\n\r\n")
    assert wait_for(lambda: "IDLE" in moves, timeout=5)
    sock.sendall(GET)
    assert read_response(sock)[0] == 200
    sock.close()
    assert wait_for(lambda: moves[-1:] == ["CLOSED"], timeout=5)
    assert moves[:5] == ["HEAD", "EXCHANGE", "DISCARDING", "IDLE", "HEAD"]


def test_a_malformed_head_is_answered_then_lingers(moves: list[str]) -> None:
    assert run([b"GET / HTTP/1.1\r\nHost t\r\n\r\n"]) == [400]
    assert moves == ["HEAD", "LINGERING", "CLOSED"]


def test_connection_close_ends_after_the_exchange(moves: list[str]) -> None:
    assert run([b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]) == [200]
    assert moves == ["HEAD", "EXCHANGE", "CLOSED", "CLOSED"]


def test_a_connection_closed_without_a_byte_never_leaves_new(moves: list[str]) -> None:
    assert run([]) == []
    assert moves == ["CLOSED", "CLOSED"]


def test_a_client_gone_mid_exchange_closes_it(moves: list[str]) -> None:
    # No EOF from the client: the connection is lost with the request still in the app's hands
    # (its body never came), so the exchange ends in CLOSED, not through IDLE.
    post = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01"
    run([post], eof=False)
    assert moves == ["HEAD", "EXCHANGE", "CLOSED"]


# -- the import graph -------------------------------------------------------------------------


def imports_of(path: Path) -> set[str]:
    """The wsgiloop modules ``path`` imports anywhere: at the top, in functions, for types."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsgiloop."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
    return found


def test_the_import_graph_has_no_cycle() -> None:
    package = Path(protocol.__file__).parent
    graph = {p.stem: imports_of(p) for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {name: {d for d in deps if d in graph and d != "__version__"} for name, deps in
             graph.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name):], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_app_thread_side_knows_nothing_of_the_protocol() -> None:
    package = Path(protocol.__file__).parent
    assert not imports_of(package / "wsgi.py") & {"protocol", "server", "state"}


def test_an_idle_connection_holds_no_parser_and_a_get_only_one_no_body_queue() -> None:
    # What an idle keep-alive connection costs in memory (bench's idle row): h11's Connection
    # is made with the first byte of a request and dropped when its response ends with nothing
    # behind it; the body queue is made for the first request that has a body.
    driver = Driver()
    proto = protocol.HttpProtocol(driver.state)
    transport = FakeTransport()
    try:
        proto.connection_made(transport)  # type: ignore[arg-type]
        assert proto.phase is NEW and proto.conn is None and proto.body is None
        for _ in range(2):
            proto.data_received(GET)
            driver._settle(proto, transport, final=False)
            assert proto.phase is IDLE and proto.conn is None and proto.body is None
        proto.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        driver._settle(proto, transport, final=False)
        assert proto.phase is IDLE and proto.conn is None and proto.body is not None
        # Half of a pipelined request behind a response keeps its parser, and its bytes.
        proto.data_received(GET + GET[:10])
        driver._settle(proto, transport, final=False)
        assert proto.phase is HEAD and proto.conn is not None
        proto.data_received(GET[10:])
        driver._settle(proto, transport, final=False)
        assert proto.phase is IDLE and proto.conn is None
        assert transport.out.count(b"HTTP/1.1 200 ") == 5
    finally:
        proto.connection_lost(None)
        driver.close()
