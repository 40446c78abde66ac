"""Listening sockets from ``--bind`` strings and inherited file descriptors.

The server creates its sockets itself (rather than letting ``loop.create_server`` do it) so that
the same objects can come from systemd, from ``--fd``, or be shared with forked workers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed ``--bind`` value."""

    family: socket.AddressFamily
    host: str  # the path for AF_UNIX
    port: int

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.host}"
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_bind(value: str, default_port: int = 8000) -> Address:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, ``HOST``, ``unix:/path`` (gunicorn's forms)."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path:
            raise ValueError(f"--bind {value!r}: empty Unix socket path")
        return Address(socket.AF_UNIX, path, 0)
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"--bind {value!r}: expected [IPv6]:PORT")
        port = _port(rest[1:], value) if rest else default_port
        return Address(socket.AF_INET6, host, port)
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, ""
    if ":" in host:
        raise ValueError(f"--bind {value!r}: put IPv6 addresses in brackets, e.g. [::1]:8000")
    port = _port(port_text, value) if port_text else default_port
    return Address(socket.AF_INET, host or "0.0.0.0", port)


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"--bind {value!r}: invalid port {text!r}")
    return int(text)


def create_socket(
    address: Address, backlog: int, reuse_port: bool = False, umask: int | None = None
) -> socket.socket:
    """A bound, listening, non-blocking socket for ``address``."""
    if address.family == socket.AF_UNIX:
        return _unix_socket(address.host, backlog, umask)
    family = address.family
    host = address.host
    if family == socket.AF_INET and host not in ("", "0.0.0.0"):
        # A host name: resolve it (the first address wins, as gunicorn does).
        info = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)[0]
        family, sockaddr = info[0], info[4]
    else:
        sockaddr = (host, address.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]" means IPv6 only; bind 0.0.0.0 too for both, as with nginx's listen.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(path: str, backlog: int, umask: int | None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(umask) if umask is not None else None
    try:
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        if old is not None:
            os.umask(old)
    return sock


def socket_from_fd(fd: int) -> socket.socket:
    """Adopt an inherited listening socket (``--fd``); its family is read from the kernel."""
    sock = socket.socket(fileno=fd)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        sock.detach()
        raise OSError(errno.EINVAL, f"file descriptor {fd} is not a listening socket")
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """``http://127.0.0.1:8000`` / ``unix:/run/app.sock``, for the startup log line."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name if isinstance(name, str) else name.decode()}"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{name[0]}]:{name[1]}"
    return f"{scheme}://{name[0]}:{name[1]}"
