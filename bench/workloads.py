"""The rows of the table: which app each serves, and the load wrk puts on it.

A row is one ``Workload``: the app (an attribute of ``bench/apps.py``), wrk's connection count,
extra headers or a lua script, and what a correct answer looks like (used to tell a slow server
from a broken one when wrk completed nothing). Adding a row is adding one entry to
``workloads()``; every server runs it unless the server says it serves only some apps.
"""

from __future__ import annotations

from dataclasses import dataclass

HELLO_BODY = b"Hello, world!"
STREAM_BYTES = 1024 * 1024
UPLOAD_BYTES = 16 * 1024 * 1024

_CHECK_BODY_LUA = """
bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if %s then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("Bad bodies: %%d\\n", total))
end
"""

STREAM_LUA = _CHECK_BODY_LUA % "status ~= 200 or #body ~= 1048576"

UPLOAD_LUA = (
    """
wrk.method = "POST"
wrk.body = string.rep("a", 16 * 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""
    + _CHECK_BODY_LUA % 'status ~= 200 or body ~= "16777216"'
)


@dataclass(frozen=True)
class Workload:
    name: str
    app: str
    connections: int
    description: str
    headers: tuple[str, ...] = ()
    lua: str | None = None
    idle: int = 0  # idle keep-alive connections held open during the wrk run
    #: The check request outside wrk: a POST of this many bytes (0: a GET) ...
    probe_post_bytes: int = 0
    #: ... and the body it must get back (None: any body with a 200).
    probe_expect: bytes | None = None
    #: The distributions (frameworks) whose versions the report records for it.
    packages: tuple[str, ...] = ()


def workloads(idle_conns: int) -> list[Workload]:
    return [
        Workload(
            "hello-keepalive",
            "hello",
            50,
            "GET, 13-byte body, 50 keep-alive connections",
            probe_expect=HELLO_BODY,
        ),
        Workload(
            "hello-close",
            "hello",
            50,
            "GET with `Connection: close`: a new TCP connection per request",
            headers=("Connection: close",),
            probe_expect=HELLO_BODY,
        ),
        Workload(
            "stream-1MiB",
            "stream",
            8,
            "GET, 1 MiB streamed in 64 KiB chunks, no Content-Length, 8 connections",
            lua=STREAM_LUA,
            probe_expect=b"x" * STREAM_BYTES,
        ),
        Workload(
            "upload-16MiB",
            "upload",
            8,
            "POST of a 16 MiB body that the app reads whole, 8 connections",
            lua=UPLOAD_LUA,
            probe_post_bytes=UPLOAD_BYTES,
            probe_expect=str(UPLOAD_BYTES).encode(),
        ),
        Workload(
            "sleep-50ms",
            "sleep",
            200,
            "app blocks 50 ms per request, 200 connections (thread-pool bound)",
            probe_expect=HELLO_BODY,
        ),
        Workload(
            "flask-json",
            "flask_json",
            50,
            "Flask route answering a ~400-byte JSON document, 50 keep-alive connections",
            packages=("flask", "werkzeug", "jinja2"),
        ),
        Workload(
            "django-template",
            "django_page",
            50,
            "Django view rendering a template through the default middleware stack, "
            "50 keep-alive connections",
            packages=("django",),
        ),
        Workload(
            f"idle-{idle_conns}",
            "hello",
            10,
            f"{idle_conns} idle keep-alive connections held open, plus hello on 10 connections",
            idle=idle_conns,
            probe_expect=HELLO_BODY,
        ),
    ]
