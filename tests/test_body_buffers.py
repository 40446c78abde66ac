"""The request-body path without sockets: ``RequestBody``/``InputStream`` and h11's receive buffer.

``RequestBody`` queues the chunks it is fed as they are and reads slice across them; the
``PassThroughBuffer`` hands whole socket reads through h11 uncopied. Both must be invisible:
the same bytes and events, split however the reads fall.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import threading
import time
from typing import Any

import h11
import pytest

from wsgiloop import receive
from wsgiloop.bridge import BodyTooLarge, ClientDisconnected, InputStream, RequestBody
from wsgiloop.pool import ThreadPool


class Loop:
    """Stands for the event loop: records what the app thread schedules on it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_soon_threadsafe(self, callback: Any) -> None:
        self.calls.append(callback)
        callback()


def make_body(
    chunks: list[bytes], limit: int = 1 << 20, eof: bool = True
) -> tuple[RequestBody, InputStream, Loop]:
    loop = Loop()
    body = RequestBody(loop, limit, lambda: None, lambda: None)  # type: ignore[arg-type]
    body.reset(has_body=True, expect_continue=False, max_size=1 << 30)
    for chunk in chunks:
        body.feed(chunk)
    if eof:
        body.feed_eof()
    return body, InputStream(body), loop


def test_small_reads_across_chunk_boundaries():
    _, stream, _ = make_body([b"abc", bytearray(b"defg"), b"h"])
    assert [stream.read(3) for _ in range(4)] == [b"abc", b"def", b"gh", b""]


def test_read_sizes_and_types():
    _, stream, _ = make_body([b"abc", bytearray(b"defg"), b"hij"])
    assert stream.read(1) == b"a"
    first = stream.read(2)  # the rest of a chunk, as a slice of it
    assert (first, type(first)) == (b"bc", bytes)
    whole = stream.read(4)  # a whole bytearray chunk
    assert (whole, type(whole)) == (b"defg", bytes)
    assert stream.read(100) == b"hij"  # short only at EOF
    assert stream.read() == b""


def test_whole_bytes_chunk_is_handed_out_uncopied():
    chunk = bytes(range(256)) * 256
    _, stream, _ = make_body([chunk])
    assert stream.read(len(chunk)) is chunk


def test_tiny_chunks_are_coalesced_so_the_limit_bounds_memory():
    """A chunked body in 1-byte chunks: one object per byte would hold ~70 bytes per byte."""
    body, stream, _ = make_body([b"x"] * 100_000)
    assert len(body._chunks) <= 2
    assert stream.read() == b"x" * 100_000


def test_interleaved_feeds_and_reads_of_mixed_sizes_keep_the_bytes_in_order():
    rng = random.Random(7)
    body, stream, _ = make_body([], eof=False)
    fed = bytearray()
    got = bytearray()
    for i in range(3000):
        size = rng.choice([1, 7, 100, 4095, 4096, 20_000, 70_000])
        chunk = bytes([i % 251]) * size
        body.feed(chunk if i % 3 else bytearray(chunk))
        fed += chunk
        while body.buffered and rng.random() < 0.6:
            got += stream.read(rng.randint(1, body.buffered))
    body.feed_eof()
    got += stream.read()
    assert got == fed


def test_readline_across_chunk_boundaries():
    _, stream, _ = make_body([b"ab", b"c\nde", b"f", b"\ng", b"h\n\n", b"tail"])
    assert stream.readline() == b"abc\n"
    assert stream.readline(1) == b"d"
    assert stream.readline() == b"ef\n"
    assert list(stream) == [b"gh\n", b"\n", b"tail"]


def test_readline_across_large_chunks():
    """Chunks big enough to be queued as they are: the newline search crosses them."""
    a, b, c = b"a" * 5000, b"b" * 5000 + b"\n" + b"c" * 4999, b"\n" + b"d" * 8000
    _, stream, _ = make_body([a, b, c])
    assert stream.readline() == a + b"b" * 5000 + b"\n"
    assert stream.readline(4000) == b"c" * 4000
    assert stream.readline() == b"c" * 999 + b"\n"
    assert stream.readline() == b"d" * 8000


def test_readline_limit_stops_before_a_later_newline():
    _, stream, _ = make_body([b"abcd", b"ef\n"])
    assert stream.readline(5) == b"abcde"
    assert stream.readline(5) == b"f\n"


def test_body_over_the_limit_raises():
    body, stream, _ = make_body([b"x" * 10])
    body.reset(has_body=True, expect_continue=False, max_size=5)
    body.feed(b"x" * 10)
    with pytest.raises(BodyTooLarge):
        stream.read()


def test_loop_resumes_once_the_app_drained_half_the_buffer():
    body, stream, loop = make_body([b"x" * 6, b"y" * 6], limit=10, eof=False)
    assert body.buffered == 12 and not body.wants_data()  # full: the loop stops feeding
    stream.read(4)
    assert body.buffered == 8 and loop.calls == []  # hysteresis: not yet
    stream.read(3)
    assert body.buffered == 5 and loop.calls == [body.request_more]  # once, at half
    stream.read(1)
    assert len(loop.calls) == 1
    assert body.wants_data()


