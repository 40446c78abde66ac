"""Backpressure both ways: nothing is held whole, and a slow peer blocks the other side.

The bounds below are derived from the server's knobs plus what the kernel can buffer, read back
with ``getsockopt`` on the actual sockets (Linux reports the doubled, overhead-inclusive size,
which over-counts payload: the bounds are generous in the right direction). Without backpressure
each measured quantity would instead approach the whole transfer (tens or hundreds of MiB).

Waiting for a counter to stop moving ("plateau") is the only use of time: it bounds how long we
wait, never what we assert.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Running, read_response

from wsgiloop.protocol import HttpProtocol

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB

#: What one ``data_received`` can carry: both asyncio's selector transport and uvloop read at
#: most 256 KiB per call.
READ_SIZE = 256 * KiB


def plateau(read: Callable[[], int], quiet: float = 1.0, timeout: float = 30.0) -> int:
    """``read()`` once it has not changed for ``quiet`` seconds (or at ``timeout``)."""
    last = read()
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def blocks(total: int, size: int = CHUNK, seed: bytes = b"") -> Iterator[bytes]:
    """``total`` bytes in ``size`` blocks, each different (a counter over random filler)."""
    filler = os.urandom(size) if not seed else (seed * (size // len(seed) + 1))[:size]
    for i in range(0, total, size):
        n = min(size, total - i)
        yield (i.to_bytes(8, "big") + filler[8:])[:n]


def the_connection(server: Running) -> HttpProtocol:
    deadline = time.monotonic() + 10
    while not server.server.state.connections:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the server never saw the connection"
        time.sleep(0.01)
    (proto,) = server.server.state.connections  # type: ignore[union-attr]
    return proto


def sockopt(sock: Any, opt: int) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, opt))


def read_head(sock: socket.socket) -> bytes:
    """Read up to the end of the response head; return what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        assert more, "closed before the end of the head"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return rest


def read_exactly(sock: socket.socket, count: int, h: Any = None) -> int:
    """Receive ``count`` bytes (hashing them into ``h``); the number received before EOF."""
    buf = bytearray(1 * MiB)
    view = memoryview(buf)
    got = 0
    while got < count:
        n = sock.recv_into(view, min(len(buf), count - got))
        if not n:
            break
        if h is not None:
            h.update(view[:n])
        got += n
    return got


# -- (1) request body: a big chunked upload is streamed, never held ----------------------------


def upload_chunked(port: int, total: int) -> tuple[bytes, bytes]:
    """POST ``total`` bytes in 64 KiB chunks; (the app's answer, what it should be)."""
    h = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for block in blocks(total):
            h.update(block)
            sock.sendall(b"%x\r\n%b\r\n" % (len(block), block))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = read_response(sock, timeout=60)
    assert status == 200
    return body, f"{total} {h.hexdigest()}".encode()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_50mb_chunked_upload_is_streamed_through_a_small_buffer(spawn, loop):
    proc = spawn(
        "apps:digest", "--bind", "127.0.0.1:0", "--loop", loop, "--threads", "2",
        "--no-access-log",
    )
    for _ in range(3):  # warm-up: code paths, allocator arenas, socket buffers
        answer, expected = upload_chunked(proc.port, 4 * MiB)
        assert answer == expected
    baseline = proc.rss_peak_kib()

    answer, expected = upload_chunked(proc.port, 50 * MiB)

    assert answer == expected  # every byte arrived, in order
    growth_kib = proc.rss_peak_kib() - baseline
    # Holding the body whole would add 50 MiB; streaming adds about one body buffer.
    assert growth_kib < 40 * 1024, f"peak RSS grew by {growth_kib} KiB during a 50 MiB upload"


# -- (2) response: a slow reader bounds what a streaming app produces --------------------------


