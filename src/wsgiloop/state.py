"""What every connection of one worker shares: the app, the settings, the pool, the counters.

Kept apart from ``server`` (which makes it) and ``protocol`` (which reads it) so that neither
imports the other for it: the connections it tracks are seen through ``Tracked``, the little
that the server's ticker and shutdown ask of a connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
from collections.abc import Callable
from typing import Any, Protocol

import h11

from .config import Config
from .environ import connection_environ
from .hooks import RequestHooks, WorkerView
from .lifecycle import Phase, phase_timeouts
from .metrics import Metrics
from .pool import ThreadPool
from .proxy import ProxyTrust
from .wsgi import WSGIApp


class Tracked(Protocol):
    """A connection as the server sees it (``protocol.HttpProtocol``)."""

    deadline: float
    phase: Phase

    def on_deadline(self) -> None: ...

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class ServerState:
    """What every connection of one worker shares."""

    __slots__ = (
        "_base_environs",
        "app",
        "config",
        "connections",
        "default_headers",
        "health_target",
        "hung",
        "idle",
        "loop",
        "metrics",
        "new_parser",
        "pool",
        "proxy_protocol",
        "proxy_trust",
        "request_hooks",
        "requests",
        "stopping",
        "timeouts",
        "url_scheme",
    )

    def __init__(
        self,
        app: WSGIApp,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        worker: WorkerView | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        #: The worker's figures; None with neither --metrics-bind nor --statsd-host, and then
        #: every place that counts costs one test of this attribute.
        self.metrics = (
            Metrics() if config.metrics_bind is not None or config.statsd_host is not None
            else None
        )
        self.pool = ThreadPool(
            config.threads, waited=None if self.metrics is None else self.metrics.waited
        )
        self.connections: set[Tracked] = set()
        self.idle = 0  # connections in IDLE at the last tick (the ticker counts them)
        #: The request target of --health-path, answered on the loop (None: off).
        self.health_target = config.health_path.encode() if config.health_path else None
        self.stopping = False
        self.requests = 0  # responses completed, for --max-requests
        #: pre_request/post_request, or None when neither is defined (one test per request).
        self.request_hooks = RequestHooks.of(config.hooks, worker)
        self.hung = 0  # pool threads still inside an app call that timed out (--timeout)
        #: Seconds from entering each phase of a connection's life to its deadline.
        self.timeouts: dict[Phase, float | None] = phase_timeouts(config)
        self.url_scheme = "https" if config.certfile else config.url_scheme
        #: Whom to believe about X-Forwarded-*/Forwarded; None without --proxy-headers.
        self.proxy_trust = ProxyTrust(config.forwarded_allow_ips) if config.proxy_headers else None
        #: Who may send a PROXY protocol header; None without --proxy-protocol.
        self.proxy_protocol = (
            ProxyTrust(config.proxy_allow_ips) if config.proxy_protocol else None
        )
        #: A fresh h11 parser for a connection's next request (a C-level call: no frame).
        self.new_parser: Callable[[], h11.Connection] = functools.partial(
            h11.Connection, h11.SERVER, max_incomplete_event_size=config.max_header_bytes
        )
        self.default_headers: list[tuple[bytes, bytes]] = []
        self.refresh_headers()
        self._base_environs: dict[tuple[tuple[str, int] | None, str], dict[str, Any]] = {}

    def base_environ(
        self, local: tuple[str, int] | None, scheme: str | None = None
    ) -> dict[str, Any]:
        """The per-connection environ keys for connections to ``local`` (None: a Unix socket),
        shared by all of them: requests copy it, nothing writes to it. ``scheme``: what a PROXY
        header said, where it overrides the listener's."""
        key = (local, scheme or self.url_scheme)
        base = self._base_environs.get(key)
        if base is None:
            base = connection_environ(
                server=local,
                peer=None,
                url_scheme=key[1],
                script_name=self.config.root_path,
                multiprocess=self.config.workers > 1,
            )
            if len(self._base_environs) < 64:  # a few listeners; any number of local addresses
                self._base_environs[key] = base
        return base

    def job_done(self, timed_out: bool) -> None:
        """An app call finished its response (on the loop): free its pool slot."""
        self.pool.done()
        self.requests += 1
        if timed_out:
            self.hung -= 1

    def refresh_headers(self) -> None:
        """Rebuild the Server/Date headers (replaced, never mutated: app threads read it)."""
        headers = []
        if self.config.server_header:
            headers.append((b"Server", b"wsgiloop"))
        if self.config.date_header:
            headers.append((b"Date", email.utils.formatdate(usegmt=True).encode()))
        self.default_headers = headers
