"""Every process transition loses nothing: reload, resize, stop and restart, behind nginx or not.

Real processes, real sockets, real nginx (the shipped site file). The load is bounded: a few
dozen keep-alive clients that never retry, for the few seconds the transitions take, only to
127.0.0.1 and Unix sockets. ``WSGILOOP_LIFECYCLE_SECONDS=60`` repeats the reload cycle of the
load tests until that many seconds have passed (CI runs one cycle).

Also here: the start-up failures (one line, one exit status per cause), the Unix socket file's
ownership, and the heartbeat of a worker that drains.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, Process, read_response
from test_deploy_files import NGINX, free_port, nginx_config
from test_supervisor import LAUNCHER, children, wait_for

from wsgiloop import exitcodes

APP = "lifecycle_apps:app"
SECONDS = float(os.environ.get("WSGILOOP_LIFECYCLE_SECONDS", "0"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONDONTWRITEBYTECODE": "1"}


# -- the load: keep-alive clients that never retry ---------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Load:
    """``clients`` threads, each on one keep-alive connection (``http.client``, which never
    retries a request; it opens a new connection only for the request after a
    ``Connection: close``), alternating POSTs with a random body of up to 32 KiB and GETs, and
    checking every answer. Once ``stopping`` is set, a refused connection ends a client, and so
    does a new connection reset before it got a byte (``close_race``: the kernel resets what
    it completed in the microseconds between the last worker's final accept and its close, as
    with any server that closes its listener); any other error, and any answer that is not the
    expected 200, is a failure."""

    connect: Callable[[], http.client.HTTPConnection]
    clients: int = 24
    headers: dict[str, str] = field(default_factory=dict)
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    close_race: int = 0
    pids: set[str] = field(default_factory=set)
    stopping: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "a client is stuck"

    def wait_for_requests(self, count: int) -> None:
        target = self.ok + count
        assert wait_for(lambda: self.ok >= target or bool(self.failures), 60), "load stalled"

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        conn = self.connect()
        sent = 0
        while not self._stop.is_set():
            sent += 1
            if sent % 2:
                body: bytes | None = rng.randbytes(rng.randint(1, 32768))
                method = "POST"
                expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
            else:
                body, method, expected = None, "GET", b"ok"
            fresh = conn.sock is None
            try:
                conn.request(method, f"/?client={index}&n={sent}", body=body, headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
            except ConnectionRefusedError:
                conn.close()
                if self.stopping.is_set():
                    with self._lock:
                        self.refused.append(time.monotonic())
                    return
                self._fail(f"{method} #{sent} of client {index}: connection refused")
                continue
            except ConnectionResetError as exc:
                conn.close()
                if self.stopping.is_set() and fresh:
                    with self._lock:
                        self.close_race += 1
                        self.refused.append(time.monotonic())
                    return
                self._fail(f"{method} #{sent} of client {index}: {exc!r}")
                continue
            except Exception as exc:
                conn.close()
                self._fail(f"{method} #{sent} of client {index}: {exc!r}")
                continue
            if resp.status != 200 or data != expected:
                self._fail(f"{method} #{sent} of client {index}: {resp.status} {data[:80]!r}")
                continue
            with self._lock:
                self.ok += 1
                self.pids.add(resp.getheader("X-Pid", "?"))
        conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)


def tcp(port: int) -> Callable[[], http.client.HTTPConnection]:
    return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30)


# -- the supervisor, seen through its log ------------------------------------------------------

_SERVING = re.compile(r"Worker (\d+) is serving")
_RETIRING = re.compile(r"Retiring worker (\d+)")


def _pids(server: Process, pattern: re.Pattern[str]) -> set[int]:
    return {int(pid) for line in list(server.log) for pid in pattern.findall(line)}


def serving(server: Process) -> set[int]:
    """Workers that serve and were not told to retire (needs ``--log-level debug``)."""
    return _pids(server, _SERVING) - _pids(server, _RETIRING)


def wait_serving(server: Process, count: int) -> None:
    assert wait_for(lambda: len(serving(server)) == count, 60), "".join(server.log)


def reload(server: Process, workers: int) -> None:
    """SIGHUP, then wait until every worker serving before it has been retired."""
    before = serving(server)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(
        lambda: before <= _pids(server, _RETIRING) and len(serving(server)) == workers, 60
    ), "".join(server.log)


def resize(server: Process, sig: signal.Signals, workers: int) -> None:
    server.proc.send_signal(sig)
    wait_serving(server, workers)


def transitions(server: Process, load: Load, workers: int) -> None:
    """Two reloads, one worker more, one fewer, with requests flowing between each step; all of
    it again until ``WSGILOOP_LIFECYCLE_SECONDS`` have passed."""
    started = time.monotonic()
    while True:
        load.wait_for_requests(50)
        reload(server, workers)
        load.wait_for_requests(50)
        resize(server, signal.SIGTTIN, workers + 1)
        load.wait_for_requests(50)
        reload(server, workers + 1)
        load.wait_for_requests(50)
        resize(server, signal.SIGTTOU, workers)
        load.wait_for_requests(50)
        if time.monotonic() - started >= SECONDS:
            return


def spawn_debug(spawn: Callable[..., Process], *args: str) -> Process:
    return spawn(APP, *args, "--log-level", "debug", "--no-access-log",
                 env={"PYTHONDONTWRITEBYTECODE": "1"})


# -- reload under load ---------------------------------------------------------------------------


def test_reloads_and_resizes_under_load_over_tcp_fail_no_request(spawn):
    server = spawn_debug(spawn, "--bind", "127.0.0.1:0", "--workers", "2")
    wait_serving(server, 2)
    load = Load(tcp(server.port)).start()
    try:
        transitions(server, load, 2)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:20]
    assert len(load.pids) >= 6  # 2 first workers, 2 of each reload, 1 from SIGTTIN
    print(f"\n{load.ok} requests over TCP, {len(load.pids)} workers, 0 failed")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0


@dataclass
class Nginx:
    port: int
    access_log: Path
    error_log: Path

    def statuses(self) -> dict[str, int]:
        """How many requests its access log holds, by status."""
        counts: dict[str, int] = {}
        for line in self.access_log.read_text().splitlines():
            status = line.split('"')[2].split()[0]
            counts[status] = counts.get(status, 0) + 1
        return counts

    def problems(self) -> list[str]:
        """Its error log's warnings and worse, and any line about the upstream: nginx retries a
        GET that fails silently, so a clean client side alone proves nothing."""
        return [
            line for line in self.error_log.read_text().splitlines()
            if re.search(r"\[(warn|error|crit|alert|emerg)\]", line) or "upstream" in line
        ]


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Callable[[Path], Nginx]]:
    """``start(app_socket)``: the real nginx with the shipped site file, with an access log."""
    if NGINX is None:
        pytest.fail("nginx is not installed (apt-get install nginx); .ci/run installs it")
    procs: list[subprocess.Popen[bytes]] = []

    def start(app_socket: Path) -> Nginx:
        port = free_port()
        conf = nginx_config(tmp_path, app_socket, port)
        text = conf.read_text()
        access = tmp_path / "access.log"
        assert "access_log off;" in text and "worker_connections 64;" in text
        text = text.replace("access_log off;", f"access_log {access};")
        text = text.replace("worker_connections 64;", "worker_connections 512;")
        conf.write_text(text)
        assert NGINX is not None
        proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        assert wait_for(lambda: _connects(port) or proc.poll() is not None, 20)
        assert proc.poll() is None, (tmp_path / "error.log").read_text()
        return Nginx(port, access, tmp_path / "error.log")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_reloads_and_resizes_under_load_behind_nginx_fail_no_request(
    spawn, tmp_path, nginx_in_front
):
    """nginx keeps idle upstream connections (keepalive 32); a worker that retires must neither
    reset them nor close one while nginx may be sending on it: nginx retries a GET that fails so
    silently (hence its error log is checked too), a POST it answers 502."""
    app_socket = tmp_path / "app.sock"
    server = spawn_debug(spawn, "--bind", f"unix:{app_socket}", "--workers", "2",
                         "--proxy-headers")
    wait_serving(server, 2)
    proxy = nginx_in_front(app_socket)
    load = Load(tcp(proxy.port), headers={"Host": "example.com"}).start()
    try:
        transitions(server, load, 2)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:20]
    assert len(load.pids) >= 6
    statuses = proxy.statuses()
    assert statuses == {"200": load.ok}, statuses
    problems = proxy.problems()
    assert problems == [], problems[:20]
    print(f"\n{load.ok} requests through nginx, {len(load.pids)} workers, 0 failed, no 502")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0


# -- stop under load ------------------------------------------------------------------------------


def gate_request(
    port: int, gate: Path
) -> tuple[threading.Thread, list[tuple[int, bytes]], list[BaseException]]:
    """A GET held inside the app until ``gate`` exists; returns once the app has it."""
    result: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", f"/gate?path={gate}")
            resp = conn.getresponse()
            result.append((resp.status, resp.read()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_for(lambda: Path(f"{gate}.entered").exists() or bool(errors), 30), errors
    return thread, result, errors


def probe(port: int) -> str:
    """One new connection with one request: ``refused``, ``answered``, or what went wrong."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"  # the listener closed with this handshake in its queue: see Load
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock, timeout=30)
        return "answered" if (status, body) == (200, b"ok") else f"{status} {body!r}"
    except ConnectionResetError:
        return "reset"  # before any byte of an answer: see Load
    except Exception as exc:
        return repr(exc)
    finally:
        sock.close()


