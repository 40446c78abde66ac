"""Server configuration: one declaration per setting, and the layers that fill it.

Every setting is one field of ``Config``, declared with ``setting()``: its default (safe on the
open internet, with the reason beside it), its command-line flags, its help line, its group in
``--help``, and its gunicorn spellings (command-line aliases and the name in a
``gunicorn.conf.py``). That one declaration drives the CLI (``cli``), the TOML and Python config
files, the ``WSGILOOP_*`` environment, the gunicorn aliases and the README's option table; the
Python API (``serve()``) takes the field names. Validation lives here so that every entry point
rejects the same mistakes with the same message.

Precedence, lowest first: defaults < ``PORT``/``WEB_CONCURRENCY`` (what Heroku-style platforms
set) < the ``--config`` file < ``WSGILOOP_*`` variables < ``WSGILOOP_CMD_ARGS`` < the command line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from .compat import Refused, check_worker_class
from .hooks import Hooks

DEFAULT_BIND = "127.0.0.1:8000"
LoopName = Literal["auto", "uvloop", "asyncio"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

#: gunicorn's combined-log atoms (see ``logs``): remote address, ident, user, time, request line,
#: status, response bytes, referer, user agent, and request time in microseconds.
DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def default_threads() -> int:
    """Threads per worker: ``min(32, 2 * cores + 4)``.

    WSGI apps mostly wait on I/O (databases, upstream HTTP) with the GIL released, so more threads
    than cores keeps the CPU busy; past a few dozen the GIL and per-thread stacks (8 MiB of virtual
    memory each) cost more than they give, hence the cap. This is the formula of the stdlib's
    ``ThreadPoolExecutor`` with the core count doubled, because every request here also spends
    time on the event loop's side of the hop.
    """
    return min(32, 2 * (os.cpu_count() or 1) + 4)


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option."""


# -- the declaration of one setting --------------------------------------------------------------

#: How a setting takes its value on the command line.
#: value: ``--flag VALUE``; append: repeatable, each adds one; on: ``--flag`` sets True;
#: off: ``--flag`` sets False; both: ``--flag`` / ``--no-flag``.
Kind = Literal["value", "append", "on", "off", "both"]


@dataclass(frozen=True, slots=True)
class Option:
    """How one ``Config`` field is spelled outside Python."""

    flags: tuple[str, ...]  # the wsgiloop flags; the first long one names the setting in messages
    help: str
    group: str
    kind: Kind = "value"
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    parse: Callable[[str], Any] | None = None  # from the command line's text
    gunicorn_flags: tuple[str, ...] = ()  # gunicorn's command-line spellings, if other
    gunicorn_name: str | None = None  # its name in a gunicorn.conf.py, if other than the field's
    show_default: bool = True


def setting(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    flags: tuple[str, ...] = (),
    help: str = "",
    group: str = "",
    kind: Kind = "value",
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    gunicorn: tuple[str, ...] = (),
    gunicorn_name: str | None = None,
    show_default: bool = True,
) -> Any:
    """A ``Config`` field and its ``Option``: the one place a setting is declared."""
    option = Option(
        flags, help, group, kind, metavar, choices, parse, gunicorn, gunicorn_name, show_default
    )
    if factory is not None:
        return field(default_factory=factory, metadata={"option": option})
    return field(default=default, metadata={"option": option})


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"expected an octal number such as 007, got {text!r}") from None


LISTEN = "listening"
CONCURRENCY = "concurrency"
LIMITS = "limits and timeouts"
TLS = "TLS"
ENVIRON = "application environment"
PROCESS = "process"
LOGGING = "logging"
METRICS = "metrics and health"


