"""SIGHUP with ``--workers 1``: reload the app by exec'ing this same command line, handing the
new image the listening sockets, so that no connection is refused and no request dropped.

The supervisor reloads by forking new workers beside the old ones. A lone process cannot: it
runs threads, and forking a process whose threads may hold locks is unsafe. So it:

1. checks that the code loads now: the same command line plus ``--check-config``, in a child
   process that opens no socket and writes no pid file. If the app does not import, the reload
   is abandoned in one log line and the code loaded at start goes on serving (as the
   supervisor does with a generation that does not boot);
2. drains as for SIGTERM (in-flight requests finish, responses say ``Connection: close``, idle
   keep-alive connections keep the rest of their keep-alive time), except that the listening
   sockets stay open: each is duplicated before the servers close, and its socket file stays.
   A connection that arrives meanwhile waits in the listen backlog, for the new image;
3. execs ``sys.orig_argv`` from the directory the process started in (``--chdir`` is relative
   to it), with the sockets as descriptors 3, 4, ... and systemd's socket-activation variables:
   ``LISTEN_PID`` is this pid, which exec keeps, so the new image takes them instead of binding
   (``server.open_sockets``), and their names (``$LISTEN_FDNAMES``) tell it that they are all
   of its listeners. The pid does not change: systemd's main pid and the ``--pid`` file stay right.

The new image starts as any start does (it reads the configuration again, runs the hooks,
logs "Listening at:"); only its listening sockets are the old ones, so a changed ``--bind``
takes a restart. New connections wait for the drain (the longest request in flight or the
keep-alive timeout, whichever is longer) and the new image's start: they queue, none is
refused. Signals sent while the new image starts wait for its handlers (``SIGNALS``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import signal
import socket
import sys
from typing import Final, NoReturn

from . import exitcodes
from .config import Config
from .lifecycle import Phase
from .sockets import Listeners, SocketFile

#: Where a standalone server is in a reload (``server.Server.reload_phase``):
#: NO_RELOAD ──SIGHUP──▶ CHECKING ──the app loads──▶ DRAINING ──drained──▶ exec (``exec_self``);
#: CHECKING ──it does not──▶ NO_RELOAD; CHECKING or DRAINING ──a stop──▶ CANCELLED (no new
#: image).
NO_RELOAD: Final = Phase("NO_RELOAD")
CHECKING: Final = Phase("CHECKING")
DRAINING: Final = Phase("DRAINING")
CANCELLED: Final = Phase("CANCELLED")

#: The signals the new image handles. exec resets their handlers to the default actions (which
#: would kill it) until its own are installed, so they are blocked across the exec: one sent
#: meanwhile waits, and is delivered by ``unblock_signals`` once the handlers are in.
SIGNALS: frozenset[signal.Signals] = frozenset({
    signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGTTIN, signal.SIGTTOU,
})
_WHY = {
    exitcodes.APP_LOAD: "the app does not load",
    exitcodes.USAGE: "the configuration is invalid",
}
_LOG_PREFIX = re.compile(r"^\[[^]]*\] \[\d+\] \[[A-Z]+\] (?:Error: )?")

#: The ``$LISTEN_FDNAMES`` of the sockets handed over, which is how the new image knows them
#: from systemd's: a socket whose file (a Unix socket from ``--bind``) the process owns, and
#: any other.
OWNS_FILE = "wsgiloop-handover-file"
SOCKET = "wsgiloop-handover"

#: Seconds the check that the app loads may take (an import that hangs abandons the reload).
CHECK_TIMEOUT = 60.0

_start_dir: str | None = None


class HandingOver(Exception):  # (not an error: control leaves run for the exec)
    """Raised by ``server.run`` once drained: the command ``exec_self``s with ``kept``."""

    def __init__(self, kept: list[tuple[int, str]]) -> None:
        super().__init__("handing over")
        self.kept = kept


def unblock_signals() -> None:
    """Deliver what was sent while the handlers were not installed (see ``SIGNALS``); called
    once they are, at every start (a no-op unless this start is a handover)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def remember_start_dir() -> None:
    """Note the directory the command started in (before ``--chdir`` moves away from it)."""
    global _start_dir
    _start_dir = os.getcwd()


def unavailable(config: Config) -> str | None:
    """Why this process cannot exec itself again, or None when it can."""
    if config.user or config.group:
        return "--user/--group dropped the rights a new start needs"
    if _start_dir is None or not sys.orig_argv:
        return "the command line is not known"
    return None


async def new_code_loads() -> str | None:
    """None if the app loads as the command line says now; else why not (one line)."""
    assert _start_dir is not None
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *sys.orig_argv[1:],
            "--check-config",
            cwd=_start_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(child.communicate(), CHECK_TIMEOUT)
        except TimeoutError:
            child.kill()
            await child.wait()
            return f"the check did not finish in {CHECK_TIMEOUT:g} s"
        except asyncio.CancelledError:  # stopping meanwhile
            child.kill()
            await child.wait()
            raise
    except OSError as exc:
        return f"cannot start {sys.executable}: {exc.strerror}"
    if child.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    if lines:  # the child's own error line, without its time, pid and level
        return _LOG_PREFIX.sub("", lines[-1])
    why = _WHY.get(child.returncode or 0, f"exit status {child.returncode}")
    return f"{why} (the check's error went to the error log)"


def keep(listeners: Listeners) -> tuple[list[tuple[int, str]], list[SocketFile]]:
    """Duplicates of the listening sockets (each with its ``LISTEN_FDNAMES`` name), taken
    before they close, and the socket files this process owns, taken out of ``listeners`` so
    that closing it leaves them in place: the new image removes them at its own exit (or this
    process does, if it stops instead)."""
    files = listeners.files
    owned = {file.path for file in files}
    kept = []
    for sock in listeners.sockets:
        name = sock.getsockname() if sock.family == socket.AF_UNIX else None
        path = name.decode() if isinstance(name, bytes) else name
        kept.append((os.dup(sock.fileno()), OWNS_FILE if path in owned else SOCKET))
    listeners.files = []
    return kept, files


def exec_self(kept: list[tuple[int, str]]) -> NoReturn:
    """Replace this process with the same command line, ``kept`` as its listening sockets."""
    assert _start_dir is not None
    logging.shutdown()  # flushed: no log line may be written once the descriptors move
    # Move the sockets to 3, 4, ... in two steps, so that none overwrites another on the way.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1024) for fd, _ in kept]
    for offset, fd in enumerate(high):
        os.dup2(fd, 3 + offset, inheritable=True)
    env = dict(os.environ)
    env.update(
        LISTEN_PID=str(os.getpid()),
        LISTEN_FDS=str(len(kept)),
        LISTEN_FDNAMES=":".join(name for _, name in kept),
    )
    os.chdir(_start_dir)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # (see SIGNALS)
    os.execve(sys.executable, sys.orig_argv, env)


def take(inherited: list[tuple[str, socket.socket]]) -> Listeners | None:
    """In the new image: the listeners handed over (the ``LISTEN_FDS`` sockets), or None when
    this start is no handover."""
    if not inherited or any(name not in (OWNS_FILE, SOCKET) for name, _ in inherited):
        return None
    listeners = Listeners([sock for _, sock in inherited])
    for name, sock in inherited:
        sock.setblocking(False)
        if name == OWNS_FILE:
            listeners.files.append(SocketFile.of(sock))
    return listeners
