"""The settings gunicorn users set on the process: who it runs as, where, with what
environment, the pid file, and the platform variables (PORT, WEB_CONCURRENCY, *_CMD_ARGS).
Real processes; CI runs as root, so --user/--group really switch."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT
from test_gunicorn_compat import free_port
from test_supervisor import children, get, wait_for, wait_serving

from wsgiloop.cli import build_parser, config_from_args


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "wsgiloop", *args], capture_output=True,
                          text=True, timeout=60, env=full, cwd=cwd)


def require_root() -> None:
    # CI runs as root; elsewhere this fails loudly rather than skip.
    assert os.geteuid() == 0, "the --user/--group tests need root (CI runs as root)"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_user_and_group_switch_the_workers_after_binding(spawn, workers):
    require_root()
    nobody = pwd.getpwnam("nobody")
    server = spawn("apps:identity", "--bind", "127.0.0.1:0", "--user", "nobody",
                   "--group", "nogroup", "--workers", workers)
    if workers == "2":
        wait_serving(server, 2)
    status, body = get(server.port)
    assert status == 200
    assert f"uid={nobody.pw_uid} gid={nobody.pw_gid} groups=[{nobody.pw_gid}]" in body.decode()
    if workers == "2":
        # The supervisor keeps root (it must be able to start workers on the bound socket).
        assert os.stat(f"/proc/{server.proc.pid}").st_uid == 0
        for pid in children(server.proc.pid):
            assert os.stat(f"/proc/{pid}").st_uid == nobody.pw_uid


def test_a_unix_socket_gets_the_group_so_a_proxy_in_it_can_connect(spawn):
    """The nginx setup without systemd: --group www-data --umask 007 lets www-data (nginx's
    workers) connect, and nobody else."""
    require_root()
    # pytest's tmp_path sits in a 0700 directory of root's: others could not reach any socket.
    shared = Path(tempfile.mkdtemp(prefix="wsgiloop-sock-"))
    shared.chmod(0o755)
    path = shared / "app.sock"
    spawn("apps:hello", "--bind", f"unix:{path}", "--user", "nobody", "--group", "www-data",
          "--umask", "007")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, 33)
    assert oct(st.st_mode & 0o777) == oct(0o770)

    def connect_as(user: str) -> str:
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5)\n"
                "try:\n s.connect(sys.argv[1]); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n');"
                " print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
                "except PermissionError: print('denied')")
        entry = pwd.getpwnam(user)
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=20,
            user=entry.pw_uid, group=entry.pw_gid, extra_groups=[entry.pw_gid],
        )
        return out.stdout.strip() or out.stderr

    try:
        assert connect_as("www-data") == "HTTP/1.1 200 OK"
        assert connect_as("games") == "denied"  # not in the group: the socket's mode stops it
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_an_unknown_user_is_one_line_and_exit_status_2():
    out = run_cli("apps:hello", "--user", "no-such-user-xyz")
    assert out.returncode == 2
    assert out.stderr.strip() == "wsgiloop: error: --user no-such-user-xyz: no such user"


def test_pid_file_is_written_and_removed_at_exit(spawn, tmp_path):
    pidfile = tmp_path / "app.pid"
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--pid", str(pidfile), "-w", "2")
    assert pidfile.read_text().strip() == str(server.proc.pid)
    server.proc.terminate()
    assert server.proc.wait(30) == 0
    assert not pidfile.exists()


def test_env_pythonpath_and_chdir_reach_the_app(spawn, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mymod.py").write_text(
        "from apps import identity as application\n"
    )
    server = spawn("mymod", "--bind", "127.0.0.1:0", "-e", "SPAM=eggs=1,2", "--pythonpath",
                   str(tmp_path / "lib"), "--chdir", str(tmp_path))
    body = get(server.port)[1].decode()
    assert "SPAM=eggs=1,2" in body
    assert f"cwd={tmp_path}" in body


def test_chdir_works_from_the_toml_file_and_the_environment(spawn, tmp_path):
    conf = tmp_path / "wsgiloop.toml"
    conf.write_text(f'chdir = "{tmp_path}"\n')
    server = spawn("apps:identity", "--bind", "127.0.0.1:0", "-c", str(conf))
    assert f"cwd={tmp_path}" in get(server.port)[1].decode()
    server = spawn("apps:identity", "--bind", "127.0.0.1:0",
                   env={"WSGILOOP_CHDIR": str(tmp_path)})
    assert f"cwd={tmp_path}" in get(server.port)[1].decode()


def test_an_unknown_wsgiloop_variable_is_an_error_naming_it():
    out = run_cli("apps:hello", env={"WSGILOOP_THREAD": "4"})
    assert out.returncode == 2
    assert "WSGILOOP_THREAD: unknown setting 'thread'" in out.stderr


def test_port_binds_all_interfaces_when_no_bind_is_given(spawn):
    port = free_port()
    server = spawn("apps:identity", env={"PORT": str(port)})
    assert server.urls == [f"http://0.0.0.0:{port}"]
    assert get(port)[0] == 200


def test_web_concurrency_sets_the_workers_and_the_command_line_wins(spawn):
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", env={"WEB_CONCURRENCY": "3"})
    wait_serving(server, 3)
    config = config_from_args(build_parser().parse_args(["m:a", "-w", "2"]),
                              {"WEB_CONCURRENCY": "3"})
    assert config.workers == 2


def test_precedence_of_every_source():
    """defaults < PORT/WEB_CONCURRENCY < file < WSGILOOP_* < WSGILOOP_CMD_ARGS < CLI."""
    environ = {
        "WEB_CONCURRENCY": "2",
        "WSGILOOP_THREADS": "5",
        "WSGILOOP_BACKLOG": "7",
        "WSGILOOP_CMD_ARGS": "--threads 6 --timeout 9",
    }
    config = config_from_args(build_parser().parse_args(["m:a", "--timeout", "11"]), environ)
    assert config.workers == 2  # the platform's, nothing above it
    assert config.backlog == 7  # WSGILOOP_*
    assert config.threads == 6  # WSGILOOP_CMD_ARGS over WSGILOOP_*
    assert config.timeout == 11  # the command line over all
    # GUNICORN_CMD_ARGS stands in when WSGILOOP_CMD_ARGS is not set.
    config = config_from_args(build_parser().parse_args(["m:a"]),
                              {"GUNICORN_CMD_ARGS": "--bind=127.0.0.1:9 --workers=3"})
    assert (config.bind, config.workers) == (["127.0.0.1:9"], 3)


def test_a_gunicorn_conf_py_in_the_current_directory_is_read(spawn, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\nbind = '127.0.0.1:0'\n")
    server = spawn("apps:hello", cwd=tmp_path)
    wait_serving(server, 2)
    assert any("Using ./gunicorn.conf.py" in line for line in server.log)


def test_reload_with_preload_is_refused_with_a_reason():
    out = run_cli("apps:hello", "--reload", "--preload")
    assert out.returncode == 2
    assert "--reload and --preload cannot be used together" in out.stderr


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        (["--worker-tmp-dir", "/dev/shm"], "unused: heartbeats are in shared memory"),
        (["-k", "sync"], "wsgiloop's own model stands in for it"),
        (["--name", "myapp"], "--name is ignored: process titles"),
        (["-R"], ""),
    ],
)
def test_gunicorn_flags_wsgiloop_does_without_say_so_in_one_line(spawn, flag, words):
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", *flag)
    assert get(server.port)[0] == 200
    if flag[0] == "--worker-tmp-dir":
        out = run_cli("--help")
        assert words in " ".join(out.stdout.split())
    elif words:
        assert wait_for(lambda: any(words in line for line in server.log)), server.log
