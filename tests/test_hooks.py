"""Server hooks from a Python config file, with gunicorn's names and arguments, in real
processes: each hook runs in the process and at the moment gunicorn runs it."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from test_supervisor import children, get, wait_for, wait_serving

HOOKS = '''
import os
import threading
import time

LOG = {log!r}


def _record(*words):
    with open(LOG, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")


def on_starting(server):
    _record("on_starting", os.getpid(), server.cfg.workers)

def when_ready(server):
    _record("when_ready", os.getpid())

def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", new_value, old_value)

def pre_fork(server, worker):
    _record("pre_fork", os.getpid(), worker.age)

def post_fork(server, worker):
    # What an app keeps here under --preload: a per-worker exporter thread.
    def export():
        while True:
            _record("exporter", os.getpid())
            time.sleep(0.2)
    threading.Thread(target=export, name="exporter", daemon=True).start()
    _record("post_fork", os.getpid(), worker.pid == os.getpid())

def post_worker_init(worker):
    _record("post_worker_init", os.getpid(), worker.booted)

def pre_request(worker, req):
    _record("pre_request", os.getpid(), req.method, req.path, req.query)

def post_request(worker, req, environ, resp):
    _record("post_request", os.getpid(), req.method, req.path, resp.status_code,
            environ["REQUEST_METHOD"])

def worker_int(worker):
    _record("worker_int", os.getpid())

def worker_abort(worker):
    _record("worker_abort", os.getpid())

def child_exit(server, worker):
    _record("child_exit", os.getpid(), worker.pid)

def worker_exit(server, worker):
    _record("worker_exit", os.getpid())

def on_reload(server):
    _record("on_reload", os.getpid())

def on_exit(server):
    _record("on_exit", os.getpid())
'''


@pytest.fixture
def hooks(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "hooks.log"
    conf = tmp_path / "wsgiloop.conf.py"
    conf.write_text(textwrap.dedent(HOOKS.format(log=str(log))))
    return conf, log


def records(log: Path, name: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split()[1:] for line in log.read_text().splitlines()
            if line.split()[:1] == [name]]


def test_post_fork_starts_a_thread_that_runs_in_each_preloaded_worker(spawn, hooks):
    conf, log = hooks
    server = spawn("apps:hello", "-c", str(conf), "--bind", "127.0.0.1:0", "--workers", "2",
                   "--preload")
    wait_serving(server, 2)
    workers = children(server.proc.pid)
    assert len(workers) == 2
    # Each worker's own exporter thread writes, again and again, after the fork.
    assert wait_for(lambda: {int(r[0]) for r in records(log, "exporter")} >= workers), \
        log.read_text()
    assert sorted(int(r[0]) for r in records(log, "post_fork")) == sorted(workers)
    assert all(r[1] == "True" for r in records(log, "post_fork"))
    assert {int(r[0]) for r in records(log, "post_worker_init")} == workers
    # pre_fork and when_ready ran in the supervisor, before the workers.
    assert {r[0] for r in records(log, "pre_fork")} == {str(server.proc.pid)}
    assert [r[1] for r in records(log, "pre_fork")] == ["1", "2"]  # worker.age
    assert records(log, "when_ready") == [[str(server.proc.pid)]]
    assert records(log, "on_starting") == [[str(server.proc.pid), "2"]]
    assert records(log, "nworkers_changed") == [["2", "None"]]


def test_pre_and_post_request_see_the_request_and_its_response(spawn, hooks):
    conf, log = hooks
    server = spawn("apps:hello", "-c", str(conf), "--bind", "127.0.0.1:0")
    assert get(server.port, "/some/path?x=1") == (200, b"Hello, world!")
    assert wait_for(lambda: records(log, "post_request"))
    pid = str(server.proc.pid)
    assert records(log, "pre_request") == [[pid, "GET", "/some/path", "x=1"]]
    assert records(log, "post_request") == [[pid, "GET", "/some/path", "200", "GET"]]


def test_with_one_worker_the_fork_hooks_run_in_the_one_process(spawn, hooks):
    conf, log = hooks
    server = spawn("apps:hello", "-c", str(conf), "--bind", "127.0.0.1:0")
    pid = str(server.proc.pid)
    assert get(server.port) == (200, b"Hello, world!")
    assert [r[0] for r in records(log, "pre_fork")] == [pid]
    assert records(log, "post_fork") == [[pid, "True"]]
    assert wait_for(lambda: pid in {r[0] for r in records(log, "exporter")})


def test_sigint_runs_worker_int_then_worker_exit_and_on_exit(spawn, hooks):
    conf, log = hooks
    server = spawn("apps:hello", "-c", str(conf), "--bind", "127.0.0.1:0")
    pid = str(server.proc.pid)
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0
    assert records(log, "worker_int") == [[pid]]
    assert records(log, "worker_exit") == [[pid]]
    assert records(log, "on_exit") == [[pid]]


def test_the_supervisor_runs_reload_resize_and_exit_hooks(spawn, hooks):
    conf, log = hooks
    server = spawn("apps:hello", "-c", str(conf), "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    pid = server.proc.pid
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: records(log, "on_reload") == [[str(pid)]])
    server.proc.send_signal(signal.SIGTTIN)
    assert wait_for(lambda: ["3", "2"] in records(log, "nworkers_changed"))
    victim = sorted(children(pid))[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: [str(pid), str(victim)] in records(log, "child_exit"))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert records(log, "on_exit") == [[str(pid)]]
    # Each worker that stopped gracefully ran worker_exit in its own process.
    assert len(records(log, "worker_exit")) >= 2


def test_a_timed_out_worker_runs_worker_abort(spawn, hooks):
    conf, log = hooks
    # One thread, hung in the app past --timeout: the worker stops beating and is aborted.
    server = spawn("apps:slow", "-c", str(conf), "--bind", "127.0.0.1:0", "--workers", "2",
                   "--threads", "1", "--timeout", "1")
    wait_serving(server, 2)
    workers = children(server.proc.pid)
    socks = []
    for _ in range(4):  # enough that every worker gets one (a slow request each)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /?seconds=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(sock)
    assert wait_for(lambda: {int(r[0]) for r in records(log, "worker_abort")} & workers,
                    timeout=30), "".join(server.log)
    for sock in socks:
        sock.close()
