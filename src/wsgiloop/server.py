"""One worker: listening sockets, the event loop, the thread pool, timeouts and shutdown.

``Server.serve()`` runs until ``stop()`` (SIGTERM/SIGINT) and then shuts down gracefully (see
``_shutdown``): stop listening at once, so new connections are refused rather than held; let
in-flight responses finish within ``--graceful-timeout``; give idle keep-alive connections the
rest of their keep-alive time, answering what arrives on them with ``Connection: close``; abort
what is left. A ticker (one timer for the whole server, not one per connection) refreshes the
cached ``Date`` header, enforces the connection timeouts and beats the supervisor's heartbeat,
while serving and while draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, handover
from .config import DEFAULT_BIND, Config
from .hooks import ServerView, WorkerView
from .lifecycle import IDLE, Phase
from .logs import error_log, reopen_files
from .process import become_worker, own_sockets
from .protocol import HttpProtocol
from .sockets import (
    Listeners,
    SocketFile,
    accept_pending,
    create_socket,
    describe,
    listen_error,
    parse_bind,
    socket_from_fd,
)
from .state import ServerState
from .telemetry import Telemetry
from .wsgi import WSGIApp

TICK = 0.25  # seconds between timeout sweeps; timeouts are honoured to within this


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked or available (``auto``), else the stdlib loop."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A server-side TLS context from ``--certfile``/``--keyfile``/``--ca-certs``, or None."""
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.ca_certs)
    context.load_cert_chain(config.certfile, config.keyfile)
    context.verify_mode = ssl.VerifyMode(config.cert_reqs)
    context.set_alpn_protocols(["http/1.1"])
    return context


def open_sockets(config: Config) -> Listeners:
    """Inherited sockets (systemd, ``--fd``) plus one per ``--bind``; ``ListenError`` if one is
    impossible (those already opened are closed again). After a handover (``handover``: a
    SIGHUP with ``--workers 1``) the sockets handed over are all of them."""
    from .systemd import listen_fds_with_names

    inherited = listen_fds_with_names()
    handed = handover.take(inherited)
    if handed is not None:
        if config.bind or config.fd:
            error_log.info("Listening sockets handed over by the reload (a changed --bind or "
                           "--fd takes a restart)")
        return handed
    listeners = Listeners([sock for _, sock in inherited])
    try:
        for fd in config.fd:
            try:
                listeners.sockets.append(socket_from_fd(fd))
            except OSError as exc:
                raise listen_error(f"--fd {fd}", exc) from None
        binds = config.bind or ([] if listeners.sockets else [DEFAULT_BIND])
        for value in binds:
            sock = create_socket(parse_bind(value), config.backlog, config.reuse_port, config.umask)
            listeners.sockets.append(sock)
            if sock.family == socket.AF_UNIX:
                listeners.files.append(SocketFile.of(sock))
    except BaseException:
        listeners.close()
        raise
    return listeners


