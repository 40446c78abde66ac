"""Timeouts of a request in flight: a hung app, a stalled body, a client that stops reading.

Each is bounded, answered where an answer is still possible, and leaves the server serving.
"""

from __future__ import annotations

import io
import itertools
import socket
import threading
import time
from typing import Any

from apps import reads_body
from conftest import is_closed, read_response
from test_supervisor import children, wait_for, wait_serving


def test_hung_app_gets_503_and_the_server_keeps_serving(serve):
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/hang":
            release.wait(30)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = serve(app, timeout=0.5, threads=2)
    sock = server.connect()
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 503
    assert headers["connection"] == "close"
    assert is_closed(sock)
    state = server.server.state
    assert state is not None and state.hung == 1
    # The other thread still serves.
    resp, body = server.request("GET", "/")
    assert (resp.status, body) == (200, b"ok")
    release.set()  # the abandoned app call returns; its output goes nowhere, its slot is freed
    assert wait_for(lambda: state.hung == 0 and state.pool.busy == 0, timeout=10)


def test_body_that_stalls_gets_408_and_the_app_sees_a_disconnect(serve):
    seen: list[str] = []
    server = serve(reads_body(seen), body_timeout=0.5)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    status, _, _ = read_response(sock)
    assert status == 408
    assert is_closed(sock)
    assert wait_for(lambda: seen == ["ClientDisconnected"], timeout=5)


def test_slow_but_steady_body_is_not_timed_out(serve):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = serve(app, body_timeout=0.5)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"12345678":
        time.sleep(0.2)  # each pause is shorter than the timeout, the total is longer
        sock.sendall(bytes([byte]))
    assert read_response(sock)[0::2] == (200, b"12345678")


def test_app_that_reads_slowly_is_not_blamed_on_the_client(serve):
    """Reading pauses for backpressure while the app is slow: no body timeout runs then."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        total = 0
        while block := stream.read(64 * 1024):
            total += len(block)
            time.sleep(0.1)
        start_response("200 OK", [("Content-Length", str(len(str(total))))])
        return [str(total).encode()]

    server = serve(app, body_timeout=0.3, body_buffer=64 * 1024)
    size = 2 * 1024 * 1024  # ~32 reads of 0.1 s each: far longer than the body timeout
    sock = server.connect(timeout=30)
    sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    sock.sendall(b"x" * size)
    assert read_response(sock, timeout=30)[0::2] == (200, str(size).encode())


def assert_reader_that_stalls_is_dropped(server: Any, closed: threading.Event, what: str) -> None:
    """A client that asks for an endless (or huge) response and reads none of it is dropped
    after --write-timeout: ``closed`` (the app's iterable or file) is set, and the pool slot and
    the connection are freed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed.wait(15), f"the app's {what} was not closed"
    state = server.server.state
    assert state is not None
    assert wait_for(lambda: state.pool.busy == 0 and not state.connections, timeout=10)
    sock.close()


def test_client_that_never_reads_is_aborted_and_close_runs(serve):
    closed = threading.Event()

    class Endless:
        def __iter__(self):
            return (b"x" * 65536 for _ in itertools.count())

        def close(self) -> None:
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Endless:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    assert_reader_that_stalls_is_dropped(serve(app, write_timeout=0.5), closed, "iterable")


def test_client_that_never_reads_a_sendfile_response_is_dropped(serve, tmp_path):
    """While an app thread writes a file with os.sendfile the loop writes nothing, so the thread
    itself enforces --write-timeout: its pool slot and the file come back."""
    path = tmp_path / "big"
    path.write_bytes(b"\0" * (32 * 1024 * 1024))  # far more than the socket buffers hold
    closed = threading.Event()

    class File(io.FileIO):
        def close(self) -> None:
            closed.set()
            super().close()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](File(path, "rb"))

    assert_reader_that_stalls_is_dropped(serve(app, write_timeout=0.5), closed, "file")


def test_worker_whose_threads_all_hang_is_replaced(spawn):
    server = spawn("apps:slow", "--bind", "127.0.0.1:0", "--workers", "2", "--threads", "1",
                   "--timeout", "1")
    wait_serving(server, 2)
    before = children(server.proc.pid)
    # Hung requests on fresh connections until every original worker has been replaced (the
    # kernel, not us, picks which worker accepts each connection). Each gets its 503.
    socks = []
    deadline = time.monotonic() + 60
    while children(server.proc.pid) & before and time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /?seconds=600 HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)
        time.sleep(0.3)
    assert not children(server.proc.pid) & before
    assert read_response(socks[0], timeout=20)[0] == 503
    for sock in socks:
        sock.close()
    assert any("All 1 threads are hung" in line for line in server.log)
