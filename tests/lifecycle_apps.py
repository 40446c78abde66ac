"""The app of the lifecycle tests (served by spawned processes: tests/ is on their PYTHONPATH).

Every response names the worker that produced it (``X-Pid``), so a test can tell old workers
from new ones across a reload.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """POST: ``<length> <sha256>`` of the body, read in pieces. GET ``/gate?path=P``: wait
    until file P exists (bounded), having created ``P.entered``. Other GETs: ``ok``."""
    query = parse_qs(environ["QUERY_STRING"])
    if environ["REQUEST_METHOD"] == "POST":
        stream = environ["wsgi.input"]
        h = hashlib.sha256()
        total = 0
        while block := stream.read(8192):
            h.update(block)
            total += len(block)
        body = f"{total} {h.hexdigest()}".encode()
    elif environ["PATH_INFO"] == "/gate":
        path = query["path"][0]
        with open(path + ".entered", "w"):
            pass
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        body = b"released"
    else:
        body = b"ok"
    start_response(
        "200 OK",
        [("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))],
    )
    return [body]
