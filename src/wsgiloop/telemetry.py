"""A worker's metrics outputs: what its ticker reports, and its own metrics listener.

Each tick (``server.Server._tick``, every 0.25 s) the worker takes one snapshot of its figures
(``metrics.Metrics.snapshot``) and, under the supervisor, writes it to its slot of the shared
board (``board``), and with ``--statsd-host`` sends the tick's increments (``statsd``). Standalone
(``--workers 1``) it serves ``--metrics-bind`` itself, on its event loop (``scrape``), rendering
a fresh snapshot per scrape. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

from .exposition import answer, render
from .logs import error_log
from .metrics import build_labels
from .scrape import ScrapeProtocol, open_listener
from .sockets import describe
from .state import ServerState
from .statsd import Statsd


class Telemetry:
    """A worker's metrics outputs: its tick's report (board, statsd) and, standalone, the
    metrics listener on this loop. Runs on the event loop."""

    def __init__(
        self,
        state: ServerState,
        publish: Callable[[Sequence[float]], None] | None,
        slot: int | None,
    ) -> None:
        self.state = state
        assert state.metrics is not None
        self.metrics = state.metrics
        self.publish = publish
        config = state.config
        self.statsd = (
            Statsd(
                config.statsd_host,
                config.statsd_prefix,
                config.dogstatsd_tags,
                None if slot is None else str(slot),
            )
            if config.statsd_host
            else None
        )
        self.listener: asyncio.AbstractServer | None = None
        self.metrics.sample_process()

    async def start(self) -> None:
        """Standalone: open --metrics-bind on this loop (under the supervisor it serves it)."""
        config = self.state.config
        if self.publish is not None or not config.metrics_bind:
            return
        sock = open_listener(config.metrics_bind, config.umask)
        health = self.state.health_target

        def respond(head: bytes) -> bytes:
            return answer(head, self.render, health, lambda: not self.state.stopping)

        self.listener = await self.state.loop.create_server(
            lambda: ScrapeProtocol(respond), sock=sock
        )
        error_log.info("Metrics at: %s (%d)", describe(sock), os.getpid())

    def snapshot(self) -> list[float]:
        state = self.state
        return self.metrics.snapshot(state.pool, state.hung, len(state.connections), state.idle)

    def render(self) -> bytes:
        vector = self.snapshot()
        this = [('worker="0"', vector)]
        return render(vector, this, this, (), build_labels(self.state.config.loop))

    def report(self, new_second: bool = False, final: bool = False) -> None:
        """Each tick: publish the figures to the board, send statsd's increments."""
        metrics = self.metrics
        if new_second or final:
            metrics.sample_process()
        if self.publish is None and self.statsd is None:
            metrics.fold()  # nobody takes a snapshot this tick: keep the durations bounded
            return
        vector = self.snapshot()  # (folds them)
        if self.publish is not None:
            self.publish(vector)
        if self.statsd is not None:
            durations, seen = metrics.take_durations()
            self.statsd.send_tick(vector, metrics.codes, durations, seen)
            if self.publish is None and new_second:
                self.statsd.send_workers(1)  # standalone: no supervisor to count workers

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.statsd is not None:
            self.statsd.close()
