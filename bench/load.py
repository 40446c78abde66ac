"""The load generators: wrk (run and its output parsed), the idle-connection holder, and the
one check request that tells a slow server from one that does not serve a row at all.

wrk and the holder run pinned to the load CPU(s) and talk to the loopback address only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layout import BENCH_DIR, HOST, taskset
from workloads import Workload

WRK_TIMEOUT = "10s"

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


#: Loopback sockets in TIME_WAIT above which a row that opens a connection per request waits
#: first. Each such row leaves ~30k of them (the server closes first) for 60 s; two or three in
#: a row use up the ephemeral ports, and the next server's row then measures connect() stalls
#: (seen: 7,986 -> 1,024 -> 13 req/s across rounds), not the server.
TIME_WAIT_LIMIT = 4000
TIME_WAIT_MAX_WAIT = 75.0


def time_wait_sockets() -> int:
    """Sockets in TIME_WAIT (state 06 in /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                count += sum(1 for line in f if line.split()[3:4] == ["06"])
        except OSError:
            continue
    return count


def wait_for_ports(log: Callable[[str], None]) -> None:
    """Before a connection-per-request row: let earlier rows' TIME_WAIT sockets expire."""
    deadline = time.monotonic() + TIME_WAIT_MAX_WAIT
    waiting = time_wait_sockets()
    if waiting <= TIME_WAIT_LIMIT:
        return
    log(f"waiting for {waiting} TIME_WAIT sockets to expire (ephemeral ports)")
    while waiting > TIME_WAIT_LIMIT and time.monotonic() < deadline:
        time.sleep(1.0)
        waiting = time_wait_sockets()


def run_wrk(
    wrk: str, port: int, load: Workload, duration: float, script_dir: Path, cpus: str | None
) -> WrkResult:
    cmd = [
        *taskset(cpus),
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


class IdleHolder:
    """``idle_conns.py`` run as a child pinned to the load CPU(s); holds its connections open."""

    def __init__(self, port: int, count: int, cpus: str | None) -> None:
        cmd = [
            *taskset(cpus),
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


def probe(port: int, load: Workload) -> str | None:
    """One request of ``load``'s kind, outside wrk, with a generous timeout; None if it was
    answered correctly, else what went wrong. Used when wrk completed no request in its window,
    to tell a slow server from one that does not serve the row."""
    body = b"a" * load.probe_post_bytes if load.probe_post_bytes else None
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
    if load.probe_expect is not None and data != load.probe_expect:
        return f"probe request got a wrong body ({len(data)} bytes)"
    return None
