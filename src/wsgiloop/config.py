"""Server configuration: one frozen-after-start dataclass shared by the CLI, the Python API and
the server.

Every knob has a default that is safe on the open internet; the CLI (``cli``) and ``serve()``
only override fields. Validation lives here so both entry points reject the same mistakes with
the same message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

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
    timeout: float = 30.0  # a worker whose event loop is silent this long is killed; 0: never
    max_requests: int = 0  # recycle a worker after this many requests; 0: never
    max_requests_jitter: int = 0
    preload: bool = False

    # Buffers between the loop and the app threads (bytes). These bound memory per connection.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    body_buffer: int = 256 * 1024
    max_discard: int = 256 * 1024

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
        for name in ("keepalive_timeout", "header_timeout", "graceful_timeout", "timeout"):
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
        return self