@pytest.mark.parametrize("workers", ["1", "3"])
def test_sigterm_under_load_answers_what_was_accepted_and_refuses_the_rest_at_once(
    spawn, tmp_path, workers
):
    server = spawn_debug(spawn, "--bind", "127.0.0.1:0", "--workers", workers)
    if workers != "1":
        wait_serving(server, int(workers))
    load = Load(tcp(server.port), clients=12).start()
    gate = tmp_path / "gate"
    try:
        load.wait_for_requests(100)
        held, held_result, held_errors = gate_request(server.port, gate)
        load.stopping.set()
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        outcomes: list[str] = []
        while "refused" not in outcomes[-3:] or outcomes[-3:].count("refused") < 3:
            outcomes.append(probe(server.port))
            assert time.monotonic() - signalled < 60, outcomes
        refused_after = time.monotonic() - signalled
        # Every client got its answers (the last with Connection: close) and then a refusal,
        # while a request is still being drained: the listener did not wait for it.
        assert wait_for(lambda: len(load.refused) == load.clients, 30), load.failures[:5]
        assert held.is_alive() and not held_result
        gate.touch()
        held.join(60)
    finally:
        load.stop()
    assert held_errors == [] and held_result == [(200, b"released")]
    # A connection made after the signal is answered (it beat the close), refused, or - the
    # kernel's close race, see Load - reset before any byte; never held, never cut mid-answer.
    assert all(outcome in ("answered", "refused", "reset") for outcome in outcomes), outcomes
    assert outcomes[outcomes.index("refused"):].count("answered") == 0, outcomes
    assert load.failures == [], load.failures[:20]
    assert server.proc.wait(60) == 0
    print(f"\n--workers {workers}: refused {refused_after * 1000:.1f} ms after SIGTERM "
          f"({len(outcomes)} probes, {outcomes.count('answered')} answered first, "
          f"{outcomes.count('reset') + load.close_race} reset in the close race); "
          f"{load.ok} requests, 0 failed")


