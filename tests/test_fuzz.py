"""Property-based fuzzing (hypothesis) of the request path: over a real socket and sans-IO.

Request streams are built from valid parts (method, path, query, fields, a body framed by
Content-Length or chunked with extensions and trailers), pipelined, cut at random byte
boundaries, and mutated (byte flips, insertions, deletions, known-bad edits). Invariants:

- valid requests get exactly one response each, in order, with the body the app saw;
- a stream broken by a known-bad edit gets its valid prefix answered, then one 4xx/5xx, then
  a close; arbitrary mutations and garbage get well-formed responses (an error only as the
  last one) and a close once the client is done sending;
- nothing is ever logged with a traceback (``wsgiloop.error`` and ``asyncio``), and after all
  of it the server still serves a normal request.

One in-process server serves the whole module (``start_server``), to stay fast; the sans-IO
tests drive ``HttpProtocol`` directly (``fuzz/sansio.py``) and check ``wsgiloop.strict``
against h11 differentially. ``tests/fuzz/fuzz_http.py`` runs the same oracles under atheris for
long runs outside CI.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from conftest import Running, start_server
from fuzz.sansio import (
    Driver,
    chunked_problems,
    expected_payload,
    fuzz_app,
    head_problems,
    parse_responses,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiloop.strict import ChunkedValidator

#: CI runs a few hundred examples per property (the file takes about 15 s);
#: WSGILOOP_FUZZ_EXAMPLES=N multiplies them for a longer local hunt.
SCALE = max(1, int(os.environ.get("WSGILOOP_FUZZ_EXAMPLES", "1")))
SOCKET = settings(
    max_examples=80 * SCALE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SANSIO = settings(max_examples=300 * SCALE, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])

# -- building requests ----------------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "te",
            "upgrade", "trailer", "keep-alive", "proxy-connection"}

tokens = st.text(TCHARS, min_size=1, max_size=12)
field_values = st.lists(st.text(VCHARS, min_size=1, max_size=10), max_size=3).map(" ".join)


@dataclass
class Request:
    raw: bytes
    method: str
    expected: bytes  # the response body fuzz_app gives (empty for HEAD)


@st.composite
def chunked_bodies(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in chunks, with random size spelling, extensions and trailers."""
    out = bytearray()
    i = 0
    while i < len(body):
        size = draw(st.integers(1, max(1, len(body) - i)))
        out += _size_line(draw, size)
        out += body[i : i + size] + b"\r\n"
        i += size
    out += _size_line(draw, 0)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(tokens.filter(lambda t: t.lower() not in RESERVED))
        out += f"{name}: {draw(field_values)}\r\n".encode()
    return bytes(out + b"\r\n")


def _size_line(draw: st.DrawFn, size: int) -> bytes:
    digits = f"{size:x}"
    digits = "0" * draw(st.integers(0, 16 - len(digits))) + digits
    if draw(st.booleans()):
        digits = digits.upper()
    ext = ""
    for _ in range(draw(st.integers(0, 2))):
        ext += ";" + draw(tokens)
        if draw(st.booleans()):
            value = draw(st.one_of(tokens, st.text(PCHARS + " ", max_size=8)
                                   .map(lambda v: '"' + v + '"')))
            ext += "=" + value
    return f"{digits}{ext}\r\n".encode()


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
    path = "/" + draw(st.text(PCHARS + "/", max_size=20))
    query = draw(st.text(PCHARS + "/?", max_size=12))
    target = path + ("?" + query if query or draw(st.booleans()) else "")
    fields = [("Host", draw(st.sampled_from(["t", "example.com:8080", "[::1]"])))]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(tokens.filter(lambda t: t.lower() not in RESERVED))
        fields.append((name, draw(field_values)))
    body = b"" if method == "HEAD" else draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked"] + (["none"] if not body else [])))
    encoded = body
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        encoded = draw(chunked_bodies(body))
    if body and draw(st.integers(0, 9)) == 0:
        fields.append(("Expect", "100-continue"))
    fields = draw(st.permutations(fields))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    expected = b"" if method == "HEAD" else expected_payload(method, path, query, body)
    return Request(head.encode() + b"\r\n" + encoded, method, expected)


