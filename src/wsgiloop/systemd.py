"""systemd integration without libsystemd: socket activation and ``sd_notify``.

Both protocols are a few lines of environment parsing and one datagram, so they are implemented
here rather than pulling in a C binding. The behaviour follows ``sd_listen_fds(3)`` and
``sd_notify(3)``.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["SD_LISTEN_FDS_START", "listen_fds", "listen_fds_with_names", "notify"]

log = logging.getLogger("wsgiloop.systemd")

#: The first passed file descriptor; 0-2 are stdin/stdout/stderr.
SD_LISTEN_FDS_START = 3

_ENV_NAMES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """The sockets systemd passed to this process (socket activation), in order; ``[]`` if none.

    See ``listen_fds_with_names``; this drops the names.
    """
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """``(name, socket)`` for each fd systemd passed, from fd 3 on; ``[]`` if none were.

    The fds count only when ``$LISTEN_PID`` is this process: the variables are inherited by every
    child, and a child must not mistake its parent's fds for its own. Names come from
    ``$LISTEN_FDNAMES`` (``FileDescriptorName=`` in the socket unit) and are ``"unknown"`` when it
    is unset or does not match the count, as in ``sd_listen_fds_with_names(3)``.

    Each fd is made close-on-exec, so programs the app runs (``subprocess``) do not inherit the
    listening socket and keep the address busy after the server has gone. Worker processes made by
    ``fork`` still share the sockets; workers started by exec must be handed them explicitly
    (``pass_fds`` plus ``--fd N``), which is deliberate: ``LISTEN_PID`` would not match them anyway.

    With ``unset_environment`` (the default, as systemd recommends) the three variables are
    removed, whatever the outcome, so nothing started later sees them.

    The returned ``socket.socket`` objects own their fds: closing one closes the fd. Their family
    and type are read from the kernel. An fd that is not a socket (a FIFO from ``ListenFIFO=``, say)
    is logged and skipped, and left open.
    """
    try:
        return _listen_fds_with_names()
    finally:
        if unset_environment:
            for name in _ENV_NAMES:
                os.environ.pop(name, None)


def _listen_fds_with_names() -> list[tuple[str, socket.socket]]:
    pid = os.environ.get("LISTEN_PID", "")
    count_text = os.environ.get("LISTEN_FDS", "")
    if not pid or not count_text:
        return []
    try:
        if int(pid) != os.getpid():
            log.debug("LISTEN_PID=%s is not this process: ignoring LISTEN_FDS", pid)
            return []
        count = int(count_text)
    except ValueError:
        log.warning("ignoring malformed socket activation variables LISTEN_PID/LISTEN_FDS")
        return []
    if count <= 0:
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count:
        names = ["unknown"] * count
    result: list[tuple[str, socket.socket]] = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("LISTEN_FDS: fd %d (%s) is not a usable socket, skipped: %s", fd, name, exc)
            continue
        result.append((name, sock))
    return result


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ``"RELOADING=1"``, ``"STOPPING=1"``, ``"STATUS=..."``, ...)
    to the service manager; return whether it was sent.

    ``False`` means there is nothing to tell (``$NOTIFY_SOCKET`` unset: not started by systemd, or
    not ``Type=notify``) or the socket could not be reached; neither is an error for a server,
    which must run the same with or without systemd, so failures are logged at debug level only.
    Only the main process should notify: the unit's default ``NotifyAccess=main`` makes systemd
    drop messages from workers.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        # Abstract namespace: the leading "@" stands for a NUL byte.
        address = "\0" + address[1:]
    elif address[0] != "/":
        log.debug("NOTIFY_SOCKET=%r: unsupported address, not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r to %r failed: %s", state, address, exc)
        return False
    return True