@dataclass(slots=True)
class Config:
    """Everything the server needs to know; field names match the long CLI options."""

    # What to serve and where.
    app: str | None = setting(None, help="MODULE:ATTRIBUTE or MODULE:FACTORY()", group="",
                              gunicorn_name="wsgi_app")
    bind: list[str] = setting(
        factory=list, flags=("-b", "--bind"), kind="append", metavar="ADDRESS", group=LISTEN,
        help=f"HOST:PORT, [IPV6]:PORT or unix:PATH; repeatable ({DEFAULT_BIND}, or "
        "0.0.0.0:$PORT when PORT is set)", show_default=False,
    )
    fd: list[int] = setting(
        factory=list, flags=("--fd",), kind="append", parse=int, group=LISTEN,
        help="serve on an inherited listening socket; repeatable", show_default=False,
    )
    # 2048: gunicorn's and nginx's; the kernel caps it at net.core.somaxconn anyway.
    backlog: int = setting(2048, flags=("--backlog",), group=LISTEN, help="listen() queue length")
    reuse_port: bool = setting(False, flags=("--reuse-port",), kind="on", group=LISTEN,
                               help="set SO_REUSEPORT")
    umask: int | None = setting(
        None, flags=("-m", "--umask"), parse=octal, group=LISTEN, metavar="OCTAL",
        help="umask for the Unix sockets (and files) created, e.g. 007 for a socket that only "
        "the owner and --group may use",
    )

    # Concurrency.
    threads: int = setting(
        factory=default_threads, flags=("--threads",), parse=int, group=CONCURRENCY,
        help=f"app threads per worker (min(32, 2*cores+4) = {default_threads()} here)",
        show_default=False,
    )
    # 1: no supervisor process at all; WEB_CONCURRENCY (Heroku, Render...) sets it when given.
    workers: int = setting(1, flags=("-w", "--workers"), parse=int, group=CONCURRENCY,
                           help="worker processes (1: no supervisor; WEB_CONCURRENCY sets it)")
    worker_class: str | None = setting(
        None, flags=("-k", "--worker-class"), group=CONCURRENCY, metavar="CLASS",
        help="accepted for gunicorn command lines: sync and gthread mean wsgiloop's own model "
        "(an event loop plus --threads); async and ASGI classes are refused with what to use",
    )
    loop: LoopName = setting("auto", flags=("--loop",), choices=("auto", "uvloop", "asyncio"),
                             group=CONCURRENCY, help="event loop (auto: uvloop when installed)")
    # 4096 connections: far above what a thread pool serves at once, far below fd limits.
    limit_concurrency: int = setting(
        4096, flags=("--limit-concurrency",), parse=int, group=CONCURRENCY,
        gunicorn=("--worker-connections",), gunicorn_name="worker_connections",
        help="connections per worker; requests beyond get 503",
    )
    max_requests: int = setting(0, flags=("--max-requests",), parse=int, group=CONCURRENCY,
                                help="recycle a worker after this many requests (0: never)")
    max_requests_jitter: int = setting(
        0, flags=("--max-requests-jitter",), parse=int, group=CONCURRENCY,
        help="add up to this many to --max-requests, per worker",
    )
    preload: bool = setting(False, flags=("--preload",), kind="on", group=CONCURRENCY,
                            gunicorn_name="preload_app",
                            help="load the app in the supervisor before forking workers")
    reload: bool = setting(
        False, flags=("--reload",), kind="on", group=CONCURRENCY,
        help="development: restart the workers when a Python file under the current directory "
        "(or --reload-extra-file) changes; the last good workers serve while new code fails",
    )
    reload_extra_files: list[str] = setting(
        factory=list, flags=("--reload-extra-file",), kind="append", metavar="FILE",
        group=CONCURRENCY, help="also restart when this file changes; repeatable",
        show_default=False,
    )
    reload_engine: str = setting(
        "auto", flags=("--reload-engine",), choices=("auto", "poll", "inotify"), group=CONCURRENCY,
        help="auto: watchfiles when installed (pip install wsgiloop[reload]), else polling",
    )

    # Limits on what a client may send.
    # 64 KiB: the largest head a real browser sends is a fraction of it (nginx: 4 x 8 KiB).
    max_header_bytes: int = setting(65536, flags=("--max-header-bytes",), parse=int,
                                    group=LIMITS, help="request line + headers; beyond: 431")
    limit_request_line: int = setting(8190, flags=("--limit-request-line",), parse=int,
                                      group=LIMITS, help="request target length; beyond: 414")
    limit_request_fields: int = setting(100, flags=("--limit-request-fields",), parse=int,
                                        group=LIMITS, help="number of header fields; beyond: 431")
    # 0: only --max-header-bytes bounds one field (gunicorn's 8190 is one flag away).
    limit_request_field_size: int = setting(
        0, flags=("--limit-request-field-size",), parse=int, group=LIMITS,
        gunicorn=("--limit-request-field_size",),
        help="bytes in one header field (name and value); beyond: 431 (0: no limit of its own)",
    )
    max_body_size: int = setting(1 << 30, flags=("--max-body-size",), parse=int, group=LIMITS,
                                 help="request body bytes; beyond: 413")

    # Timeouts, in seconds.
    # 5 s: longer than nginx's upstream keepalive_timeout in deploy/nginx (4 s), so nginx, not
    # wsgiloop, closes an idle upstream connection and never sends on one being closed.
    keepalive_timeout: float = setting(
        5.0, flags=("--keep-alive", "--timeout-keep-alive"), parse=float, group=LIMITS,
        gunicorn_name="keepalive", help="seconds an idle keep-alive connection stays",
    )
    header_timeout: float = setting(10.0, flags=("--header-timeout",), parse=float, group=LIMITS,
                                    help="seconds to receive a request head; beyond: 408")
    graceful_timeout: float = setting(
        30.0, flags=("--graceful-timeout",), parse=float, group=LIMITS,
        help="seconds in-flight requests get at shutdown",
    )
    # A request whose app has not started its response after this long is answered 503 and its
    # connection closed; a worker whose event loop is silent this long is killed. 0: never.
    timeout: float = setting(
        30.0, flags=("-t", "--timeout"), parse=float, group=CONCURRENCY,
        help="503 for a request the app has not answered in this long; kill a worker whose event "
        "loop is silent this long (0: never)",
    )
    body_timeout: float = setting(30.0, flags=("--body-timeout",), parse=float, group=LIMITS,
                                  help="seconds a request body may stall; then 408")
    write_timeout: float = setting(60.0, flags=("--write-timeout",), parse=float, group=LIMITS,
                                   help="seconds a client may read nothing of a response")

    # Buffers between the loop and the app threads (bytes). These bound memory per connection.
    write_buffer_high: int = setting(
        256 * 1024, flags=("--write-buffer-high",), parse=int, group=LIMITS,
        help="bytes buffered for a slow client before the app blocks",
    )
    write_buffer_low: int = setting(64 * 1024, flags=("--write-buffer-low",), parse=int,
                                    group=LIMITS,
                                    help="bytes the buffer must fall to before the app resumes")
    body_buffer: int = setting(
        256 * 1024, flags=("--body-buffer",), parse=int, group=LIMITS,
        help="request body read ahead of the app before reading pauses",
    )
    max_discard: int = setting(256 * 1024, flags=("--max-discard",), parse=int, group=LIMITS,
                               help="unread body bytes drained to keep a connection")
    # Off: most apps read chunked bodies to EOF (wsgi.input_terminated); Django does not.
    spool_chunked_body: bool = setting(
        False, flags=("--spool-chunked-body",), kind="on", group=LIMITS,
        help="read a chunked request body whole (memory up to --body-buffer, then a temporary "
        "file) and set CONTENT_LENGTH before calling the app, for apps such as Django that "
        "read only CONTENT_LENGTH bytes",
    )
    sendfile: bool = setting(True, flags=("--no-sendfile",), kind="off", group=LIMITS,
                             help="send wsgi.file_wrapper files by iterating, not os.sendfile")

    # TLS, for setups without a proxy in front.
    certfile: str | None = setting(None, flags=("--certfile",), group=TLS,
                                   help="PEM certificate (chain); enables HTTPS")
    keyfile: str | None = setting(None, flags=("--keyfile",), group=TLS,
                                  help="PEM private key (if not in --certfile)")
    ca_certs: str | None = setting(None, flags=("--ca-certs",), group=TLS,
                                   help="CA bundle to verify client certificates")
    cert_reqs: int = setting(0, flags=("--cert-reqs",), parse=int, choices=(0, 1, 2), group=TLS,
                             help="client certificates: 0 none, 1 optional, 2 required")
    ciphers: str | None = setting(None, flags=("--ciphers",), group=TLS,
                                  help="OpenSSL cipher list (Python's defaults otherwise)")

    # WSGI environ.
    root_path: str = setting("", flags=("--root-path",), group=ENVIRON,
                             help="SCRIPT_NAME of an app mounted under a URL prefix")
    url_scheme: str = setting(
        "http", group="", help="http, or https with --certfile (not an option)"
    )
    proxy_headers: bool = setting(False, flags=("--proxy-headers",), kind="on", group=ENVIRON,
                                  help="apply X-Forwarded-*/Forwarded from --forwarded-allow-ips")
    forwarded_allow_ips: list[str] = setting(
        factory=lambda: ["127.0.0.1", "::1"], flags=("--forwarded-allow-ips",), parse=comma_list,
        group=ENVIRON, help="trusted proxies: IPs, CIDRs or *",
    )
    proxy_protocol: bool = setting(
        False, flags=("--proxy-protocol",), kind="on", group=ENVIRON,
        help="accept a PROXY protocol v1/v2 header (HAProxy, cloud TCP load balancers) from "
        "--proxy-allow-from; it sets REMOTE_ADDR, REMOTE_PORT and, for TLS, the scheme",
    )
    proxy_allow_ips: list[str] = setting(
        factory=lambda: ["127.0.0.1", "::1"], flags=("--proxy-allow-from",), parse=comma_list,
        group=ENVIRON, help="who may send a PROXY header: IPs, CIDRs or *",
    )
    server_header: bool = setting(True, flags=("--no-server-header",), kind="off", group=ENVIRON,
                                  help="send no Server header")
    date_header: bool = setting(True, flags=("--no-date-header",), kind="off", group=ENVIRON,
                                help="send no Date header")

    # The process.
    chdir: str | None = setting(None, flags=("--chdir",), group=PROCESS,
                                help="change to this directory before loading APP")
    pythonpath: list[str] = setting(
        factory=list, flags=("--pythonpath",), parse=comma_list, group=PROCESS, metavar="DIRS",
        help="comma-separated directories put first on sys.path", show_default=False,
    )
    env: list[str] = setting(
        factory=list, flags=("-e", "--env"), kind="append", metavar="KEY=VALUE", group=PROCESS,
        gunicorn_name="raw_env", help="set an environment variable for the app; repeatable",
        show_default=False,
    )
    pid: str | None = setting(None, flags=("-p", "--pid"), metavar="FILE", group=PROCESS,
                              gunicorn_name="pidfile",
                              help="write the server's pid to FILE (removed at exit)")
    user: str | None = setting(
        None, flags=("-u", "--user"), group=PROCESS,
        help="switch workers to this user (name or uid) after binding, before loading the app",
    )
    group: str | None = setting(
        None, flags=("-g", "--group"), group=PROCESS,
        help="switch workers to this group (name or gid); Unix sockets get this group too",
    )
    initgroups: bool = setting(False, flags=("--initgroups",), kind="on", group=PROCESS,
                               help="with --user: also take the user's supplementary groups")
    paste: str | None = setting(
        None, flags=("--paste", "--paster"), metavar="FILE", group=PROCESS,
        help="load the app from a PasteDeploy .ini file (pip install wsgiloop[paste])",
    )
    worker_tmp_dir: str | None = setting(
        None, flags=("--worker-tmp-dir",), metavar="DIR", group=PROCESS,
        help="accepted for gunicorn command lines and unused: heartbeats are in shared memory, "
        "so wsgiloop writes no temporary files",
    )
    capture_output: bool = setting(
        False, flags=("--capture-output",), kind="on", group=LOGGING,
        help="send the app's stdout and stderr to the error log file",
    )
    enable_stdio_inheritance: bool = setting(
        False, flags=("-R", "--enable-stdio-inheritance"), kind="on", group=LOGGING,
        help="accepted for gunicorn command lines: wsgiloop never daemonizes, so workers always "
        "inherit stdio",
    )

    # Logging.
    log_level: str = setting("info", flags=("--log-level",), choices=LOG_LEVELS, group=LOGGING,
                             gunicorn_name="loglevel", help="error log level")
    access_log: bool = setting(True, flags=("--access-log",), kind="both", group=LOGGING,
                               help="one line per request")
    access_log_file: str | None = setting(
        None, flags=("--access-log-file",), metavar="FILE", group=LOGGING,
        gunicorn=("--access-logfile",), gunicorn_name="accesslog",
        help="where access lines go: a file, or - for stdout (default: stderr)",
    )
    error_log_file: str | None = setting(
        None, flags=("--error-log-file",), metavar="FILE", group=LOGGING,
        gunicorn=("--error-logfile", "--log-file"), gunicorn_name="errorlog",
        help="where the error log goes: a file, or - for stderr (the default)",
    )
    access_log_format: str = setting(
        DEFAULT_ACCESS_LOG_FORMAT, flags=("--access-log-format",), group=LOGGING,
        gunicorn=("--access-logformat",), show_default=False,
        help="gunicorn atoms: h l u t r m U q H s B b f a T D M L p {header}i",
    )
    access_log_json: bool = setting(False, flags=("--access-log-json",), kind="on", group=LOGGING,
                                    help="access lines as JSON objects, for log shippers")
    log_config: str | None = setting(
        None, flags=("--log-config",), metavar="FILE", group=LOGGING,
        gunicorn=("--log-config-json",), gunicorn_name="logconfig",
        help="logging configuration: a dictConfig as JSON or TOML, or a fileConfig .ini",
    )
    log_config_dict: dict[str, Any] | None = setting(
        None, group="", gunicorn_name="logconfig_dict",
        help="a logging dictConfig given inline (config files only)",
    )

    # Metrics and health (see metrics, exposition, statsd). Off by default: nothing is counted.
    # A listener of its own, never one of --bind; with --workers N the supervisor serves the
    # whole instance there.
    metrics_bind: str | None = setting(
        None, flags=("--metrics-bind",), metavar="ADDRESS", group=METRICS,
        help="HOST:PORT or unix:PATH serving GET /metrics (Prometheus) and the health path; "
        "never an app address",
    )
    health_path: str | None = setting(
        None, flags=("--health-path",), metavar="/PATH", group=METRICS,
        help="answered on the loop, never by the app: 200 while serving, 503 once a graceful "
        "stop begins; also on --metrics-bind",
    )
    statsd_host: str | None = setting(
        None, flags=("--statsd-host",), metavar="HOST:PORT", group=METRICS,
        help="send gunicorn's statsd metrics and wsgiloop's there, batched per tick",
    )
    statsd_prefix: str = setting("", flags=("--statsd-prefix",), metavar="PREFIX",
                                 group=METRICS, help="prefix of every statsd name")
    dogstatsd_tags: str = setting(
        "", flags=("--dogstatsd-tags",), metavar="TAGS", group=METRICS,
        help="comma-separated dogstatsd tags for every statsd line, e.g. env:prod",
    )

    # Server hooks (gunicorn's names), from a Python config file only.
    hooks: Hooks = field(default_factory=Hooks)

    def validate(self) -> Config:
        """Raise ``ConfigError`` on the first impossible value; return self for chaining."""
        positive = {
            "threads": self.threads,
            "workers": self.workers,
            "backlog": self.backlog,
            "limit_concurrency": self.limit_concurrency,
            "max_header_bytes": self.max_header_bytes,
            "limit_request_line": self.limit_request_line,
            "limit_request_fields": self.limit_request_fields,
            "write_buffer_high": self.write_buffer_high,
            "body_buffer": self.body_buffer,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.write_buffer_low < 0 or self.write_buffer_low > self.write_buffer_high:
            raise ConfigError("--write-buffer-low must be between 0 and --write-buffer-high")
        if self.max_body_size < 0 or self.max_discard < 0 or self.limit_request_field_size < 0:
            raise ConfigError(
                "--max-body-size, --max-discard and --limit-request-field-size must not be "
                "negative"
            )
        for name in (
            "keepalive_timeout",
            "header_timeout",
            "graceful_timeout",
            "timeout",
            "body_timeout",
            "write_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_of(name)} must not be negative")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"--loop must be auto, uvloop or asyncio, got {self.loop!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError("--root-path must start with '/' and not end with '/'")
        if self.url_scheme not in ("http", "https"):
            raise ConfigError("url scheme must be http or https")
        if self.keyfile and not self.certfile:
            raise ConfigError("--keyfile needs --certfile")
        if self.cert_reqs not in (0, 1, 2):
            raise ConfigError("--cert-reqs must be 0 (none), 1 (optional) or 2 (required)")
        if self.reload and self.preload:
            # The supervisor would hold the old code: a reload could never load the new one.
            raise ConfigError("--reload and --preload cannot be used together: with --preload "
                              "the supervisor holds the app, so new code would never load")
        if self.reload_engine not in ("auto", "poll", "inotify"):
            raise ConfigError("--reload-engine must be auto, poll or inotify")
        for item in self.env:
            if "=" not in item or not item.partition("=")[0]:
                raise ConfigError(f"--env expects KEY=VALUE, got {item!r}")
        if self.app and self.paste:
            raise ConfigError("give either APP or --paste, not both")
        try:
            check_worker_class(self.worker_class)
        except Refused as exc:
            raise ConfigError(str(exc)) from None
        self._validate_metrics()
        return self

    def _validate_metrics(self) -> None:
        from .sockets import parse_bind

        if self.metrics_bind is not None:
            try:
                address = parse_bind(self.metrics_bind, default_port=9100)
            except ValueError as exc:
                raise ConfigError(str(exc).replace("--bind", "--metrics-bind")) from None
            if address.port != 0 and any(
                str(address) == str(parse_bind(bind)) for bind in self.bind if _parses(bind)
            ):
                raise ConfigError("--metrics-bind must not be one of --bind: the app's port "
                                  "never serves metrics")
        if self.health_path is not None and not self.health_path.startswith("/"):
            raise ConfigError("--health-path must start with '/'")
        if self.statsd_host is not None:
            if self.statsd_host.startswith("unix:"):
                raise ConfigError("--statsd-host must be HOST:PORT")
            try:
                parse_bind(self.statsd_host, default_port=8125)
            except ValueError as exc:
                raise ConfigError(str(exc).replace("--bind", "--statsd-host")) from None


def _parses(bind: str) -> bool:
    from .sockets import parse_bind

    try:
        parse_bind(bind)
    except ValueError:
        return False
    return True


# -- reading the declarations --------------------------------------------------------------------


def option_of(name: str) -> Option | None:
    """The ``Option`` of field ``name``, or None for a field that is no setting (hooks)."""
    return _OPTIONS.get(name)


def flag_of(name: str) -> str:
    """The flag that names setting ``name`` in messages: its first long flag."""
    option = _OPTIONS.get(name)
    if option is not None:
        for flag in option.flags:
            if flag.startswith("--"):
                return flag
    return "--" + name.replace("_", "-")


def field_names() -> list[str]:
    """The names of every setting (the fields of ``Config`` that files and variables may set)."""
    return list(_OPTIONS)


def gunicorn_names() -> dict[str, str]:
    """Setting names in a gunicorn.conf.py that differ from wsgiloop's, mapped to wsgiloop's."""
    return {o.gunicorn_name: name for name, o in _OPTIONS.items() if o.gunicorn_name}


# -- layered configuration -----------------------------------------------------------------------

ENV_PREFIX = "WSGILOOP_"


def coerce(name: str, value: Any) -> Any:
    """Convert a TOML, Python-file or environment value to the type of ``Config.<name>``."""
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, (list, tuple)):
            items = list(value)
        elif name == "env":
            items = [str(value)]  # one KEY=VALUE, whose value may hold commas
        else:
            items = str(value).split(",")
        kind = int if name == "fd" else str
        try:
            return [kind(str(v).strip()) for v in items if str(v).strip()]
        except ValueError:
            raise ConfigError(f"{name}: expected a list of {kind.__name__}: {value!r}") from None
    if name == "log_config_dict":
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table (a logging dictConfig), got {value!r}")
        return value
    if name == "umask":
        return value if isinstance(value, int) or value is None else octal(str(value))
    if value is None:
        return None
    try:
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            return int(value)
    except (TypeError, ValueError):
        expected = type(default).__name__
        raise ConfigError(f"{name}: expected {expected}, got {value!r}") from None
    return str(value)