# -- restart with systemd holding the socket --------------------------------------------------


def launch(listener: socket.socket, *args: str) -> tuple[subprocess.Popen[bytes], list[str]]:
    """wsgiloop started as systemd starts it: the socket is fd 3, ``LISTEN_FDS=1``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(listener.fileno()), *args],
        pass_fds=[listener.fileno()], stderr=subprocess.PIPE, env=ENV, start_new_session=True,
    )
    log: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            log.append(raw.decode(errors="replace"))

    threading.Thread(target=drain, daemon=True).start()
    return proc, log


def test_restart_with_the_socket_held_by_systemd_keeps_the_connections_made_meanwhile():
    """systemd keeps its copy of the listening socket across a restart: connections made while
    no wsgiloop runs wait in its queue, and the next instance answers them."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    args = (APP, "--workers", "2", "--no-access-log")
    first, first_log = launch(listener, *args)
    second: subprocess.Popen[bytes] | None = None
    load = Load(tcp(port), clients=12).start()
    try:
        load.wait_for_requests(100)
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0, "".join(first_log)
        gap_start = load.ok
        # Nothing serves now: these connections are made while no wsgiloop runs, and queue in
        # systemd's (here: this test's) copy of the socket.
        probes: list[str] = []
        waiting = [threading.Thread(target=lambda: probes.append(probe(port))) for _ in range(4)]
        for thread in waiting:
            thread.start()
        second, _ = launch(listener, *args)
        for thread in waiting:
            thread.join(60)
        load.wait_for_requests(200)
    finally:
        load.stop()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        listener.close()
    assert probes == ["answered"] * 4
    assert load.failures == [], load.failures[:20]
    assert load.ok > gap_start
    assert second is not None and second.returncode == 0


