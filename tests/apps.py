"""WSGI apps that tests serve, importable by spawned server processes too (tests/ on PYTHONPATH)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answers with the whole request body."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def digest(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Reads the body in 4 KiB pieces and answers its length and SHA-256 (memory stays small)."""
    stream = environ["wsgi.input"]
    h = hashlib.sha256()
    total = 0
    while True:
        block = stream.read(4096)
        if not block:
            break
        h.update(block)
        total += len(block)
    body = f"{total} {h.hexdigest()}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def factory(greeting: str = "factory") -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting.encode()]

    return app


def slow(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Sleeps for ?seconds (default 1) before answering."""
    import time
    from urllib.parse import parse_qs

    seconds = float(parse_qs(environ["QUERY_STRING"]).get("seconds", ["1"])[0])
    time.sleep(seconds)
    start_response("200 OK", [("Content-Length", "4")])
    return [b"done"]


def pid(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answers with the worker's pid (to see which process served a request)."""
    import os

    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def reads_body(seen: list[str]) -> Callable[..., Iterable[bytes]]:
    """An app that reads its whole body; an ``OSError`` the read raises (the server gave up on
    the request) is recorded in ``seen`` by class name, then re-raised."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            seen.append(type(exc).__name__)
            raise
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


def paste_app(global_conf: dict[str, str], **local_conf: str) -> Callable[..., Iterable[bytes]]:
    """A PasteDeploy app factory (``use = call:apps:paste_app`` in an .ini file)."""
    greeting = local_conf.get("greeting", "Hello, world!")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = greeting.encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


def identity(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answers with the process's uid, gid, supplementary groups, cwd and two variables."""
    import os

    body = (
        f"uid={os.getuid()} gid={os.getgid()} groups={sorted(os.getgroups())} cwd={os.getcwd()} "
        f"SPAM={os.environ.get('SPAM')} PORT={os.environ.get('PORT')}"
    ).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def peer(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answers with who the server believes the client is."""
    body = " ".join(
        str(environ.get(key)) for key in ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme")
    ).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def shout(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Prints to stdout and stderr (for --capture-output), then answers."""
    import sys

    print("app says hello on stdout", flush=True)
    print("app says hello on stderr", file=sys.stderr, flush=True)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
