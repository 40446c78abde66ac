"""The ``wsgiloop`` command, in gunicorn's and uvicorn's habits.

``wsgiloop module:app --bind 0.0.0.0:8000 --threads 16``. Option names follow gunicorn where it
has one (``--bind``, ``--backlog``, ``--keep-alive``, ``--limit-request-line``...) and uvicorn
where only it does (``--loop``, ``--limit-concurrency``, ``--root-path``, ``--proxy-headers``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import DEFAULT_ACCESS_LOG_FORMAT, LOG_LEVELS, Config, ConfigError, default_threads


class AppImportError(Exception):
    """The APP argument does not name a WSGI callable."""


def load_app(spec: str) -> Any:
    """``module:attr``, ``module:attr.sub``, ``module:factory()`` or ``module:factory(1, 'x')``.

    A bare ``module`` means ``module:application``, as with gunicorn.
    """
    module_name, _, expr = spec.partition(":")
    expr = expr or "application"
    call_args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] = {}
    if expr.endswith(")") and "(" in expr:
        expr, _, arg_text = expr.partition("(")
        try:
            call = ast.parse(f"f({arg_text}", mode="eval").body
            assert isinstance(call, ast.Call)
            call_args = tuple(ast.literal_eval(a) for a in call.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        except (SyntaxError, ValueError, AssertionError) as exc:
            raise AppImportError(f"{spec!r}: factory arguments must be literals") from exc
    if not module_name or not all(part.isidentifier() for part in expr.split(".")):
        raise AppImportError(f"{spec!r}: expected MODULE:ATTRIBUTE, e.g. myproject.wsgi:app")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # an import inside the app failed: show the real traceback
        raise AppImportError(f"could not import module {module_name!r}") from exc
    for part in expr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {expr!r}") from None
    if call_args is not None:
        obj = obj(*call_args, **kwargs)
    if not callable(obj):
        raise AppImportError(f"{spec!r} is not callable (got {type(obj).__name__})")
    return obj


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="wsgiloop",
        description="Serve a WSGI application: h11 on an asyncio event loop, the app on threads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("app", metavar="APP", nargs="?", help="MODULE:ATTRIBUTE or MODULE:FACTORY()")
    p.add_argument("--version", action="version", version=f"wsgiloop {__version__}")

    g = p.add_argument_group("listening")
    g.add_argument("-b", "--bind", action="append", default=None, metavar="ADDRESS",
                   help="HOST:PORT, [IPV6]:PORT or unix:PATH; repeatable (default 127.0.0.1:8000)")
    g.add_argument("--fd", action="append", type=int, default=None,
                   help="serve on an inherited listening socket; repeatable")
    g.add_argument("--backlog", type=int, default=d.backlog, help="listen() queue length")
    g.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    g.add_argument("--umask", type=lambda s: int(s, 8), default=None,
                   help="umask (octal) for creating Unix sockets, e.g. 007")

    g = p.add_argument_group("concurrency")
    g.add_argument("--threads", type=int, default=d.threads,
                   help=f"app threads per worker (min(32, 2*cores+4) = {default_threads()} here)")
    g.add_argument("-w", "--workers", type=int, default=d.workers, help="worker processes")
    g.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default=d.loop,
                   help="event loop; auto is uvloop when installed")
    g.add_argument("--max-requests", type=int, default=d.max_requests,
                   help="recycle a worker after this many requests (0: never)")
    g.add_argument("--max-requests-jitter", type=int, default=d.max_requests_jitter,
                   help="add up to this many to --max-requests, per worker")
    g.add_argument("-t", "--timeout", type=float, default=d.timeout,
                   help="kill a worker whose event loop is silent this long (0: never)")
    g.add_argument("--preload", action="store_true",
                   help="load the app in the supervisor before forking workers")
    g.add_argument("--limit-concurrency", type=int, default=d.limit_concurrency,
                   help="connections per worker; requests beyond get 503")

    g = p.add_argument_group("limits and timeouts")
    g.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes,
                   help="request line + headers; beyond: 431")
    g.add_argument("--limit-request-line", type=int, default=d.limit_request_line,
                   help="request target length; beyond: 414")
    g.add_argument("--limit-request-fields", type=int, default=d.limit_request_fields,
                   help="number of header fields; beyond: 431")
    g.add_argument("--max-body-size", type=int, default=d.max_body_size,
                   help="request body bytes; beyond: 413")
    g.add_argument("--keep-alive", "--timeout-keep-alive", dest="keepalive_timeout", type=float,
                   default=d.keepalive_timeout, help="seconds an idle keep-alive connection stays")
    g.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds to receive a request's head (slowloris guard); beyond: 408")
    g.add_argument("--graceful-timeout", type=float, default=d.graceful_timeout,
                   help="seconds in-flight requests get to finish at shutdown")
    g.add_argument("--write-buffer-high", type=int, default=d.write_buffer_high,
                   help="bytes buffered for a slow client before the app thread blocks")
    g.add_argument("--write-buffer-low", type=int, default=d.write_buffer_low,
                   help="bytes the buffer must fall to before the app thread resumes")
    g.add_argument("--body-buffer", type=int, default=d.body_buffer,
                   help="request body bytes read ahead of the app before reading pauses")
    g.add_argument("--max-discard", type=int, default=d.max_discard,
                   help="unread body bytes drained to keep a connection; beyond: close")

    g = p.add_argument_group("application environment")
    g.add_argument("--root-path", default=d.root_path,
                   help="SCRIPT_NAME of an app mounted under a URL prefix")
    g.add_argument("--proxy-headers", action="store_true",
                   help="trust X-Forwarded-*/Forwarded from --forwarded-allow-ips")
    g.add_argument("--forwarded-allow-ips", default=",".join(d.forwarded_allow_ips),
                   help="comma-separated IPs/CIDRs of trusted proxies, or *")
    g.add_argument("--no-server-header", dest="server_header", action="store_false")
    g.add_argument("--no-date-header", dest="date_header", action="store_false")
    g.add_argument("--chdir", default=None, help="change to this directory before loading APP")

    g = p.add_argument_group("logging")
    g.add_argument("--log-level", choices=LOG_LEVELS, default=d.log_level)
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=d.access_log,
                   help="one line per request on stderr")
    g.add_argument("--access-log-format", default=DEFAULT_ACCESS_LOG_FORMAT,
                   help="gunicorn atoms: h l u t r m U q H s B b f a T D M L p {header}i")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    values = {k: v for k, v in vars(args).items() if k not in ("chdir",)}
    values["bind"] = values["bind"] or []
    values["fd"] = values["fd"] or []
    values["forwarded_allow_ips"] = [
        ip.strip() for ip in values["forwarded_allow_ips"].split(",") if ip.strip()
    ]
    return Config(**values).validate()


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import configure, error_log

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.app is None:
        parser.error("the APP argument is required (e.g. wsgiloop wsgiloop.demo:app)")
    try:
        config = config_from_args(args)
    except (ConfigError, TypeError) as exc:
        parser.error(str(exc))
    configure(config.log_level, config.access_log)
    if args.chdir:
        os.chdir(args.chdir)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: apps in the current directory import
    spec = config.app or ""
    if config.workers > 1:
        from .supervisor import run_supervisor

        try:
            return run_supervisor(lambda: load_app(spec), config)
        except AppImportError as exc:  # with --preload
            error_log.error("Error: %s", exc)
            return 2
    try:
        app = load_app(spec)
    except AppImportError as exc:
        error_log.error("Error: %s", exc)
        return 2
    from .server import run

    return run(app, config)