# -- Unix sockets ----------------------------------------------------------------------------------


def run_wsgiloop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsgiloop", *args], capture_output=True,
                          text=True, timeout=90, env=ENV, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]


def unix_get(path: Path) -> tuple[int, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(path))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, body = read_response(sock)
    sock.close()
    return status, body


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_instance_on_a_live_unix_socket_fails_and_leaves_it_alone(spawn, tmp_path,
                                                                         workers):
    path = tmp_path / "app.sock"
    first = spawn(APP, "--bind", f"unix:{path}")
    out = run_wsgiloop(APP, "--bind", f"unix:{path}", "--workers", workers)
    assert out.returncode == exitcodes.LISTEN
    assert "Traceback" not in out.stderr
    [line] = error_lines(out.stderr)
    assert f"cannot listen on unix:{path}: address already in use" in line
    assert unix_get(path) == (200, b"ok")  # the first server is still reachable at its path
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(30) == 0


def test_stale_unix_socket_is_taken_over(spawn, tmp_path):
    path = tmp_path / "app.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a crashed server's file: a socket nothing accepts on
    dead.close()
    assert path.exists()
    server = spawn(APP, "--bind", f"unix:{path}")
    assert unix_get(path) == (200, b"ok")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0


def test_a_path_that_is_not_a_socket_is_not_removed(tmp_path):
    path = tmp_path / "app.sock"
    path.write_text("precious")
    out = run_wsgiloop(APP, "--bind", f"unix:{path}")
    assert out.returncode == exitcodes.LISTEN
    [line] = error_lines(out.stderr)
    assert "exists and is no socket" in line
    assert path.read_text() == "precious"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_unix_socket_file_is_removed_at_exit(spawn, tmp_path, workers):
    path = tmp_path / "app.sock"
    server = spawn_debug(spawn, "--bind", f"unix:{path}", "--workers", workers)
    if workers != "1":
        wait_serving(server, int(workers))
        reload(server, int(workers))  # retiring workers must not remove it
    assert unix_get(path) == (200, b"ok")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert not path.exists()