@pytest.mark.parametrize("how", ["read()", "read(n)", "readline()"])
def test_read_larger_than_the_limit_streams_through_it(how):
    """The loop feeds only while there is room; a read asking for more than fits still ends."""
    limit, piece, total = 64, 10, 1000
    data = bytes(i % 251 for i in range(total)).replace(b"\n", b"-")
    more = threading.Event()
    loop = Loop()
    body = RequestBody(loop, limit, more.set, lambda: None)  # type: ignore[arg-type]
    body.reset(has_body=True, expect_continue=False, max_size=total)
    stream = InputStream(body)
    got: list[bytes] = []
    read = {
        "read()": stream.read,
        "read(n)": lambda: stream.read(total),
        "readline()": stream.readline,
    }
    reader = threading.Thread(target=lambda: got.append(read[how]()))
    reader.start()
    sent = peak = 0
    while sent < total:
        if body.wants_data():
            body.feed(data[sent : sent + piece])
            sent += piece
            peak = max(peak, body.buffered)
        else:
            assert more.wait(30)
            more.clear()
    body.feed_eof()
    reader.join(30)
    assert got == [data]
    assert peak <= limit + piece


# -- h11's receive buffer ----------------------------------------------------------------------

MESSAGES = [
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody and more than announced",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
]


def events(stream: bytes, cuts: list[int], passthrough: bool) -> list[Any]:
    conn = h11.Connection(h11.SERVER)
    if passthrough:
        assert receive.install(conn)
    out: list[Any] = []
    bounds = [0, *cuts, len(stream)]
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue  # b"" would mean EOF
        conn.receive_data(stream[start:end])
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # (the detail may show bytes or a bytearray: h11 quotes what it was handed)
                return [*out, ("error", exc.error_status_hint, str(exc).split(":")[0])]
            if event is h11.PAUSED and conn.our_state is h11.SEND_RESPONSE:
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
                continue
            if event in (h11.NEED_DATA, h11.PAUSED):
                break
            out.append(("Data", bytes(event.data)) if type(event) is h11.Data else event)
    conn.receive_data(b"")
    out.append((conn.next_event(), conn.trailing_data))
    return out


@pytest.mark.parametrize(
    "message", MESSAGES, ids=["pipelined", "chunked", "http10", "extra", "bad-chunk"]
)
def test_passthrough_buffer_gives_h11_the_same_events_however_reads_fall(message):
    for a in range(0, len(message), 7):
        for b in range(a, len(message), 13):
            cuts = [a, b]
            assert events(message, cuts, True) == events(message, cuts, False), cuts


def test_passthrough_buffer_hands_a_whole_read_through_uncopied():
    conn = h11.Connection(h11.SERVER)
    assert receive.install(conn)  # fails if h11 changed its private buffer: the fast path is gone
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
    assert type(conn.next_event()) is h11.Request
    chunk = b"x" * 1000
    conn.receive_data(chunk)
    event = conn.next_event()
    assert type(event) is h11.Data and event.data is chunk
    conn.receive_data(b"y" * 1500)  # more than the body's rest: sliced the usual way
    event = conn.next_event()
    assert type(event) is h11.Data and event.data == b"y" * 1000
    assert type(conn.next_event()) is h11.EndOfMessage
    assert conn.trailing_data == (b"y" * 500, False)


def test_close_wakes_a_blocked_reader_with_client_disconnected():
    body, stream, _ = make_body([b"partial"], eof=False)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            stream.read()
        except ClientDisconnected as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    while not body._waiters:  # the reader is blocked
        time.sleep(0.01)
    body.close()
    reader.join(30)
    assert len(errors) == 1


def _is_open(fd: int, inode: int) -> bool:
    try:
        return os.fstat(fd).st_ino == inode
    except OSError:
        return False


def _blocked_reader_pipe(body: RequestBody) -> dict[int, int]:
    """Once a reader blocks on ``body``: its pipe's descriptors and their inodes."""
    while not body._waiters:
        time.sleep(0.01)
    pipe = body._waiters[0]
    return {fd: os.fstat(fd).st_ino for fd in (pipe.r, pipe.w)}


@pytest.mark.parametrize("where", ["thread", "pool job"])
def test_a_readers_wakeup_pipe_is_closed_when_its_job_or_thread_ends(where):
    body, stream, _ = make_body([], eof=False)
    got: list[bytes] = []
    done = threading.Event()

    def job(_: object) -> None:
        got.append(stream.read())
        done.set()

    if where == "thread":
        runner = threading.Thread(target=job, args=(None,))
        runner.start()
    else:
        pool = ThreadPool(1)
        pool.submit(job, None)
    fds = _blocked_reader_pipe(body)
    body.feed(b"late")
    body.feed_eof()
    assert done.wait(30)
    assert got == [b"late"]
    # The pipe goes when the pool thread finishes the job, or with the thread's locals (some
    # time after join()): wait for that, boundedly.
    deadline = time.monotonic() + 10
    while any(_is_open(*item) for item in fds.items()) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert not any(_is_open(*item) for item in fds.items())
    if where == "pool job":
        pool.shutdown(10)
