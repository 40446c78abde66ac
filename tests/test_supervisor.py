"""Production operation with real processes: signals, workers, reloads, systemd integration."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, read_response


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_serving(server, workers: int) -> None:
    expected = f"All {workers} workers are serving"
    assert wait_for(lambda: any(expected in line for line in server.log)), "".join(server.log)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_an_in_flight_request_finish_then_exits_zero(spawn, workers):
    server = spawn("apps:slow", "--bind", "127.0.0.1:0", "--workers", workers)
    if workers == "2":
        wait_serving(server, 2)
    result: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: result.append(get(server.port, "/?seconds=1.5")))
    client.start()
    time.sleep(0.5)  # the request is inside the app now
    server.proc.send_signal(signal.SIGTERM)
    client.join(20)
    assert result == [(200, b"done")]
    assert server.proc.wait(20) == 0
    # After SIGTERM nothing accepts new connections.
    with pytest.raises(OSError):
        get(server.port, timeout=2)


def test_sigquit_exits_fast_without_waiting_for_requests(spawn):
    server = spawn("apps:slow", "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    client = threading.Thread(target=lambda: _swallow(get, server.port, "/?seconds=30"))
    client.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGQUIT)
    server.proc.wait(15)
    assert time.monotonic() - started < 15  # it did not wait for the 30 s request
    client.join(5)


def _swallow(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_sighup_reloads_every_worker_without_dropping_a_request(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2", "--no-access-log")
    wait_serving(server, 2)
    old_workers = children(server.proc.pid)
    assert len(old_workers) == 2
    failures: list[BaseException] = []
    served_by: set[int] = set()
    count = 0
    stop = threading.Event()

    def client_loop() -> None:
        nonlocal count
        while not stop.is_set():
            try:
                status, body = get(server.port)
                assert status == 200
                served_by.add(int(body))
                count += 1
            except BaseException as exc:  # any failure is a dropped request
                failures.append(exc)

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: not (children(server.proc.pid) & old_workers)
                    and len(children(server.proc.pid)) == 2)
    time.sleep(0.5)  # keep the load on the new workers for a moment
    stop.set()
    for t in threads:
        t.join(20)
    assert failures == []
    assert count > 50
    new_workers = children(server.proc.pid)
    assert served_by & old_workers and served_by & new_workers
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0


def test_a_killed_worker_is_replaced(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    victim = min(children(server.proc.pid))
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(children(server.proc.pid)) == 2
                    and victim not in children(server.proc.pid))
    for _ in range(10):
        assert get(server.port)[0] == 200
    assert any(f"Worker {victim} died (signal 9)" in line for line in server.log)


def test_sigttin_and_sigttou_change_the_number_of_workers(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    server.proc.send_signal(signal.SIGTTIN)
    assert wait_for(lambda: len(children(server.proc.pid)) == 3)
    # One at a time: the kernel merges a signal sent again before the first was handled.
    server.proc.send_signal(signal.SIGTTOU)
    assert wait_for(lambda: len(children(server.proc.pid)) == 2)
    server.proc.send_signal(signal.SIGTTOU)
    assert wait_for(lambda: len(children(server.proc.pid)) == 1)


def test_max_requests_recycles_workers(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2", "--max-requests", "5")
    wait_serving(server, 2)
    seen = set()
    for _ in range(40):
        status, body = get(server.port)
        assert status == 200
        seen.add(int(body))
        time.sleep(0.02)
    assert len(seen) > 2
    assert any("recycling this worker" in line for line in server.log)


def test_a_worker_whose_loop_is_stuck_is_killed_after_timeout(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2", "--timeout", "1")
    wait_serving(server, 2)
    victim = min(children(server.proc.pid))
    os.kill(victim, signal.SIGSTOP)  # its event loop can no longer beat
    assert wait_for(lambda: victim not in children(server.proc.pid), timeout=15)
    assert any(f"WORKER TIMEOUT (pid: {victim})" in line for line in server.log)
    assert wait_for(lambda: len(children(server.proc.pid)) == 2)


def test_an_app_that_fails_to_import_stops_the_supervisor_with_status_3(spawn):
    proc = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "broken_app:app", "--bind", "127.0.0.1:0",
         "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )
    assert proc.returncode == 3
    assert "this app is broken on purpose" in proc.stderr


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    return sock


@pytest.mark.parametrize("workers", ["1", "2"])
def test_notify_socket_receives_ready_then_stopping(spawn, tmp_path, workers):
    notify = _notify_socket(tmp_path)
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--workers", workers,
                   env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    messages = notify.recv(4096).decode()
    assert "READY=1" in messages.splitlines()
    assert get(server.port)[0] == 200  # READY means serving
    server.proc.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in notify.recv(4096).decode().splitlines()
    assert server.proc.wait(20) == 0


LAUNCHER = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "wsgiloop", *sys.argv[2:]])
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_socket_activation_serves_on_an_inherited_listening_socket(tmp_path, workers):
    """Like systemd: the socket is bound by someone else and arrives as fd 3 (LISTEN_FDS)."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(listener.fileno()), "apps:pid", "--workers", workers],
        pass_fds=[listener.fileno()],
        stderr=subprocess.PIPE,
        env=env,
    )
    listener.close()  # only the server holds it now
    try:
        pids = set()
        for _ in range(4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(20)
            sock.connect(str(path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = read_response(sock, timeout=20)
            sock.close()
            assert status == 200
            pids.add(int(body))
        assert proc.pid in pids if workers == "1" else pids <= children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
    assert f"Listening at: unix:{path}" in log


def test_a_sighup_to_the_whole_process_group_reloads_without_killing_a_worker_mid_request(spawn):
    # A closed terminal (or `kill -HUP -PGID`) signals every process of the group: the
    # supervisor reloads; the workers leave the reload to it, so their requests finish.
    server = spawn("apps:slow", "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    old_workers = children(server.proc.pid)
    results: list[tuple[int, bytes]] = []
    clients = [
        threading.Thread(target=lambda: results.append(get(server.port, "/?seconds=1")))
        for _ in range(2)
    ]
    for client in clients:
        client.start()
    time.sleep(0.3)  # both requests are inside the app now
    os.killpg(server.proc.pid, signal.SIGHUP)
    for client in clients:
        client.join(20)
    assert results == [(200, b"done"), (200, b"done")]
    assert wait_for(lambda: not (children(server.proc.pid) & old_workers)
                    and len(children(server.proc.pid)) == 2)
    assert not any(" died (" in line for line in server.log), "".join(server.log)
    assert get(server.port, "/?seconds=0") == (200, b"done")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
