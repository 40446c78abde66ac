"""The loop⇄thread queues, and all of wsgiloop's backpressure.

``ResponseStream`` carries the response from an app thread to the event loop; ``RequestBody``
carries the request body the other way. Both are per connection and reused across keep-alive
requests, so a request allocates no locks. An app thread that must wait (for the client to read,
or to send more body) parks on its thread's pipe (``_Wakeup``), which the loop pokes with the GIL
released: woken by a lock or a ``threading.Condition`` instead, the thread would preempt the loop
only to find the GIL taken and sleep again (about 1.5x the context switches per 64 KiB chunk).

Response (app thread → loop)
    The app thread appends to a pending batch under a lock and wakes the loop with
    ``call_soon_threadsafe`` only if no wake-up is already pending, so a burst of chunks costs one
    hop. The thread blocks when the transport is paused (its write buffer rose past the high
    watermark: ``pause_writing``) until ``resume_writing`` (it fell below the low watermark), or
    when the batch not yet taken by the loop itself exceeds the high watermark. So per connection
    about twice the high watermark of response bytes are in memory at most, whatever the
    client's speed.

Request body (loop → app thread)
    The loop queues h11's body chunks as they are (no copy) while fewer than ``limit`` bytes are
    queued; once there are more the protocol stops pulling events from h11 and pauses reading
    the socket. A ``wsgi.input`` read slices what it needs across the chunks and copies it once,
    outside the lock, into the ``bytes`` it returns. A reader that finds too little parks until
    the loop feeds more (for a reader a Condition cost three times the context switches). As
    reads drain the queue to half the limit, the reading thread asks the loop (one hop) to
    resume: the hysteresis keeps a slow reader from costing a hop per read. Nothing is read
    ahead of the app beyond ``limit`` plus one socket read.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import asyncio

    from .response import Head


class ClientDisconnected(OSError):
    """Raised in the app thread when the client went away; the response is abandoned."""


class BodyTooLarge(ValueError):
    """The request body exceeded ``--max-body-size``; the server answers 413."""


class _Wakeup:
    """A pipe one app thread blocks on (``os.read``) until the loop pokes it (``os.write``).

    Python releases the GIL around both calls: the poke wakes the reader while the loop does not
    hold the GIL, so the reader runs at once. A ``threading.Condition`` wakes it with the GIL
    held: the reader preempts the loop, finds the GIL taken and sleeps again, which made three
    times as many context switches per body chunk. A thread makes its pipe on its first wait in
    a job and drops it when the job ends (``release_wakeup``): no descriptors per connection, none
    held by idle threads. It is closed with its last reference, so never while the loop pokes it.
    """

    __slots__ = ("r", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)

    def __del__(self) -> None:
        os.close(self.r)
        os.close(self.w)

    def poke(self) -> None:
        try:
            os.write(self.w, b"\0")
        except BlockingIOError:  # only a pipe full of stray pokes: the reader wakes anyway
            pass

    def wait(self, lock: threading.Lock) -> None:
        """Release ``lock`` (held by the caller), block until poked, take ``lock`` again.

        A poke between the release and the read is not lost: it waits in the pipe. Callers
        re-check what they wait for, as a stray poke (meant for an earlier wait) also wakes.
        """
        lock.release()
        try:
            os.read(self.r, 1)
        finally:
            lock.acquire()


_thread_local = threading.local()


def _wakeup() -> _Wakeup:
    """This thread's ``_Wakeup``."""
    try:
        return cast(_Wakeup, _thread_local.wakeup)
    except AttributeError:
        wakeup = _thread_local.wakeup = _Wakeup()
        return wakeup


def release_wakeup() -> None:
    """Drop this thread's ``_Wakeup``, if any (the pool calls this after each job)."""
    try:
        del _thread_local.wakeup
    except AttributeError:
        pass


