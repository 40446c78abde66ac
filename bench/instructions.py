#!/usr/bin/env python3
"""CPU instructions per request, counted by valgrind: the noise-free half of ``bench/run``.

On a shared 2-core machine, req/s of two configurations of the same server differ by 5-10 %
from one round to the next (the GIL hand-offs between the loop and nine threads on one core are
chaotic), so a 3 % difference is below what ``bench/run`` can see. This counts instead what the
Python side of a request costs, exactly and the same on every run: each case drives its
protocol in one process without sockets (a transport that only counts bytes, the pool job run
inline on the loop thread, the loop's own wake-up still taken), under
``valgrind --tool=callgrind``, for N and 2N requests; the difference divided by N is the
instructions of one request, start-up and warm-up cancelled out.

The keep-alive cases are shaped like bench/run's row: 50 connections each send a request at
once, and wsgiloop's own pool (its slots, its FIFO of waiting requests, the wait times it
measures for the metrics) has 8 slots, so most requests wait for one. With metrics on, the
worker's ticker (fold, snapshot, statsd's lines and datagrams) runs every ``TICK_EVERY``
requests, as often as at bench/run's rate: what the metrics cost besides the requests is in
the count too.

What it leaves out, by design: the kernel (accept, read, write, close: the same for every
case) and the thread hop's scheduling. So a ratio here is larger than the same ratio in req/s,
where the kernel's share is common to both sides: it is an upper bound of the cost, measured
without noise.

    bench/instructions.py                     # every case, N = 4000
    bench/instructions.py --cases wsgiloop,wsgiloop-metrics -n 8000

Needs valgrind (Debian's ``valgrind``) and runs the current interpreter, with ``src/`` first
on the path; bench/run's venv is not needed. About 80 s per case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"

KEEP_ALIVE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"

#: What bench/run's keep-alive rows look like: wrk's connections, the app threads it gives.
CONNECTIONS = 50
THREADS = 8
#: Requests between two ticks of the worker's ticker (every 0.25 s): 4 ticks a second at the
#: ~16k req/s of hello keep-alive on this machine.
TICK_EVERY = 4000

#: case → (server, request, wsgiloop options)
CASES: dict[str, tuple[str, bytes, list[str]]] = {
    "wsgiloop": ("wsgiloop", KEEP_ALIVE, []),
    "wsgiloop-metrics": (
        "wsgiloop",
        KEEP_ALIVE,
        ["--metrics-bind", "127.0.0.1:0", "--statsd-host", "127.0.0.1:9"],
    ),
    "ceiling": ("ceiling", KEEP_ALIVE, []),
    "wsgiloop-close": ("wsgiloop", CLOSE, []),
    "ceiling-close": ("ceiling", CLOSE, []),
}
#: What each case's ratio is taken against.
BASELINE = {
    "wsgiloop-metrics": "wsgiloop",
    "ceiling": "wsgiloop",
    "ceiling-close": "wsgiloop-close",
}


class CountingTransport:
    """The least of a transport a protocol calls: it counts what is written."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class InlinePool:
    """The ceiling's pool, minus the threads: the job runs at once, on the loop thread."""

    def submit(self, fn: Any, arg: Any = None, *rest: Any) -> None:
        fn(arg, *rest)


class _RunAtOnce:
    """A job queue whose ``put`` runs the job at once, on the loop thread."""

    def put(self, job: Any) -> None:
        fn, arg = job
        fn(arg)


def _inline_thread_pool(threads: int, waited: Any) -> Any:
    """wsgiloop's own ``ThreadPool`` (its slots, its FIFO of waiting jobs, their wait times for
    the metrics), minus the threads: a job given to a thread runs at once, on the loop."""
    from wsgiloop.pool import ThreadPool

    class InlineThreadPool(ThreadPool):
        def _start_thread(self) -> None:
            self._threads.append(None)  # type: ignore[arg-type]  # counted, never started

    pool = InlineThreadPool(threads, waited=waited)
    pool._jobs = _RunAtOnce()  # type: ignore[assignment]
    return pool


