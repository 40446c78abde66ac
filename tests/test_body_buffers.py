"""The request-body path without sockets: ``RequestBody``/``InputStream``.

``RequestBody`` queues the chunks it is fed as they are and reads slice across them: that must be
invisible, the same bytes however the chunks and the reads fall.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from typing import Any

import pytest

from wsgiloop.bridge import (
    EMPTY_INPUT,
    BodyTooLarge,
    ClientDisconnected,
    InputStream,
    RequestBody,
)
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


def test_the_input_of_a_request_without_a_body_is_an_empty_file():
    empty = EMPTY_INPUT
    assert empty.read() == empty.read(10) == empty.read(None) == empty.read1() == b""
    assert empty.readline() == empty.readline(5) == b""
    assert empty.readlines() == list(empty) == []
    assert empty.readable()
    empty.close()
    assert empty.read() == b""  # closing it by the app changes nothing for the next request
