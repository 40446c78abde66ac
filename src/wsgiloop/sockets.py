"""Listening sockets from ``--bind`` strings and inherited file descriptors.

The server creates its sockets itself (rather than letting ``loop.create_server`` do it) so that
the same objects can come from systemd, from ``--fd``, or be shared with forked workers.

A Unix socket file belongs to the process that created it (``Listeners.files``): that process
removes it when it stops listening, and only if the path still names the socket it created. An
existing socket file is taken over only when nothing accepts connections on it (a stale file
from a crash); a live one is "address already in use", as a TCP port would be. Sockets inherited
from systemd or ``--fd`` are closed but their files left alone: they are the service manager's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass, field


class ListenError(OSError):
    """A listening socket cannot be had; ``str()`` is one line naming the address and why."""

    def __str__(self) -> str:
        return str(self.strerror)


def listen_error(address: object, exc: OSError) -> ListenError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve the host name ({reason})"
    return ListenError(exc.errno, f"cannot listen on {address}: {reason.lower()}")


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
    """A bound, listening, non-blocking socket for ``address``; ``ListenError`` if impossible."""
    try:
        if address.family == socket.AF_UNIX:
            return _unix_socket(address.host, backlog, umask)
        return _inet_socket(address, backlog, reuse_port)
    except ListenError:
        raise
    except OSError as exc:
        raise listen_error(address, exc) from None


def _inet_socket(address: Address, backlog: int, reuse_port: bool) -> socket.socket:
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
    _remove_stale(path)
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


def _remove_stale(path: str) -> None:
    """Unlink the socket file at ``path`` if it is stale; refuse to touch anything else.

    Unlinking a live socket would not stop the server behind it, only make it unreachable
    (nginx: 502) while this process then fails or serves in its place, so a connection is tried
    first: only a refusal (no listener) proves the file stale.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(
            errno.EADDRINUSE, f"cannot listen on unix:{path}: the path exists and is no socket"
        )
    if _accepting(path):
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on unix:{path}: address already in use "
            "(a server accepts connections on it)",
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _accepting(path: str) -> bool:
    """Whether something listens on the Unix socket at ``path`` (connect, then hang up)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # EAGAIN (its queue is full), EACCES, ...: alive, or not ours to judge
    finally:
        probe.close()
    return True


@dataclass(frozen=True, slots=True)
class SocketFile:
    """A Unix socket file this process created, identified by its inode."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, sock: socket.socket) -> SocketFile:
        path = sock.getsockname()
        path = path if isinstance(path, str) else path.decode()
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Unlink the file unless it is gone or is now another socket (a successor's).

        ``PermissionError`` (the directory is not writable by ``--user`` any more) is ignored:
        the file then stays, stale, and the next start replaces it."""
        with contextlib.suppress(FileNotFoundError, PermissionError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (self.device, self.inode):
                os.unlink(self.path)


@dataclass
class Listeners:
    """One process's listening sockets and the socket files it must remove (none in a worker:
    the supervisor created them, and a retiring worker must not take them from its successors).
    """

    sockets: list[socket.socket]
    files: list[SocketFile] = field(default_factory=list)

    def for_worker(self) -> Listeners:
        return Listeners(self.sockets)

    def close(self) -> None:
        """Stop listening: new connections are refused from now on. Idempotent.

        A socket another process still holds (systemd's copy, a sibling worker's) stays open
        there, and so does its queue of connections not yet accepted.
        """
        for sock in self.sockets:
            sock.close()
        for file in self.files:
            file.remove()
        self.files = []


def accept_pending(sock: socket.socket) -> list[socket.socket]:
    """The connections the kernel has completed on ``sock`` but nobody accepted yet.

    Taken just before the socket closes, so that closing it does not reset them: they were
    accepted as far as their clients can tell.
    """
    accepted: list[socket.socket] = []
    if sock.fileno() < 0:
        return accepted  # closed already
    while len(accepted) < 65536:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break  # EMFILE, ECONNABORTED...: what is left is refused with the close
        conn.setblocking(False)
        accepted.append(conn)
    return accepted


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
