"""systemd socket activation and sd_notify (``wsgiloop.systemd``), against real fds and sockets.

Socket activation is tested the way systemd does it: a launcher process puts the listening
sockets at fd 3, 4, ..., sets ``LISTEN_FDS``/``LISTEN_PID`` to its own pid and execs the child
(exec keeps the pid), which then calls ``listen_fds`` and accepts a connection on each socket.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wsgiloop
from wsgiloop.systemd import listen_fds, listen_fds_with_names, notify

SRC = str(Path(wsgiloop.__file__).resolve().parent.parent)

# Moves the fds named in argv[1] to 3, 4, ... (via high numbers, so no source is clobbered),
# sets the socket-activation variables and execs the rest of argv with this interpreter.
LAUNCHER = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)  # inheritable, so it survives the exec
    os.close(fd)
env = dict(os.environ)
env["LISTEN_FDS"] = str(len(fds))
mode = env.pop("TEST_LISTEN_PID", "self")
env["LISTEN_PID"] = str(os.getpid() if mode == "self" else os.getppid())
os.execve(sys.executable, [sys.executable, *sys.argv[2:]], env)
"""

# Calls listen_fds_with_names, reports what it got as one JSON line, checks that a program it
# execs does not inherit the sockets, then accepts one connection per stream socket.
CHILD = r"""
import json, logging, os, socket, subprocess, sys
from wsgiloop.systemd import listen_fds_with_names

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
pairs = listen_fds_with_names(unset_environment=sys.argv[1] == "unset")
fds = [sock.fileno() for _, sock in pairs]
probe = "import os, sys\nfor fd in map(int, sys.argv[1:]):\n    try:\n        os.fstat(fd)\n" \
    "        print(fd)\n    except OSError:\n        pass\n"
leaked = subprocess.run([sys.executable, "-c", probe, *map(str, fds)], close_fds=False,
                        capture_output=True, text=True, check=True).stdout.split()
info = {
    "pid": os.getpid(),
    "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
    "leaked_to_exec": leaked,
    "sockets": [
        {
            "name": name,
            "fd": sock.fileno(),
            "family": sock.family.name,
            "type": sock.type.name,
            "inheritable": os.get_inheritable(sock.fileno()),
            "listening": sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
            "address": sock.getsockname(),
        }
        for name, sock in pairs
    ],
}
print(json.dumps(info), flush=True)
for name, sock in pairs:
    sock.settimeout(20)
    conn, _ = sock.accept()
    with conn:
        conn.sendall(f"{name} {os.getpid()}".encode())
"""


@pytest.fixture
def scripts(tmp_path: Path) -> tuple[Path, Path]:
    launcher = tmp_path / "launcher.py"
    child = tmp_path / "child.py"
    launcher.write_text(LAUNCHER)
    child.write_text(CHILD)
    return launcher, child


def spawn(
    scripts: tuple[Path, Path],
    fds: list[int],
    *,
    unset: bool = True,
    pid_mode: str = "self",
    names: str | None = None,
) -> subprocess.Popen[str]:
    launcher, child = scripts
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TEST_LISTEN_PID"] = pid_mode
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return subprocess.Popen(
        [
            sys.executable,
            str(launcher),
            ",".join(map(str, fds)),
            str(child),
            "unset" if unset else "keep",
        ],
        pass_fds=fds,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=20)
        pytest.fail(f"child reported nothing; stderr:\n{err}")
    result: dict[str, Any] = json.loads(line)
    return result


def finish(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "app.sock"))
    sock.listen(8)
    yield sock
    sock.close()


def greeting(family: socket.AddressFamily, address: Any) -> str:
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(20)
        conn.connect(address)
        chunks = []
        while chunk := conn.recv(1024):
            chunks.append(chunk)
    return b"".join(chunks).decode()


# --- listen_fds with real inherited sockets -------------------------------------------------------


