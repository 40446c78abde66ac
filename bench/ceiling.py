"""The design's ceiling: the least a server built like wsgiloop must do per request.

wsgiloop parses each request head with h11 on the event loop, hands the request to a pool
thread, and the loop writes what the thread produced. This server does exactly that and nothing
else: a fresh ``h11.Connection`` per request and one ``next_event()`` for its head, a pool
thread (``concurrent.futures.ThreadPoolExecutor``) that produces a canned ``hello`` response,
and ``loop.call_soon_threadsafe`` to write it from the loop (uvloop when installed, as
wsgiloop). No environ, no WSGI call, no timeouts, no limits, no backpressure: wsgiloop's
req/s divided by this server's in the same row is how close wsgiloop is to its own limit.

It serves only the ``hello`` app's answer (``b"Hello, world!"``), whatever the path, and one
request at a time per connection (bytes that arrive while a response is pending are kept for
after it; wrk and ``idle_conns.py`` never pipeline). Started by ``bench/run`` like the other
servers; the command line mirrors theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import h11

BODY = b"Hello, world!"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
KEEP_ALIVE_RESPONSE = _HEAD + b"\r\n" + BODY
CLOSE_RESPONSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _wants_close(request: h11.Request) -> bool:
    """HTTP/1.1 keeps the connection unless the client says close; HTTP/1.0 closes it."""
    for name, value in request.headers:
        if name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                return True
            if b"keep-alive" in tokens:
                return False
    return request.http_version != b"1.1"


def _produce(close: bool) -> bytes:
    """What the pool thread does: produce the response (here, pick the canned bytes)."""
    return CLOSE_RESPONSE if close else KEEP_ALIVE_RESPONSE


class CeilingProtocol(asyncio.Protocol):
    """One connection: parse a head, hop to the pool and back, write, repeat."""

    __slots__ = ("buffer", "busy", "loop", "pool", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._parse()

    def _parse(self) -> None:
        transport = self.transport
        if transport is None or not self.buffer:
            return
        parser = h11.Connection(h11.SERVER)
        parser.receive_data(self.buffer)
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            transport.write(BAD_REQUEST)
            transport.close()
            return
        if event is h11.NEED_DATA:
            return  # a head split across reads: parse it again, whole, when the rest arrives
        self.buffer = b""
        assert isinstance(event, h11.Request)
        self.busy = True
        self.pool.submit(self._in_thread, _wants_close(event))

    def _in_thread(self, close: bool) -> None:
        response = _produce(close)
        self.loop.call_soon_threadsafe(self._write, response, close)

    def _write(self, response: bytes, close: bool) -> None:
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        transport.write(response)
        if close:
            transport.close()
        else:
            self._parse()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="module:callable; only apps:hello's answer is served")
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    parser.add_argument("--threads", type=int, required=True, help="pool threads")
    parser.add_argument("--backlog", type=int, required=True, help="listen backlog")
    args = parser.parse_args(argv)
    if args.app.rpartition(":")[2] != "hello":
        parser.error(f"{args.app}: the ceiling server answers only like apps:hello")
    host, _, port = args.bind.rpartition(":")

    loop = _new_loop()
    pool = ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="ceiling")
    sock = socket.create_server((host, int(port)), backlog=args.backlog)
    server = loop.run_until_complete(
        loop.create_server(lambda: CeilingProtocol(loop, pool), sock=sock, backlog=args.backlog)
    )
    try:
        loop.run_until_complete(server.serve_forever())
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        pool.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
