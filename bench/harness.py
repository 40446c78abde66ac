"""The benchmark harness behind ``bench/run``: wsgiloop against its peers, one table.

Every server runs the same WSGI apps (``bench/apps.py``) in one process with the same number of
app threads, pinned to CPU 0; the load generator (wrk, and ``idle_conns.py`` for the idle row)
is pinned to CPU 1. Each (workload, server) pair gets a fresh server process, so the peak RSS
of a row is that row's own. Results go to stdout as one markdown table and to
``bench/results/<date>.md`` and ``.json``.

Only the standard library is used here; the peers live in their own virtualenv
(``bench/.venv``) so nothing they pull in can change the interpreter this runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
RESULTS_DIR = BENCH_DIR / "results"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
HOST = "127.0.0.1"
SERVER_CPU = "0"
LOAD_CPU = "1"

#: Limits every server gets where it has the option, so that no row measures a default cap
#: instead of the server: cheroot's listen backlog is 5 by default and it keeps at most 10 idle
#: keep-alive connections, gunicorn's gthread worker holds at most 1,000 connections, waitress
#: at most 100, granian's backpressure (concurrent connections per worker) equals its backlog,
#: wsgiloop answers 503 past 4,096 connections.
BACKLOG = 2048
CONNECTION_LIMIT = 10_000
#: Keep-alive timeout (seconds) for servers that have one: longer than any row, so that the
#: idle row measures held connections, not a timer (gunicorn's default is 2 s, uvicorn's 5 s).
KEEPALIVE = 60

WRK_TIMEOUT = "10s"
READY_TIMEOUT = 120.0  # a bound for a loaded machine, not an expectation
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------

_CHECK_BODY_LUA = """
bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if %s then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("Bad bodies: %%d\\n", total))
end
"""

STREAM_LUA = _CHECK_BODY_LUA % "status ~= 200 or #body ~= 1048576"

UPLOAD_LUA = (
    """
wrk.method = "POST"
wrk.body = string.rep("a", 16 * 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""
    + _CHECK_BODY_LUA % 'status ~= 200 or body ~= "16777216"'
)


@dataclass(frozen=True)
class Workload:
    name: str
    app: str
    connections: int
    description: str
    headers: tuple[str, ...] = ()
    lua: str | None = None
    idle: int = 0  # idle keep-alive connections held open during the wrk run


def workloads(idle_conns: int) -> list[Workload]:
    return [
        Workload(
            "hello-keepalive",
            "hello",
            50,
            "GET, 13-byte body, 50 keep-alive connections",
        ),
        Workload(
            "hello-close",
            "hello",
            50,
            "GET with `Connection: close`: a new TCP connection per request",
            headers=("Connection: close",),
        ),
        Workload(
            "stream-1MiB",
            "stream",
            8,
            "GET, 1 MiB streamed in 64 KiB chunks, no Content-Length, 8 connections",
            lua=STREAM_LUA,
        ),
        Workload(
            "upload-16MiB",
            "upload",
            8,
            "POST of a 16 MiB body that the app reads whole, 8 connections",
            lua=UPLOAD_LUA,
        ),
        Workload(
            "sleep-50ms",
            "sleep",
            200,
            "app blocks 50 ms per request, 200 connections (thread-pool bound)",
        ),
        Workload(
            f"idle-{idle_conns}",
            "hello",
            10,
            f"{idle_conns} idle keep-alive connections held open, plus hello on 10 connections",
            idle=idle_conns,
        ),
    ]


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Where a server's executables are and how many app threads it gets."""

    bindir: Path
    python: Path
    threads: int


ArgvBuilder = Callable[[Launch, str, str], list[str]]


@dataclass(frozen=True)
class Server:
    name: str
    argv: ArgvBuilder  # (launch, app, port) -> argv
    peer: bool = True
    note: str = ""


