"""Configuration from file, environment and command line; TLS; logging options."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys

import pytest
from conftest import ROOT

from wsgiloop.cli import build_parser, config_from_args
from wsgiloop.config import Config, ConfigError, from_environ, from_toml


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    return config_from_args(build_parser().parse_args(argv), environ or {})


def test_precedence_is_cli_over_environment_over_file(tmp_path):
    conf = tmp_path / "wsgiloop.toml"
    conf.write_text('app = "apps:hello"\nthreads = 3\nbind = ["127.0.0.1:1"]\nbacklog = 7\n')
    env = {"WSGILOOP_THREADS": "5", "WSGILOOP_BACKLOG": "9"}
    config = parse(["--config", str(conf), "--threads", "11"], env)
    assert config.app == "apps:hello"  # file only
    assert config.bind == ["127.0.0.1:1"]  # file only
    assert config.backlog == 9  # environment over file
    assert config.threads == 11  # command line over both


def test_config_file_accepts_a_wsgiloop_table_and_dashed_keys(tmp_path):
    conf = tmp_path / "pyproject-like.toml"
    conf.write_text('[wsgiloop]\nmax-body-size = 1024\naccess-log = false\n')
    config = parse(["--config", str(conf), "m:app"])
    assert config.max_body_size == 1024
    assert config.access_log is False


def test_unknown_setting_in_file_is_an_error_naming_it(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("thread = 4\n")
    with pytest.raises(ConfigError, match="unknown setting 'thread'"):
        from_toml(str(conf))


def test_environment_values_are_typed():
    values = from_environ(
        {
            "WSGILOOP_BIND": "127.0.0.1:1, unix:/tmp/x",
            "WSGILOOP_ACCESS_LOG": "off",
            "WSGILOOP_KEEPALIVE_TIMEOUT": "2.5",
            "WSGILOOP_FD": "3,4",
            "WSGILOOP_UMASK": "007",
        }
    )
    assert values == {
        "bind": ["127.0.0.1:1", "unix:/tmp/x"],
        "access_log": False,
        "keepalive_timeout": 2.5,
        "fd": [3, 4],
        "umask": 0o7,
    }
    with pytest.raises(ConfigError, match="threads"):
        from_environ({"WSGILOOP_THREADS": "many"})


def test_check_config_prints_effective_settings_and_exits(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("threads = 6\n")
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "apps:hello", "--config", str(conf),
         "--check-config", "--bind", "unix:/tmp/never-bound.sock"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WSGILOOP_BACKLOG": "77"},
    )
    assert out.returncode == 0, out.stderr
    assert "threads = 6" in out.stdout
    assert "backlog = 77" in out.stdout
    assert 'bind = ["unix:/tmp/never-bound.sock"]' in out.stdout
    assert not os.path.exists("/tmp/never-bound.sock")


def test_check_config_fails_when_the_app_does_not_load():
    out = subprocess.run(
        [sys.executable, "-m", "wsgiloop", "apps:nope", "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )
    assert out.returncode == 3  # exitcodes.APP_LOAD, as when serving
    assert "does not load" in out.stderr


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_tls_serves_https_and_sets_url_scheme(spawn, certificate, loop):
    cert, key = certificate
    server = spawn("wsgiloop.demo:app", "--bind", "127.0.0.1:0", "--certfile", str(cert),
                   "--keyfile", str(key), "--loop", loop)
    assert server.urls[0].startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    for _ in range(2):  # keep-alive over TLS
        conn.request("GET", "/tls")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert b"wsgi.url_scheme: https" in body
    conn.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0


def test_access_log_json_emits_one_object_per_request(spawn):
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--access-log-json")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/j?k=v", headers={"User-Agent": "ua/1"})
    conn.getresponse().read()
    conn.close()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    records = [json.loads(line) for line in server.log if line.startswith("{")]
    assert len(records) == 1
    record = records[0]
    assert record["method"] == "GET" and record["path"] == "/j" and record["query"] == "k=v"
    assert record["status"] == 200 and record["bytes"] == 13
    assert record["user_agent"] == "ua/1" and record["remote_addr"] == "127.0.0.1"


def test_log_config_file_routes_access_lines_to_a_file(spawn, tmp_path):
    access_file = tmp_path / "access.log"
    log_config = tmp_path / "logging.json"
    log_config.write_text(json.dumps({
        "version": 1,
        "formatters": {"plain": {"format": "ACCESS %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(access_file),
                     "formatter": "plain"},
            "err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "wsgiloop.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
            "wsgiloop.error": {"handlers": ["err"], "level": "INFO", "propagate": False},
        },
    }))
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--log-config", str(log_config))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/logged")
    conn.getresponse().read()
    conn.close()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    lines = access_file.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ACCESS 127.0.0.1 - - [")
    assert '"GET /logged HTTP/1.1" 200' in lines[0]


def test_the_readme_option_table_is_written_from_the_declarations():
    from wsgiloop import optionsdoc

    readme = (ROOT / "README.md").read_text()
    assert optionsdoc.rewrite(readme) == readme, (
        "README.md's option table is stale: run python -m wsgiloop.optionsdoc README.md"
    )


def test_every_setting_has_a_flag_a_help_line_and_takes_every_source(tmp_path):
    from wsgiloop.config import field_names, option_of

    for name in field_names():
        option = option_of(name)
        assert option is not None and option.help, name
    # chdir, once refused in the file and ignored in the environment, works in both.
    conf = tmp_path / "c.toml"
    conf.write_text('chdir = "/tmp"\n')
    assert parse(["-c", str(conf), "m:a"]).chdir == "/tmp"
    assert parse(["m:a"], {"WSGILOOP_CHDIR": "/srv"}).chdir == "/srv"
