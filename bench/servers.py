"""The servers of the table and exactly how each is started.

A server is a name and a function from (where the executables are, the row's app, the port) to
the argv that starts it, plus what it can do (which apps it serves, whether it runs several
worker processes, whether it runs from the project's own interpreter in ``--smoke``) and a note
the report prints beside its command line. Adding a server is adding one builder and one
``Server`` entry to ``SERVERS``; the harness starts, measures and stops every server the same
way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layout import BENCH_DIR, HOST

#: Limits every server gets where it has the option, so that no row measures a default cap
#: instead of the server: cheroot's listen backlog is 5 by default and it keeps at most 10 idle
#: keep-alive connections, gunicorn's gthread worker holds at most 1,000 connections, waitress
#: at most 100, granian's backpressure (concurrent connections per worker) equals its backlog,
#: wsgiloop answers 503 past 4,096 connections.
BACKLOG = 2048
CONNECTION_LIMIT = 10_000
#: Keep-alive timeout (seconds) for servers that have one: longer than any row, so that the
#: idle row measures held connections, not a timer (gunicorn's default is 2 s, uvicorn's 5 s).
KEEPALIVE = 60


@dataclass(frozen=True)
class Launch:
    """Where a server's executables are, how many app threads and worker processes it gets."""

    bindir: Path
    python: Path
    threads: int
    workers: int = 1


ArgvBuilder = Callable[[Launch, str, str], list[str]]


@dataclass(frozen=True)
class Server:
    name: str
    argv: ArgvBuilder  # (launch, app, port) -> argv
    note: str = ""
    #: The apps (``Workload.app``) it can serve; None: every app.
    apps: frozenset[str] | None = None
    #: Whether it can run ``Launch.workers`` > 1 processes (``--workers``).
    multi_worker: bool = True
    #: Runs from the project's interpreter, needing only wsgiloop's dependencies (``--smoke``).
    in_smoke: bool = False
    #: Needs wsgiloop installed in the bench venv.
    needs_wsgiloop: bool = False
    #: The distributions whose versions the report records for it.
    packages: tuple[str, ...] = ()

    def serves(self, app: str, workers: int) -> bool:
        return (self.apps is None or app in self.apps) and (workers == 1 or self.multi_worker)


def _workers(launch: Launch) -> list[str]:
    """``--workers N`` for servers whose default is one process, only when N > 1."""
    return ["--workers", str(launch.workers)] if launch.workers > 1 else []


def _wsgiloop(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.python), "-m", "wsgiloop", f"apps:{app}",
        "--bind", f"{HOST}:{port}",
        "--threads", str(launch.threads),
        "--backlog", str(BACKLOG), "--limit-concurrency", str(CONNECTION_LIMIT),
        "--keep-alive", str(KEEPALIVE),
        "--no-access-log", "--log-level", "warning",
        *_workers(launch),
    ]  # fmt: skip


def _gunicorn(worker: str) -> ArgvBuilder:
    def build(launch: Launch, app: str, port: str) -> list[str]:
        # The sync worker is single-threaded by design: gunicorn itself switches to gthread when
        # threads > 1, so it gets 1 thread (its whole point of comparison).
        threads = launch.threads if worker == "gthread" else 1
        return [
            str(launch.bindir / "gunicorn"), f"apps:{app}",
            "--bind", f"{HOST}:{port}",
            "--worker-class", worker, "--workers", str(launch.workers), "--threads", str(threads),
            "--worker-connections", str(CONNECTION_LIMIT),
            "--backlog", str(BACKLOG),
            "--keep-alive", str(KEEPALIVE),
            "--log-level", "warning",
        ]  # fmt: skip

    return build


def _waitress(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "waitress-serve"),
        f"--listen={HOST}:{port}",
        f"--threads={launch.threads}",
        f"--backlog={BACKLOG}",
        f"--connection-limit={CONNECTION_LIMIT}",
        f"--channel-timeout={KEEPALIVE}",
        # select() (the default) crashes the server past file descriptor 1023.
        "--asyncore-use-poll",
        f"apps:{app}",
    ]


def _uvicorn(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "uvicorn"), f"asgi_apps:{app}",
        "--host", HOST, "--port", port,
        "--loop", "uvloop", "--http", "httptools",
        "--backlog", str(BACKLOG),
        "--timeout-keep-alive", str(KEEPALIVE),
        "--no-access-log", "--log-level", "warning",
        *_workers(launch),
    ]  # fmt: skip