def _wsgiloop_factory(loop: asyncio.AbstractEventLoop, options: list[str]) -> Any:
    from apps import hello

    from wsgiloop.cli import build_parser, config_from_args
    from wsgiloop.protocol import HttpProtocol
    from wsgiloop.state import ServerState
    from wsgiloop.telemetry import Telemetry

    args = build_parser().parse_args(
        ["apps:hello", "--no-access-log", "--threads", str(THREADS), *options]
    )
    state = ServerState(hello, config_from_args(args, {}), loop)
    metrics = state.metrics
    state.pool = _inline_thread_pool(THREADS, None if metrics is None else metrics.waited)
    factory: Any = lambda: HttpProtocol(state)  # noqa: E731
    # The worker's ticker, every TICK_EVERY requests: what the metrics cost besides requests.
    factory.telemetry = Telemetry(state, None, None) if metrics is not None else None
    factory.tick = None if factory.telemetry is None else factory.telemetry.report
    return factory


def _ceiling_factory(loop: asyncio.AbstractEventLoop) -> Any:
    from ceiling import CeilingProtocol

    pool = InlinePool()
    factory: Any = lambda: CeilingProtocol(loop, pool)  # type: ignore[arg-type]  # noqa: E731
    factory.tick = None
    return factory


async def drive(case: str, requests: int) -> None:
    """``requests`` requests of ``case``.

    Keep-alive: ``CONNECTIONS`` connections each send a request, all at once, and wait for its
    response; wsgiloop's pool has ``THREADS`` slots, so most requests wait for one, as in
    bench/run (wrk's 50 connections, 8 threads). Close: one connection per request.
    """
    server, request, options = CASES[case]
    loop = asyncio.get_running_loop()
    wsgiloop = server == "wsgiloop"
    factory = _wsgiloop_factory(loop, options) if wsgiloop else _ceiling_factory(loop)
    tick = factory.tick
    if request is CLOSE:
        for done in range(1, requests + 1):
            proto, transport = factory(), CountingTransport()
            proto.connection_made(transport)
            proto.data_received(request)
            await asyncio.sleep(0)  # the pool job's call_soon_threadsafe: the response is written
            assert transport.closed, "the connection was not closed after Connection: close"
            proto.connection_lost(None)
            if tick is not None and done % TICK_EVERY == 0:
                tick()
        return
    if requests % CONNECTIONS:
        sys.exit(f"instructions: {requests} requests is no multiple of {CONNECTIONS} connections")
    pairs = [(factory(), CountingTransport()) for _ in range(CONNECTIONS)]
    for proto, transport in pairs:
        proto.connection_made(transport)
    done = 0
    while done < requests:
        before = [transport.written for _, transport in pairs]
        for proto, _ in pairs:
            proto.data_received(request)
        for _ in range(CONNECTIONS + 1):  # each pass writes what the last one's jobs produced
            await asyncio.sleep(0)
            if all(t.written > b for (_, t), b in zip(pairs, before, strict=True)):
                break
        else:
            sys.exit(f"instructions: {case}: responses missing after {CONNECTIONS + 1} passes")
        done += CONNECTIONS
        if tick is not None and done % TICK_EVERY == 0:
            tick()
    if tick is not None:
        from wsgiloop.metrics import requests_total

        counted = requests_total(factory.telemetry.snapshot())
        assert counted == requests, f"the metrics counted {counted} of {requests} requests"


def _inner(case: str, requests: int) -> None:
    sys.path[:0] = [str(SRC), str(BENCH)]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run  # type: ignore[assignment]
    runner(drive(case, requests))


def count(case: str, requests: int) -> int:
    """Instructions of the whole process for ``requests`` requests of ``case``."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--inner",
            case,
            str(requests),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    found = re.search(r"Collected : ([\d,]+)", run.stderr)
    if run.returncode != 0 or found is None:
        sys.exit(f"instructions: {case} failed under valgrind:\n{run.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: "
                        + ", ".join(CASES))
    parser.add_argument("-n", type=int, default=TICK_EVERY,
                        help=f"requests (default {TICK_EVERY}: one tick of the ticker)")
    parser.add_argument("--inner", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _inner(args.inner[0], int(args.inner[1]))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    per_request: dict[str, float] = {}
    print(f"instructions per request, {args.n} and {2 * args.n} requests under callgrind")
    print("| case | instructions/request | ratio |")
    print("|---|---:|---:|")
    for case in cases:
        per_request[case] = (count(case, 2 * args.n) - count(case, args.n)) / args.n
        base = BASELINE.get(case)
        ratio = (
            f"{per_request[case] / per_request[base]:.3f}x {base}"
            if base in per_request
            else ""
        )
        print(f"| {case} | {per_request[case]:,.0f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