def _wsgiloop(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.python), "-m", "wsgiloop", f"apps:{app}",
        "--bind", f"{HOST}:{port}",
        "--threads", str(launch.threads),
        "--backlog", str(BACKLOG), "--limit-concurrency", str(CONNECTION_LIMIT),
        "--keep-alive", str(KEEPALIVE),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _gunicorn(worker: str) -> ArgvBuilder:
    def build(launch: Launch, app: str, port: str) -> list[str]:
        # The sync worker is single-threaded by design: gunicorn itself switches to gthread when
        # threads > 1, so it gets 1 thread (its whole point of comparison).
        threads = launch.threads if worker == "gthread" else 1
        return [
            str(launch.bindir / "gunicorn"), f"apps:{app}",
            "--bind", f"{HOST}:{port}",
            "--worker-class", worker, "--workers", "1", "--threads", str(threads),
            "--worker-connections", str(CONNECTION_LIMIT),
            "--backlog", str(BACKLOG),
            "--keep-alive", str(KEEPALIVE),
            "--log-level", "warning",
        ]  # fmt: skip

    return build


def _waitress(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "waitress-serve"),
        f"--listen={HOST}:{port}",
        f"--threads={launch.threads}",
        f"--backlog={BACKLOG}",
        f"--connection-limit={CONNECTION_LIMIT}",
        f"--channel-timeout={KEEPALIVE}",
        # select() (the default) crashes the server past file descriptor 1023.
        "--asyncore-use-poll",
        f"apps:{app}",
    ]


def _uvicorn(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "uvicorn"), f"asgi_apps:{app}",
        "--host", HOST, "--port", port,
        "--loop", "uvloop", "--http", "httptools",
        "--backlog", str(BACKLOG),
        "--timeout-keep-alive", str(KEEPALIVE),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _granian(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "granian"), "--interface", "wsgi",
        "--host", HOST, "--port", port,
        "--workers", "1", "--blocking-threads", str(launch.threads), "--runtime-threads", "1",
        "--backlog", str(BACKLOG), "--backpressure", str(CONNECTION_LIMIT),
        "--no-ws", "--log-level", "warning",
        f"apps:{app}",
    ]  # fmt: skip


def _cheroot(launch: Launch, app: str, port: str) -> list[str]:
    # serve_cheroot.py is `python -m cheroot` plus --keep-alive-conn-limit (see its docstring).
    return [
        str(launch.python), str(BENCH_DIR / "serve_cheroot.py"), f"apps:{app}",
        "--bind", f"{HOST}:{port}",
        "--threads", str(launch.threads), "--max-threads", str(launch.threads),
        "--request-queue-size", str(BACKLOG),
        "--timeout", str(KEEPALIVE),
        "--keep-alive-conn-limit", str(CONNECTION_LIMIT),
    ]  # fmt: skip


SERVERS: list[Server] = [
    Server("wsgiloop", _wsgiloop, peer=False),
    Server("gunicorn-gthread", _gunicorn("gthread")),
    Server(
        "gunicorn-sync",
        _gunicorn("sync"),
        note="1 thread (gunicorn turns a threaded sync worker into gthread); one request at a "
        "time, `Connection: close` on every response",
    ),
    Server("waitress", _waitress, note="poll() instead of select(), which fails past fd 1023"),
    Server(
        "uvicorn",
        _uvicorn,
        note="WSGI through a2wsgi.WSGIMiddleware(app, workers=threads) (bench/asgi_apps.py)",
    ),
    Server(
        "granian",
        _granian,
        note="Rust HTTP stack; no keep-alive timeout option (idle connections close after its "
        "30 s header-read timeout)",
    ),
    Server(
        "cheroot",
        _cheroot,
        note="bench/serve_cheroot.py = `python -m cheroot` + keep_alive_conn_limit (default 10)",
    ),
]


# --------------------------------------------------------------------------------------------
# Processes and memory
# --------------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) comes after the command name, which may itself hold spaces or ")".
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are still alive."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


@dataclass
class Memory:
    """Peak RSS (VmHWM) of every process of a server; the table shows the sum."""

    peak_kib: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)


def tree_memory(root: int) -> Memory:
    mem = Memory()
    for pid in process_tree(root):
        hwm = _status_kib(pid, "VmHWM")
        mem.peak_kib += hwm
        mem.processes.append({"pid": pid, "peak_kib": hwm, "cmd": _cmdline(pid)[:200]})
    return mem


