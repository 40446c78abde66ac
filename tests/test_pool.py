"""The bounded thread pool: at most ``threads`` apps run at once, the rest wait on the loop (FIFO),
and no error path leaks a pool slot or kills a pool thread.

Pool counters are read from the test thread while the loop owns them: plain int/len reads, so
approximate but never torn; the tests wait for them to settle rather than assume timing.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from conftest import Running, read_response, recv_until_closed

from wsgiloop.pool import ThreadPool


def pool_of(server: Running) -> ThreadPool:
    assert server.server.state is not None
    return server.server.state.pool


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def get(server: Running, path: str) -> tuple[int, bytes]:
    sock = server.connect(timeout=30)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        status, _, body = read_response(sock, timeout=30)
        return status, body
    finally:
        sock.close()


class Gate:
    """An app whose requests block, one ``threading.Event`` each (by path), counting who runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.entered: list[str] = []
        self.events: dict[str, threading.Event] = {}
        self.open = False

    def event(self, path: str) -> threading.Event:
        with self.lock:
            event = self.events.setdefault(path, threading.Event())
            if self.open:
                event.set()
            return event

    def release_all(self) -> None:
        """Let every request through (also those not yet arrived): a failed test must not hang."""
        with self.lock:
            self.open = True
            for event in self.events.values():
                event.set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.entered.append(path)
        try:
            assert self.event(path).wait(30), f"{path} was never released"
        finally:
            with self.lock:
                self.running -= 1
        body = path.encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


def test_never_more_than_threads_apps_run_at_once_and_all_requests_complete(serve):
    gate = Gate()
    server = serve(gate, threads=2)
    pool = pool_of(server)
    paths = [f"/r{i}" for i in range(6)]
    results: dict[str, tuple[int, bytes]] = {}

    def client(path: str) -> None:
        results[path] = get(server, path)

    clients = [threading.Thread(target=client, args=(p,), daemon=True) for p in paths]
    for t in clients:
        t.start()
    try:
        # Saturated: two apps run, four requests wait on the loop (not in a thread's queue).
        assert wait_for(lambda: gate.running + pool.waiting == 6), (gate.running, pool.waiting)
        assert (gate.running, pool.waiting, pool.busy, pool.size) == (2, 4, 2, 2)
        time.sleep(0.2)  # give a third app the chance to start if the pool were not bounded
        assert gate.running == 2 and gate.peak == 2
    finally:
        gate.release_all()
    for t in clients:
        t.join(30)
    assert results == {p: (200, p.encode()) for p in paths}
    assert gate.peak == 2
    assert wait_for(lambda: pool.busy == 0 and pool.waiting == 0)


def test_waiting_requests_get_a_thread_in_arrival_order(serve):
    gate = Gate()
    server = serve(gate, threads=2)
    pool = pool_of(server)
    results: dict[str, tuple[int, bytes]] = {}
    clients = []

    def client(path: str) -> None:
        results[path] = get(server, path)

    try:
        for i in range(6):
            path = f"/r{i}"
            t = threading.Thread(target=client, args=(path,), daemon=True)
            t.start()
            clients.append(t)
            # One at a time, so the arrival order is known.
            assert wait_for(lambda i=i: gate.running + pool.waiting == i + 1)
        assert gate.entered == ["/r0", "/r1"]

        # Each finished request hands its thread to the oldest waiting one.
        for done, started in (("/r1", 3), ("/r0", 4), ("/r3", 5), ("/r2", 6)):
            gate.event(done).set()
            assert wait_for(lambda started=started: len(gate.entered) == started), gate.entered
        assert gate.entered == ["/r0", "/r1", "/r2", "/r3", "/r4", "/r5"]
    finally:
        gate.release_all()
    for t in clients:
        t.join(30)
    assert all(status == 200 for status, _ in results.values()) and len(results) == 6


def test_a_pool_thread_survives_app_exceptions(serve):
    threads_seen: list[str] = []

    def app(environ, start_response):
        threads_seen.append(threading.current_thread().name)
        path = environ["PATH_INFO"]
        if path == "/raise":
            raise KeyError("app bug")
        if path == "/exit":
            sys.exit("the app asked the process to exit")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = serve(app, threads=1)
    pool = pool_of(server)
    for path in ("/raise", "/ok", "/exit", "/ok", "/raise", "/ok"):
        expected = 200 if path == "/ok" else 500
        assert get(server, path)[0] == expected, path
    assert len(set(threads_seen)) == 1, "one thread served everything: it never died"
    assert len(pool._threads) == 1 and pool._threads[0].is_alive()
    assert wait_for(lambda: pool.busy == 0)


def test_no_error_path_leaks_a_pool_slot(serve):
    """500s, aborts mid-stream, clients that leave mid-response or mid-upload: the single thread
    is free again after each, so the final request is served."""
    block = b"b" * 65536

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/raise":
            raise RuntimeError("before the headers")
        start_response("200 OK", [])
        if path == "/abort":

            def broken():
                yield b"part"
                raise RuntimeError("after the headers")

            return broken()
        if path == "/endless":
            return iter(lambda: block, None)  # never ends; the client leaves
        if path == "/upload":
            environ["wsgi.input"].read()  # the client leaves mid-body
        return [b"ok"]

    server = serve(app, threads=1)
    pool = pool_of(server)

    assert get(server, "/raise")[0] == 500

    sock = server.connect()
    sock.sendall(b"GET /abort HTTP/1.1\r\nHost: test\r\n\r\n")
    assert not recv_until_closed(sock).endswith(b"0\r\n\r\n")
    sock.close()

    sock = server.connect()
    sock.sendall(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
    assert sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset

    sock = server.connect()
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n")
    sock.sendall(b"x" * 1000)
    assert wait_for(lambda: pool.busy == 1)
    sock.close()

    assert wait_for(lambda: pool.busy == 0 and pool.waiting == 0), (pool.busy, pool.waiting)
    assert get(server, "/ok") == (200, b"ok")
    assert wait_for(lambda: pool.busy == 0)
