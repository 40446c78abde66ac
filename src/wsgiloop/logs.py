"""Loggers and the access-log line.

Two stdlib loggers, as gunicorn has them: ``wsgiloop.error`` for the server's own messages and
``wsgiloop.access`` for one line per request. The access line uses gunicorn's atoms
(``%(h)s %(r)s %(s)s`` ...) so existing log parsers keep working. It is formatted in the app's
thread after the response has been handed to the loop, and only when the logger is enabled, so a
disabled access log costs one ``isEnabledFor`` check per request.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import time
from typing import Any

error_log = logging.getLogger("wsgiloop.error")
access_log = logging.getLogger("wsgiloop.access")

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
ERROR_DATEFMT = "%Y-%m-%d %H:%M:%S %z"


def configure(
    level: str = "info",
    access: bool = True,
    log_config: str | None = None,
    access_json: bool = False,
    *,
    access_file: str | None = None,
    error_file: str | None = None,
    log_config_dict: dict[str, Any] | None = None,
    capture_output: bool = False,
) -> None:
    """Set up both loggers.

    From ``--log-config`` (a dictConfig in JSON or TOML, or a ``fileConfig`` .ini as gunicorn
    takes) or a config file's ``logconfig_dict`` if given; else the error log goes to
    ``error_file`` (``-`` or None: stderr) and access lines to ``access_file`` (None: stderr,
    ``-``: stdout, as gunicorn's ``--access-logfile -``). Files are appended to and reopened on
    SIGUSR1 (``reopen_files``), as logrotate's ``postrotate`` expects. Without any of these, the
    loggers an embedding program already configured are left alone.
    """
    global _json, _captured
    _json = access_json
    if log_config_dict is not None or log_config:
        if log_config_dict is not None:
            logging.config.dictConfig(_with_dict_defaults(dict(log_config_dict)))
        elif log_config is not None and log_config.endswith((".ini", ".conf", ".cfg")):
            logging.config.fileConfig(log_config, disable_existing_loggers=False)
        elif log_config is not None:
            logging.config.dictConfig(_load_dict_config(log_config))
        if not access:
            access_log.setLevel(logging.CRITICAL + 1)
        return
    numeric = getattr(logging, level.upper())
    targets = {error_log: error_file, access_log: access_file}
    for logger, target in targets.items():
        if target is None and logger.handlers:
            continue  # configured by the embedding program (or a previous call): leave it
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        handler: logging.Handler
        if target is None or (target == "-" and logger is error_log):
            handler = logging.StreamHandler(sys.stderr)
        elif target == "-":
            handler = logging.StreamHandler(sys.stdout)
        else:
            try:
                handler = _ReopenableFileHandler(target)
            except OSError as exc:
                flag = "--error-log-file" if logger is error_log else "--access-log-file"
                raise OSError(exc.errno, f"{flag} {target}: {exc.strerror}") from None
        fmt = ERROR_FORMAT if logger is error_log else "%(message)s"
        handler.setFormatter(logging.Formatter(fmt, ERROR_DATEFMT))
        logger.addHandler(handler)
        logger.propagate = False
    error_log.setLevel(numeric)
    # The access log is INFO-level by nature: --log-level warning does not silence it, only
    # --no-access-log does (as in gunicorn, where the access log is its own switch).
    access_log.setLevel(logging.INFO if access else logging.CRITICAL + 1)
    _captured = None
    if capture_output:
        for handler in error_log.handlers:
            if isinstance(handler, _ReopenableFileHandler):
                _captured = handler
                _capture(handler)


class _ReopenableFileHandler(logging.FileHandler):
    """A log file that SIGUSR1 reopens (after logrotate moved it), with no per-line ``stat``
    (the stdlib's ``WatchedFileHandler`` makes one for every line: one per request here)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=False)

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


_captured: _ReopenableFileHandler | None = None


def _capture(handler: _ReopenableFileHandler) -> None:
    """``--capture-output``: the app's stdout and stderr (fds 1 and 2) write to the error log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = handler.stream.fileno()  # type: ignore[union-attr]  # open: delay=False
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def reopen_files() -> None:
    """SIGUSR1: reopen every log file this module opened (and re-point captured output)."""
    for logger in (error_log, access_log):
        for handler in logger.handlers:
            if isinstance(handler, _ReopenableFileHandler):
                handler.reopen()
    if _captured is not None:
        _capture(_captured)


def _load_dict_config(path: str) -> dict[str, Any]:
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    return _with_dict_defaults(data)


def _with_dict_defaults(data: dict[str, Any]) -> dict[str, Any]:
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    return data


class _Atoms(dict[str, str]):
    """Unknown atoms render as ``-`` instead of raising, so a typo in a format never 500s."""

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and key.endswith("}i"):
            return self.get("__header__" + key[1:-2].lower(), "-")
        return "-"


def access_atoms(
    environ: dict[str, Any],
    status: str,
    sent: int,
    duration: float,
) -> dict[str, str]:
    """The gunicorn atoms for one request (``duration`` in seconds)."""
    query = environ.get("QUERY_STRING", "")
    path = environ.get("RAW_URI") or (environ.get("PATH_INFO", "") + ("?" + query if query else ""))
    atoms = _Atoms(
        h=environ.get("REMOTE_ADDR") or "-",
        l="-",
        u=_remote_user(environ),
        t=time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
        r=f"{environ['REQUEST_METHOD']} {path} {environ['SERVER_PROTOCOL']}",
        m=environ["REQUEST_METHOD"],
        U=environ.get("PATH_INFO", ""),
        q=query,
        H=environ["SERVER_PROTOCOL"],
        s=status.split(" ", 1)[0],
        B=str(sent),
        b=str(sent) if sent else "-",
        f=environ.get("HTTP_REFERER", "-"),
        a=environ.get("HTTP_USER_AGENT", "-"),
        T=str(int(duration)),
        D=str(int(duration * 1_000_000)),
        M=str(int(duration * 1000)),
        L=f"{duration:.6f}",
        p=f"<{_pid}>",
    )
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            atoms["__header__" + key[5:].lower().replace("_", "-")] = value
    return atoms


def _remote_user(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        import base64
        import binascii

        try:
            return base64.b64decode(auth[6:]).decode("latin-1").split(":", 1)[0] or "-"
        except (binascii.Error, ValueError):
            return "-"
    return "-"


_pid = os.getpid()


def set_pid(pid: int) -> None:
    """Record the worker's pid for the ``%(p)s`` atom (after fork it changes)."""
    global _pid
    _pid = pid


_json = False


def access_json(environ: dict[str, Any], status: str, sent: int, duration: float) -> str:
    """One access record as a JSON object (``--access-log-json``), one line, for log shippers."""
    code = status.split(" ", 1)[0]
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "remote_addr": environ.get("REMOTE_ADDR") or None,
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "protocol": environ["SERVER_PROTOCOL"],
            "status": int(code) if code.isdigit() else None,
            "bytes": sent,
            "referer": environ.get("HTTP_REFERER"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "duration_ms": round(duration * 1000, 3),
            "pid": _pid,
        },
        separators=(",", ":"),
    )


def log_access(
    fmt: str, environ: dict[str, Any], status: str, sent: int, duration: float
) -> None:
    """Write one access line; callers check ``access_log.isEnabledFor(INFO)`` first."""
    try:
        if _json:
            access_log.info("%s", access_json(environ, status, sent, duration))
            return
        access_log.info(fmt, access_atoms(environ, status, sent, duration))
    except Exception:  # a broken format must not break the request
        error_log.exception("Failed to format the access log line")