def _cut(draw: st.DrawFn, data: bytes, max_pieces: int = 6) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=max_pieces))))
    pieces, start = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[start:cut])
        start = cut
    return [p for p in pieces if p]


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[Request], list[bytes]]:
    reqs = draw(st.lists(requests(), min_size=1, max_size=4))
    return reqs, _cut(draw, b"".join(r.raw for r in reqs))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, max(0, len(out) - 1)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "special"]))
        if kind == "flip" and out:
            out[where] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[where:where] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and out:
            del out[where : where + draw(st.integers(1, 4))]
        else:  # bytes that matter to framing
            special = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b";", b"0", b"f"]
            out[where:where] = draw(st.sampled_from(special))
    return bytes(out)


#: Edits that make a request certainly invalid (h11 or the protocol refuses each with a 4xx/5xx).
BREAKERS = {
    "nul_in_value": lambda raw: raw.replace(b"\r\nHost: ", b"\r\nX-Nul: a\x00b\r\nHost: ", 1),
    "space_before_colon": lambda raw: raw.replace(b"\r\nHost: ", b"\r\nHost : ", 1),
    "bad_version": lambda raw: raw.replace(b" HTTP/1.1\r\n", b" HTTP/1.x\r\n", 1),
    "version_2": lambda raw: raw.replace(b" HTTP/1.1\r\n", b" HTTP/2.0\r\n", 1),
    "two_hosts": lambda raw: raw.replace(b"\r\nHost: ", b"\r\nHost: a\r\nHost: ", 1),
    "no_host": lambda raw: raw.replace(b"\r\nHost: ", b"\r\nX-Was-Host: ", 1),
    "conflicting_cl": lambda raw: raw.replace(
        b"\r\nHost: ", b"\r\nContent-Length: 1\r\nContent-Length: 2\r\nHost: ", 1),
    "cl_and_te": lambda raw: raw.replace(
        b"\r\nHost: ", b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nHost: ", 1),
    "bad_method": lambda raw: b"G(T" + raw[raw.index(b" "):],
    "space_in_target": lambda raw: raw.replace(b" HTTP/1.1\r\n", b"/a b HTTP/1.1\r\n", 1),
    "negative_cl": lambda raw: raw.replace(b"\r\nHost: ", b"\r\nContent-Length: -1\r\nHost: ", 1),
}


# -- the server and its logs ----------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []
        self.lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            with self.lock:
                self.bad.append(f"{record.name}: {record.getMessage()} {record.exc_info!r}")


@pytest.fixture(scope="module")
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("wsgiloop.error", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def server(records: Records) -> Iterator[Running]:
    running = start_server(fuzz_app, "auto", threads=4, header_timeout=5)
    yield running
    try:
        resp, body = running.request("GET", "/after?all")  # still serving after the run
        assert (resp.status, body) == (200, expected_payload("GET", "/after", "all", b""))
    finally:
        running.stop()
    assert not running.errors, running.errors
    assert not records.bad, records.bad


def _send(server: Running, pieces: list[bytes], shut: bool) -> socket.socket:
    sock = server.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for n, piece in enumerate(pieces):
            sock.sendall(piece)
            if n % 2:
                time.sleep(0.001)  # let some pieces arrive as reads of their own
        if shut:
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server refused and closed early: what it sent is still readable
    return sock


def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"no close within {timeout}s after {data[-200:]!r}") from None
        if not chunk:
            return data
        data += chunk


def _read_finals(sock: socket.socket, count: int, timeout: float = 10.0) -> list[Any]:
    """Read until ``count`` final (non-1xx) complete responses are in."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            finals = [r for r in parse_responses(data) if r.status >= 200]
            complete = all(
                len(r.body) == int(r.headers.get(b"content-length", b"0"))
                or r.headers.get(b"x-method") == b"HEAD"
                for r in finals
            )
            if len(finals) >= count and complete:
                return finals
        except ValueError:
            pass
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(data)} bytes: {data[-300:]!r}"
        data += chunk


def _check_logs(records: Records) -> None:
    with records.lock:
        bad, records.bad[:] = list(records.bad), []
    assert not bad, bad


# -- over a real socket ---------------------------------------------------------------------------


@SOCKET
@given(stream=valid_streams())
def test_valid_pipelined_requests_get_every_response_in_order(server, records, stream):
    reqs, pieces = stream
    sock = _send(server, pieces, shut=False)
    try:
        finals = _read_finals(sock, len(reqs))
    finally:
        sock.close()
    assert [(r.status, r.body) for r in finals] == [(200, q.expected) for q in reqs]
    _check_logs(records)


@SOCKET
@given(data=st.data(), reqs=st.lists(requests(), max_size=2),
       breaker=st.sampled_from(sorted(BREAKERS)))
def test_invalid_request_after_valid_ones_gets_one_error_and_a_close(
    server, records, data, reqs, breaker
):
    bad = BREAKERS[breaker](data.draw(requests()).raw)
    stream = b"".join(r.raw for r in reqs) + bad + b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n"
    sock = _send(server, _cut(data.draw, stream), shut=False)
    try:
        answer = _read_until_closed(sock)  # no EOF from us: the server must close by itself
    finally:
        sock.close()
    responses = [r for r in parse_responses(answer) if r.status >= 200]
    assert [(r.status, r.body) for r in responses[:-1]] == [(200, q.expected) for q in reqs]
    assert len(responses) == len(reqs) + 1, [r.status for r in responses]
    assert 400 <= responses[-1].status < 600
    assert responses[-1].headers.get(b"connection", b"").lower() == b"close"
    _check_logs(records)


@SOCKET
@given(data=st.data(), stream=valid_streams())
def test_mutated_streams_get_well_formed_answers_and_a_close(server, records, data, stream):
    reqs, _ = stream
    raw = data.draw(mutated(b"".join(r.raw for r in reqs)))
    sock = _send(server, _cut(data.draw, raw), shut=True)
    try:
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    statuses = [r.status for r in parse_responses(answer)]  # raises if malformed
    errors = [n for n, s in enumerate(statuses) if s >= 400]
    assert not errors or errors == [len(statuses) - 1], statuses  # an error ends the connection
    assert 500 not in statuses, statuses  # the app never fails on what the server passes it
    _check_logs(records)


@SOCKET
@given(garbage=st.binary(min_size=1, max_size=2000), data=st.data())
def test_garbage_gets_at_most_one_error_and_a_close(server, records, garbage, data):
    sock = _send(server, _cut(data.draw, garbage), shut=True)
    try:
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    statuses = [r.status for r in parse_responses(answer)]
    assert all(s >= 400 for s in statuses) and len(statuses) <= 1, statuses
    _check_logs(records)


# -- sans-IO: the protocol, strict.py and h11 ---------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    driver = Driver()
    yield driver
    driver.close()


@SANSIO
@given(stream=valid_streams())
def test_sansio_valid_streams_are_answered_in_order(driver, stream):
    reqs, pieces = stream
    outcome = driver.run(pieces, eof=False)
    assert not outcome.problems, outcome.problems
    finals = [r for r in parse_responses(outcome.output) if r.status >= 200]
    assert [(r.status, r.body) for r in finals] == [(200, q.expected) for q in reqs]


@SANSIO
@given(data=st.data(), stream=valid_streams(), eof=st.booleans())
def test_sansio_mutated_streams_break_nothing(driver, data, stream, eof):
    reqs, _ = stream
    raw = data.draw(mutated(b"".join(r.raw for r in reqs)))
    outcome = driver.run(_cut(data.draw, raw, max_pieces=10), eof=eof)
    assert not outcome.problems, outcome.problems
    assert 500 not in outcome.statuses


@SANSIO
@given(data=st.data(), req=requests())
def test_check_head_agrees_with_h11_on_where_the_head_ends(data, req):
    raw = data.draw(st.one_of(st.just(req.raw), mutated(req.raw), st.binary(max_size=300)))
    assert not head_problems(raw)


@SANSIO
@given(data=st.data(), body=st.binary(max_size=200))
def test_chunked_validator_never_disagrees_with_h11_on_framing(data, body):
    encoded = data.draw(chunked_bodies(body)) + data.draw(st.binary(max_size=20))
    raw = data.draw(st.one_of(st.just(encoded), mutated(encoded)))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    assert not chunked_problems(raw, cuts)
    if raw == encoded:  # unmutated: accepted, ending right after the trailers
        validator = ChunkedValidator()
        assert validator.feed(raw) is None and validator.done


@SANSIO
@given(data=st.data(), reqs=st.lists(requests(), min_size=1, max_size=3))
def test_h11_raises_nothing_but_remote_protocol_error(data, reqs):
    raw = data.draw(st.one_of(mutated(b"".join(r.raw for r in reqs)), st.binary(max_size=500)))
    conn = h11.Connection(h11.SERVER)
    for piece in [*_cut(data.draw, raw, max_pieces=10), b""]:
        conn.receive_data(piece)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or type(event) is h11.ConnectionClosed:
                    break
                if event is h11.PAUSED:
                    if conn.our_state is h11.SEND_RESPONSE:
                        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                        conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                elif type(event) is h11.EndOfMessage and conn.our_state is h11.SEND_RESPONSE:
                    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    conn.send(h11.EndOfMessage())
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
        except h11.RemoteProtocolError:
            return  # the documented way to refuse
