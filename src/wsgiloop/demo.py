"""A built-in demo app: ``wsgiloop wsgiloop.demo:app`` shows the request it received.

It reads the body (so uploads and ``Expect: 100-continue`` can be tried with curl) and renders
the method, path, headers and environ as plain text, or HTML for browsers.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

_SHOWN = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Echo the request back."""
    body = environ["wsgi.input"].read()
    lines = [f"{key}: {environ.get(key, '')}" for key in _SHOWN]
    lines.append("")
    lines += [
        f"{key[5:].replace('_', '-').title()}: {value}"
        for key, value in sorted(environ.items())
        if key.startswith("HTTP_")
    ]
    lines.append("")
    lines.append(f"body: {len(body)} bytes")
    text = "\n".join(lines) + "\n"
    if "text/html" in environ.get("HTTP_ACCEPT", ""):
        payload = (
            "<!doctype html><title>wsgiloop demo</title><h1>wsgiloop is serving</h1>"
            f"<p>This is the request it received:</p><pre>{html.escape(text)}</pre>"
        ).encode()
        content_type = "text/html; charset=utf-8"
    else:
        payload = text.encode("utf-8", "replace")
        content_type = "text/plain; charset=utf-8"
    start_response(
        "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
    )
    return [payload]
