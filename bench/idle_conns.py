"""Open many idle HTTP/1.1 keep-alive connections to a server and hold them.

Used by ``bench/run`` for the ``idle-5000`` row. Each connection sends one ``GET /`` and reads
the whole response, so what the server holds afterwards is a real keep-alive connection waiting
for its next request (not a half-open socket in the accept backlog). A connection the server
answers with ``Connection: close`` is closed at once, as a real client would, and counted as
not kept alive. Then:

1. prints one JSON line ``{"event": "ready", "held": ..., ...}`` to stdout,
2. waits until a line arrives on stdin (or stdin closes),
3. counts the connections the server has not closed meanwhile, prints a second JSON line
   ``{"event": "done", "alive": ...}`` and closes everything.

Pure stdlib; every wait is bounded (per-connection timeout and an overall deadline for the
opening phase), so it never hangs on a server that stops accepting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time

NOT_KEPT = "not kept alive"  # served, then closed: the server said `Connection: close`
UNSERVED = "unserved"  # no complete 2xx response in time


def _request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsgiloop-bench-idle\r\n\r\n".encode()


def _parse_head(buf: bytes) -> tuple[int, bool] | None:
    """(total response size, keep-alive?) once ``buf`` holds a full head, else None.

    Enough for what ``hello`` sends: a body with a Content-Length.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    length = 0
    keep_alive = True
    for line in buf[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and b"close" in value.lower():
            keep_alive = False
    return head_end + 4 + length, keep_alive


def _is_open(sock: socket.socket) -> bool:
    """True if the peer has not closed or reset the connection (non-blocking peek)."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    return bool(data)


async def _exchange(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, port: int, request: bytes
) -> bool:
    """One request/response on a new connection; whether the server keeps it alive."""
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, request)
    buf = b""
    while True:
        head = _parse_head(buf)
        if head is not None and len(buf) >= head[0]:
            break
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("closed before the response ended")
        buf += chunk
    if not buf.startswith(b"HTTP/1.1 2"):
        raise ConnectionError("non-2xx response")
    return head[1]


async def _open_one(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    request: bytes,
    timeout: float,
) -> socket.socket | str:
    """The connection if the server keeps it alive, else ``NOT_KEPT`` or ``UNSERVED``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        keep_alive = await asyncio.wait_for(_exchange(loop, sock, host, port, request), timeout)
    except (TimeoutError, OSError, ConnectionError, ValueError):
        sock.close()
        return UNSERVED
    if not keep_alive:
        # What a real client does with `Connection: close`: hang up, so the server can move on
        # (gunicorn's sync worker, for one, waits for the client to close first).
        sock.close()
        return NOT_KEPT
    return sock


async def _open_all(args: argparse.Namespace) -> tuple[list[socket.socket], int, int, float]:
    """Held connections, how many were not kept alive, how many unserved, seconds taken."""
    loop = asyncio.get_running_loop()
    request = _request(f"{args.host}:{args.port}")
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one() -> socket.socket | str:
        async with gate:
            return await _open_one(loop, args.host, args.port, request, args.timeout)

    tasks = [asyncio.ensure_future(one()) for _ in range(args.count)]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    results = [t.result() for t in done]
    socks = [s for s in results if isinstance(s, socket.socket)]
    not_kept = sum(1 for s in results if s == NOT_KEPT)
    return socks, not_kept, args.count - len(socks) - not_kept, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200, help="connections being opened")
    parser.add_argument("--timeout", type=float, default=30.0, help="per connection, seconds")
    parser.add_argument("--deadline", type=float, default=90.0, help="whole opening phase")
    args = parser.parse_args(argv)

    socks, not_kept, failed, seconds = asyncio.run(_open_all(args))
    held = sum(1 for s in socks if _is_open(s))
    ready = {
        "event": "ready",
        "requested": args.count,
        "served": len(socks) + not_kept,
        "failed": failed,
        "not_kept_alive": not_kept,
        "held": held,
        "open_seconds": round(seconds, 3),
    }
    print(json.dumps(ready), flush=True)

    with contextlib.suppress(OSError):
        sys.stdin.readline()

    alive = sum(1 for s in socks if _is_open(s))
    print(json.dumps({"event": "done", "alive": alive}), flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
