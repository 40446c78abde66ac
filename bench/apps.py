"""The WSGI apps every server in the benchmark runs.

Each callable is a complete WSGI app that ignores the path, so a server is started with one of
them (``apps:hello`` and so on) and every request it gets exercises that one code path:

* ``hello``: ``b"Hello, world!"`` with a Content-Length.
* ``stream``: 1 MiB in 64 KiB chunks from a generator, without a Content-Length, so an HTTP/1.1
  server has to chunk it (or close the connection to delimit it).
* ``upload``: reads the whole request body from ``wsgi.input`` in 64 KiB reads and answers the
  byte count.
* ``sleep``: blocks its thread for 50 ms (``time.sleep``, GIL released, like a database call),
  then answers like ``hello``.

The framework apps (``flask_json``, ``django_page``) live in their own modules and are imported
on first access of the attribute (PEP 562 ``__getattr__``), so a server started with
``apps:hello`` loads no framework, and one started with ``apps:flask_json`` finds Flask's app
here like any other.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

HELLO_BODY = b"Hello, world!"
CHUNK_SIZE = 64 * 1024
STREAM_SIZE = 1024 * 1024
SLEEP_SECONDS = 0.05


def _plain(start_response: StartResponse, body: bytes) -> list[bytes]:
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _plain(start_response, HELLO_BODY)


_STREAM_CHUNK = b"x" * CHUNK_SIZE


def _stream_body() -> Iterator[bytes]:
    for _ in range(STREAM_SIZE // CHUNK_SIZE):
        yield _STREAM_CHUNK


def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _stream_body()


def upload(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    stream_in = environ["wsgi.input"]
    length_header = environ.get("CONTENT_LENGTH") or ""
    total = 0
    if length_header.strip():
        # PEP 3333: an app must not read past CONTENT_LENGTH.
        remaining = int(length_header)
        while remaining > 0:
            chunk = stream_in.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            total += len(chunk)
            remaining -= len(chunk)
    else:
        # No Content-Length (chunked request body): read to the end the server signals.
        while True:
            chunk = stream_in.read(CHUNK_SIZE)
            if not chunk:
                break
            total += len(chunk)
    return _plain(start_response, str(total).encode("ascii"))


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(SLEEP_SECONDS)
    return _plain(start_response, HELLO_BODY)


APPS: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "hello": hello,
    "stream": stream,
    "upload": upload,
    "sleep": sleep,
}

#: Framework apps: attribute name -> module whose ``app`` it is (see the module docstring).
FRAMEWORK_APPS = {"flask_json": "flask_app", "django_page": "django_app"}


def __getattr__(name: str) -> Any:
    module = FRAMEWORK_APPS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = importlib.import_module(module).app
    globals()[name] = app
    return app
