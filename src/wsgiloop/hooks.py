"""Server hooks with gunicorn's names and arguments, and the objects they are given.

A Python config file (``-c wsgiloop.conf.py``, or an existing ``gunicorn.conf.py``) defines them
as module-level functions. ``Hooks`` holds them; where one is called, and in which process:

=================  ===============================  ============================================
hook               arguments                        called
=================  ===============================  ============================================
on_starting        server                           supervisor (or the one process), before bind
when_ready         server                           once the sockets are bound, before workers
pre_fork           server, worker                   supervisor, just before forking a worker
post_fork          server, worker                   the new worker, before it loads the app
post_worker_init   worker                           the worker, once the app is loaded
worker_int         worker                           the worker, on SIGINT or SIGQUIT
worker_abort       worker                           the worker, on SIGABRT (sent on --timeout)
pre_request        worker, req                      the app thread, before the app is called
post_request       worker, req, environ, resp       the app thread, after the response ended
child_exit         server, worker                   supervisor, once a worker has exited
worker_exit        server, worker                   the worker, just before it exits
nworkers_changed   server, new_value, old_value     supervisor: at start (old None), SIGTTIN/OU
on_reload          server                           supervisor, on SIGHUP
on_exit            server                           supervisor (or the one process), at exit
pre_exec           server                           never: wsgiloop does not re-exec (no USR2)
=================  ===============================  ============================================

With ``--workers 1`` there is no supervisor and no fork: ``pre_fork`` and ``post_fork`` are
called in the one process, in that order, so the code an app keeps there (opening database
connections, starting an OpenTelemetry or Sentry exporter thread) runs exactly once per worker
either way. A hook that raises is logged with its traceback and the server goes on, except
``pre_request``: its exception is the request's, which gets a 500. Undefined
``pre_request``/``post_request`` cost one attribute test per request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .logs import error_log

HOOK_NAMES = (
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
)


@dataclass(slots=True)
class Hooks:
    """The hooks a config file defined; None where it defined none."""

    on_starting: Callable[..., Any] | None = None
    on_reload: Callable[..., Any] | None = None
    when_ready: Callable[..., Any] | None = None
    pre_fork: Callable[..., Any] | None = None
    post_fork: Callable[..., Any] | None = None
    post_worker_init: Callable[..., Any] | None = None
    worker_int: Callable[..., Any] | None = None
    worker_abort: Callable[..., Any] | None = None
    pre_exec: Callable[..., Any] | None = None
    pre_request: Callable[..., Any] | None = None
    post_request: Callable[..., Any] | None = None
    child_exit: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    nworkers_changed: Callable[..., Any] | None = None
    on_exit: Callable[..., Any] | None = None

    def defined(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def run(self, name: str, *args: Any) -> None:
        """Call hook ``name`` if defined; its exception is logged, never raised."""
        hook = getattr(self, name)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            error_log.exception("Exception in the %s hook", name)


class HookLog:
    """``server.log`` / ``worker.log``: gunicorn's logger methods, on wsgiloop's error log."""

    def __init__(self, logger: logging.Logger = error_log) -> None:
        self._logger = logger
        self.debug = logger.debug
        self.info = logger.info
        self.warning = logger.warning
        self.warn = logger.warning
        self.error = logger.error
        self.critical = logger.critical
        self.exception = logger.exception

    def log(self, level: int | str, msg: str, *args: Any, **kwargs: Any) -> None:
        if isinstance(level, str):
            level = getattr(logging, level.upper(), logging.INFO)
        self._logger.log(level, msg, *args, **kwargs)

    def reopen_files(self) -> None:
        from .logs import reopen_files

        reopen_files()


class SettingsView:
    """``server.cfg`` / ``worker.cfg``: the settings by wsgiloop's names and gunicorn's."""

    def __init__(self, config: Any) -> None:
        self._config = config
        # gunicorn's names, from the settings' own declarations (config.Option).
        self._aliases = {
            f.metadata["option"].gunicorn_name: f.name
            for f in fields(config)
            if "option" in f.metadata and f.metadata["option"].gunicorn_name
        }

    def __getattr__(self, name: str) -> Any:
        aliases = object.__getattribute__(self, "_aliases")
        return getattr(object.__getattribute__(self, "_config"), aliases.get(name, name))

    @property
    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self._config, f.name) for f in fields(self._config)
                if "option" in f.metadata}


class ServerView:
    """The ``server`` argument: the supervisor (or, with ``--workers 1``, the one process)."""

    def __init__(self, config: Any, num_workers: int) -> None:
        self.cfg = SettingsView(config)
        self.log = HookLog()
        self.pid = os.getpid()
        self.num_workers = num_workers
        self.WORKERS: dict[int, WorkerView] = {}  # gunicorn's name


class WorkerView:
    """The ``worker`` argument."""

    def __init__(self, config: Any, age: int, pid: int = 0) -> None:
        self.cfg = SettingsView(config)
        self.log = HookLog()
        self.age = age  # the how-manieth worker the supervisor started (gunicorn's meaning)
        self.pid = pid or os.getpid()
        self.ppid = os.getppid()
        self.booted = False
        self.alive = True
        self.started = time.monotonic()

    def __str__(self) -> str:
        return f"<Worker {self.pid}>"


class RequestView:
    """The ``req`` argument of ``pre_request``/``post_request``, from the environ (gunicorn's
    ``Request`` attributes that hooks use)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    @property
    def method(self) -> str:
        return str(self._environ["REQUEST_METHOD"])

    @property
    def path(self) -> str:
        return str(self._environ.get("SCRIPT_NAME", "")) + str(self._environ.get("PATH_INFO", ""))

    @property
    def query(self) -> str:
        return str(self._environ.get("QUERY_STRING", ""))

    @property
    def uri(self) -> str:
        return str(self._environ.get("RAW_URI") or self.path)

    @property
    def version(self) -> tuple[int, int]:
        major, _, minor = str(self._environ["SERVER_PROTOCOL"])[5:].partition(".")
        return int(major), int(minor or 0)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Upper-case names, as gunicorn gives them."""
        environ = self._environ
        found = [(k[5:].replace("_", "-"), str(v)) for k, v in environ.items()
                 if k.startswith("HTTP_")]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key in environ:
                found.append((key.replace("_", "-"), str(environ[key])))
        return found

    @property
    def remote_addr(self) -> str:
        return str(self._environ.get("REMOTE_ADDR", ""))

    @property
    def peer_addr(self) -> tuple[str, int]:
        port = self._environ.get("REMOTE_PORT", "0")
        return self.remote_addr, int(port) if str(port).isdigit() else 0


class ResponseView:
    """The ``resp`` argument of ``post_request``."""

    __slots__ = ("headers", "sent", "status")

    def __init__(self, status: str, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status
        self.headers = headers
        self.sent = sent

    @property
    def status_code(self) -> int:
        code = self.status.split(" ", 1)[0]
        return int(code) if code.isdigit() else 0


class RequestHooks:
    """``pre_request`` and ``post_request`` as an app thread calls them (see ``wsgi``)."""

    __slots__ = ("post", "pre", "worker")

    def __init__(
        self,
        pre: Callable[..., Any] | None,
        post: Callable[..., Any] | None,
        worker: WorkerView | None,
    ) -> None:
        self.pre = pre
        self.post = post
        self.worker = worker

    @classmethod
    def of(cls, hooks: Hooks, worker: WorkerView | None) -> RequestHooks | None:
        """None when neither hook is defined: the request path then tests one attribute."""
        if hooks.pre_request is None and hooks.post_request is None:
            return None
        return cls(hooks.pre_request, hooks.post_request, worker)

    def before(self, environ: dict[str, Any]) -> None:
        """Runs on the app thread before the app; an exception is the request's (a 500)."""
        if self.pre is not None:
            self.pre(self.worker, RequestView(environ))

    def after(
        self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], sent: int
    ) -> None:
        """Runs on the app thread once the response has ended; an exception is logged."""
        if self.post is None:
            return
        try:
            self.post(self.worker, RequestView(environ), environ,
                      ResponseView(status, headers, sent))
        except Exception:
            error_log.exception("Exception in the post_request hook")
