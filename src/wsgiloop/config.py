"""Server configuration: one frozen-after-start dataclass shared by the CLI, the Python API and
the server.

Every knob has a default that is safe on the open internet; the CLI (``cli``) and ``serve()``
only override fields. Validation lives here so both entry points reject the same mistakes with
the same message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

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


@dataclass(slots=True)
class Config:
    """Everything the server needs to know; field names match the long CLI options."""

    # What to serve and where.
    app: str | None = None
    bind: list[str] = field(default_factory=list)  # empty: DEFAULT_BIND unless fds are inherited
    fd: list[int] = field(default_factory=list)
    backlog: int = 2048
    reuse_port: bool = False
    umask: int | None = None

    # Concurrency.
    threads: int = field(default_factory=default_threads)
    workers: int = 1
    loop: LoopName = "auto"
    limit_concurrency: int = 4096

    # Limits on what a client may send.
    max_header_bytes: int = 65536
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    max_body_size: int = 1 << 30

    # Timeouts, in seconds.
    keepalive_timeout: float = 5.0
    header_timeout: float = 10.0
    graceful_timeout: float = 30.0
    # A request whose app has not started its response after this long is answered 503 and its
    # connection closed; a worker whose event loop is silent this long is killed. 0: never.
    timeout: float = 30.0
    body_timeout: float = 30.0  # a request body that stalls this long: 408 (or abort) and close
    write_timeout: float = 60.0  # a client that reads nothing of the response this long: abort
    max_requests: int = 0  # recycle a worker after this many requests; 0: never
    max_requests_jitter: int = 0
    preload: bool = False

    # Buffers between the loop and the app threads (bytes). These bound memory per connection.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    body_buffer: int = 256 * 1024
    max_discard: int = 256 * 1024
    # Read a chunked request body whole before the app runs and set CONTENT_LENGTH (see spool).
    spool_chunked_body: bool = False

    # TLS, for setups without a proxy in front.
    certfile: str | None = None
    keyfile: str | None = None
    ca_certs: str | None = None
    cert_reqs: int = 0  # ssl.VerifyMode: 0 none, 1 optional, 2 required (as gunicorn)

    # WSGI environ.
    root_path: str = ""
    url_scheme: str = "http"
    proxy_headers: bool = False
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])

    # Response headers added by the server.
    server_header: bool = True
    date_header: bool = True

    # Logging.
    log_level: str = "info"
    access_log: bool = True
    access_log_format: str = DEFAULT_ACCESS_LOG_FORMAT
    access_log_json: bool = False
    log_config: str | None = None

    # -- Metrics and health (issue 12): see metrics, exposition, statsd. Off by default. --------
    # HOST:PORT or unix:PATH of a listener of its own for GET /metrics (and the health path);
    # never one of --bind. With --workers N the supervisor serves the whole instance there.
    metrics_bind: str | None = None
    # A path answered on the loop (never by the app): 200 while serving, 503 once stopping.
    health_path: str | None = None
    statsd_host: str | None = None  # HOST:PORT: gunicorn's statsd names, batched per tick
    statsd_prefix: str = ""
    dogstatsd_tags: str = ""  # "a:1,b": appended to every statsd line as dogstatsd tags

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
        if self.max_body_size < 0 or self.max_discard < 0:
            raise ConfigError("--max-body-size and --max-discard must not be negative")
        for name in (
            "keepalive_timeout",
            "header_timeout",
            "graceful_timeout",
            "timeout",
            "body_timeout",
            "write_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
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


# -- layered configuration: defaults < TOML file < WSGILOOP_* environment < command line --------

ENV_PREFIX = "WSGILOOP_"


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def coerce(name: str, value: Any) -> Any:
    """Convert a TOML or environment value to the type of ``Config.<name>``."""
    default = getattr(Config(), name)
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
        items = value if isinstance(value, list) else [v for v in str(value).split(",")]
        kind = int if name == "fd" else str
        try:
            return [kind(str(v).strip()) for v in items if str(v).strip()]
        except ValueError:
            raise ConfigError(f"{name}: expected a list of {kind.__name__}: {value!r}") from None
    if name == "umask":
        return value if isinstance(value, int) else int(str(value), 8)
    try:
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            return int(value)
    except (TypeError, ValueError):
        expected = type(default).__name__
        raise ConfigError(f"{name}: expected {expected}, got {value!r}") from None
    return None if value is None else str(value)


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
    known = set(field_names())
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
        values[name] = coerce(name, value)
    return values


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config values from ``WSGILOOP_<FIELD>`` variables, e.g. ``WSGILOOP_THREADS=16``."""
    values: dict[str, Any] = {}
    for name in field_names():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = coerce(name, raw)
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
    return "\n".join(lines) + "\n"


def _quote(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