def test_child_receives_listening_sockets_and_accepts(
    scripts: tuple[Path, Path], tcp_listener: socket.socket, unix_listener: socket.socket
) -> None:
    tcp_address = tcp_listener.getsockname()
    unix_address = unix_listener.getsockname()
    proc = spawn(scripts, [tcp_listener.fileno(), unix_listener.fileno()])
    # The child owns the sockets now; our copies must not take its connections.
    tcp_listener.close()
    unix_listener.close()
    info = report(proc)

    sockets = info["sockets"]
    assert [s["fd"] for s in sockets] == [3, 4]
    assert [s["family"] for s in sockets] == ["AF_INET", "AF_UNIX"]
    assert all(s["type"] == "SOCK_STREAM" for s in sockets)
    assert all(s["listening"] for s in sockets)
    assert tuple(sockets[0]["address"]) == tcp_address
    assert sockets[1]["address"] == unix_address
    assert [s["name"] for s in sockets] == ["unknown", "unknown"]
    # close-on-exec: not inheritable, and really not visible to a program the child execs.
    assert not any(s["inheritable"] for s in sockets)
    assert info["leaked_to_exec"] == []
    # unset_environment=True removes the variables.
    assert info["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}

    assert greeting(socket.AF_INET, tcp_address) == f"unknown {info['pid']}"
    assert greeting(socket.AF_UNIX, unix_address) == f"unknown {info['pid']}"
    finish(proc)


def test_fdnames_and_ipv6(scripts: tuple[Path, Path], tcp_listener: socket.socket) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        v6.bind(("::1", 0))
    except OSError as exc:
        v6.close()
        pytest.skip(f"no IPv6 loopback here: {exc}")
    v6.listen(8)
    v6_address = v6.getsockname()[:2]
    tcp_address = tcp_listener.getsockname()
    proc = spawn(scripts, [v6.fileno(), tcp_listener.fileno()], names="web6:web4")
    v6.close()
    tcp_listener.close()
    info = report(proc)
    assert [(s["name"], s["family"]) for s in info["sockets"]] == [
        ("web6", "AF_INET6"),
        ("web4", "AF_INET"),
    ]
    assert greeting(socket.AF_INET6, v6_address) == f"web6 {info['pid']}"
    assert greeting(socket.AF_INET, tcp_address) == f"web4 {info['pid']}"
    finish(proc)


def test_fdnames_count_mismatch_falls_back_to_unknown(
    scripts: tuple[Path, Path], tcp_listener: socket.socket
) -> None:
    address = tcp_listener.getsockname()
    proc = spawn(scripts, [tcp_listener.fileno()], names="a:b")
    tcp_listener.close()
    info = report(proc)
    assert [s["name"] for s in info["sockets"]] == ["unknown"]
    assert greeting(socket.AF_INET, address) == f"unknown {info['pid']}"
    finish(proc)


def test_keep_environment(scripts: tuple[Path, Path], tcp_listener: socket.socket) -> None:
    address = tcp_listener.getsockname()
    proc = spawn(scripts, [tcp_listener.fileno()], unset=False, names="web")
    tcp_listener.close()
    info = report(proc)
    assert info["env"] == {
        "LISTEN_PID": str(info["pid"]),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "web",
    }
    assert greeting(socket.AF_INET, address) == f"web {info['pid']}"
    finish(proc)


def test_other_process_pid_means_no_sockets(
    scripts: tuple[Path, Path], tcp_listener: socket.socket
) -> None:
    # LISTEN_PID names another process (the fds were meant for a parent): ignore them.
    proc = spawn(scripts, [tcp_listener.fileno()], pid_mode="parent")
    info = report(proc)
    assert info["sockets"] == []
    assert info["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    finish(proc)


def test_non_socket_fd_is_skipped(
    scripts: tuple[Path, Path], tcp_listener: socket.socket, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    address = tcp_listener.getsockname()
    try:
        proc = spawn(scripts, [read_end, tcp_listener.fileno()], names="fifo:web")
    finally:
        os.close(read_end)
        os.close(write_end)
    tcp_listener.close()
    info = report(proc)
    assert [(s["name"], s["fd"]) for s in info["sockets"]] == [("web", 4)]
    assert greeting(socket.AF_INET, address) == f"web {info['pid']}"
    err = finish(proc)
    assert "fd 3 (fifo) is not a usable socket" in err


# --- listen_fds without inherited fds (in-process: returns before touching any fd) ----------------


@pytest.fixture
def clean_listen_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_variables_no_sockets(clean_listen_env: pytest.MonkeyPatch) -> None:
    assert listen_fds() == []


@pytest.mark.parametrize(
    ("pid", "fds"),
    [("1", "2"), ("", "1"), ("self", ""), ("self", "0"), ("self", "-1"), ("x", "1"), ("self", "y")],
)
def test_mismatched_or_malformed_variables(
    clean_listen_env: pytest.MonkeyPatch, pid: str, fds: str
) -> None:
    clean_listen_env.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    clean_listen_env.setenv("LISTEN_FDS", fds)
    clean_listen_env.setenv("LISTEN_FDNAMES", "web")
    assert listen_fds_with_names() == []
    # Unset whatever the outcome, so nothing started later acts on them.
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


def test_keep_environment_when_asked(clean_listen_env: pytest.MonkeyPatch) -> None:
    clean_listen_env.setenv("LISTEN_PID", "1")
    clean_listen_env.setenv("LISTEN_FDS", "1")
    assert listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_PID"] == "1"


# --- notify against a real AF_UNIX datagram socket ------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_notify_path_socket(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    assert notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"
    assert notify("STATUS=serving 3 workers\nMAINPID=42") is True
    assert receiver.recv(4096) == b"STATUS=serving 3 workers\nMAINPID=42"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"wsgiloop-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_from_child_process(receiver: socket.socket) -> None:
    # What systemd sees: the variable inherited by a fresh interpreter.
    env = dict(os.environ, NOTIFY_SOCKET=receiver.getsockname())
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    code = "from wsgiloop.systemd import notify; raise SystemExit(0 if notify('READY=1') else 1)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert receiver.recv(4096) == b"READY=1"


def test_notify_unset_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_notify_missing_socket_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.DEBUG, logger="wsgiloop.systemd"):
        assert notify("READY=1") is False
    assert "gone.sock" in caplog.text


def test_notify_unbound_abstract_socket_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@wsgiloop-nobody-{uuid.uuid4().hex}")
    assert notify("READY=1") is False


def test_notify_stream_socket_at_path_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Something that is not a datagram socket sits at the path (EPROTOTYPE): still no exception.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(tmp_path / "stream.sock"))
        stream.listen(1)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "stream.sock"))
        assert notify("READY=1") is False


def test_notify_unsupported_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify("READY=1") is False