class Server:
    """One worker process's server."""

    def __init__(
        self,
        app: WSGIApp,
        config: Config,
        heartbeat: Callable[[], None] | None = None,
        max_requests: int = 0,
        worker: WorkerView | None = None,
        publish: Callable[[Sequence[float]], None] | None = None,
        slot: int | None = None,
    ) -> None:
        self.app = app
        self.worker = worker  # what the hooks are given as ``worker``
        self.config = config
        self.state: ServerState | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.listeners = Listeners([])
        self._tls: ssl.SSLContext | None = None
        self._stop: asyncio.Event | None = None
        self.started = False
        self.heartbeat = heartbeat  # called each tick: the supervisor's liveness signal
        self.max_requests = max_requests
        self.parent_pid = os.getppid()
        # Metrics: under the supervisor, the worker's slot of the shared board and its writer
        # (the supervisor serves the scrapes); standalone, a listener on this loop.
        self.publish = publish
        self.slot = slot
        self.telemetry: Telemetry | None = None
        # SIGHUP with --workers 1 (``handover``): where the reload is, its task (the check),
        # and once the drain begins, the duplicated listening sockets the new image gets and
        # their socket files.
        self.reload_phase: Phase = handover.NO_RELOAD
        self.reload_task: asyncio.Task[None] | None = None
        self.kept: list[tuple[int, str]] = []
        self.kept_files: list[SocketFile] = []

    async def serve(self, listeners: Listeners | None = None) -> None:
        """Serve until ``stop()``; then shut down gracefully. ``listeners`` are closed (and the
        socket files among them removed) when it returns; without them, ``--bind`` is opened."""
        loop = asyncio.get_running_loop()
        config = self.config
        state = self.state = ServerState(self.app, config, loop, self.worker)
        self._stop = asyncio.Event()
        self.listeners = listeners = open_sockets(config) if listeners is None else listeners
        try:
            await self._serve(loop, state, listeners.sockets)
        finally:
            listeners.close()

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, state: ServerState, sockets: list[socket.socket]
    ) -> None:
        config = self.config
        self._tls = tls = tls_context(config)
        for sock in sockets:
            base = _listener_environ(state, sock)
            server = await loop.create_server(
                lambda base=base: HttpProtocol(state, base),
                sock=sock,
                backlog=config.backlog,
                ssl=tls,
            )
            self._servers.append(server)
        if state.metrics is not None:
            self.telemetry = Telemetry(state, self.publish, self.slot)
            await self.telemetry.start()
        if self.heartbeat is None:  # under the supervisor, it has said where it listens
            for sock in sockets:
                error_log.info(
                    "Listening at: %s (%d)", describe(sock, state.url_scheme), os.getpid()
                )
        self.started = True
        ticker = loop.create_task(self._tick())
        assert self._stop is not None
        try:
            await self._stop.wait()
        finally:
            try:
                await self._shutdown()
            finally:
                ticker.cancel()  # only now: draining needs its timeouts and its heartbeat
            if self.telemetry is not None:
                self.telemetry.report(final=True)  # the supervisor retires these figures
                self.telemetry.close()
            if self.reload_task is not None and not self.reload_task.done():
                self.reload_task.cancel()  # stopped while checking the new code: no reload
                await asyncio.gather(self.reload_task, return_exceptions=True)

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for server in self._servers for s in server.sockets]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Begin a graceful shutdown (call on the loop, or via ``call_soon_threadsafe``)."""
        if self.reload_phase is handover.CHECKING or self.reload_phase is handover.DRAINING:
            self.reload_phase = handover.CANCELLED  # asked to stop: no new image
        if self._stop is not None:
            self._stop.set()

    async def reload(self) -> None:
        """SIGHUP with --workers 1: if the app loads now, drain and hand over (``handover``)."""
        self.reload_phase = handover.CHECKING
        reason = await handover.new_code_loads()
        if self.reload_phase is not handover.CHECKING:
            return  # stopping meanwhile
        if reason is not None:
            self.reload_phase = handover.NO_RELOAD
            error_log.error(
                "Reload abandoned: %s; the code loaded before goes on serving; send SIGHUP to "
                "try again", reason
            )
            return
        error_log.info("The app loads: draining, then starting again in this process")
        self.reload_phase = handover.DRAINING
        if self._stop is not None:
            self._stop.set()  # (not stop(): that is the cancel)

    async def _tick(self) -> None:
        state = self.state
        assert state is not None
        loop = asyncio.get_running_loop()
        last_second = int(time.time())
        heartbeat = self.heartbeat
        hung_reported = False
        while True:
            await asyncio.sleep(TICK)
            if heartbeat is not None:
                if state.hung < state.pool.size:
                    heartbeat()
                elif not hung_reported:
                    # Every thread is stuck in an app call that timed out: stop beating, so the
                    # supervisor replaces this worker (threads cannot be killed, processes can).
                    hung_reported = True
                    error_log.critical("All %d threads are hung in the app", state.pool.size)
                if os.getppid() != self.parent_pid:
                    error_log.warning("Supervisor is gone: shutting down")
                    self.stop()
            if self.max_requests and state.requests >= self.max_requests:
                error_log.info("Served %d requests: recycling this worker", state.requests)
                self.max_requests = 0
                self.stop()
            now = int(time.time())
            new_second = now != last_second
            if new_second:
                last_second = now
                state.refresh_headers()
            clock = loop.time()
            idle = 0
            for proto in list(state.connections):
                if proto.phase is IDLE:
                    idle += 1
                if proto.deadline and clock >= proto.deadline:
                    try:
                        proto.on_deadline()
                    except Exception:  # one connection's bug must not stop every timeout
                        error_log.exception("Error timing out a connection")
                        proto.abort()
            state.idle = idle
            if self.telemetry is not None:
                self.telemetry.report(new_second)

    async def _shutdown(self) -> None:
        """Graceful stop, losing no request that reached this process.

        1. Stop listening at once: take the connections the kernel already completed (closing
           the socket would reset them), then close it, so the next ones are refused and a proxy
           moves on to another upstream instead of waiting on a worker that is leaving. Where
           another process holds the same socket (sibling workers, systemd's copy), it keeps
           its queue and goes on accepting.
        2. Drain (``HttpProtocol.shutdown``): a request in flight finishes, its response says
           ``Connection: close``; an idle keep-alive connection stays open for the rest of its
           keep-alive time, so that a request its client sends meanwhile is answered (with
           ``Connection: close``) instead of meeting a closed socket; every close is a
           lingering half-close, so nothing unread turns into a reset.
        3. At ``--graceful-timeout``, abort what is left.
        """
        state = self.state
        assert state is not None
        loop = asyncio.get_running_loop()
        state.stopping = True
        if self.reload_phase is handover.DRAINING:
            # A handover: the sockets stay open for the new image, which takes the connections
            # the kernel has queued (and those that come while this drains).
            self.kept, self.kept_files = handover.keep(self.listeners)
            pending = []
        else:
            pending = [conn for sock in self.listeners.sockets for conn in accept_pending(sock)]
        for server in self._servers:
            server.close()
        self.listeners.close()
        tls = self._tls
        adopting = [
            loop.create_task(
                loop.connect_accepted_socket(lambda: HttpProtocol(state), conn, ssl=tls)
            )
            for conn in pending
        ]
        if adopting:
            await asyncio.wait(adopting, timeout=self.config.graceful_timeout)
            for task in adopting:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    error_log.debug("Could not take a pending connection: %s", task.exception())
        # Connections accepted just before the close have their connection_made queued on the
        # loop: let those callbacks run so the drain below sees (and serves) them.
        for _ in range(3):
            await asyncio.sleep(0)
        deadline = time.monotonic() + self.config.graceful_timeout
        await self._drain(deadline)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), max(0.0, deadline - time.monotonic()))
        await self._drain(deadline)  # anything that arrived while the listeners closed
        if state.connections:
            error_log.warning(
                "Graceful timeout: aborting %d connection(s)", len(state.connections)
            )
            for proto in list(state.connections):
                proto.abort()
            await asyncio.sleep(0)
        state.pool.shutdown(timeout=1.0)

    async def _drain(self, deadline: float) -> None:
        """Tell every connection the server is stopping, until all are closed or ``deadline``.

        Repeated because connections go idle (a response ends) while the drain goes on; the
        ticker closes those whose grace is over.
        """
        state = self.state
        assert state is not None
        while True:
            for proto in list(state.connections):
                proto.shutdown()
            if not state.connections or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)


def run_alone(
    load_app: Callable[[], WSGIApp],
    config: Config,
    server: ServerView,
    ids: tuple[int | None, int | None] = (None, None),
) -> int:
    """``--workers 1``: this process is the one worker, with no supervisor and no fork.

    The sockets are bound first and root dropped after, as in a forked worker; ``pre_fork`` and
    ``post_fork`` run here, so code kept there runs once per worker either way (see hooks).
    """
    listeners = open_sockets(config)  # ListenError: nothing started yet
    try:
        own_sockets(listeners.sockets, *ids)
        hooks = config.hooks
        hooks.run("when_ready", server)
        worker = WorkerView(config, age=1)
        hooks.run("pre_fork", server, worker)
        app = become_worker(config, ids, server, worker, load_app)
    except BaseException:
        listeners.close()
        raise
    try:
        return run(app, config, listeners=listeners, worker=worker)
    finally:
        hooks.run("worker_exit", server, worker)


def run(
    app: WSGIApp,
    config: Config,
    listeners: Listeners | None = None,
    heartbeat: Callable[[], None] | None = None,
    max_requests: int = 0,
    on_ready: Callable[[], None] | None = None,
    worker: WorkerView | None = None,
    publish: Callable[[Sequence[float]], None] | None = None,
    slot: int | None = None,
) -> int:
    """Run one worker in this process until SIGINT/SIGTERM (graceful) or SIGQUIT (fast).

    Standalone (``--workers 1``) it opens its own sockets (``ListenError`` if it cannot, before
    anything else starts) and tells systemd when it is ready; under the supervisor it gets the
    shared ``listeners`` and a ``heartbeat``.
    """
    config.validate()
    if listeners is None:
        listeners = open_sockets(config)
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    server = Server(
        app,
        config,
        heartbeat=heartbeat,
        max_requests=max_requests,
        worker=worker,
        publish=publish,
        slot=slot,
    )
    if heartbeat is None:
        error_log.info("Starting wsgiloop %s", __version__)
    error_log.info(
        "Using %s event loop, %d threads",
        type(loop).__module__.split(".")[0],
        config.threads,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, server, sig)
    loop.add_signal_handler(signal.SIGQUIT, _on_quit, server)
    loop.add_signal_handler(signal.SIGUSR1, reopen_files)
    # SIGHUP: standalone, a reload by handover (see handover). A worker ignores it from its
    # fork on and leaves reloads to its supervisor (see Supervisor._worker_main).
    if heartbeat is None:
        loop.add_signal_handler(signal.SIGHUP, _on_hup, server)
    if config.hooks.worker_abort is not None:
        # Sent by the supervisor on --timeout: a loop too stuck to run a callback may still
        # run a Python signal handler between two bytecodes of whatever it is stuck in.
        signal.signal(signal.SIGABRT, lambda signum, frame: _on_abort(server))
    if heartbeat is None and on_ready is None:
        from . import systemd

        def on_ready() -> None:
            systemd.notify("READY=1\nSTATUS=serving")

    # The handlers are in, and take effect once the loop runs (uvloop sets its wake-up then):
    # deliver what came while they were not (see handover.SIGNALS).
    loop.call_soon(handover.unblock_signals)
    if on_ready is not None:
        loop.call_soon(_when_started, server, on_ready)
    try:
        loop.run_until_complete(server.serve(listeners))
    finally:
        if heartbeat is None:
            from . import systemd

            handing_over = server.reload_phase is handover.DRAINING
            systemd.notify("RELOADING=1" if handing_over else "STOPPING=1")
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
    if server.reload_phase is handover.DRAINING:
        error_log.info("Drained: starting again (pid: %d)", os.getpid())
        raise handover.HandingOver(server.kept)
    for file in server.kept_files:  # stopped during a handover's drain: no new image
        file.remove()
    error_log.info("Shutdown complete" if heartbeat is None else "Worker exiting (pid: %d)", *(
        () if heartbeat is None else (os.getpid(),)
    ))
    return 0


def _when_started(server: Server, on_ready: Callable[[], None]) -> None:
    if server.started:
        on_ready()
    else:
        asyncio.get_running_loop().call_later(0.01, _when_started, server, on_ready)


def _on_signal(server: Server, sig: signal.Signals) -> None:
    error_log.info("Received %s: shutting down gracefully", signal.Signals(sig).name)
    if sig == signal.SIGINT and server.worker is not None:
        server.config.hooks.run("worker_int", server.worker)
    server.stop()


def _on_hup(server: Server) -> None:
    """SIGHUP with --workers 1: reload by handover, when this process can start again."""
    if server.reload_phase is not handover.NO_RELOAD or (server._stop is not None
                                                    and server._stop.is_set()):
        error_log.info("Received SIGHUP: ignored, already reloading or stopping")
        return
    reason = handover.unavailable(server.config)
    if reason is not None:
        error_log.warning("Received SIGHUP: ignored, %s (reload in place: --workers 2 or more)",
                          reason)
        return
    error_log.info("Received SIGHUP: reloading (checking that the app loads)")
    server.reload_task = asyncio.get_running_loop().create_task(server.reload())


def _on_quit(server: Server) -> None:
    """SIGQUIT: leave now, as gunicorn users expect of a fast shutdown."""
    error_log.info("Received SIGQUIT: exiting immediately")
    if server.worker is not None:
        server.config.hooks.run("worker_int", server.worker)
    logging.shutdown()
    os._exit(0)


def _on_abort(server: Server) -> None:
    """SIGABRT (the supervisor's --timeout): run ``worker_abort``, then exit at once."""
    if server.worker is not None:
        server.config.hooks.run("worker_abort", server.worker)
    logging.shutdown()
    os._exit(1)


def _listener_environ(state: ServerState, sock: socket.socket) -> dict[str, Any] | None:
    """The base environ of every connection ``sock`` accepts, when they all share one local
    address (a Unix socket, or TCP bound to one address): asked once here instead of with a
    ``getsockname`` per connection. None for a wildcard bind, whose connections each have the
    address the client reached."""
    if sock.family == socket.AF_UNIX:
        return state.base_environ(None)
    local = sock.getsockname()
    if local[0] in ("0.0.0.0", "::"):
        return None
    return state.base_environ(local[:2])
