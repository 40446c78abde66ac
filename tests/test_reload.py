"""--reload for development: an edit to the app's file restarts the workers (watchfiles, or
the polling fallback), and an edit that breaks the code leaves the last good workers serving."""

from __future__ import annotations

import pytest
from test_supervisor import get, wait_for

APP = '''
def app(environ, start_response):
    body = {version!r}
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


def write(path, version: bytes) -> None:
    path.write_text(APP.format(version=version))


def serves(port: int, body: bytes) -> bool:
    try:
        return get(port, timeout=5) == (200, body)
    except OSError:
        return False


@pytest.mark.parametrize("engine", ["auto", "poll"])
def test_an_edit_to_the_app_restarts_the_workers(spawn, tmp_path, engine):
    module = tmp_path / "devapp.py"
    write(module, b"v1")
    server = spawn("devapp:app", "--bind", "127.0.0.1:0", "--reload", "--reload-engine",
                   engine, cwd=tmp_path)
    assert wait_for(lambda: serves(server.port, b"v1"))
    expected = "(watchfiles)" if engine == "auto" else "(polling every"
    assert wait_for(lambda: any(expected in line for line in server.log)), server.log
    # The watcher logs before its inotify watches are in place: an edit in that instant goes
    # unseen, so edit again until one is seen, as a developer saving twice would.
    assert wait_for(lambda: write(module, b"v2") or serves(server.port, b"v2"), timeout=30,
                    interval=0.5), "".join(server.log)
    assert any("devapp.py changed: reloading" in line for line in server.log)


def test_an_extra_file_restarts_the_workers_too(spawn, tmp_path):
    write(tmp_path / "devapp.py", b"v1")
    template = tmp_path / "page.html"
    template.write_text("<p>one</p>")
    server = spawn("devapp:app", "--bind", "127.0.0.1:0", "--reload",
                   "--reload-extra-file", str(template), cwd=tmp_path)
    assert wait_for(lambda: serves(server.port, b"v1"))
    assert wait_for(lambda: any("Reloading on changes" in line for line in server.log))
    assert wait_for(
        lambda: template.write_text("<p>two</p>") < 0
        or any("page.html changed: reloading" in line for line in server.log),
        timeout=30, interval=0.5,
    ), "".join(server.log)


def test_a_syntax_error_in_the_edit_keeps_the_last_good_workers_serving(spawn, tmp_path):
    module = tmp_path / "devapp.py"
    write(module, b"v1")
    server = spawn("devapp:app", "--bind", "127.0.0.1:0", "--reload", "--reload-engine", "poll",
                   cwd=tmp_path)
    assert wait_for(lambda: serves(server.port, b"v1"))
    assert wait_for(lambda: any("(polling every" in line for line in server.log))
    broken = APP.format(version=b"v2").replace("def app(", "def app(:")
    assert wait_for(lambda: module.write_text(broken) < 0
                    or any("devapp.py changed" in line for line in server.log),
                    timeout=30, interval=0.5)
    # The new worker cannot load it: logged, and the old one goes on answering v1.
    assert wait_for(lambda: any("SyntaxError" in line for line in server.log), timeout=30), \
        "".join(server.log)
    for _ in range(5):
        assert serves(server.port, b"v1")
    assert server.proc.poll() is None
    # Fixed: the next change loads.
    assert wait_for(lambda: write(module, b"v3") or serves(server.port, b"v3"), timeout=30,
                    interval=0.5), "".join(server.log)
