"""A server as a process tree, and what /proc says about it: peak memory, CPU time, liveness.

``ServerProcess`` starts one server pinned to its CPU(s) and stops it with SIGTERM, then
SIGKILL to whatever of its tree is left. The rest reads /proc: a server may be a supervisor
plus workers, so memory and CPU are summed over the whole tree, and ``CpuWatch`` tells how much
of the machine something else used while a row ran.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layout import BENCH_DIR, HOST, taskset

READY_TIMEOUT = 120.0  # a bound for a loaded machine, not an expectation
STOP_TIMEOUT = 10.0


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


SETTLE_TIMEOUT = 30.0  # a bound for a loaded machine, not an expectation


def wait_settled(root: int, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until the tree's process count and RSS stop moving (within 1% over half a second).

    A server with several workers answers its first request as soon as one worker is up; the
    others may still be starting (importing the app), which would count as memory of the idle
    connections opened next.
    """
    deadline = time.monotonic() + timeout
    last = (len(process_tree(root)), tree_rss_kib(root))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = (len(process_tree(root)), tree_rss_kib(root))
        if now[0] == last[0] and abs(now[1] - last[1]) <= last[1] / 100:
            return
        last = now


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
    """One server, started pinned to ``cpus`` (None: not pinned), stopped with SIGTERM then
    SIGKILL."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, cpus: str | None
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        cmd = [*taskset(cpus), *argv]
        self.log = log_path.open("wb")
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