def test_slow_reader_of_a_200mb_stream_bounds_what_the_app_produces(serve):
    total = 200 * MiB
    produced = [0]  # blocks the app has yielded so far
    high = 256 * KiB

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(total))])

        def stream() -> Iterator[bytes]:
            for block in blocks(total, seed=b"wsgiloop"):
                produced[0] += 1
                yield block

        return stream()

    server = serve(app, write_buffer_high=high, write_buffer_low=64 * KiB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    sock.settimeout(60)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
    early = read_head(sock)

    # The client reads nothing more: production must stall at a bound, far below 200 MiB.
    stalled = plateau(lambda: produced[0]) * CHUNK
    proto = the_connection(server)
    server_sndbuf = sockopt(proto.transport.get_extra_info("socket"), socket.SO_SNDBUF)
    client_rcvbuf = sockopt(sock, socket.SO_RCVBUF)
    # Per connection the server holds at most: the transport buffer (its high watermark plus one
    # batch taken while below it), one batch queued by the app thread before it blocks (the high
    # watermark plus one block), and the block in the app's hands. The kernel holds the rest: the
    # server's send buffer (autotuned, up to tcp_wmem's max: 4 MiB by default) and the client's
    # receive buffer; 1 MiB covers the kernel's rounding. About 5-6 MiB in all.
    budget = 3 * high + 3 * CHUNK + server_sndbuf + client_rcvbuf + len(early) + 1 * MiB
    assert budget < 20 * MiB  # the bound itself is small: the kernel did not buffer it all
    assert stalled <= budget, (stalled, budget, server_sndbuf, client_rcvbuf)
    assert stalled < total

    # Now read everything: exactly 200 MiB, intact.
    h = hashlib.sha256(early)
    got = len(early) + read_exactly(sock, total - len(early), h)
    assert got == total
    expected = hashlib.sha256()
    for block in blocks(total, seed=b"wsgiloop"):
        expected.update(block)
    assert h.digest() == expected.digest()
    assert produced[0] * CHUNK == total
    sock.close()


# -- (3) request body: a slow-reading app bounds what the server reads -------------------------


def test_app_that_reads_slowly_bounds_how_much_body_the_server_reads_ahead(serve):
    body_buffer = 64 * KiB
    total = 32 * MiB
    release = threading.Event()

    def app(environ, start_response):
        assert release.wait(60)
        h = hashlib.sha256()
        stream = environ["wsgi.input"]
        while block := stream.read(4096):
            h.update(block)
        body = h.hexdigest().encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = serve(app, body_buffer=body_buffer)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * KiB)
    sock.settimeout(60)
    sock.connect((server.host, server.port))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % total)

    sent = [0]
    expected = hashlib.sha256()
    payload = list(blocks(total))
    for block in payload:
        expected.update(block)

    def send_all() -> None:
        for block in payload:
            sock.sendall(block)
            sent[0] += len(block)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    try:
        client_sent = plateau(lambda: sent[0])
        proto = the_connection(server)
        fed = proto.body.received  # handed to wsgi.input's buffer
        in_h11 = len(proto.conn.trailing_data[0])  # read from the socket, not yet parsed
        buffered = proto.body.buffered
        server_rcvbuf = sockopt(proto.transport.get_extra_info("socket"), socket.SO_RCVBUF)
        client_sndbuf = sockopt(sock, socket.SO_SNDBUF)
        # The loop feeds while the buffer is below body_buffer, one socket read at a time, and
        # stops reading the socket once it is full: at most one more read waits inside h11.
        assert buffered <= body_buffer + READ_SIZE
        assert fed + in_h11 <= body_buffer + 2 * READ_SIZE, (fed, in_h11)
        # What the client got rid of sits in the server's buffers or in the kernel's (the count
        # is of whole blocks, so it can only under-count; one block covers the kernel's rounding).
        kernel = server_rcvbuf + client_sndbuf
        assert client_sent <= fed + in_h11 + kernel + CHUNK, (client_sent, fed, in_h11, kernel)
        assert client_sent < total // 2
    finally:
        release.set()
    sender.join(60)
    status, _, answer = read_response(sock, timeout=60)
    assert (status, answer) == (200, expected.hexdigest().encode())
    sock.close()


# -- (4) response: the app thread blocks while the client does not read, then resumes ---------


def blocked_in_response_stream(ident: int) -> bool:
    """Whether thread ``ident`` is waiting inside ``ResponseStream.send``."""
    frame = sys._current_frames().get(ident)
    bridge = os.path.join("wsgiloop", "bridge.py")
    while frame is not None:
        code = frame.f_code
        if code.co_name == "send" and code.co_filename.endswith(bridge):
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("style", ["generator", "write"])
def test_app_writing_faster_than_the_client_reads_is_blocked_then_resumes(serve, style):
    total = 64 * MiB
    produced = [0]
    app_thread: list[int] = []
    generators: list[Any] = []

    def app(environ, start_response):
        app_thread.append(threading.get_ident())
        write = start_response("200 OK", [("Content-Length", str(total))])

        def stream() -> Iterator[bytes]:
            for block in blocks(total, seed=b"slow"):
                produced[0] += 1
                yield block

        if style == "write":
            for block in stream():
                write(block)
            return []
        generators.append(stream())
        return generators[-1]

    server = serve(app, write_buffer_high=128 * KiB, write_buffer_low=32 * KiB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    sock.settimeout(60)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    early = read_head(sock)

    stalled = plateau(lambda: produced[0])
    assert stalled * CHUNK < total // 4
    assert blocked_in_response_stream(app_thread[0]), "the app thread waits on the stream"
    if style == "generator":
        assert inspect.getgeneratorstate(generators[0]) == inspect.GEN_SUSPENDED

    # The client reads 16 MiB: the app resumes and produces well past where it stalled.
    h = hashlib.sha256(early)
    got = len(early) + read_exactly(sock, 16 * MiB - len(early), h)
    assert got == 16 * MiB
    assert produced[0] * CHUNK >= 16 * MiB > stalled * CHUNK

    got += read_exactly(sock, total - got, h)
    expected = hashlib.sha256()
    for block in blocks(total, seed=b"slow"):
        expected.update(block)
    assert (got, h.digest()) == (total, expected.digest())
    sock.close()