def test_a_successors_socket_file_is_not_removed_by_the_old_instance(spawn, tmp_path):
    """Old instance stopping (draining a request) while the new one already took the path."""
    path = tmp_path / "app.sock"
    gate = tmp_path / "gate"
    old = spawn(APP, "--bind", f"unix:{path}", "--bind", "127.0.0.1:0")
    held, result, errors = gate_request(int(old.urls[1].rsplit(":", 1)[1]), gate)
    old.proc.send_signal(signal.SIGTERM)
    # The old one stopped listening at once, so the path is stale and the new one takes it.
    assert wait_for(lambda: not path.exists(), 20)
    new = spawn(APP, "--bind", f"unix:{path}")
    gate.touch()
    held.join(30)
    assert result == [(200, b"released")] and errors == []
    assert old.proc.wait(30) == 0
    assert unix_get(path) == (200, b"ok")
    new.proc.send_signal(signal.SIGTERM)
    assert new.proc.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_inherited_unix_socket_file_is_left_to_its_owner(tmp_path, workers):
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    proc, log = launch(listener, APP, "--workers", workers)
    listener.close()
    try:
        assert wait_for(lambda: any("Listening at: unix:" in line for line in log), 30)
        assert wait_for(lambda: _unix_answers(path), 30), "".join(log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert path.exists()


def _unix_answers(path: Path) -> bool:
    try:
        return unix_get(path) == (200, b"ok")
    except OSError:
        return False


# -- start-up failures: one line, one exit status per cause ----------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


STARTUP_FAILURES: dict[str, tuple[list[str], int, str]] = {
    "port in use": (["--bind", "127.0.0.1:{busy}"], exitcodes.LISTEN,
                    "cannot listen on 127.0.0.1:{busy}: address already in use"),
    "address not here": (["--bind", "192.0.2.1:8000"], exitcodes.LISTEN,
                         "cannot listen on 192.0.2.1:8000: cannot assign requested address"),
    "no such directory": (["--bind", "unix:/nonexistent-dir/app.sock"], exitcodes.LISTEN,
                          "cannot listen on unix:/nonexistent-dir/app.sock: no such file"),
    "bad fd": (["--fd", "97"], exitcodes.LISTEN, "cannot listen on --fd 97: bad file descriptor"),
    "bad bind": (["--bind", "127.0.0.1:http"], exitcodes.USAGE, "invalid port 'http'"),
    "bad certificate": (["--bind", "127.0.0.1:0", "--certfile", "/nonexistent.pem"],
                        exitcodes.USAGE, "TLS: cannot use --certfile"),
    "no such module": (["--bind", "127.0.0.1:0", "--app-is", "no_such_module_xyz:app"],
                       exitcodes.APP_LOAD, "could not import module 'no_such_module_xyz'"),
    "no such attribute": (["--bind", "127.0.0.1:0", "--app-is", "apps:nope"],
                          exitcodes.APP_LOAD, "module 'apps' has no attribute 'nope'"),
    "import raises": (["--bind", "127.0.0.1:0", "--app-is", "broken_app:app"],
                      exitcodes.APP_LOAD,
                      "RuntimeError: this app is broken on purpose (" + str(ROOT / "tests")),
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("cause", list(STARTUP_FAILURES))
def test_a_start_up_failure_is_one_line_and_its_own_exit_status(cause, workers, busy_port):
    args, status, message = STARTUP_FAILURES[cause]
    args = [a.format(busy=busy_port) for a in args]
    app = APP
    if "--app-is" in args:
        at = args.index("--app-is")
        app = args[at + 1]
        del args[at : at + 2]
    out = run_wsgiloop(app, *args, "--workers", workers)
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr
    message = message.format(busy=busy_port)
    if status == exitcodes.USAGE and "TLS" not in message:
        assert out.stderr.splitlines()[-1].startswith("wsgiloop: error: "), out.stderr
        assert message in out.stderr
        return
    [line] = error_lines(out.stderr)
    assert message in line, line


def test_exit_statuses_are_distinct():
    values = [exitcodes.OK, exitcodes.CRASH, exitcodes.USAGE, exitcodes.APP_LOAD,
              exitcodes.LISTEN]
    assert len(set(values)) == len(values)


# -- reload into code that does not load ----------------------------------------------------------

RELOADABLE = """
import os

VERSION = {version!r}


def application(environ, start_response):
    body = VERSION.encode()
    start_response("200 OK", [("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))])
    return [body]
"""


def test_reload_into_code_that_does_not_load_keeps_the_old_workers_serving(spawn, tmp_path):
    module = tmp_path / "reloadable.py"
    module.write_text(RELOADABLE.format(version="v1"))
    server = spawn("reloadable:application", "--bind", "127.0.0.1:0", "--workers", "2",
                   "--chdir", str(tmp_path), "--log-level", "debug", "--no-access-log",
                   env={"PYTHONDONTWRITEBYTECODE": "1"})
    wait_serving(server, 2)
    old = serving(server)
    seen: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                seen.put((resp.status, resp.read()))
            except Exception as exc:
                seen.put((0, repr(exc).encode()))
                conn.close()
        conn.close()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        module.write_text("raise RuntimeError('the new code is broken')\n")
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any("Reload abandoned" in line for line in server.log), 60)
        errors = error_lines("".join(server.log))
        assert len(errors) == 1 and "RuntimeError: the new code is broken" in errors[0], errors
        assert server.proc.poll() is None
        assert serving(server) == old == children(server.proc.pid)
        count = seen.qsize()
        assert wait_for(lambda: seen.qsize() > count + 50, 30)
        # Fixed code, and the next SIGHUP reloads.
        module.write_text(RELOADABLE.format(version="v2"))
        reload(server, 2)
        assert serving(server).isdisjoint(old)
        # A new connection reaches only new workers: the retired ones closed their listeners.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/", headers={"Connection": "close"})
        assert conn.getresponse().read() == b"v2"
        conn.close()
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    answers = []
    while not seen.empty():
        answers.append(seen.get())
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
    assert {body for _, body in answers} <= {b"v1", b"v2"}
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0


# -- idle connections at a stop, heartbeats while draining ----------------------------------------


def test_a_retiring_worker_answers_a_request_on_its_idle_connection_and_keeps_beating(spawn):
    """The worker holding an idle keep-alive connection drains for the rest of its keep-alive
    time (3 s) - longer than --timeout (1 s), so it must go on beating meanwhile. A request
    sent on the idle connection then is answered, with Connection: close, and the connection
    then closes with a FIN, not a reset."""
    server = spawn_debug(spawn, "--bind", "127.0.0.1:0", "--workers", "2", "--timeout", "1",
                         "--keep-alive", "3")
    wait_serving(server, 2)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = read_response(sock)
    pid = int(headers["x-pid"])
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: pid in _pids(server, _RETIRING), 30)
    retired = time.monotonic()
    time.sleep(1.5)  # past --timeout: a worker that stopped beating would be killed by now
    assert time.monotonic() - retired < 3, "too slow to test inside the keep-alive time"
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlate")
    status, headers, body = read_response(sock)
    assert (status, body) == (200, b"4 " + hashlib.sha256(b"late").hexdigest().encode())
    assert int(headers["x-pid"]) == pid and headers["connection"] == "close"
    assert sock.recv(1) == b""  # FIN: the close was orderly
    sock.close()
    assert not any("WORKER TIMEOUT" in line for line in server.log), "".join(server.log)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0


