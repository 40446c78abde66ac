"""Drive ``HttpProtocol`` without sockets or threads, for fuzzing (atheris and hypothesis).

``Driver.run(pieces)`` feeds byte pieces to a real ``HttpProtocol`` through a fake transport, on
a stdlib event loop that is never left running: pool jobs (``Exchange.run``) execute inline on
this thread, and the loop's ready callbacks (the app thread's ``call_soon_threadsafe`` hops) are
run between steps. The outcome is deterministic: the same pieces give the same bytes out.

To keep a single thread from ever blocking on itself:

- a job runs only once its request body is complete or abandoned (the app's ``wsgi.input.read``
  would otherwise wait for bytes this thread has yet to feed);
- the body buffer and write watermarks are far above any input (inputs are capped at
  ``MAX_INPUT``), so neither backpressure direction engages;
- a piece is held back while the protocol has paused reading, as the kernel would hold it.

What it checks on every run (``Outcome.problems``): nothing raised out of the protocol, nothing
logged with a traceback or at ERROR and above, the output is a sequence of HTTP/1.1 responses,
and after an error status the connection is closing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wsgiloop.config import Config
from wsgiloop.protocol import HttpProtocol
from wsgiloop.state import ServerState

MAX_INPUT = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_responses(data: bytes) -> list[Response]:
    """Split what a server sent into responses; ValueError if it is not a sequence of them.

    Bodies are framed by Content-Length or chunked; 1xx, 204, 304 and answers to HEAD (which
    ``fuzz_app`` marks with ``X-Method: HEAD``) have none. A body cut short is accepted only at
    the very end (an error answer to a HEAD request carries a length and no body).
    """
    responses: list[Response] = []
    i = 0
    while i < len(data):
        match = _STATUS_LINE.match(data, i)
        if match is None:
            raise ValueError(f"no status line at {i}: {data[i:i + 60]!r}")
        end = data.find(b"\r\n\r\n", match.start())
        if end < 0:
            raise ValueError(f"incomplete head at {i}")
        headers: dict[bytes, bytes] = {}
        for line in data[match.end() : end].split(b"\r\n"):
            if line:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise ValueError(f"bad header line {line!r}")
                headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        i = end + 4
        body = b""
        if status < 200 or status in (204, 304) or headers.get(b"x-method") == b"HEAD":
            pass
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                line_end = data.find(b"\r\n", i)
                if line_end < 0:
                    raise ValueError("incomplete chunk line")
                size = int(data[i:line_end].split(b";")[0], 16)
                i = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", i)
                    if trailer_end != i:
                        raise ValueError("trailers in a response")
                    i += 2
                    break
                body += data[i : i + size]
                i += size + 2
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            body = data[i : i + length]
            i += length
            if len(body) < length and i < len(data):
                raise ValueError("short body")
        else:
            body, i = data[i:], len(data)
        responses.append(Response(status, headers, body))
    return responses


def fuzz_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers what it understood: method, path, query, body length and digest."""
    body = environ["wsgi.input"].read()
    digest = hashlib.sha1(body).hexdigest()[:12]
    payload = " ".join(
        (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"],
         str(len(body)), digest)
    ).encode("latin-1")
    start_response("200 OK", [("Content-Length", str(len(payload))),
                              ("X-Method", environ["REQUEST_METHOD"])])
    return [payload]


def expected_payload(method: str, path: str, query: str, body: bytes) -> bytes:
    """What ``fuzz_app`` answers to a request (for a method other than HEAD)."""
    digest = hashlib.sha1(body).hexdigest()[:12]
    return f"{method} {path} {query} {len(body)} {digest}".encode("latin-1")