class ResponseStream:
    """Thread → loop byte stream for one connection, with write backpressure.

    Only one app thread ever writes to a stream (the one running the connection's request in
    flight), so a blocked writer parks on its thread's pipe (``_Wakeup``, as a blocked reader
    of the body does) rather than on a ``threading.Condition``: the loop wakes it without holding
    the GIL, and a stream, made per connection, needs no Condition built.
    """

    __slots__ = (
        "_abort",
        "_chunks",
        "_end",
        "_granted",
        "_handoff",
        "_head",
        "_high",
        "_lock",
        "_loop",
        "_paused",
        "_queued",
        "_scheduled",
        "_waiter",
        "closed",
        "on_ready",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_ready: Callable[[], None], high: int
    ) -> None:
        self._loop = loop
        self.on_ready = on_ready  # runs on the loop: takes the batch and writes it
        self._high = high
        self._lock = threading.Lock()  # guards everything below
        self._waiter: _Wakeup | None = None  # the app thread's, while it is blocked
        self._head: Head | None = None
        self._chunks: list[bytes] = []
        self._end = False
        self._abort = False
        self._handoff = 0  # bytes a thread will sendfile once granted the socket; 0: none
        self._granted = False
        self._queued = 0
        self._scheduled = False
        self._paused = False
        self.closed = False  # set under the lock; read without it as a snapshot

    def _wait(self) -> None:
        """Block the app thread until poked (called and returns with ``_lock`` held).

        The caller re-checks its condition: a poke meant for an earlier wait of the same thread
        (on this stream or a request body) can end this one early.
        """
        wakeup = self._waiter = _wakeup()
        try:
            wakeup.wait(self._lock)
        finally:
            self._waiter = None

    def _woken(self) -> _Wakeup | None:
        """Under ``_lock``: the blocked app thread's wake-up, to poke once the lock is released."""
        waiter = self._waiter
        self._waiter = None
        return waiter

    # -- app thread side -------------------------------------------------------------------

    def send(
        self,
        head: Head | None,
        chunks: list[bytes] | None = None,
        *,
        end: bool = False,
        abort: bool = False,
    ) -> None:
        """Queue a head, body chunks and/or the end; block while the client is not keeping up."""
        with self._lock:
            if self.closed:
                raise ClientDisconnected("client disconnected")
            if head is not None:
                self._head = head
            if chunks:
                self._chunks += chunks
                for chunk in chunks:
                    self._queued += len(chunk)
            self._end = end
            self._abort = abort
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(self.on_ready)
        if end or abort:
            return
        if self._paused or self._queued > self._high:
            with self._lock:
                while (self._paused or self._queued > self._high) and not self.closed:
                    self._wait()
                if self.closed:
                    raise ClientDisconnected("client disconnected")

    def handoff(self, sock_fd: int, count: int) -> int:
        """Block until the loop has flushed everything and lends this thread the socket.

        ``count`` is how many body bytes the thread will write with ``os.sendfile``: the thread
        then writes to the socket directly, which is safe because the loop writes nothing for
        this connection until the thread queues more.

        Returns a duplicate of ``sock_fd``, which the caller writes to and closes. The loop closes
        its descriptor when the connection is lost, and the next accepted connection may get the
        same number: a thread still writing to that number would send this response to another
        client. The duplicate is taken under the lock while not ``closed``, and the loop closes
        its descriptor only after ``close()`` here, so it is this connection's socket; and it
        stays so (writes to it just fail) whatever the loop does meanwhile.
        """
        with self._lock:
            if self.closed:
                raise ClientDisconnected("client disconnected")
            self._handoff = count
            self._granted = False
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(self.on_ready)
        with self._lock:
            while not self._granted and not self.closed:
                self._wait()
            if self.closed:
                raise ClientDisconnected("client disconnected")
            return os.dup(sock_fd)

    # -- loop side ---------------------------------------------------------------------------

    def take(
        self,
    ) -> tuple[Head | None, list[bytes], int, bool, bool]:
        """Hand the pending batch to the loop: (head, chunks, handoff bytes, end, abort)."""
        waiter = None
        with self._lock:
            head, chunks, handoff = self._head, self._chunks, self._handoff
            end, abort = self._end, self._abort
            self._head = None
            self._chunks = []
            self._handoff = 0
            self._end = self._abort = False
            self._scheduled = False
            if self._queued > self._high:
                waiter = self._woken()
            self._queued = 0
        if waiter is not None:
            waiter.poke()
        return head, chunks, handoff, end, abort

    def grant(self) -> None:
        """The transport's buffer is empty: the waiting thread may write to the socket."""
        with self._lock:
            self._granted = True
            waiter = self._woken()
        if waiter is not None:
            waiter.poke()

    def pause(self) -> None:
        """The transport's buffer passed the high watermark (``pause_writing``)."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """The transport's buffer fell to the low watermark (``resume_writing``)."""
        with self._lock:
            self._paused = False
            waiter = self._woken()
        if waiter is not None:
            waiter.poke()

    def close(self) -> None:
        """The connection is gone: wake any blocked app thread with ``ClientDisconnected``."""
        with self._lock:
            self.closed = True
            self._chunks = []
            self._queued = 0
            waiter = self._woken()
        if waiter is not None:
            waiter.poke()


