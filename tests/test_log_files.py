"""Logs where gunicorn users send them: --access-logfile/--error-logfile (``-`` included),
--capture-output, and SIGUSR1 reopening files that logrotate moved away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_supervisor import get, wait_for

_LISTENING = "Listening at: "


def start(*args: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen([sys.executable, "-m", "wsgiloop", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert wait_for(lambda: (log.exists() and _LISTENING in log.read_text())
                    or proc.poll() is not None), "no listening line"
    line = next(ln for ln in log.read_text().splitlines() if _LISTENING in ln)
    return proc, int(line.split(_LISTENING)[1].split()[0].rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.decode(), err.decode()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_the_log_files_after_logrotate_moved_them(tmp_path, workers):
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    proc, port = start("apps:hello", "--bind", "127.0.0.1:0", "--workers", workers,
                       "--access-logfile", str(access), "--error-logfile", str(error), log=error)
    if workers == "2":
        assert wait_for(lambda: "All 2 workers are serving" in error.read_text())
    assert get(port, "/before")[0] == 200
    assert wait_for(lambda: "/before" in access.read_text())
    # What logrotate does: move the files, then signal (postrotate).
    access.rename(tmp_path / "access.log.1")
    error.rename(tmp_path / "error.log.1")
    os.kill(proc.pid, signal.SIGUSR1)
    assert wait_for(lambda: access.exists() and error.exists()), "files not reopened"
    # Every worker has reopened too: each request, whichever worker serves it, lands in the new
    # file and none in the old one.
    for i in range(10):
        assert get(port, f"/after{i}")[0] == 200
    assert wait_for(lambda: access.read_text().count("/after") == 10), access.read_text()
    assert "/after" not in (tmp_path / "access.log.1").read_text()
    stop(proc)
    assert "Shutdown complete" in error.read_text()


def test_a_dash_sends_access_lines_to_stdout_and_errors_to_stderr(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsgiloop", "apps:hello", "--bind", "127.0.0.1:0",
         "--access-logfile", "-", "--error-logfile", "-"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    assert proc.stderr is not None
    line = ""
    while _LISTENING not in line:
        line = proc.stderr.readline().decode()
        assert line, "server did not start"
    port = int(line.split(_LISTENING)[1].split()[0].rsplit(":", 1)[1])
    assert get(port, "/dash")[0] == 200
    out, err = stop(proc)
    assert '"GET /dash HTTP/1.1" 200' in out
    assert "/dash" not in err and "Shutdown complete" in err


def test_capture_output_sends_the_apps_prints_to_the_error_log(tmp_path):
    error = tmp_path / "error.log"
    proc, port = start("apps:shout", "--bind", "127.0.0.1:0", "--capture-output",
                       "--error-logfile", str(error), log=error)
    assert get(port)[0] == 200
    out, err = stop(proc)
    text = error.read_text()
    assert "app says hello on stdout" in text and "app says hello on stderr" in text
    assert "app says hello" not in out + err


def test_an_unwritable_log_file_is_one_line_and_exit_status_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "apps:hello", "--error-logfile",
         str(tmp_path / "missing" / "error.log")],
        capture_output=True, text=True, timeout=30, cwd=ROOT / "tests",
    )
    assert out.returncode == 2
    assert out.stderr.strip().startswith("wsgiloop: error: --error-log-file ")
    assert "No such file or directory" in out.stderr and "Traceback" not in out.stderr