def from_toml(path: str) -> dict[str, Any]:
    """Config values from a TOML file: top-level keys or a ``[wsgiloop]`` table."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    data = data.get("wsgiloop", data)
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _OPTIONS:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        values[name] = coerce(name, value)
    return values


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config values from ``WSGILOOP_<FIELD>`` variables, e.g. ``WSGILOOP_THREADS=16``.

    A ``WSGILOOP_`` variable that names no setting is an error, as an unknown key in a file is:
    a typo must not pass for the default. ``WSGILOOP_CMD_ARGS`` is read by the command line.
    """
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in _OPTIONS:
            raise ConfigError(f"environment variable {key}: unknown setting {name!r}")
        values[name] = coerce(name, raw)
    return values


def from_platform(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that Heroku-style platforms (and gunicorn, and uvicorn) take from ``PORT``
    and ``WEB_CONCURRENCY``: every other source overrides them."""
    values: dict[str, Any] = {}
    port = environ.get("PORT", "").strip()
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"environment variable PORT: expected a port number, got {port!r}")
        values["bind"] = [f"0.0.0.0:{port}"]
    concurrency = environ.get("WEB_CONCURRENCY", "").strip()
    if concurrency:
        if not concurrency.isdigit():
            raise ConfigError(
                f"environment variable WEB_CONCURRENCY: expected a number, got {concurrency!r}"
            )
        values["workers"] = int(concurrency)
    return values


def render(config: Config) -> str:
    """The effective configuration as TOML (what ``--check-config`` prints)."""
    lines = []
    for name in field_names():
        value = getattr(config, name)
        if value is None:
            lines.append(f"# {name} = (unset)")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{name} = {value!r}")
        elif isinstance(value, list):
            lines.append(f"{name} = [{', '.join(_quote(v) for v in value)}]")
        else:
            lines.append(f"{name} = {_quote(value)}")
    defined = config.hooks.defined()
    if defined:
        lines.append(f"# server hooks: {', '.join(defined)}")
    return "\n".join(lines) + "\n"


def _quote(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


_OPTIONS: dict[str, Option] = {
    f.name: f.metadata["option"] for f in fields(Config) if "option" in f.metadata
}
_DEFAULTS: dict[str, Any] = {name: getattr(Config(), name) for name in _OPTIONS}
#: Variables with the prefix that are not settings.
_NOT_SETTINGS = frozenset(
    {
        "WSGILOOP_CMD_ARGS",
        # The test suite's and the fuzzers' own switches (tests/).
        "WSGILOOP_NO_SKIPS",
        "WSGILOOP_FUZZ_EXAMPLES",
        "WSGILOOP_FUZZ_TARGET",
        "WSGILOOP_SOAK_SECONDS",
        "WSGILOOP_LIFECYCLE_SECONDS",
    }
)
