"""Soak: a spawned server under mixed good and bad clients, then back to its resting footprint.

For ``WSGILOOP_SOAK_SECONDS`` (8 s by default, for CI; 60 s or more for a real run, see
docs/hardening.md), client threads hit one ``python -m wsgiloop`` process at the same time:

- good clients: keep-alive GETs, Content-Length and chunked uploads, streamed responses, each
  answer checked byte for byte;
- bad clients: garbage, slowloris heads, resets (SO_LINGER 0) mid-body and mid-response, and
  clients that ask for a big response and never read it.

Then every client is gone, and the server must return to about where it started, as read from
``/proc/PID``:

- file descriptors: the count at rest (after a warm-up) plus 2. Every connection is closed by
  then: keep-alive, header, body and write timeouts are all 1 s here and lingering closes take
  at most 2 s, so any extra descriptor that does not go away within 30 s is a leak;
- threads: at most the count at rest. The warm-up has already started every pool thread (as
  many concurrent slow requests as ``--threads``), and nothing else starts threads;
- resident memory: at most the resting RSS plus 48 MiB. The never-reading clients pin up to
  about twice the write high watermark each (512 KiB by default) while they are connected, and
  CPython and glibc keep freed arenas for reuse rather than returning them to the kernel, so
  RSS does not drop back to the byte; but a per-request leak of even 1 KiB over the tens of
  thousands of requests a 60 s run makes would show. The peak (VmHWM) is reported, not bounded.

The test also requires that the good clients got every answer right and the server logged no
traceback.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # not at run time: the spawned server imports this module for its app, and
    from conftest import Process  # conftest would switch its logging to debug

SECONDS = float(os.environ.get("WSGILOOP_SOAK_SECONDS", "8"))
THREADS = 4
MIB = 1024 * 1024


# -- the app (the spawned server imports it as test_soak:app) --------------------------------------


def app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        blocks = int(environ["QUERY_STRING"] or "4")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([65 + i % 26]) * 65536 for i in range(blocks))
    if path == "/slow":
        time.sleep(0.3)
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]


# -- reading /proc --------------------------------------------------------------------------------


@dataclass
class Footprint:
    fds: int
    threads: int
    rss_kib: int
    hwm_kib: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        status = Path(f"/proc/{pid}/status").read_text()

        def field_of(name: str) -> int:
            match = re.search(rf"^{name}:\s+(\d+)", status, re.M)
            assert match, name
            return int(match.group(1))

        return cls(
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            threads=field_of("Threads"),
            rss_kib=field_of("VmRSS"),
            hwm_kib=field_of("VmHWM"),
        )


# -- clients --------------------------------------------------------------------------------------


@dataclass
class Tally:
    good: int = 0
    bad: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, good: bool) -> None:
        with self.lock:
            if good:
                self.good += 1
            else:
                self.bad += 1

    def fail(self, what: str) -> None:
        with self.lock:
            if len(self.failures) < 20:
                self.failures.append(what)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _response(reader: Any) -> tuple[int, bytes]:
    """One response from a buffered reader: Content-Length or chunked."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    headers = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = bytearray()
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if not size:
                reader.readline()
                return int(status_line.split()[1]), bytes(body)
            body += reader.read(size)
            reader.readline()
    return int(status_line.split()[1]), reader.read(int(headers.get(b"content-length", b"0")))


def good_client(port: int, rng: random.Random, tally: Tally) -> None:
    """One keep-alive connection, a few checked requests of every kind."""
    with _connect(port) as sock:
        reader = sock.makefile("rb")
        for _ in range(rng.randint(1, 8)):
            kind = rng.choice(["get", "echo", "chunked", "stream"])
            if kind == "get":
                sock.sendall(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n")
                expected = b"hello"
            elif kind == "echo":
                expected = rng.randbytes(rng.randint(0, 200_000))
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n"
                             % len(expected) + expected)
            elif kind == "chunked":
                expected = rng.randbytes(rng.randint(1, 50_000))
                cut = rng.randint(1, len(expected))
                chunks = b"".join(
                    b"%x;n=%d\r\n%s\r\n" % (len(part), n, part)
                    for n, part in enumerate((expected[:cut], expected[cut:]))
                    if part
                )
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n" + chunks + b"0\r\n\r\n")
            else:
                blocks = rng.randint(1, 16)
                expected = b"".join(bytes([65 + i % 26]) * 65536 for i in range(blocks))
                sock.sendall(b"GET /stream?%d HTTP/1.1\r\nHost: s\r\n\r\n" % blocks)
            status, body = _response(reader)
            if (status, body) != (200, expected):
                tally.fail(f"{kind}: {status}, {len(body)} bytes, expected {len(expected)}")
                return
            tally.count(True)


