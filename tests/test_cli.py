"""The ``wsgiloop`` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, read_response

from wsgiloop import __version__
from wsgiloop.cli import AppImportError, build_parser, config_from_args, load_app
from wsgiloop.sockets import parse_bind


def get(port: int, path: str = "/", host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_version_flag_prints_version():
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"wsgiloop {__version__}"


def test_demo_app_serves_and_sigterm_exits_zero(spawn):
    server = spawn("wsgiloop.demo:app", "--bind", "127.0.0.1:0")
    status, body = get(server.port, "/some/path?x=1")
    assert status == 200
    assert b"PATH_INFO: /some/path" in body and b"QUERY_STRING: x=1" in body
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0


def test_access_log_line_is_gunicorn_combined_format(spawn):
    server = spawn("apps:hello", "--bind", "127.0.0.1:0")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/a?b=c", headers={"User-Agent": "probe/1", "Referer": "http://r/"})
    conn.getresponse().read()
    conn.close()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    lines = [line for line in server.log if '"GET /a?b=c HTTP/1.1"' in line]
    assert len(lines) == 1
    assert lines[0].startswith("127.0.0.1 - - [")
    assert lines[0].rstrip().endswith('"GET /a?b=c HTTP/1.1" 200 13 "http://r/" "probe/1"')


def test_no_access_log_flag_silences_access_lines(spawn):
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--no-access-log")
    assert get(server.port)[0] == 200
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    assert not [line for line in server.log if '"GET / HTTP/1.1"' in line]


def test_factory_call_with_literal_arguments(spawn):
    server = spawn("apps:factory('made by factory')", "--bind", "127.0.0.1:0")
    assert get(server.port) == (200, b"made by factory")


def test_several_binds_ipv6_and_unix_socket(spawn, tmp_path):
    path = tmp_path / "wl.sock"
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback; the test needs [::1]")
    server = spawn(
        "apps:hello", "--bind", "127.0.0.1:0", "--bind", "[::1]:0", "--bind", f"unix:{path}"
    )
    assert server.urls[0].startswith("http://127.0.0.1:")
    assert server.urls[1].startswith("http://[::1]:")
    assert server.urls[2] == f"unix:{path}"
    v6_port = int(server.urls[1].rsplit(":", 1)[1])
    assert get(v6_port, host="::1") == (200, b"Hello, world!")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0::2] == (200, b"Hello, world!")
    sock.close()


def test_unknown_module_is_a_clear_error_not_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "no_such_module_xyz:app"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3  # exitcodes.APP_LOAD, as with --workers N
    assert "could not import module 'no_such_module_xyz'" in out.stderr
    assert "Traceback" not in out.stderr


def test_invalid_option_value_is_rejected_by_name():
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "apps:hello", "--threads", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT / "tests",
    )
    assert out.returncode == 2
    assert "--threads must be at least 1" in out.stderr


def test_load_app_forms():
    import apps

    assert load_app("apps:hello") is apps.hello
    assert callable(load_app("apps:factory()"))
    assert callable(load_app("apps:factory(greeting='x')"))
    with pytest.raises(AppImportError, match="no attribute"):
        load_app("apps:missing")
    with pytest.raises(AppImportError, match="literals"):
        load_app("apps:factory(open('x'))")
    with pytest.raises(AppImportError, match="not callable"):
        load_app("apps:StartResponse.__doc__")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", (socket.AF_INET, "127.0.0.1", 8000)),
        (":9000", (socket.AF_INET, "0.0.0.0", 9000)),
        ("localhost", (socket.AF_INET, "localhost", 8000)),
        ("[::1]:8001", (socket.AF_INET6, "::1", 8001)),
        ("[::]", (socket.AF_INET6, "::", 8000)),
        ("unix:/run/x.sock", (socket.AF_UNIX, "/run/x.sock", 0)),
    ],
)
def test_parse_bind_accepts_gunicorn_forms(value, expected):
    address = parse_bind(value)
    assert (address.family, address.host, address.port) == expected


@pytest.mark.parametrize("value", ["::1:80", "1.2.3.4:http", "[::1", "unix:", "h:70000"])
def test_parse_bind_rejects_ambiguous_or_bad_values(value):
    with pytest.raises(ValueError):
        parse_bind(value)


def test_cli_options_map_to_config_fields():
    args = build_parser().parse_args(
        [
            "m:app",
            "-b",
            "unix:/tmp/s",
            "--threads",
            "3",
            "--keep-alive",
            "2.5",
            "--forwarded-allow-ips",
            "10.0.0.0/8, 127.0.0.1",
            "--no-access-log",
            "--loop",
            "asyncio",
            "--root-path",
            "/api",
        ]
    )
    config = config_from_args(args)
    assert config.bind == ["unix:/tmp/s"]
    assert config.threads == 3
    assert config.keepalive_timeout == 2.5
    assert config.forwarded_allow_ips == ["10.0.0.0/8", "127.0.0.1"]
    assert config.access_log is False
    assert config.loop == "asyncio"
    assert config.root_path == "/api"


def test_fd_option_serves_on_an_inherited_listening_socket(spawn):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    server = spawn("apps:hello", "--fd", str(fd), pass_fds=[fd])
    listener.close()  # only the server holds it now
    assert server.urls == [f"http://127.0.0.1:{port}"]
    assert get(port) == (200, b"Hello, world!")


def test_umask_sets_the_unix_socket_mode(spawn, tmp_path):
    path = tmp_path / "masked.sock"
    spawn("apps:hello", "--bind", f"unix:{path}", "--umask", "117")
    assert oct(path.stat().st_mode & 0o777) == oct(0o660)
