"""Shared harness: a real wsgiloop server on a real socket (port 0), in-process or as a process.

``serve(app, **config)`` starts ``Server`` on its own event loop in a background thread, so a
test can inspect what the app saw (counters, flags) while talking to it over loopback with raw
bytes or ``http.client``. ``loop_name`` runs every test that uses it on uvloop and on the stdlib
loop. For behaviour that needs a whole process (signals, RSS, the CLI), see ``spawn_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wsgiloop.config import Config
from wsgiloop.logs import configure
from wsgiloop.server import Server, new_event_loop

ROOT = Path(__file__).resolve().parent.parent
configure("debug", access=False)


@dataclass
class Running:
    """A server running in this process."""

    server: Server
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    address: Any  # (host, port) or a Unix socket path
    errors: list[BaseException] = field(default_factory=list)

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    def connect(self, timeout: float = 10.0) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.address)
            return sock
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.address[:2])
        return sock

    def http(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self.http()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp, resp.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stop)
            self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"


def start_server(app: Any, loop_name: str = "auto", **options: Any) -> Running:
    """Start a server on 127.0.0.1:0 (or ``bind=[...]``) and wait until it listens."""
    options.setdefault("bind", ["127.0.0.1:0"])
    options.setdefault("threads", 4)
    options.setdefault("access_log", False)
    config = Config(loop=loop_name, **options).validate()  # type: ignore[arg-type]
    server = Server(app, config)
    loop = new_event_loop(config.loop)
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # surfaced by the fixture
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="wsgiloop-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if errors or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start: {errors}")
        time.sleep(0.005)
    address = server.sockets[0].getsockname()
    return Running(server, loop, thread, address, errors)


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(loop_name: str) -> Iterator[Callable[..., Running]]:
    """``serve(app, **config)`` → a running server, stopped (and checked) after the test."""
    started: list[Running] = []

    def _serve(app: Any, **options: Any) -> Running:
        running = start_server(app, loop_name, **options)
        started.append(running)
        return running

    yield _serve
    for running in started:
        running.stop()
        assert not running.errors, running.errors


# -- raw HTTP helpers --------------------------------------------------------------------------


def recv_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


class _SocketReader:
    """Buffered reads with ``recv``; unlike ``makefile`` it does not keep the fd open."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                break
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buf) < size:
            if not self._fill():
                break
        end = len(self.buf) if size < 0 else min(size, len(self.buf))
        data = bytes(self.buf[:end])
        del self.buf[:end]
        return data


_readers: weakref.WeakKeyDictionary[socket.socket, _SocketReader] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Read exactly one response (Content-Length, chunked or close-delimited) from ``sock``.

    Unread bytes are kept per socket, so pipelined responses read one after another are not lost.
    """
    sock.settimeout(timeout)
    reader = _readers.get(sock)
    if reader is None:
        reader = _readers[sock] = _SocketReader(sock)
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = (headers[key] + "," if key in headers else "") + value.strip()
    if status < 200 or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b""):
                    pass
                break
            body += reader.read(size)
            reader.readline()
        return status, headers, bytes(body)
    if "content-length" in headers:
        return status, headers, reader.read(int(headers["content-length"]))
    return status, headers, reader.read()


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed (EOF or reset) within ``timeout``."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


# -- whole processes ---------------------------------------------------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    urls: list[str]
    log: list[str]

    @property
    def port(self) -> int:
        return int(self.urls[0].rsplit(":", 1)[1])

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


_LISTEN = re.compile(r"Listening at: (\S+)")


def spawn_server(*args: str, env: dict[str, str] | None = None, **popen: Any) -> Process:
    """``python -m wsgiloop ARGS`` with tests/ importable; waits for every "Listening at:"."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "wsgiloop", *args]
    popen.setdefault("start_new_session", True)  # teardown can kill workers with the group
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=full_env, **popen)
    assert proc.stderr is not None
    log: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    # A reader thread, so that a server that never prints (or hangs) fails the wait below
    # instead of blocking it; it keeps draining stderr so the server never blocks on a pipe.
    threading.Thread(target=_drain, args=(proc, log, lines), daemon=True).start()
    urls: list[str] = []
    expected = max(1, sum(1 for a in args if a in ("--bind", "-b")))
    deadline = time.monotonic() + 20
    while len(urls) < expected:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if not line:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise RuntimeError("server did not start:\n" + "".join(log))
        match = _LISTEN.search(line)
        if match:
            urls.append(match.group(1))
    return Process(proc, urls, log)


def _drain(proc: subprocess.Popen[bytes], log: list[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        log.append(line)
        lines.put(line)
    lines.put(None)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Process]]:
    procs: list[Process] = []

    def _spawn(*args: str, **kwargs: Any) -> Process:
        p = spawn_server(*args, **kwargs)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        # The whole process group: a supervisor's workers must not outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            p.proc.wait(10)


# -- CI counts a skip as a failure ---------------------------------------------------------------
# A developer without nginx or systemd-analyze may skip those tests locally; CI installs them, so
# there a skip means a check silently did not run, and .ci/run sets WSGILOOP_NO_SKIPS=1.

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and os.environ.get("WSGILOOP_NO_SKIPS") == "1":
        sys.stderr.write(
            "\nWSGILOOP_NO_SKIPS=1: these tests were skipped, which CI counts as failures:\n"
            + "".join(f"  {nodeid}\n" for nodeid in _skipped)
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