def test_an_idle_connection_at_a_stop_closes_when_its_keep_alive_is_over(spawn):
    server = spawn(APP, "--bind", "127.0.0.1:0", "--keep-alive", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    server.proc.send_signal(signal.SIGTERM)
    assert sock.recv(1) == b""  # a FIN once the keep-alive time is over, no reset
    sock.close()
    assert server.proc.wait(30) == 0


def test_workers_frozen_with_their_supervisor_are_not_timed_out(spawn):
    """SIGSTOP/SIGCONT of the whole group (Ctrl-Z, a suspended VM): nobody ran, nobody hung."""
    server = spawn_debug(spawn, "--bind", "127.0.0.1:0", "--workers", "2", "--timeout", "1")
    wait_serving(server, 2)
    before = children(server.proc.pid)
    os.killpg(server.proc.pid, signal.SIGSTOP)
    time.sleep(2.5)  # frozen for longer than --timeout
    os.killpg(server.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: any("did not run for" in line for line in server.log), 20)
    time.sleep(1.5)  # the timeout, counted afresh, would have passed if workers did not beat
    assert not any("WORKER TIMEOUT" in line for line in server.log), "".join(server.log)
    assert children(server.proc.pid) == before
    with contextlib.suppress(Exception):
        server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0



# -- SIGHUP with --workers 1: a handover to the new code, in the same process ------------------

_VERSIONED = '''
from lifecycle_apps import app as base

VERSION = "{version}"


def app(environ, start_response):
    def start(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Version", VERSION)], exc_info)

    return base(environ, start)
'''


def version_of(connect: Callable[[], http.client.HTTPConnection]) -> str:
    conn = connect()
    try:
        conn.request("GET", "/version")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Version", "?")
    finally:
        conn.close()


def unix(path: Path) -> Callable[[], http.client.HTTPConnection]:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(str(path))

    return lambda: UnixConnection("localhost", timeout=30)


def spawn_versioned(spawn: Callable[..., Process], tmp_path: Path, *args: str) -> Process:
    (tmp_path / "versioned.py").write_text(_VERSIONED.format(version=1))
    return spawn("versioned:app", *args, "--workers", "1", "--no-access-log", env={
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    })


def test_sighup_alone_hands_over_to_the_new_code_in_this_process_losing_no_request(
    spawn, tmp_path
):
    sock_path = tmp_path / "app.sock"
    server = spawn_versioned(spawn, tmp_path, "--bind", "127.0.0.1:0", "--bind",
                             f"unix:{sock_path}")
    load = Load(tcp(server.port), clients=8).start()
    over_unix = Load(unix(sock_path), clients=4).start()
    gate = tmp_path / "gate"
    late: list[str] = []
    try:
        load.wait_for_requests(100)
        over_unix.wait_for_requests(50)
        held, held_result, held_errors = gate_request(server.port, gate)
        (tmp_path / "versioned.py").write_text(_VERSIONED.format(version=2))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any("draining, then starting again" in line
                                    for line in server.log), 30), "".join(server.log)
        # The request in flight holds the drain; a connection made meanwhile is not refused:
        # it waits in the listen backlog for the new code.
        waiting = threading.Thread(target=lambda: late.append(version_of(tcp(server.port))))
        waiting.start()
        assert held.is_alive() and not late
        gate.touch()
        held.join(60)
        waiting.join(60)
        assert wait_for(lambda: version_of(tcp(server.port)) == "2", 30), "".join(server.log)
        load.wait_for_requests(100)
        over_unix.wait_for_requests(50)
    finally:
        load.stop()
        over_unix.stop()
    assert held_errors == [] and held_result == [(200, b"released")]
    assert late == ["2"]
    failures = load.failures + over_unix.failures
    assert failures == [], failures[:9]
    # One process throughout (the same pid answered every request), the socket file kept.
    assert load.pids == over_unix.pids == {str(server.proc.pid)}
    assert version_of(unix(sock_path)) == "2"
    assert sum("Listening at: unix:" in line for line in server.log) == 2
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    assert not sock_path.exists()  # removed at the real exit