#: Body chunks smaller than this are appended to a ``bytearray`` of up to ``_TAIL`` bytes.
_SMALL = 4096
_TAIL = 64 * 1024


class RequestBody:
    """Loop → thread request body for one connection, with read backpressure.

    The loop calls ``feed``/``feed_eof``/``close`` and checks ``wants_data``; the app thread reads
    through ``wsgi.input`` (``InputStream``). ``request_more`` is the loop callback that resumes
    reading; it is scheduled from the app thread only when the loop actually stopped feeding.

    The buffer is a queue of the chunks h11 hands over, kept as they are: a read copies each byte
    once, into the ``bytes`` it returns, and no buffer is ever compacted or regrown. Small chunks
    (a chunked body can come in 1-byte chunks) are appended to a ``bytearray`` at the tail
    instead, so per-object overhead cannot multiply what ``limit`` holds.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_eof",
        "_limit",
        "_lock",
        "_loop",
        "_max_size",
        "_offset",
        "_received",
        "_stalled",
        "_tail",
        "_waiters",
        "expect_continue",
        "on_first_read",
        "request_more",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        request_more: Callable[[], None],
        on_first_read: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._limit = limit
        self.request_more = request_more
        self.on_first_read = on_first_read
        self._lock = threading.Lock()
        self._waiters: list[_Wakeup] = []  # readers blocked for more (normally at most one)
        # Made on the first body byte: a deque is 600-odd bytes, and most connections only GET.
        self._chunks: deque[bytes | bytearray] | None = None
        self._tail: bytearray | None = None  # _chunks[-1], if small chunks may be appended
        self._offset = 0  # bytes of _chunks[0] already read
        self._buffered = 0  # bytes in _chunks not yet read
        self._eof = True
        self._closed = False
        self._stalled = False
        self._received = 0
        self._max_size = 0
        self.expect_continue = False

    def reset(self, has_body: bool, expect_continue: bool, max_size: int) -> None:
        """Start a new request (loop side)."""
        with self._lock:
            self._drop()
            self._eof = not has_body
            self._closed = False
            self._stalled = False
            self._received = 0
            self._max_size = max_size
            self.expect_continue = expect_continue

    def _drop(self) -> None:
        if self._chunks:
            self._chunks.clear()
        self._tail = None
        self._offset = self._buffered = 0

    def _woken(self) -> list[_Wakeup]:
        """Under the lock: the blocked readers, to poke once the lock is released."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
        return waiters

    # -- loop side ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray) -> None:
        """Queue ``data``, which the caller must not change afterwards (h11's ``Data`` is new)."""
        n = len(data)
        if not n:
            return
        with self._lock:
            self._received += n
            self._buffered += n
            chunks = self._chunks
            if chunks is None:
                chunks = self._chunks = deque()
            if n >= _SMALL:
                chunks.append(data)
                self._tail = None
            elif self._tail is not None and len(self._tail) < _TAIL:
                self._tail += data
            else:
                self._tail = bytearray(data)
                chunks.append(self._tail)
            waiters = self._woken()
        for waiter in waiters:
            waiter.poke()

    def feed_eof(self) -> None:
        with self._lock:
            self._eof = True
            waiters = self._woken()
        for waiter in waiters:
            waiter.poke()

    def close(self) -> None:
        """The connection is gone or the request was abandoned: readers get ClientDisconnected."""
        with self._lock:
            self._closed = True
            self._drop()
            waiters = self._woken()
        for waiter in waiters:
            waiter.poke()

    def wants_data(self) -> bool:
        """Whether the loop may feed more; if not, note that the app must wake the loop."""
        if self._buffered < self._limit:
            return True
        with self._lock:
            # Re-check under the lock: the app may have drained the buffer meanwhile.
            if self._buffered < self._limit:
                return True
            self._stalled = True
            return False

    @property
    def buffered(self) -> int:
        """Body bytes fed and not yet read by the app."""
        return self._buffered

    @property
    def received(self) -> int:
        return self._received

    @property
    def complete(self) -> bool:
        return self._eof

    # -- app thread side ---------------------------------------------------------------------

    def _find_newline(self, stop: int) -> int:
        """Offset (in the buffered bytes) of the first newline before ``stop``, or -1."""
        base = 0
        start = self._offset
        assert self._chunks is not None  # called only with bytes buffered
        for chunk in self._chunks:
            end = min(len(chunk), start + stop - base)
            i = chunk.find(b"\n", start, end)
            if i != -1:
                return base + i - start
            base += end - start
            if base >= stop:
                break
            start = 0
        return -1

    def _pop(self, n: int, out: list[memoryview | bytes | bytearray]) -> None:
        """Move the first ``n`` buffered bytes to ``out``, as views: no copy yet."""
        chunks = self._chunks
        assert chunks is not None  # called only with bytes buffered
        self._buffered -= n
        while n:
            chunk = chunks[0]
            if chunk is self._tail:
                self._tail = None  # a reader's view of it may be alive: no more appends
            start = self._offset
            left = len(chunk) - start
            if n >= left:
                chunks.popleft()
                self._offset = 0
                out.append(chunk if not start else memoryview(chunk)[start:])
                n -= left
            else:
                out.append(memoryview(chunk)[start : start + n])
                self._offset = start + n
                return

    def _take(self, size: int, line: bool) -> bytes:
        """``size`` bytes (-1: to EOF) or up to and including a newline; short only at EOF.

        Blocks until satisfied. Whatever is buffered is moved out as it waits, so a read larger
        than the buffer limit still drains the socket instead of deadlocking. The bytes are
        copied once, outside the lock, so the loop can feed meanwhile.
        """
        if self.expect_continue:
            self.expect_continue = False
            self._loop.call_soon_threadsafe(self.on_first_read)
        lock = self._lock
        parts: list[memoryview | bytes | bytearray] = []
        want = size
        with lock:
            while True:
                if self._received > self._max_size:
                    raise BodyTooLarge(f"request body larger than {self._max_size} bytes")
                avail = self._buffered
                done = True
                newline = -1
                if line and avail:
                    newline = self._find_newline(want if 0 <= want < avail else avail)
                if newline != -1:
                    n = newline + 1
                elif 0 <= want <= avail:
                    n = want
                elif self._eof or self._closed:
                    n = avail
                else:
                    n, done = avail, False
                if n:
                    self._pop(n, parts)
                    if want > 0:
                        want -= n
                if self._stalled and self._buffered <= self._limit // 2:
                    # Hysteresis: a loop wake-up per small read would cost more than it lets in.
                    self._stalled = False
                    self._loop.call_soon_threadsafe(self.request_more)
                if done:
                    break
                wakeup = _wakeup()
                self._waiters.append(wakeup)
                try:
                    wakeup.wait(lock)
                finally:
                    if wakeup in self._waiters:  # a stray poke woke us: no longer waiting
                        self._waiters.remove(wakeup)
            if self._closed and not self._eof:
                raise ClientDisconnected("client disconnected while sending the body")
        if len(parts) == 1:
            part = parts[0]
            return part if type(part) is bytes else bytes(part)
        return b"".join(parts)


class InputStream:
    """``wsgi.input``: a blocking, read-only file over ``RequestBody``."""

    __slots__ = ("_body",)

    def __init__(self, body: RequestBody) -> None:
        self._body = body

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._body._take(-1, False)
        if size == 0:
            return b""
        return self._body._take(size, False)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readline(self, size: int | None = -1) -> bytes:
        if size == 0:
            return b""
        return self._body._take(-1 if size is None else size, True)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Apps may close ``wsgi.input``; the body belongs to the server, so this does nothing."""


class EmptyInput:
    """``wsgi.input`` of a request without a body: at EOF from the start, shared by all of them
    (it has no state), so a GET costs no body bookkeeping."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def read1(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Apps may close ``wsgi.input``; this one has nothing to release."""


EMPTY_INPUT = EmptyInput()