def tree_rss_kib(root: int) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in process_tree(root))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWatch:
    """How much CPU the rest of the machine used while a row's load ran.

    Busy time of all CPUs, minus the server's process tree, minus the load generators (wrk,
    the idle helper): what is left is other processes and interrupts. On a quiet machine it is
    a few percent (loopback softirq work the kernel does not charge to a process); much more
    means something else competed with the benchmark and the row's numbers are suspect.
    """

    def __init__(self, server_pid: int, helper_pid: int | None) -> None:
        self.pids = [server_pid] + ([helper_pid] if helper_pid else [])
        self.wall = time.monotonic()
        self.busy = machine_busy_seconds()
        self.ours = sum(tree_cpu_seconds(p) for p in self.pids) + children_cpu_seconds()

    def other_percent(self) -> float:
        wall = time.monotonic() - self.wall
        busy = machine_busy_seconds() - self.busy
        ours = sum(tree_cpu_seconds(p) for p in self.pids) + children_cpu_seconds() - self.ours
        capacity = wall * len(os.sched_getaffinity(0))
        return max(0.0, busy - ours) / capacity * 100 if capacity > 0 else 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    """True once something on ``port`` answers an HTTP request with a status line."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


class ServerProcess:
    """One server, started pinned to the server CPU, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, pin: bool) -> None:
        self.argv = argv
        self.log_path = log_path
        cmd = (["taskset", "-c", SERVER_CPU] if pin else []) + argv
        self.log = log_path.open("wb")
        # taskset execs the server, so the pid is the server's own, not a wrapper's.
        self.proc = subprocess.Popen(
            cmd,
            cwd=BENCH_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, port: int, timeout: float = READY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if _answers(port):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL whatever of the process tree is left; the exit code."""
        tree = process_tree(self.pid)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the session we started, by its own id
        code = self.proc.wait()
        self.log.close()
        return code

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    requests: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0
    bad_bodies: int = 0
    exit_code: int = 0
    output: str = ""

    @property
    def errors(self) -> int:
        return (
            self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
            + self.non_2xx
            + self.bad_bodies
        )


def _latency_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    res = WrkResult(output=output)
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M):
        res.rps = float(m.group(1))
    if m := re.search(r"^\s*(\d+) requests in ", output, re.M):
        res.requests = int(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M):
            setattr(res, attr, _latency_ms(m.group(1), m.group(2)))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        res.connect_errors, res.read_errors, res.write_errors, res.timeouts = (
            int(g) for g in m.groups()
        )
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        res.non_2xx = int(m.group(1))
    if m := re.search(r"^Bad bodies: (\d+)", output, re.M):
        res.bad_bodies = int(m.group(1))
    return res


def run_wrk(
    wrk: str, port: int, load: Workload, duration: float, script_dir: Path, pin: bool
) -> WrkResult:
    cmd = (["taskset", "-c", LOAD_CPU] if pin else []) + [
        wrk, "-t", "1", "-c", str(load.connections), "-d", f"{duration:g}s",
        "--timeout", WRK_TIMEOUT, "--latency",
    ]  # fmt: skip
    for header in load.headers:
        cmd += ["-H", header]
    if load.lua:
        script = script_dir / f"{load.name}.lua"
        script.write_text(load.lua)
        cmd += ["-s", str(script)]
    cmd.append(f"http://{HOST}:{port}/")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        res = parse_wrk(out)
        res.exit_code = -1
        return res
    res = parse_wrk(proc.stdout + proc.stderr)
    res.exit_code = proc.returncode
    return res


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    server: str
    ok: bool = False
    failure: str = ""
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    peak_rss_kib: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, Any] | None = None
    other_cpu_percent: float | None = None  # see CpuWatch
    exit_code: int | None = None
    argv: list[str] = field(default_factory=list)
    wrk_output: str = ""


class IdleHolder:
    """``idle_conns.py`` run as a child pinned to the load CPU; holds its connections open."""

    def __init__(self, port: int, count: int, pin: bool) -> None:
        cmd = (["taskset", "-c", LOAD_CPU] if pin else []) + [
            sys.executable, str(BENCH_DIR / "idle_conns.py"),
            "--host", HOST, "--port", str(port), "--count", str(count),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return dict(json.loads(line)) if line.strip() else {}

    def ready(self) -> dict[str, Any]:
        return self._line()

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("done\n")
            self.proc.stdin.close()
        result = self._line()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _fixed_body(app: str) -> bytes | None:
    """The body ``app`` answers a GET with, where it is fixed (see bench/apps.py)."""
    if app in ("hello", "sleep"):
        return b"Hello, world!"
    if app == "stream":
        return b"x" * (1024 * 1024)
    return None


def probe(port: int, load: Workload) -> str | None:
    """One request of ``load``'s kind, outside wrk, with a generous timeout; None if it was
    answered correctly, else what went wrong. Used when wrk completed no request in its window,
    to tell a slow server from one that does not serve the row."""
    body: bytes | None = None
    expected = _fixed_body(load.app)
    if load.app == "upload":
        body = b"a" * (16 * 1024 * 1024)
        expected = str(len(body)).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST" if body is not None else "GET", "/", body=body)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"probe request failed: {exc!r}"
    finally:
        conn.close()
    if resp.status != 200:
        return f"probe request answered {resp.status}"
    if expected is not None and data != expected:
        return f"probe request got a wrong body ({len(data)} bytes)"
    return None


def run_row(
    server: Server,
    load: Workload,
    launch: Launch,
    opts: argparse.Namespace,
    env: dict[str, str],
    wrk: str,
    dirs: tuple[Path, Path],
) -> Row:
    """One workload against one fresh server; ``dirs`` = (scratch dir, server log dir)."""
    workdir, logs_dir = dirs
    port = free_port()
    argv = server.argv(launch, load.app, str(port))
    row = Row(load.name, server.name, argv=argv)
    log_path = logs_dir / f"{server.name}--{load.name}.log"
    srv = ServerProcess(argv, env, log_path, opts.pin)
    holder: IdleHolder | None = None
    try:
        if not srv.wait_ready(port):
            row.failure = "server did not answer" if srv.alive() else "server exited at start"
            return row
        if load.idle:
            rss_before = tree_rss_kib(srv.pid)
            holder = IdleHolder(port, load.idle, opts.pin)
            ready = holder.ready()
            rss_held = tree_rss_kib(srv.pid)
            held = int(ready.get("held", 0))
            row.idle = {
                **ready,
                "rss_before_kib": rss_before,
                "rss_held_kib": rss_held,
                "kib_per_conn": (rss_held - rss_before) / held if held else None,
            }
        watch = CpuWatch(srv.pid, holder.proc.pid if holder else None)
        res = run_wrk(wrk, port, load, opts.duration, workdir, opts.pin)
        row.other_cpu_percent = round(watch.other_percent(), 1)
        if holder is not None and row.idle is not None:
            row.idle["alive_after_load"] = holder.finish().get("alive")
            holder = None
        server_alive = srv.alive()
        mem = tree_memory(srv.pid)
        _fill(row, res, mem)
        if not server_alive:
            row.failure = "server died during the run"
        elif res.exit_code != 0 and res.requests == 0:
            row.failure = f"wrk exited {res.exit_code}: {res.output.strip()[-200:]}"
        elif res.requests == 0 and (problem := probe(port, load)) is not None:
            row.failure = f"no request completed; {problem}"
        else:
            row.ok = True
        return row
    finally:
        if holder is not None:
            holder.kill()
        row.exit_code = srv.stop()
        if not row.ok:
            tail = srv.log_tail()
            if tail:
                row.failure += f"\n--- server log ({log_path}) ---\n{tail}"


def _fill(row: Row, res: WrkResult, mem: Memory) -> None:
    row.rps, row.p50_ms, row.p99_ms = res.rps, res.p50_ms, res.p99_ms
    row.requests = res.requests
    row.errors = res.errors
    detail = {
        "connect": res.connect_errors,
        "read": res.read_errors,
        "write": res.write_errors,
        "timeout": res.timeouts,
        "non_2xx": res.non_2xx,
        "bad_body": res.bad_bodies,
    }
    row.error_detail = {k: v for k, v in detail.items() if v}
    if row.idle is not None and row.idle.get("failed"):
        row.error_detail["idle_unserved"] = int(row.idle["failed"])
    row.peak_rss_kib, row.processes = mem.peak_kib, mem.processes
    row.wrk_output = res.output


# --------------------------------------------------------------------------------------------
# Environment: venv, wrk, limits
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed; install it (apt-get install wrk) and rerun")
    log("wrk not found: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv(skip_install: bool, with_wsgiloop: bool) -> Path:
    """Create or reuse ``bench/.venv`` with the peers and an editable wsgiloop; its bin dir."""
    bindir = VENV_DIR / "bin"
    python = bindir / "python"
    if skip_install:
        if not python.exists():
            raise SystemExit(f"--skip-install: {VENV_DIR} does not exist")
        return bindir
    if not python.exists():
        log(f"creating {VENV_DIR}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    stamp = VENV_DIR / ".requirements.sha256"
    if not stamp.exists() or stamp.read_text().strip() != _requirements_hash():
        log(f"installing the peers from {REQUIREMENTS.name}")
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(_requirements_hash() + "\n")
    if not with_wsgiloop:
        return bindir
    probe = subprocess.run(
        [str(python), "-c", "import wsgiloop.cli, wsgiloop; print(wsgiloop.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(REPO_ROOT)):
        log(f"installing wsgiloop from {REPO_ROOT} (editable) into the venv")
        install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run(
            [*install, "-e", str(REPO_ROOT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            log("could not install wsgiloop into the venv; its rows will fail:")
            log(done.stderr.strip()[-800:])
    return bindir


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target != resource.RLIM_INFINITY and target < needed:
        log(f"open-file limit is {target}; the idle row needs about {needed}")


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import json, sys\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = version(n)\n"
        "    except PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=False
    )
    try:
        return dict(json.loads(proc.stdout))
    except json.JSONDecodeError:
        return {}


SOURCE_DIR = REPO_ROOT / "src" / "wsgiloop"


def source_digest(package_dir: Path = SOURCE_DIR) -> str:
    """Short digest of a wsgiloop source tree (its .py files), to tell runs' code apart."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        with contextlib.suppress(OSError):
            digest.update(path.relative_to(package_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_source(dest: Path) -> Path:
    """Copy ``src/wsgiloop`` under ``dest`` and return the directory to put on PYTHONPATH.

    A full run takes ~10 minutes and the venv's editable install would run whatever the
    checkout holds at each server start; the snapshot makes every wsgiloop row of a run
    measure the same code, even while someone edits the tree.
    """
    root = dest / "src"
    shutil.copytree(SOURCE_DIR, root / "wsgiloop", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def machine_info() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _fmt_rss(row: Row) -> str:
    if not row.peak_rss_kib:
        return "-"
    text = f"{row.peak_rss_kib / 1024:.1f} MiB"
    if len(row.processes) > 1:
        text += f" ({len(row.processes)} procs)"
    return text


def _fmt_errors(row: Row) -> str:
    total = row.errors + int(row.error_detail.get("idle_unserved", 0))
    if not total:
        return "0"
    detail = ", ".join(f"{k} {v}" for k, v in row.error_detail.items())
    return f"{total} ({detail})"


def _ratio(ours: Row | None, row: Row) -> str:
    if row.server == "wsgiloop":
        return "1.00 (self)" if row.ok else "-"
    if ours is None or not ours.ok or not row.ok or not row.rps:
        return "-"
    return f"{ours.rps / row.rps:.2f}x"


def _notes(row: Row, rounds: list[float] | None = None) -> str:
    parts: list[str] = []
    if rounds is not None and len(rounds) > 1:
        parts.append("rounds: " + ", ".join(f"{rps:,.0f}" for rps in rounds))
    if not row.ok:
        parts.append("FAILED: " + row.failure.splitlines()[0] if row.failure else "FAILED")
    if row.idle is not None:
        held = row.idle.get("held", 0)
        parts.append(f"held {held}/{row.idle.get('requested')}")
        per = row.idle.get("kib_per_conn")
        if per is not None:
            parts.append(f"{per:+.1f} KiB RSS/idle conn")
        alive = row.idle.get("alive_after_load")
        if alive is not None and alive != held:
            parts.append(f"{alive} still open after the load")
    return "; ".join(parts)


def median_rows(rows: list[Row]) -> tuple[list[Row], dict[tuple[str, str], list[float]]]:
    """One row per (workload, server), in first-seen order: the round with the median req/s
    (a failed round counts as 0); and every round's req/s, for the notes."""
    rounds: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        rounds.setdefault((row.workload, row.server), []).append(row)
    picked = []
    for group in rounds.values():
        ranked = sorted(group, key=lambda r: r.rps if r.ok else 0.0)
        picked.append(ranked[(len(ranked) - 1) // 2])  # the lower median of an even count
    return picked, {k: [r.rps if r.ok else 0.0 for r in g] for k, g in rounds.items()}


def markdown_table(rows: list[Row]) -> str:
    rows, per_round = median_rows(rows)
    header = (
        "| workload | server | req/s | p50 | p99 | errors | peak RSS | wsgiloop ratio "
        "| other CPU | notes |\n"
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|"
    )
    ours = {r.workload: r for r in rows if r.server == "wsgiloop"}
    lines = [header]
    for row in rows:
        rps = f"{row.rps:,.0f}" if row.ok else "-"
        lines.append(
            f"| {row.workload} | {row.server} | {rps} | {_fmt_ms(row.p50_ms)} | "
            f"{_fmt_ms(row.p99_ms)} | {_fmt_errors(row)} | {_fmt_rss(row)} | "
            f"{_ratio(ours.get(row.workload), row)} | {_fmt_pct(row.other_cpu_percent)} | "
            f"{_notes(row, per_round[row.workload, row.server])} |"
        )
    return "\n".join(lines)


def command_lines(servers: list[Server], launch: Launch) -> dict[str, str]:
    out = {}
    for srv in servers:
        argv = srv.argv(launch, "APP", "PORT")
        rel = [a.replace(str(REPO_ROOT) + "/", "") for a in argv]
        out[srv.name] = shlex.join(["taskset", "-c", SERVER_CPU, *rel])
    return out


def _server_line(name: str, cmd: str) -> str:
    note = next((s.note for s in SERVERS if s.name == name and s.note), "")
    return f"- {name}: `{cmd}`" + (f"; {note}" if note else "")


def render_markdown(meta: dict[str, Any], rows: list[Row], commands: dict[str, str]) -> str:
    out = [
        f"# wsgiloop benchmark, {meta['started']}",
        "",
        f"- mode: {meta['mode']}; {meta['duration']:g} s per row; {meta['threads']} app threads; "
        f"server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}"
        + ("" if meta["pinned"] else " (NOT pinned)"),
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"Linux {meta['machine']['kernel']}, Python {meta['machine']['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items())),
        f"- wsgiloop code: {meta['wsgiloop_source']}",
        "- wsgiloop ratio = wsgiloop req/s / that server's req/s in the same row of this run "
        "(above 1: wsgiloop is faster)",
        "- other CPU = share of the machine's CPU used by anything but the server and the load "
        "generators while the row ran (a few % of loopback interrupt work on a quiet machine; "
        "more means the row competed with something else)",
        "",
        *(["**Interrupted: only the rows done so far.**", ""] if meta.get("interrupted") else []),
        markdown_table(rows),
        "",
        "## Servers (APP is the app of the row, PORT a free port; env PYTHONPATH=bench/, plus the "
        "wsgiloop snapshot in full runs)",
        "",
    ]
    out += [_server_line(name, cmd) for name, cmd in commands.items()]
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark wsgiloop against gunicorn, waitress, uvicorn, granian and cheroot.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per row (default 10)")
    p.add_argument("--threads", type=int, default=8, help="app threads per server (default 8)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each (row, server) N times, alternating the order; the table shows the "
        "round with the median req/s (default 1)",
    )
    p.add_argument("--servers", help="comma list of servers: " + ",".join(s.name for s in SERVERS))
    p.add_argument("--workloads", help="comma list of rows (idle matches idle-N)")
    p.add_argument("--idle-conns", type=int, default=5000, help="idle row size (default 5000)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: 1 s rows, wsgiloop only from this interpreter, no venv; "
        "exits non-zero on a failed row or any error",
    )
    p.add_argument("--skip-install", action="store_true", help="reuse bench/.venv as it is")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def _select(
    items: list[Any], wanted: list[str] | None, what: str, alias: Callable[[str], str]
) -> list[Any]:
    if wanted is None:
        return items
    names = {alias(item.name): item for item in items}
    unknown = [w for w in wanted if alias(w) not in names]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(names)})")
    return [item for item in items if alias(item.name) in {alias(w) for w in wanted}]


def _idle_alias(name: str) -> str:
    return "idle" if name.startswith("idle") else name


def _wsgiloop_env(python: str) -> dict[str, str]:
    """Extra environment for running wsgiloop from ``python`` (repo's src/ if not installed)."""
    probe = subprocess.run([python, "-c", "import wsgiloop.cli"], capture_output=True, check=False)
    if probe.returncode == 0:
        return {}
    log(f"wsgiloop is not importable from {python}; using {REPO_ROOT / 'src'} on PYTHONPATH")
    return {"PYTHONPATH": str(REPO_ROOT / "src")}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _iter_plan(
    loads: list[Workload], servers: list[Server], rounds: int = 1
) -> Iterator[tuple[Workload, Server]]:
    # Row-major: all servers of one workload back to back, so a row's ratios are measured
    # minutes, not a whole run, apart. With several rounds the order alternates (forward, then
    # backward), so a machine that drifts during a row favours no server.
    for load in loads:
        for r in range(rounds):
            for srv in servers if r % 2 == 0 else servers[::-1]:
                yield load, srv


@dataclass
class Setup:
    """Everything a run needs that depends on the mode: how to launch, environment, versions."""

    launch: Launch
    env: dict[str, str]
    versions: dict[str, str]
    wsgiloop_source: str


_PEER_PACKAGES = ["gunicorn", "waitress", "uvicorn", "httptools", "a2wsgi", "granian", "cheroot"]


def prepare(opts: argparse.Namespace, servers: list[Server], scratch: Path) -> Setup:
    pythonpath = [str(BENCH_DIR)]
    if opts.smoke:
        # The wsgiloop this interpreter imports (CI: the checkout's editable install).
        launch = Launch(Path(sys.executable).parent, Path(sys.executable), opts.threads)
        pythonpath += _wsgiloop_env(sys.executable).get("PYTHONPATH", "").split(os.pathsep)
        packages = ["wsgiloop", "h11", "uvloop"]
        source = f"the wsgiloop that {sys.executable} imports"
    else:
        bindir = ensure_venv(opts.skip_install, any(not s.peer for s in servers))
        launch = Launch(bindir, bindir / "python", opts.threads)
        packages = ["wsgiloop", "h11", "uvloop", *_PEER_PACKAGES]
        source = "-"
        if SOURCE_DIR.is_dir():
            pythonpath.append(str(snapshot_source(scratch)))
            source = f"src/wsgiloop snapshot {source_digest()} taken at the start"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
        "PYTHONUNBUFFERED": "1",
        "BENCH_THREADS": str(opts.threads),
    }
    env.pop("PYTHONSTARTUP", None)
    return Setup(launch, env, package_versions(launch.python, packages), source)


def run_all(
    opts: argparse.Namespace,
    plan: list[tuple[Workload, Server]],
    setup: Setup,
    wrk: str,
    dirs: tuple[Path, Path],
) -> tuple[list[Row], bool]:
    """The rows in order; and whether the run was interrupted (Ctrl-C or SIGTERM)."""
    rows: list[Row] = []
    # SIGTERM unwinds like Ctrl-C, so the running row still stops its server and load.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for load, srv in plan:
            log(f"{load.name:<16} {srv.name:<17} ...")
            row = run_row(srv, load, setup.launch, opts, setup.env, wrk, dirs)
            rows.append(row)
            status = (
                f"{row.rps:,.0f} req/s, {row.errors} errors" if row.ok else "FAILED: " + row.failure
            )
            log(f"{load.name:<16} {srv.name:<17} {status}")
    except KeyboardInterrupt:
        log("interrupted: reporting the rows done so far")
        return rows, True
    return rows, False


def write_report(
    opts: argparse.Namespace,
    stamp: str,
    meta: dict[str, Any],
    rows: list[Row],
    commands: dict[str, str],
) -> None:
    report = render_markdown(meta, rows, commands)
    print(report)
    md_path = opts.output_dir / f"{stamp}.md"
    md_path.write_text(report)
    json_path = opts.output_dir / f"{stamp}.json"
    payload = {"meta": meta, "commands": commands, "rows": [asdict(r) for r in rows]}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {md_path} and {json_path} (server logs in {opts.output_dir / (stamp + '-logs')})")


def smoke_verdict(rows: list[Row]) -> int:
    failed = [r for r in rows if not r.ok]
    errored = [r for r in rows if r.ok and (r.errors or r.error_detail)]
    for r in failed:
        log(f"smoke: {r.workload} not served: {r.failure}")
    for r in errored:
        log(f"smoke: {r.workload} had errors: {r.error_detail}")
    return 1 if failed or errored else 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.smoke:
        opts.duration = 1.0
        if opts.servers and _split(opts.servers) != ["wsgiloop"]:
            raise SystemExit("--smoke runs wsgiloop only")
        opts.servers = "wsgiloop"
    if opts.smoke:
        opts.rounds = 1
    if opts.threads < 1 or opts.duration <= 0 or opts.rounds < 1:
        raise SystemExit("--threads, --duration and --rounds must be positive")
    servers: list[Server] = _select(SERVERS, _split(opts.servers), "server", str)
    loads: list[Workload] = _select(
        workloads(opts.idle_conns), _split(opts.workloads), "workload", _idle_alias
    )

    cpus = os.sched_getaffinity(0)
    if opts.pin and not ({int(SERVER_CPU), int(LOAD_CPU)} <= cpus and shutil.which("taskset")):
        log(f"cannot pin to CPUs {SERVER_CPU} and {LOAD_CPU} (have {sorted(cpus)}); not pinning")
        opts.pin = False
    raise_fd_limit(max((w.idle for w in loads), default=0) + 1024)
    wrk = ensure_wrk()

    started = dt.datetime.now()
    stamp = started.strftime("%Y-%m-%d_%H%M%S") + ("-smoke" if opts.smoke else "")
    logs_dir = opts.output_dir / f"{stamp}-logs"
    logs_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="wsgiloop-bench-") as tmp:
        setup = prepare(opts, servers, Path(tmp))
        meta: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "mode": "smoke" if opts.smoke else "full",
            "duration": opts.duration,
            "threads": opts.threads,
            "pinned": opts.pin,
            "machine": machine_info(),
            "versions": setup.versions,
            "wsgiloop_source": setup.wsgiloop_source,
            "limits": {
                "backlog": BACKLOG,
                "connections": CONNECTION_LIMIT,
                "keepalive": KEEPALIVE,
            },
        }
        rows, interrupted = run_all(
            opts,
            list(_iter_plan(loads, servers, opts.rounds)),
            setup,
            wrk,
            (Path(tmp), logs_dir),
        )
    if interrupted:
        meta["interrupted"] = True
    write_report(opts, stamp, meta, rows, command_lines(servers, setup.launch))

    if interrupted:
        return 130
    if opts.smoke:
        return smoke_verdict(rows)
    return 1 if rows and all(not r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