def test_sighup_alone_with_code_that_does_not_load_keeps_serving_the_old_code(spawn, tmp_path):
    server = spawn_versioned(spawn, tmp_path, "--bind", "127.0.0.1:0")
    assert version_of(tcp(server.port)) == "1"
    (tmp_path / "versioned.py").write_text("raise RuntimeError('broken deploy')\n")
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("Reload abandoned" in line and "broken deploy" in line
                                for line in server.log), 30), "".join(server.log)
    assert version_of(tcp(server.port)) == "1"
    # Fixed, and the next SIGHUP reloads.
    (tmp_path / "versioned.py").write_text(_VERSIONED.format(version=3))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: version_of(tcp(server.port)) == "3", 30), "".join(server.log)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0


def test_a_handover_is_refused_where_the_process_could_not_start_again():
    from wsgiloop import handover
    from wsgiloop.config import Config

    handover.remember_start_dir()
    assert handover.unavailable(Config()) is None
    assert "--user" in (handover.unavailable(Config(user="nobody")) or "")


def test_sighup_alone_behind_nginx_hands_over_with_no_502_and_no_upstream_error(
    spawn, tmp_path, nginx_in_front
):
    # nginx's upstream keep-alive connections to the one process: during the drain each gets
    # its answer with Connection: close, nginx's next connections wait in the backlog, and the
    # new image answers them. nginx retries a failed GET silently, so its logs are checked.
    app_socket = tmp_path / "app.sock"
    server = spawn_versioned(spawn, tmp_path, "--bind", f"unix:{app_socket}", "--proxy-headers")
    proxy = nginx_in_front(app_socket)
    load = Load(tcp(proxy.port), headers={"Host": "example.com"}).start()
    try:
        for version in (2, 3):
            load.wait_for_requests(200)
            (tmp_path / "versioned.py").write_text(_VERSIONED.format(version=version))
            server.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda v=str(version): version_of(tcp(proxy.port)) == v, 30), (
                "".join(server.log)
            )
        load.wait_for_requests(200)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:20]
    assert load.pids == {str(server.proc.pid)}
    statuses = proxy.statuses()
    assert set(statuses) == {"200"}, statuses  # (with the version probes: more than load.ok)
    problems = proxy.problems()
    assert problems == [], problems[:20]
    print(f"\n{load.ok} requests through nginx across two handovers, 0 failed, no 502")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0


