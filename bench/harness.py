"""The benchmark harness behind ``bench/run``: wsgiloop against its peers, one table.

Every server runs the same WSGI apps (``bench/apps.py``) in one process with the same number of
app threads, pinned to CPU 0; the load generator (wrk, and ``idle_conns.py`` for the idle row)
is pinned to CPU 1 (with ``--workers N`` > 1: N processes per server, and server and load share
both CPUs). Each (workload, server) pair gets a fresh server process, so the peak RSS of a row
is that row's own. Results go to stdout as one markdown table and to
``bench/results/<date>.md`` and ``.json``.

This module is the command line and the run itself (the plan, one row from start to stop); the
rest is one concern per module: ``workloads`` (the rows), ``servers`` (who is measured and how
each is started), ``processes`` (a server's process tree and /proc), ``load`` (wrk and the idle
holder), ``report`` (the table and the JSON), ``environment`` (wrk, the peers' venv, versions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from environment import (
    ensure_venv,
    ensure_wrk,
    machine_info,
    package_versions,
    raise_fd_limit,
    snapshot_source,
    source_digest,
    wsgiloop_env,
)
from layout import (
    BENCH_DIR,
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    SOURCE_DIR,
    Placement,
    log,
    placement,
)
from load import IdleHolder, WrkResult, probe, run_wrk, wait_for_ports
from processes import (
    CpuWatch,
    Memory,
    ServerProcess,
    free_port,
    tree_memory,
    tree_rss_kib,
    wait_settled,
)
from report import Row, command_lines, write_report
from servers import BACKLOG, CONNECTION_LIMIT, KEEPALIVE, SERVERS, Launch, Server
from workloads import Workload, workloads


@dataclass
class Setup:
    """Everything a run needs that depends on the mode: how to launch, environment, versions."""

    launch: Launch
    env: dict[str, str]
    versions: dict[str, str]
    wsgiloop_source: str
    cpus: Placement


def run_row(
    server: Server,
    load: Workload,
    setup: Setup,
    duration: float,
    wrk: str,
    dirs: tuple[Path, Path],
) -> Row:
    """One workload against one fresh server; ``dirs`` = (scratch dir, server log dir)."""
    workdir, logs_dir = dirs
    if "Connection: close" in load.headers:
        wait_for_ports(log)
    port = free_port()
    argv = server.argv(setup.launch, load.app, str(port))
    row = Row(load.name, server.name, argv=argv)
    log_path = logs_dir / f"{server.name}--{load.name}.log"
    srv = ServerProcess(argv, setup.env, log_path, setup.cpus.server)
    holder: IdleHolder | None = None
    try:
        if not srv.wait_ready(port):
            row.failure = "server did not answer" if srv.alive() else "server exited at start"
            return row
        if load.idle:
            if setup.launch.workers > 1:
                wait_settled(srv.pid)
            rss_before = tree_rss_kib(srv.pid)
            holder = IdleHolder(port, load.idle, setup.cpus.load)
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
        res = run_wrk(wrk, port, load, duration, workdir, setup.cpus.load)
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
# Command line and the run
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
        "--workers",
        type=int,
        default=1,
        help="worker processes per server (default 1); above 1, servers that run only one "
        "process are left out, and servers and load share both CPUs",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: 1 s rows, wsgiloop only (or --servers among "
        + ",".join(s.name for s in SERVERS if s.in_smoke)
        + ") from this interpreter, no venv; exits non-zero on a failed row or any error",
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _iter_plan(
    loads: list[Workload], servers: list[Server], rounds: int = 1, workers: int = 1
) -> Iterator[tuple[Workload, Server]]:
    # Row-major: all servers of one workload back to back, so a row's ratios are measured
    # minutes, not a whole run, apart. With several rounds the order alternates (forward, then
    # backward), so a machine that drifts during a row favours no server. A server that cannot
    # serve a row's app (the ceiling serves only hello) or run the workers asked for sits out.
    for load in loads:
        able = [srv for srv in servers if srv.serves(load.app, workers)]
        for r in range(rounds):
            for srv in able if r % 2 == 0 else able[::-1]:
                yield load, srv


def _left_out(loads: list[Workload], servers: list[Server], workers: int) -> dict[str, list[str]]:
    """Server -> the selected rows it sits out, for the log."""
    out: dict[str, list[str]] = {}
    for srv in servers:
        skipped = [w.name for w in loads if not srv.serves(w.app, workers)]
        if skipped:
            out[srv.name] = skipped
    return out


def _packages(servers: list[Server], loads: list[Workload]) -> list[str]:
    """The distributions whose versions the report records, each once, in order."""
    names = [p for srv in servers for p in srv.packages] + [p for w in loads for p in w.packages]
    return list(dict.fromkeys(names))


def prepare(opts: argparse.Namespace, servers: list[Server], scratch: Path) -> Setup:
    pythonpath = [str(BENCH_DIR)]
    if opts.smoke:
        # The wsgiloop this interpreter imports (CI: the checkout's editable install).
        launch = Launch(
            Path(sys.executable).parent, Path(sys.executable), opts.threads, opts.workers
        )
        pythonpath += wsgiloop_env(sys.executable).get("PYTHONPATH", "").split(os.pathsep)
        packages = _packages([s for s in SERVERS if s.in_smoke], workloads(0))
        source = f"the wsgiloop that {sys.executable} imports"
    else:
        bindir = ensure_venv(opts.skip_install, any(s.needs_wsgiloop for s in servers))
        launch = Launch(bindir, bindir / "python", opts.threads, opts.workers)
        packages = _packages(SERVERS, workloads(0))
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
    cpus = placement(opts.pin, opts.workers)
    return Setup(launch, env, package_versions(launch.python, packages), source, cpus)


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
            row = run_row(srv, load, setup, opts.duration, wrk, dirs)
            rows.append(row)
            status = (
                f"{row.rps:,.0f} req/s, {row.errors} errors" if row.ok else "FAILED: " + row.failure
            )
            log(f"{load.name:<16} {srv.name:<17} {status}")
    except KeyboardInterrupt:
        log("interrupted: reporting the rows done so far")
        return rows, True
    return rows, False


def smoke_verdict(rows: list[Row]) -> int:
    failed = [r for r in rows if not r.ok]
    errored = [r for r in rows if r.ok and (r.errors or r.error_detail)]
    for r in failed:
        log(f"smoke: {r.workload} ({r.server}) not served: {r.failure}")
    for r in errored:
        log(f"smoke: {r.workload} ({r.server}) had errors: {r.error_detail}")
    return 1 if failed or errored else 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.smoke:
        opts.duration = 1.0
        opts.rounds = 1
        opts.servers = opts.servers or "wsgiloop"
        smoke_able = {s.name for s in SERVERS if s.in_smoke}
        if not set(_split(opts.servers) or []) <= smoke_able:
            raise SystemExit(f"--smoke runs only {', '.join(sorted(smoke_able))}")
    if opts.threads < 1 or opts.duration <= 0 or opts.rounds < 1 or opts.workers < 1:
        raise SystemExit("--threads, --duration, --rounds and --workers must be positive")
    servers: list[Server] = _select(SERVERS, _split(opts.servers), "server", str)
    loads: list[Workload] = _select(
        workloads(opts.idle_conns), _split(opts.workloads), "workload", _idle_alias
    )
    plan = list(_iter_plan(loads, servers, opts.rounds, opts.workers))
    for name, skipped in _left_out(loads, servers, opts.workers).items():
        log(f"{name} sits out {', '.join(skipped)} (it cannot serve the app or the workers)")
    if not plan:
        raise SystemExit("nothing to run: no selected server can serve a selected row")
    servers = [s for s in servers if any(srv is s for _, srv in plan)]

    cpus = os.sched_getaffinity(0)
    if opts.pin and not ({int(SERVER_CPU), int(LOAD_CPU)} <= cpus and shutil.which("taskset")):
        log(f"cannot pin to CPUs {SERVER_CPU} and {LOAD_CPU} (have {sorted(cpus)}); not pinning")
        opts.pin = False
    raise_fd_limit(max((w.idle for w in loads), default=0) + 1024)
    wrk = ensure_wrk()

    started = dt.datetime.now()
    stamp = started.strftime("%Y-%m-%d_%H%M%S") + ("-smoke" if opts.smoke else "")
    if opts.workers > 1:
        stamp += f"-workers{opts.workers}"
    logs_dir = opts.output_dir / f"{stamp}-logs"
    logs_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="wsgiloop-bench-") as tmp:
        setup = prepare(opts, servers, Path(tmp))
        meta: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "mode": "smoke" if opts.smoke else "full",
            "duration": opts.duration,
            "threads": opts.threads,
            "workers": opts.workers,
            "pinned": opts.pin,
            "cpus": {"server": setup.cpus.server, "load": setup.cpus.load},
            "machine": machine_info(),
            "versions": setup.versions,
            "wsgiloop_source": setup.wsgiloop_source,
            "limits": {
                "backlog": BACKLOG,
                "connections": CONNECTION_LIMIT,
                "keepalive": KEEPALIVE,
            },
        }
        rows, interrupted = run_all(opts, plan, setup, wrk, (Path(tmp), logs_dir))
    if interrupted:
        meta["interrupted"] = True
    commands = command_lines(servers, setup.launch, setup.cpus.server)
    write_report(opts, stamp, meta, rows, commands)

    if interrupted:
        return 130
    if opts.smoke:
        return smoke_verdict(rows)
    return 1 if rows and all(not r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
