"""The process's own setup: where it runs, as whom, and what it leaves behind.

``--chdir``, ``--pythonpath`` and ``--env`` are applied once, before anything imports the app;
``--pid`` writes the pid file (removed at exit by the process that wrote it); ``--user`` and
``--group`` drop root in each worker after the sockets are bound and before the app is loaded,
so the app never runs as root while the sockets (bound to port 80, say) stay open. Unix sockets
the server created get ``--user``/``--group`` as owner, so that with ``--umask 007`` a proxy
in that group (nginx's ``www-data``) can connect and nobody else can.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import Config, ConfigError
from .hooks import ServerView, WorkerView


def prepare(config: Config) -> None:
    """Apply ``--chdir``, ``--pythonpath`` and ``--env`` to this process."""
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise ConfigError(f"--chdir {config.chdir}: {exc.strerror}") from None
    for path in reversed(config.pythonpath):
        sys.path.insert(0, os.path.abspath(path))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: apps in the current directory import
    for item in config.env:
        key, _, value = item.partition("=")
        os.environ[key] = value


def resolve_ids(config: Config) -> tuple[int | None, int | None]:
    """The uid and gid of ``--user``/``--group`` (names or numbers); ConfigError if unknown.

    With ``--user`` alone the group is the user's primary group, as with gunicorn and su.
    """
    uid = gid = None
    if config.user:
        try:
            entry = pwd.getpwuid(int(config.user)) if config.user.isdigit() else pwd.getpwnam(
                config.user
            )
        except (KeyError, OverflowError):
            if not config.user.isdigit():
                raise ConfigError(f"--user {config.user}: no such user") from None
            uid = int(config.user)  # a bare uid with no passwd entry (containers do this)
        else:
            uid, gid = entry.pw_uid, entry.pw_gid
    if config.group:
        try:
            gid = int(config.group) if config.group.isdigit() else grp.getgrnam(
                config.group
            ).gr_gid
        except KeyError:
            raise ConfigError(f"--group {config.group}: no such group") from None
    if (uid is not None or gid is not None) and os.geteuid() != 0:
        current = (os.getuid(), os.getgid())
        if (uid is None or uid == current[0]) and (gid is None or gid == current[1]):
            return None, None  # already that user: nothing to change
        raise ConfigError("--user/--group need the server to start as root")
    return uid, gid


def own_sockets(sockets: Sequence[socket.socket], uid: int | None, gid: int | None) -> None:
    """Give the Unix socket files this process created to ``--user``/``--group``."""
    if uid is None and gid is None:
        return
    for sock in sockets:
        if sock.family != socket.AF_UNIX:
            continue
        path = sock.getsockname()
        if isinstance(path, bytes):
            path = path.decode()
        if path and not path.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def drop_privileges(config: Config, uid: int | None, gid: int | None) -> None:
    """Become ``--user``/``--group`` for good (group first: after setuid it is too late)."""
    if gid is not None:
        if config.initgroups and config.user and not config.user.isdigit():
            os.initgroups(config.user, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


class PidFile:
    """``--pid FILE``: written at start, removed at exit if it still names this process."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid = os.getpid()

    def create(self) -> None:
        """Write this pid, unless the file names another live process: a second instance
        started by mistake must not take the running server's pid file (its exit would then
        remove it). A file naming a dead process is stale and replaced; one naming this pid is
        a handover's (see handover)."""
        running = self._named()
        if running is not None and running != self.pid and _alive(running):
            raise ConfigError(
                f"--pid {self.path}: names process {running}, which is running (another server "
                "on the same pid file?); remove the file if it is stale"
            )
        try:
            with open(self.path, "w", encoding="ascii") as f:
                f.write(f"{self.pid}\n")
        except OSError as exc:
            raise ConfigError(f"--pid {self.path}: {exc.strerror}") from None

    def _named(self) -> int | None:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, encoding="ascii") as f:
                if int(f.read().strip() or 0) != self.pid:
                    return  # another server wrote it since: not ours to remove
            os.unlink(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def become_worker(
    config: Config,
    ids: tuple[int | None, int | None],
    server: ServerView,
    worker: WorkerView,
    load_app: Callable[[], Any],
) -> Any:
    """What every worker does first, forked or alone: ``post_fork`` (still as root, as in
    gunicorn), drop root, load the app, ``post_worker_init``. Returns the app."""
    config.hooks.run("post_fork", server, worker)
    drop_privileges(config, *ids)
    app = load_app()
    worker.booted = True
    config.hooks.run("post_worker_init", worker)
    return app