def test_a_signal_sent_while_the_new_image_starts_waits_for_its_handlers(spawn, tmp_path):
    # exec resets the handlers to the default actions until the new image installs its own: a
    # SIGTERM then would kill it (status 143) and leave its files. The signals are blocked
    # across the exec instead, and delivered once the handlers are in.
    sock_path, pid_file = tmp_path / "app.sock", tmp_path / "server.pid"
    server = spawn_versioned(spawn, tmp_path, "--bind", f"unix:{sock_path}", "--pid",
                             str(pid_file))
    slow = _VERSIONED.format(version=2) + "\nimport time\ntime.sleep(1.5)  # a slow import\n"
    (tmp_path / "versioned.py").write_text(slow)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("Drained: starting again" in line for line in server.log), 30)
    server.proc.send_signal(signal.SIGTERM)  # while the new image imports the app
    assert server.proc.wait(60) == 0, "".join(server.log)
    assert any("Received SIGTERM" in line for line in server.log[-20:]), "".join(server.log)
    assert not sock_path.exists() and not pid_file.exists()


def test_sigterm_during_a_reloads_drain_stops_and_removes_the_socket_file(spawn, tmp_path):
    sock_path = tmp_path / "app.sock"
    server = spawn_versioned(spawn, tmp_path, "--bind", "127.0.0.1:0", "--bind",
                             f"unix:{sock_path}")
    gate = tmp_path / "gate"
    held, held_result, held_errors = gate_request(server.port, gate)
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("draining, then starting again" in line
                                for line in server.log), 30), "".join(server.log)
    server.proc.send_signal(signal.SIGTERM)
    gate.touch()
    held.join(60)
    assert held_errors == [] and held_result == [(200, b"released")]
    assert server.proc.wait(60) == 0
    assert not any("Drained: starting again" in line for line in server.log)
    assert not sock_path.exists()


def test_a_second_instance_on_the_same_pid_file_leaves_the_running_servers_file(spawn, tmp_path):
    pid_file = tmp_path / "server.pid"
    first = spawn_versioned(spawn, tmp_path, "--bind", "127.0.0.1:0", "--pid", str(pid_file))
    assert wait_for(lambda: pid_file.exists())
    second = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "versioned:app", "--bind", f"127.0.0.1:{first.port}",
         "--pid", str(pid_file)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests")])},
    )  # fmt: skip
    assert second.returncode == exitcodes.USAGE, second.stderr
    assert f"names process {first.proc.pid}, which is running" in second.stderr
    assert "Traceback" not in second.stderr
    assert pid_file.read_text().strip() == str(first.proc.pid)
    assert version_of(tcp(first.port)) == "1"
