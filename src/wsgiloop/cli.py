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
from collections.abc import Mapping, Sequence
from typing import Any

from . import __version__
from .config import (
    DEFAULT_BIND,
    LOG_LEVELS,
    Config,
    ConfigError,
    default_threads,
    from_environ,
    from_toml,
    render,
)


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
    """Options default to "not given" so that the config file and environment can fill them."""
    d = Config()
    p = argparse.ArgumentParser(
        prog="wsgiloop",
        description="Serve a WSGI application: h11 on an asyncio event loop, the app on threads.",
        epilog="Every option can also come from a TOML file (--config) or a WSGILOOP_<NAME> "
        "environment variable; the command line wins over the environment, which wins over "
        "the file.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("app", metavar="APP", nargs="?", help="MODULE:ATTRIBUTE or MODULE:FACTORY()")
    p.add_argument("--version", action="version", version=f"wsgiloop {__version__}")
    p.add_argument("-c", "--config", dest="config_file", default=None, metavar="FILE",
                   help="TOML file of settings (keys as the long options, e.g. threads = 8)")
    p.add_argument("--check-config", action="store_true", default=False,
                   help="print the effective configuration, check the app imports, and exit")

    g = p.add_argument_group("listening")
    g.add_argument("-b", "--bind", action="append", metavar="ADDRESS",
                   help=f"HOST:PORT, [IPV6]:PORT or unix:PATH; repeatable ({DEFAULT_BIND})")
    g.add_argument("--fd", action="append", type=int,
                   help="serve on an inherited listening socket; repeatable")
    g.add_argument("--backlog", type=int, help=f"listen() queue length ({d.backlog})")
    g.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    g.add_argument("--umask", type=lambda s: int(s, 8),
                   help="umask (octal) for creating Unix sockets, e.g. 007")

    g = p.add_argument_group("concurrency")
    g.add_argument("--threads", type=int,
                   help=f"app threads per worker (min(32, 2*cores+4) = {default_threads()} here)")
    g.add_argument("-w", "--workers", type=int, help="worker processes (1: no supervisor)")
    g.add_argument("--loop", choices=("auto", "uvloop", "asyncio"),
                   help="event loop (auto: uvloop when installed)")
    g.add_argument("--max-requests", type=int,
                   help="recycle a worker after this many requests (0: never)")
    g.add_argument("--max-requests-jitter", type=int,
                   help="add up to this many to --max-requests, per worker")
    g.add_argument("-t", "--timeout", type=float,
                   help=f"503 for a request the app has not answered in this long; kill a "
                   f"worker whose event loop is silent this long ({d.timeout:g}s; 0: never)")
    g.add_argument("--preload", action="store_true",
                   help="load the app in the supervisor before forking workers")
    g.add_argument("--limit-concurrency", type=int,
                   help=f"connections per worker; requests beyond get 503 ({d.limit_concurrency})")

    g = p.add_argument_group("limits and timeouts")
    g.add_argument("--max-header-bytes", type=int,
                   help=f"request line + headers; beyond: 431 ({d.max_header_bytes})")
    g.add_argument("--limit-request-line", type=int,
                   help=f"request target length; beyond: 414 ({d.limit_request_line})")
    g.add_argument("--limit-request-fields", type=int,
                   help=f"number of header fields; beyond: 431 ({d.limit_request_fields})")
    g.add_argument("--max-body-size", type=int,
                   help=f"request body bytes; beyond: 413 ({d.max_body_size})")
    g.add_argument("--keep-alive", "--timeout-keep-alive", dest="keepalive_timeout", type=float,
                   help=f"seconds an idle keep-alive connection stays ({d.keepalive_timeout:g})")
    g.add_argument("--header-timeout", type=float,
                   help=f"seconds to receive a request head; beyond: 408 ({d.header_timeout:g})")
    g.add_argument("--body-timeout", type=float,
                   help=f"seconds a request body may stall; then 408 ({d.body_timeout:g})")
    g.add_argument("--write-timeout", type=float,
                   help=f"seconds a client may read nothing of a response ({d.write_timeout:g})")
    g.add_argument("--graceful-timeout", type=float,
                   help=f"seconds in-flight requests get at shutdown ({d.graceful_timeout:g})")
    g.add_argument("--write-buffer-high", type=int,
                   help=f"bytes buffered for a slow client before the app blocks "
                   f"({d.write_buffer_high})")
    g.add_argument("--write-buffer-low", type=int,
                   help=f"bytes the buffer must fall to before the app resumes "
                   f"({d.write_buffer_low})")
    g.add_argument("--body-buffer", type=int,
                   help=f"request body read ahead of the app before reading pauses "
                   f"({d.body_buffer})")
    g.add_argument("--max-discard", type=int,
                   help=f"unread body bytes drained to keep a connection ({d.max_discard})")
    g.add_argument("--spool-chunked-body", action="store_true",
                   help="read a chunked request body whole (memory up to --body-buffer, then a "
                   "temporary file) and set CONTENT_LENGTH before calling the app, for apps "
                   "such as Django that read only CONTENT_LENGTH bytes (off)")

    g = p.add_argument_group("TLS")
    g.add_argument("--certfile", help="PEM certificate (chain); enables HTTPS")
    g.add_argument("--keyfile", help="PEM private key (if not in --certfile)")
    g.add_argument("--ca-certs", help="CA bundle to verify client certificates")
    g.add_argument("--cert-reqs", type=int, choices=(0, 1, 2),
                   help="client certificates: 0 none, 1 optional, 2 required")

    g = p.add_argument_group("application environment")
    g.add_argument("--root-path", help="SCRIPT_NAME of an app mounted under a URL prefix")
    g.add_argument("--proxy-headers", action="store_true",
                   help="apply X-Forwarded-*/Forwarded from --forwarded-allow-ips")
    g.add_argument("--forwarded-allow-ips", type=_comma_list,
                   help=f"trusted proxies: IPs, CIDRs or * ({','.join(d.forwarded_allow_ips)})")
    g.add_argument("--no-server-header", dest="server_header", action="store_false")
    g.add_argument("--no-date-header", dest="date_header", action="store_false")
    g.add_argument("--chdir", default=None, help="change to this directory before loading APP")

    g = p.add_argument_group("logging")
    g.add_argument("--log-level", choices=LOG_LEVELS, help=f"({d.log_level})")
    g.add_argument("--log-config", help="logging dictConfig as a JSON or TOML file")
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction,
                   help="one line per request on stderr (on)")
    g.add_argument("--access-log-format",
                   help="gunicorn atoms: h l u t r m U q H s B b f a T D M L p {header}i")
    g.add_argument("--access-log-json", action="store_true",
                   help="access lines as JSON objects, for log shippers")

    # -- metrics and health (issue 12) --------------------------------------------------------
    g = p.add_argument_group("metrics and health")
    g.add_argument("--metrics-bind", metavar="ADDRESS",
                   help="HOST:PORT or unix:PATH serving GET /metrics (Prometheus) and the "
                   "health path; never an app address (off)")
    g.add_argument("--health-path", metavar="/PATH",
                   help="answered on the loop, never by the app: 200 while serving, 503 once "
                   "a graceful stop begins; also on --metrics-bind (off)")
    g.add_argument("--statsd-host", metavar="HOST:PORT",
                   help="send gunicorn's statsd metrics and wsgiloop's there, batched (off)")
    g.add_argument("--statsd-prefix", metavar="PREFIX", help="prefix of every statsd name")
    g.add_argument("--dogstatsd-tags", metavar="TAGS",
                   help="comma-separated dogstatsd tags for every statsd line, e.g. env:prod")
    return p


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Config:
    """Defaults < ``--config`` file < ``WSGILOOP_*`` environment < command line."""
    given = dict(vars(args))
    config_file = given.pop("config_file", None)
    given.pop("check_config", None)
    given.pop("chdir", None)
    values: dict[str, Any] = {}
    if config_file:
        values.update(from_toml(config_file))
    values.update(from_environ(os.environ if environ is None else environ))
    values.update(given)
    return Config(**values).validate()


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import configure, error_log

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ConfigError, TypeError, ValueError) as exc:
        parser.error(str(exc))
    if config.app is None:
        parser.error("the APP argument is required (e.g. wsgiloop wsgiloop.demo:app)")
    configure(config.log_level, config.access_log, config.log_config, config.access_log_json)
    if getattr(args, "chdir", None):
        os.chdir(args.chdir)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: apps in the current directory import
    spec = config.app
    if args.check_config:
        sys.stdout.write(render(config))
        try:
            load_app(spec)
        except Exception as exc:
            error_log.error("Error: the app does not load: %s", exc)
            return 1
        return 0
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