def _granian(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.bindir / "granian"), "--interface", "wsgi",
        "--host", HOST, "--port", port,
        "--workers", str(launch.workers),
        "--blocking-threads", str(launch.threads), "--runtime-threads", "1",
        "--backlog", str(BACKLOG), "--backpressure", str(CONNECTION_LIMIT),
        "--no-ws", "--log-level", "warning",
        f"apps:{app}",
    ]  # fmt: skip


def _cheroot(launch: Launch, app: str, port: str) -> list[str]:
    # serve_cheroot.py is `python -m cheroot` plus --keep-alive-conn-limit (see its docstring).
    return [
        str(launch.python), str(BENCH_DIR / "serve_cheroot.py"), f"apps:{app}",
        "--bind", f"{HOST}:{port}",
        "--threads", str(launch.threads), "--max-threads", str(launch.threads),
        "--request-queue-size", str(BACKLOG),
        "--timeout", str(KEEPALIVE),
        "--keep-alive-conn-limit", str(CONNECTION_LIMIT),
    ]  # fmt: skip


def _ceiling(launch: Launch, app: str, port: str) -> list[str]:
    return [
        str(launch.python), str(BENCH_DIR / "ceiling.py"), f"apps:{app}",
        "--bind", f"{HOST}:{port}",
        "--threads", str(launch.threads),
        "--backlog", str(BACKLOG),
    ]  # fmt: skip


SERVERS: list[Server] = [
    Server(
        "wsgiloop",
        _wsgiloop,
        in_smoke=True,
        needs_wsgiloop=True,
        packages=("wsgiloop", "h11", "uvloop"),
    ),
    Server(
        "wsgiloop-metrics",
        lambda launch, app, port: [
            *_wsgiloop(launch, app, port),
            "--metrics-bind", f"{HOST}:0", "--statsd-host", f"{HOST}:9",
        ],
        apps=frozenset({"hello"}),
        needs_wsgiloop=True,
        packages=("wsgiloop", "h11", "uvloop"),
        note="wsgiloop with Prometheus metrics and statsd on (to a port nobody reads); its "
        "ratio to wsgiloop is what they cost",
    ),
    Server(
        "wsgiloop-prom",
        lambda launch, app, port: [*_wsgiloop(launch, app, port), "--metrics-bind", f"{HOST}:0"],
        apps=frozenset({"hello"}),
        needs_wsgiloop=True,
        packages=("wsgiloop", "h11", "uvloop"),
        note="wsgiloop with Prometheus metrics only",
    ),
    Server(
        "ceiling",
        _ceiling,
        apps=frozenset({"hello"}),
        multi_worker=False,
        in_smoke=True,
        packages=("h11", "uvloop"),
        note="not a peer: the design's ceiling (bench/ceiling.py), h11 parsing each head plus "
        "the hop to a pool thread and back, nothing else; wsgiloop's ratio to it is the share "
        "of its own limit it reaches (hello rows only)",
    ),
    Server("gunicorn-gthread", _gunicorn("gthread"), packages=("gunicorn",)),
    Server(
        "gunicorn-sync",
        _gunicorn("sync"),
        packages=("gunicorn",),
        note="1 thread (gunicorn turns a threaded sync worker into gthread); one request at a "
        "time, `Connection: close` on every response",
    ),
    Server(
        "waitress",
        _waitress,
        multi_worker=False,
        packages=("waitress",),
        note="poll() instead of select(), which fails past fd 1023",
    ),
    Server(
        "uvicorn",
        _uvicorn,
        packages=("uvicorn", "httptools", "a2wsgi"),
        note="WSGI through a2wsgi.WSGIMiddleware(app, workers=threads) (bench/asgi_apps.py)",
    ),
    Server(
        "granian",
        _granian,
        packages=("granian",),
        note="Rust HTTP stack; no keep-alive timeout option (idle connections close after its "
        "30 s header-read timeout)",
    ),
    Server(
        "cheroot",
        _cheroot,
        multi_worker=False,
        packages=("cheroot",),
        note="bench/serve_cheroot.py = `python -m cheroot` + keep_alive_conn_limit (default 10)",
    ),
]