class FakeTransport:
    """Just enough of ``asyncio.Transport`` for ``HttpProtocol``."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.written_after_eof = False

    def write(self, data: bytes) -> None:
        if self.eof_written and data:
            self.written_after_eof = True
        if not self.closing:
            self.out += data

    def writelines(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            self.write(part)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


class InlinePool:
    """``ThreadPool``'s interface; jobs wait here until the driver runs them on its thread."""

    def __init__(self) -> None:
        self.jobs: deque[tuple[Callable[[Any], None], Any]] = deque()
        self.busy = 0

    @property
    def waiting(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        self.busy += 1
        self.jobs.append((fn, arg))

    def done(self) -> None:
        self.busy -= 1

    def shutdown(self, timeout: float | None = None) -> None:
        self.jobs.clear()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Outcome:
    output: bytes
    closing: bool
    statuses: list[int]
    problems: list[str] = field(default_factory=list)


class Driver:
    """One event loop and server state, reused for many runs (each run is a new connection)."""

    def __init__(self, app: Any = fuzz_app, **options: Any) -> None:
        options.setdefault("threads", 1)
        options.setdefault("access_log", False)
        options.setdefault("body_buffer", 1 << 22)
        options.setdefault("write_buffer_high", 1 << 24)
        options.setdefault("write_buffer_low", 1 << 20)
        options.setdefault("max_discard", 1 << 22)
        self.config = Config(loop="asyncio", **options).validate()  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()
        self.state = ServerState(app, self.config, self.loop)
        self.pool = InlinePool()
        self.state.pool = self.pool  # type: ignore[assignment]
        self.handler = _Collect()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        for name in ("wsgiloop.error", "asyncio"):
            logging.getLogger(name).addHandler(self.handler)

    def close(self) -> None:
        for name in ("wsgiloop.error", "asyncio"):
            logging.getLogger(name).removeHandler(self.handler)
        self.loop.close()

    def _spin(self) -> None:
        """Run the loop's ready callbacks (and those they schedule) until none are left."""
        for _ in range(50):
            ready = getattr(self.loop, "_ready", None)
            if ready is not None and not ready:
                return
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()

    def _settle(self, proto: HttpProtocol, transport: FakeTransport, final: bool) -> None:
        """Run what can run: jobs whose body is complete or abandoned; ``final`` (only once the
        connection is lost, so every body is one of the two): all of them."""
        for _ in range(1000):
            self._spin()
            if not self.pool.jobs:
                return
            body = proto.body  # None: no request with a body yet on this connection
            if not (final or body is None or body.complete or body._closed or transport.closing):
                return
            fn, arg = self.pool.jobs.popleft()
            fn(arg)
        raise AssertionError("the protocol keeps submitting jobs")

    def run(self, pieces: Iterable[bytes], eof: bool = True) -> Outcome:
        self.handler.records.clear()
        self.errors.clear()
        self.pool.jobs.clear()
        self.pool.busy = 0
        problems: list[str] = []
        proto = HttpProtocol(self.state)
        transport = FakeTransport()
        try:
            proto.connection_made(transport)  # type: ignore[arg-type]
            held = deque(p for p in pieces if p)
            while held and not transport.closing:
                if not transport.reading:
                    before = (len(transport.out), len(self.pool.jobs), transport.reading)
                    self._settle(proto, transport, final=False)
                    if (len(transport.out), len(self.pool.jobs), transport.reading) == before:
                        break  # paused and nothing can move: the rest stays in the kernel
                    continue
                proto.data_received(held.popleft())
                self._settle(proto, transport, final=False)
            if eof and not transport.closing and not proto.eof_received():
                transport.close()
            self._settle(proto, transport, final=False)
        except Exception as exc:  # the protocol must not raise into the transport
            problems.append(f"protocol raised {exc!r}")
        finally:
            proto.connection_lost(None)  # closes the body: a job still waiting for it can run
            try:
                self._settle(proto, transport, final=True)
            except Exception as exc:
                problems.append(f"after connection_lost: {exc!r}")
        for record in self.handler.records:
            if record.exc_info or record.levelno >= logging.ERROR:
                problems.append(f"logged: {record.getMessage()} {record.exc_info!r}")
        problems += [f"loop exception: {context}" for context in self.errors]
        if self.pool.busy:
            problems.append(f"{self.pool.busy} pool slot(s) never freed")
        if transport.written_after_eof:
            problems.append("wrote after write_eof")
        output = bytes(transport.out)
        try:
            statuses = [r.status for r in parse_responses(output)]
        except ValueError as exc:
            problems.append(f"output is no sequence of responses: {exc}")
            statuses = []
        errors = [n for n, s in enumerate(statuses) if s >= 400]
        if errors and errors[0] != len(statuses) - 1:
            problems.append(f"responses after an error status: {statuses}")
        if errors and not (transport.closing or transport.eof_written):
            problems.append(f"error status {statuses} without closing the connection")
        return Outcome(output, transport.closing or transport.eof_written, statuses, problems)


# -- differential oracles: wsgiloop.strict against h11 ---------------------------------------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked_problems(body: bytes, cuts: Iterable[int] = ()) -> list[str]:
    """Where ``ChunkedValidator`` and h11 disagree on ``body`` (a chunked body and what follows).

    - Fed whole or in pieces (cut at ``cuts``), the validator gives the same verdict and finds
      the same end.
    - Whenever both accept, they end the body at the same byte; neither ends it while the other
      reads on. That desynchronisation is what a smuggled request needs. (One side refusing is
      safe: the request gets its 400.)
    """
    import h11

    from wsgiloop.strict import ChunkedValidator

    problems: list[str] = []
    whole = ChunkedValidator()
    verdict = whole.feed(body)
    split = ChunkedValidator()
    split_verdict: str | None = None
    split_end = -1
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(body)} | {len(body)}):
        split_verdict = split.feed(body[start:cut])
        if split.done and split_end < 0:
            split_end = start + split.end
        if split_verdict is not None or split.done:
            break
        start = cut
    if (split_verdict, split.done) != (verdict, whole.done):
        problems.append(f"split changes the verdict: {verdict!r} vs {split_verdict!r}")
    elif whole.done and split_end != whole.end:
        problems.append(f"split changes the end: {whole.end} vs {split_end}")
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(CHUNKED_HEAD + body)
    h11_end = -1
    h11_error = None
    try:
        assert isinstance(conn.next_event(), h11.Request)
        while True:
            event = conn.next_event()
            if isinstance(event, h11.EndOfMessage):
                h11_end = len(body) - len(conn.trailing_data[0])
                break
            if not isinstance(event, h11.Data):
                break
    except h11.RemoteProtocolError as exc:
        h11_error = str(exc)
    # Either side refusing is safe (the request gets its 400). Unsafe: both accept and end the
    # body at different bytes, or one ends it while the other reads on.
    accepted = verdict is None
    if accepted and whole.done and h11_end >= 0 and h11_end != whole.end:
        problems.append(f"h11 ends the body at {h11_end}, the validator at {whole.end}")
    if accepted and whole.done and h11_end < 0 and h11_error is None:
        problems.append(f"the validator ends the body at {whole.end}; h11 reads on")
    if accepted and not whole.done and h11_end >= 0:
        problems.append(f"h11 ends the body at {h11_end}; the validator reads on")
    return problems


def head_problems(raw: bytes) -> list[str]:
    """Where ``check_head`` and h11 disagree on where the head in ``raw`` ends, or it raises."""
    import h11

    from wsgiloop import strict

    problems: list[str] = []
    try:
        reason = strict.check_head(raw)
    except Exception as exc:
        return [f"check_head raised {exc!r}"]
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return problems
    if isinstance(event, h11.Request):
        with_fields = strict.check_head(raw, len(event.headers))
        if with_fields != reason:
            problems.append(f"fields hint changes the verdict: {reason!r} vs {with_fields!r}")
        h11_end = len(raw) - len(conn.trailing_data[0])
        if reason is None and h11_end != strict.head_end(raw):
            problems.append(f"accepted, but h11 ends the head at {h11_end}, not "
                            f"{strict.head_end(raw)}")
        try:
            strict.check_request(event)
        except Exception as exc:
            problems.append(f"check_request raised {exc!r}")
    return problems
