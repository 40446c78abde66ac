"""The report: one measured ``Row`` per (workload, server, round), and how rows become the
markdown table (median round per pair, ratios to wsgiloop) and the JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from layout import REPO_ROOT, SERVER_CPU, log, taskset
from servers import SERVERS, Launch, Server


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
    other_cpu_percent: float | None = None  # see processes.CpuWatch
    exit_code: int | None = None
    argv: list[str] = field(default_factory=list)
    wrk_output: str = ""


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


def command_lines(
    servers: list[Server], launch: Launch, cpus: str | None = SERVER_CPU
) -> dict[str, str]:
    out = {}
    for srv in servers:
        argv = srv.argv(launch, "APP", "PORT")
        rel = [a.replace(str(REPO_ROOT) + "/", "") for a in argv]
        out[srv.name] = shlex.join([*taskset(cpus or SERVER_CPU), *rel])
    return out


def _placement_line(meta: dict[str, Any]) -> str:
    cpus = meta["cpus"]
    if meta["workers"] > 1:
        text = (
            f"{meta['workers']} worker processes per server (single-process servers left out); "
            f"server and load share CPUs {cpus['server']}"
        )
    else:
        text = f"server on CPU {cpus['server']}, load on CPU {cpus['load']}"
    return text if meta["pinned"] else text + " (NOT pinned)"


def _server_line(name: str, cmd: str) -> str:
    note = next((s.note for s in SERVERS if s.name == name and s.note), "")
    return f"- {name}: `{cmd}`" + (f"; {note}" if note else "")


def render_markdown(meta: dict[str, Any], rows: list[Row], commands: dict[str, str]) -> str:
    out = [
        f"# wsgiloop benchmark, {meta['started']}",
        "",
        f"- mode: {meta['mode']}; {meta['duration']:g} s per row; {meta['threads']} app threads; "
        + _placement_line(meta),
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
