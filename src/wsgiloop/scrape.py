"""The metrics listener (``--metrics-bind``): on a worker's event loop, or in the supervisor.

Its own socket, never the app's, so the app's routes and the proxy in front never see it. What
it answers is ``exposition.answer``'s; here is only how bytes get there:

- ``ScrapeProtocol``: under ``--workers 1``, on the worker's loop, beside the app's listeners and
  never through its thread pool: a scrape or a health probe is answered even when every app
  thread is busy. It stays open through a graceful stop (answering 503 on the health path).
- ``serve_one``: in the supervisor, which has no event loop: its metrics thread waits for a
  connection and hands it to a short-lived thread of its own.

One request per connection, then close: scrapes are rare, and Prometheus reconnects cheaply.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Callable

from .exposition import MAX_HEAD
from .sockets import create_socket, parse_bind

#: Seconds a metrics client has to send its request head (a stalled one is dropped).
HEAD_TIMEOUT = 10.0

Respond = Callable[[bytes], bytes]


def open_listener(bind: str, umask: int | None = None) -> socket.socket:
    return create_socket(parse_bind(bind, default_port=9100), backlog=64, umask=umask)


def _head_complete(buffer: bytes | bytearray) -> bool:
    return b"\r\n\r\n" in buffer or b"\n\n" in buffer


class ScrapeProtocol(asyncio.Protocol):
    """One connection to the metrics listener, on the event loop."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        if _head_complete(self.buffer) or len(self.buffer) > MAX_HEAD:
            self.transport.write(self.respond(bytes(self.buffer[:MAX_HEAD])))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


def serve_one(listener: socket.socket, timeout: float, respond: Respond) -> None:
    """Wait up to ``timeout`` for a connection; answer it on a thread of its own."""
    try:
        ready, _, _ = select.select([listener], [], [], timeout)
    except (OSError, ValueError):  # the listener was closed under us
        return
    if not ready:
        return
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    threading.Thread(target=_answer, args=(conn, respond), daemon=True).start()


def _answer(conn: socket.socket, respond: Respond) -> None:
    with conn:
        conn.settimeout(HEAD_TIMEOUT)
        buffer = bytearray()
        try:
            while not _head_complete(buffer) and len(buffer) <= MAX_HEAD:
                data = conn.recv(4096)
                if not data:
                    return
                buffer += data
            conn.sendall(respond(bytes(buffer[:MAX_HEAD])))
        except OSError:
            return
