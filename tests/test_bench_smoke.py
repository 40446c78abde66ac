"""The benchmark harness must keep working: run bench/run in smoke mode, for real (wrk, real
server processes), against wsgiloop and the ceiling server.

No timing is asserted: the smoke run fails (non-zero exit) only when a row cannot be served or
wrk reports errors; these tests check that every row that should exist produced a result, and
that rows which must not exist (the ceiling on a non-hello app, a single-process server under
``--workers 2``) do not.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT

HELLO_ROWS = ("hello-keepalive", "hello-close", "idle-500")
OTHER_ROWS = ("stream-1MiB", "upload-16MiB", "sleep-50ms", "flask-json", "django-template")


def _smoke(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run"), "--smoke", "--output-dir", str(tmp_path),
         *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [result] = tmp_path.glob("*.json")
    return out.stdout, json.loads(result.read_text())


def test_bench_smoke_run_serves_every_row_and_the_ceiling_its_hello_rows(tmp_path):
    stdout, report = _smoke(tmp_path, "--servers", "wsgiloop,ceiling", "--idle-conns", "500")
    rows = {(row["workload"], row["server"]): row for row in report["rows"]}
    expected = {(name, "wsgiloop") for name in HELLO_ROWS + OTHER_ROWS}
    expected |= {(name, "ceiling") for name in HELLO_ROWS}
    assert set(rows) == expected
    for row in rows.values():
        # ok: the harness's own check request got the right answer; no count is asserted, so a
        # slow machine that completes few requests in the 1 s window does not fail this test.
        assert row["ok"] and row["errors"] == 0, row["failure"]
    assert rows["idle-500", "ceiling"]["idle"]["held"] == 500
    table = stdout.splitlines()
    assert any(line.startswith("| flask-json | wsgiloop |") for line in table)
    assert any(line.startswith("| django-template | wsgiloop |") for line in table)
    # The ceiling's row carries wsgiloop's ratio to it, like a peer's.
    [ceiling_line] = [line for line in table if line.startswith("| hello-keepalive | ceiling |")]
    assert ceiling_line.split("|")[8].strip().endswith("x")


def test_bench_smoke_with_two_workers_runs_a_supervisor_and_leaves_single_process_servers_out(
    tmp_path,
):
    stdout, report = _smoke(
        tmp_path, "--workers", "2", "--servers", "wsgiloop,ceiling", "--workloads",
        "hello-keepalive",
    )  # fmt: skip
    [row] = report["rows"]
    assert (row["workload"], row["server"]) == ("hello-keepalive", "wsgiloop")
    assert row["ok"] and row["errors"] == 0, row["failure"]
    assert "--workers" in row["argv"] and row["argv"][row["argv"].index("--workers") + 1] == "2"
    assert len(row["processes"]) >= 3  # the supervisor and its two workers
    assert report["meta"]["workers"] == 2
    assert "2 worker processes per server" in stdout


def test_every_instruction_count_case_serves_its_requests_in_process():
    # The driver asserts that responses were written (and closed, per connection); a broken
    # case would count the instructions of an error path instead of a request's.
    path = ROOT / "bench" / "instructions.py"
    spec = importlib.util.spec_from_file_location("instructions", path)
    assert spec is not None and spec.loader is not None
    instructions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(instructions)
    for case in instructions.CASES:
        # One tick's worth of requests: the metrics case then runs its ticker too, and checks
        # that its figures counted every request.
        requests = str(instructions.TICK_EVERY)
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "instructions.py"), "--inner", case, requests],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert out.returncode == 0, (case, out.stderr[-2000:])


def test_instructions_per_request_are_counted_under_valgrind():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "instructions.py"), "--cases", "wsgiloop,ceiling",
         "-n", "100"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| wsgi")
            or line.startswith("| ceiling")]  # fmt: skip
    counts = {row[1].strip(): float(row[2].replace(",", "")) for row in rows}
    assert set(counts) == {"wsgiloop", "ceiling"}
    # Any real request costs tens of thousands of instructions; zero or negative would mean
    # the two runs did not differ by the requests (a broken driver).
    assert counts["wsgiloop"] > 10_000 and counts["ceiling"] > 10_000, counts
    assert "x wsgiloop" in out.stdout  # the ceiling's ratio to wsgiloop