def bad_client(port: int, rng: random.Random, tally: Tally) -> None:
    kind = rng.choice(["garbage", "slowloris", "reset_body", "reset_response", "never_read"])
    sock = _connect(port)
    try:
        if kind == "garbage":
            sock.sendall(rng.randbytes(rng.randint(1, 5000)) + b"\r\n\r\n")
            sock.settimeout(5)
            while sock.recv(65536):
                pass
        elif kind == "slowloris":
            for byte in b"GET / HTTP/1.1\r\nHost: s\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        elif kind == "reset_body":
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: s\r\nContent-Length: 1000000\r\n\r\n")
            sock.sendall(rng.randbytes(rng.randint(0, 300_000)))
            _reset(sock)
        elif kind == "reset_response":
            sock.sendall(b"GET /stream?64 HTTP/1.1\r\nHost: s\r\n\r\n")
            sock.recv(rng.randint(1, 200_000))
            _reset(sock)
        else:  # never read a 4 MiB response, then leave
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /stream?64 HTTP/1.1\r\nHost: s\r\n\r\n")
            time.sleep(rng.uniform(0.2, 1.5))
    except OSError:
        pass  # the server closing on a bad client is what is expected of it
    finally:
        sock.close()
    tally.count(False)


def _run_clients(port: int, seconds: float, tally: Tally) -> None:
    stop = time.monotonic() + seconds

    def loop(client: Callable[[int, random.Random, Tally], None], seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            try:
                client(port, rng, tally)
            except Exception as exc:
                if client is good_client:
                    tally.fail(f"good client: {exc!r}")

    workers = [threading.Thread(target=loop, args=(good_client, n)) for n in range(4)]
    workers += [threading.Thread(target=loop, args=(bad_client, 100 + n)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _settle(pid: int, rest: Footprint, timeout: float = 30.0) -> Footprint:
    """Wait for the footprint to come back within bounds (or time out): the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        now = Footprint.of(pid)
        if (now.fds <= rest.fds + 2 and now.threads <= rest.threads
                and now.rss_kib <= rest.rss_kib + 48 * 1024) or time.monotonic() > deadline:
            return now
        time.sleep(0.25)


@pytest.fixture
def soak_server(spawn: Callable[..., Process]) -> Iterator[Process]:
    server = spawn(
        "test_soak:app", "--bind", "127.0.0.1:0", "--threads", str(THREADS),
        "--limit-concurrency", "5000", "--keep-alive", "1", "--header-timeout", "1",
        "--no-access-log", "--log-level", "info",
        *(["--body-timeout", "1", "--write-timeout", "1"] if _has_timeouts() else []),
    )
    yield server


def _has_timeouts() -> bool:
    from dataclasses import fields

    from wsgiloop.config import Config

    names = {f.name for f in fields(Config)}
    return {"body_timeout", "write_timeout"} <= names


@pytest.mark.slow
def test_soak_mixed_clients_leave_no_lasting_footprint(soak_server):
    pid = soak_server.proc.pid
    port = soak_server.port
    # Warm-up: every pool thread started, imports done, buffers allocated once.
    warm = Tally()
    threads = [threading.Thread(target=_slow_get, args=(port, warm)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    good_client(port, random.Random(0), warm)
    assert not warm.failures, warm.failures
    time.sleep(1.5)  # the warm-up connections time out of keep-alive
    rest = Footprint.of(pid)

    tally = Tally()
    _run_clients(port, SECONDS, tally)
    during = Footprint.of(pid)
    after = _settle(pid, rest)

    report = (f"{tally.good} good and {tally.bad} bad exchanges in {SECONDS:g}s; rest {rest}, "
              f"end of run {during}, settled {after}")
    print(report)
    assert soak_server.proc.poll() is None, "the server died"
    assert not tally.failures, tally.failures
    assert tally.good > 0 and tally.bad > 0, report
    assert after.fds <= rest.fds + 2, report
    assert after.threads <= rest.threads, report
    assert after.rss_kib <= rest.rss_kib + 48 * 1024, report
    log = "".join(soak_server.log)
    assert "Traceback" not in log, log[-3000:]
    assert "[ERROR]" not in log, log[-3000:]


def _slow_get(port: int, tally: Tally) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: s\r\n\r\n")
        if _response(sock.makefile("rb")) != (200, b"hello"):
            tally.fail("warm-up")
