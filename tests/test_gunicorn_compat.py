"""A gunicorn user switches by changing one word: their command lines and config files run.

The table (``gunicorn_deployments``) comes from public deployments; each line is started as a
real process with ``gunicorn`` replaced by ``wsgiloop`` and must either serve (200, then a clean
exit on SIGTERM) or be refused with its documented one-line reason (exit status 2).
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Process, spawn_server
from gunicorn_deployments import DEPLOYMENTS, Deployment
from test_supervisor import wait_for

APP = "apps:hello"
BIND = "127.0.0.1:0"
WSGI_MODULE = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "13")])
    return [b"Hello, world!"]

app = application
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def project(tmp: Path) -> None:
    """The modules the table's app specs name (main:app, wsgi, proj.wsgi) and an .ini file."""
    for path in ("main.py", "wsgi.py", "proj/wsgi.py", "site/proj/wsgi.py"):
        target = tmp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(WSGI_MODULE)
    for package in ("proj", "site/proj"):
        (tmp / package / "__init__.py").write_text("")
    (tmp / "production.ini").write_text("[app:main]\nuse = call:apps:paste_app\n")


def command(entry: Deployment, tmp: Path, port: int) -> list[str]:
    if entry.config:
        conf = tmp / "gunicorn.conf.py"
        conf.write_text(entry.config.replace("{bind}", BIND).replace("{tmp}", str(tmp)))
        return ["-c", str(conf), APP]
    text = entry.argv.replace("{app}", APP).replace("{bind}", BIND).replace("{tmp}", str(tmp))
    return shlex.split(text.replace("$PORT", str(port)))


def error_log_file(args: list[str], config: str) -> str | None:
    """Where the entry sends the error log, when that is a file (the listening lines go there)."""
    for i, arg in enumerate(args[:-1]):
        if arg in ("--error-logfile", "--log-file") and args[i + 1] != "-":
            return args[i + 1]
    match = re.search(r"^errorlog = ['\"]([^'\"-][^'\"]*)['\"]", config, re.M)
    return match.group(1) if match else None


def start_logging_to(path: str, args: list[str], env: dict[str, str], cwd: Path) -> Process:
    """Start a server whose error log goes to ``path``; wait for its listening line there."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env}
    proc = subprocess.Popen([sys.executable, "-m", "wsgiloop", *args], env=full_env, cwd=cwd,
                            stderr=subprocess.PIPE, start_new_session=True)
    log = Path(path)

    def listening() -> list[str]:
        return re.findall(r"Listening at: (\S+)", log.read_text() if log.exists() else "")

    if not wait_for(lambda: bool(listening()) or proc.poll() is not None, timeout=20):
        proc.kill()
    assert listening(), f"no listening line in {path}"
    return Process(proc, listening(), [])


def get(url: str) -> tuple[int, bytes]:
    if url.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(url[5:])
        conn = http.client.HTTPConnection("localhost", timeout=10)
        conn.sock = sock
    else:
        host, port = url.split("//")[1].rsplit(":", 1)
        conn = http.client.HTTPConnection("127.0.0.1" if host == "0.0.0.0" else host, int(port),
                                          timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_table_holds_at_least_thirty_real_deployments() -> None:
    assert len(DEPLOYMENTS) >= 30
    assert all(entry.source for entry in DEPLOYMENTS)
    assert len({entry.argv + entry.config for entry in DEPLOYMENTS}) == len(DEPLOYMENTS)


@pytest.mark.parametrize("entry", DEPLOYMENTS, ids=lambda e: e.source[:60])
def test_a_gunicorn_deployment_runs_with_wsgiloop(entry: Deployment, tmp_path: Path) -> None:
    project(tmp_path)
    port = free_port()
    env = {"PORT": str(port)} if entry.port_env else {}
    args = command(entry, tmp_path, port)
    if entry.expect != "serves":
        full_env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env}
        out = subprocess.run([sys.executable, "-m", "wsgiloop", *args], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, env=full_env)
        assert out.returncode == 2, out.stderr
        assert entry.expect in out.stderr
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2, out.stderr  # usage line and reason
        return
    log_file = error_log_file(args, entry.config.replace("{tmp}", str(tmp_path)))
    if log_file is None:
        server = spawn_server(*args, env=env, cwd=tmp_path)
    else:
        server = start_logging_to(log_file, args, env, tmp_path)
    try:
        assert get(server.urls[0]) == (200, b"Hello, world!")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
    log = Path(log_file).read_text() if log_file else "".join(server.log)
    assert "Traceback" not in log, log


def test_gunicorn_settings_left_at_their_off_values_draw_no_note_and_no_refusal() -> None:
    from wsgiloop.compat import Refused, judge

    for name in ("proc_name", "spew", "daemon", "logger_class", "syslog", "ssl_version"):
        assert judge(name, None) is None and judge(name, False) is None
    assert (judge("spew", True) or "").startswith("--spew is ignored: wsgiloop has no line tracer")
    with pytest.raises(Refused, match="--logger-class is not supported"):
        judge("logger_class", "my.Logger")
