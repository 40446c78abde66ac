"""``wsgi.file_wrapper`` and the zero-copy path for real files.

When an app returns ``environ['wsgi.file_wrapper'](f)`` and ``f`` is a regular file, the app
thread waits for the connection's write buffer to drain and then calls ``os.sendfile`` on the
socket itself (on its own duplicate of the descriptor, see ``ResponseStream.handoff``): the kernel
copies the file, Python never sees the bytes, and the event loop is not involved (uvloop has no
``loop.sendfile``; doing it from the app thread serves both loops). Any other file-like object is
streamed in blocks through the normal, backpressured write path.

With HEAD, or a status that has no body (204, 304), nothing is sent but the head; for HEAD it
carries the Content-Length that GET would send.
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

BLOCK_SIZE = 64 * 1024


class FileWrapper:
    """PEP 3333 file wrapper: iterable in ``blksize`` blocks, ``close()`` closes the file."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: Any, blksize: int = BLOCK_SIZE) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.blksize
        while True:
            block = read(size)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def sendfile_span(self) -> tuple[int, int, int] | None:
        """(fd, offset, bytes to end) when the file is a regular OS file, else None."""
        try:
            fd = self.filelike.fileno()
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return None
        if not isinstance(fd, int) or not isinstance(offset, int):
            return None
        return fd, offset, max(0, info.st_size - offset)


def sendfile_all(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    gone: Callable[[], bool],
    stall_timeout: float = 0.0,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send ``count`` bytes with ``os.sendfile`` on a non-blocking socket; return bytes sent.

    Waits for writability with ``poll`` in one-second slices so that a connection closed by the
    loop (client gone, server shutdown) ends the wait promptly: ``gone()`` is checked each slice,
    and before each write too, because ``sock_fd`` is the thread's own duplicate (see
    ``ResponseStream.handoff``), which keeps the socket open and writable after the loop let go.

    While this thread holds the socket the loop writes nothing, so it cannot see a client that
    stopped reading: ``stall_timeout`` (``--write-timeout``; 0: none) is enforced here, and a
    client that takes no byte for that long is dropped with ``TimeoutError``. ``on_sent`` is
    told each count the kernel took, so a caller knows what went out even when this raises.
    """
    sent = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    last_progress = time.monotonic()
    while sent < count:
        if gone():
            raise BrokenPipeError("connection closed during sendfile")
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            n = -1
        if n == 0:  # the file shrank under us
            break
        if n > 0:
            sent += n
            if on_sent is not None:
                on_sent(n)
            last_progress = time.monotonic()
            continue
        while not poller.poll(1000 if not stall_timeout else min(1000, stall_timeout * 1000)):
            if gone():
                raise BrokenPipeError("connection closed during sendfile")
            if stall_timeout and time.monotonic() - last_progress >= stall_timeout:
                raise TimeoutError(f"the client read nothing for {stall_timeout:g}s")
    return sent
