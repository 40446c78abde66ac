"""The asyncio side of a connection: bytes in → h11 events → exchanges; batches out → bytes.

``HttpProtocol`` moves bytes and events and nothing else: request → environ lives in ``environ``,
start_response and framing decisions in ``response``/``wsgi``, the backpressure mechanics in
``bridge``, and where the connection is in its life (its phase, the moves between phases, the
deadline of each, the facts of the request in flight) in ``lifecycle``, whose docstring draws
the picture. Everything here runs on the event loop thread, except ``socket_fd`` and
``release``, the two things an app thread may ask of its connection (``wsgi.Channel``).

h11 parses the requests; the responses it never sees (``response`` writes them). Pipelined
requests stay in h11's buffer (reading pauses) until the response before them ends, then move
to the next parser with ``trailing_data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import h11

from .bridge import EMPTY_INPUT, EmptyInput, InputStream, RequestBody, ResponseStream
from .environ import request_environ
from .lifecycle import (
    CLOSED,
    DISCARDING,
    EXCHANGE,
    HEAD,
    IDLE,
    LINGER,
    LINGERING,
    NEW,
    NEXT,
    PROXY,
    Cycle,
    Phase,
    check_move,
    exchange_deadline,
)
from .logs import error_log
from .metrics import TIMEOUT_APP, TIMEOUT_BODY, TIMEOUT_WRITE
from .proxy import apply_proxy_headers
from .proxy_protocol import NEED_MORE, ProxyHeaderError, starts_like_proxy
from .proxy_protocol import parse as parse_proxy_header
from .response import END_CLOSE, END_KEEP_ALIVE, END_KEEP_ALIVE_10, UNTIL_CLOSE, error_head
from .strict import (
    ChunkedValidator,
    Refused,
    check_fields,
    check_head,
    error_status,
    head_end,
    skip_empty_lines,
)
from .wsgi import Exchange

if TYPE_CHECKING:
    from .response import Head
    from .state import ServerState

_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_Request = h11.Request
_NEED_DATA = h11.NEED_DATA
_PAUSED = h11.PAUSED
_DONE = h11.DONE
_SEND_BODY = h11.SEND_BODY
_MUST_CLOSE = h11.MUST_CLOSE

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ASK_SOCKET: dict[str, Any] = {}  # base_environ until connection_made asks the socket
_NO_PEER = ("", "")  # a Unix socket: the proxy in front knows the client (see proxy)


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection."""

    __slots__ = (
        "base_environ",
        "blank",
        "body",
        "conn",
        "cycle",
        "deadline",
        "draining",
        "exchange",
        "head",
        "loop",
        "peer",
        "phase",
        "reading",
        "state",
        "stream",
        "transport",
        "write_paused",
    )

    def __init__(self, state: ServerState, base_environ: dict[str, Any] | None = None) -> None:
        self.state = state
        # The environ keys shared by the connections of one local address: given by the server
        # when its listener has only one (a specific address, or a Unix socket), else looked up
        # per connection (a wildcard bind: the address the client reached) in connection_made.
        self.base_environ = _ASK_SOCKET if base_environ is None else base_environ
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self.phase: Phase = NEW  # changed only by _enter
        self.deadline = 0.0  # loop.time() after which the phase has timed out; 0: none
        # The request in flight (or the last one, until the next head is parsed), and its app
        # thread's side while a pool job for it is outstanding (it outlives EXCHANGE when the
        # connection closes under a running app).
        self.cycle: Cycle | None = None
        self.exchange: Exchange | None = None
        # h11's parser of the request being read; made on its first byte and dropped once a
        # response ends with nothing buffered behind it, so that an idle connection holds none
        # (h11 keeps about 870 bytes per Connection).
        self.conn: h11.Connection | None = None
        # The request body's queue, made for the first request with a body: a connection that
        # only ever GETs holds none.
        self.body: RequestBody | None = None
        # The raw bytes of the head being read (strict framing checks them, see strict).
        self.head: bytes | bytearray = b""
        self.blank = 0  # bytes of empty lines skipped before this request-line (strict)
        # Flow control, orthogonal to the phase: whether the transport reads, since when the
        # transport has paused the app's writes (0: not paused), and whether we wait for the
        # write buffer to empty before a sendfile.
        self.reading = True
        self.write_paused = 0.0
        self.draining = False

    # -- the phase: every move goes through here ------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase`` (checked against ``lifecycle.NEXT``) and set its deadline."""
        if phase not in NEXT[self.phase]:
            check_move(self.phase, phase)  # raises, saying which move
        self.phase = phase
        seconds = self.state.timeouts[phase]
        self.deadline = 0.0 if seconds is None else self.loop.time() + seconds

    # -- connection lifetime -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        state = self.state
        config = state.config
        state.connections.add(self)
        if state.metrics is not None:
            state.metrics.accepted()
        self.transport.set_write_buffer_limits(  # type: ignore[union-attr]
            config.write_buffer_high, config.write_buffer_low
        )
        peer = transport.get_extra_info("peername")
        if self.base_environ is _ASK_SOCKET:
            # The environ keys that do not change per request are shared by every connection to
            # the same local address; only the client's address is this connection's own.
            sock = transport.get_extra_info("sockname")
            self.base_environ = state.base_environ(sock[:2] if isinstance(sock, tuple) else None)
        self.peer = (peer[0], str(peer[1])) if isinstance(peer, tuple) else _NO_PEER
        if state.proxy_protocol is not None and state.proxy_protocol.is_trusted(self.peer[0]):
            self.phase = PROXY  # a balancer's connection: its PROXY header comes first
        self.stream = ResponseStream(self.loop, self._flush, config.write_buffer_high)
        self.deadline = self.loop.time() + config.header_timeout  # NEW's deadline

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        state.connections.discard(self)
        if state.metrics is not None and self.phase is EXCHANGE:
            state.metrics.client_disconnected()  # we close in other phases, or went first
        self._enter(CLOSED)
        # Wake a blocked app thread: its next write or read raises ClientDisconnected, so the
        # app's iterable is closed and its pool thread freed.
        self.stream.close()
        # Their callbacks are bound methods of this protocol: without them, reference counting
        # frees a closed connection at once instead of leaving cycles to the cyclic GC.
        self.stream.on_ready = _nothing
        body = self.body
        if body is not None:
            body.close()
            body.request_more = body.on_first_read = _nothing

    def pause_writing(self) -> None:
        self.stream.pause()
        if not self.draining:
            self.write_paused = self.loop.time()
            self._arm()

    def resume_writing(self) -> None:
        if self.draining:
            self._grant_socket()
        self.stream.resume()
        if self.write_paused:
            self.write_paused = 0.0
            self._arm()

    # -- what an app thread may ask (wsgi.Channel) -------------------------------------------

    def socket_fd(self) -> int | None:
        """The raw socket for ``os.sendfile``, or None where the transport must do the writing.

        Runs on an app thread."""
        transport = self.transport
        if transport is None or transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    def release(self, exchange: Exchange) -> None:
        """The app thread ended without handing an end to the stream (it was closed): have the
        loop free its pool slot. Runs on an app thread."""
        self.loop.call_soon_threadsafe(self._released, exchange)

    def _released(self, exchange: Exchange) -> None:
        self.state.job_done(exchange.timed_out)
        if self.state.metrics is not None:
            self.state.metrics.exchange_ended(exchange, False)
        if self.exchange is exchange:
            self.exchange = None

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        metrics = self.state.metrics
        if metrics is not None:
            metrics.received(len(data))
        phase = self.phase
        if phase is HEAD:
            pass
        elif phase is NEW or phase is IDLE:
            if phase is NEW and self.state.proxy_protocol is not None and starts_like_proxy(data):
                error_log.warning("PROXY header from %s, which is not in --proxy-allow-from: "
                                  "refused", _peer(self))
                self._close()
                return
            self._enter(HEAD)
            self.conn = self.state.new_parser()
        elif phase is EXCHANGE or phase is DISCARDING:
            # Body bytes (or a pipelined request behind them): no head is being read.
            cycle = self.cycle
            assert cycle is not None
            if cycle.delimited:
                self._body_bytes(data)
                return
            validator = cycle.validator
            if validator is not None and not validator.done:
                reason = validator.feed(data)
                if reason is not None:
                    self._client_error(400, reason)
                    return
            self.conn.receive_data(data)  # type: ignore[union-attr]  # an exchange has one
            self._pump()
            return
        else:
            if phase is PROXY:
                self._proxy_bytes(data)
            return  # LINGERING: read only so that the close is no reset; CLOSED: too late
        head = self.head
        if not head:
            if data[0] == 13 or self.blank:  # empty lines before a request-line (RFC 9112 2.2)
                data, self.blank = skip_empty_lines(data, self.blank)
                if not data:
                    return
            self.head = data  # the usual case: the whole head in one read, no copy
        elif type(head) is bytearray:
            head += data  # a head dribbling in: amortised appends, not quadratic copies
        else:
            self.head = bytearray(head) + data
        self.conn.receive_data(data)  # type: ignore[union-attr]  # HEAD has one
        self._pump()

    def _proxy_bytes(self, data: bytes) -> None:
        """Bytes from a trusted balancer before its PROXY header is complete (``PROXY``)."""
        buffered = self.head + data if self.head else data
        try:
            verdict = parse_proxy_header(buffered)
        except ProxyHeaderError as exc:
            error_log.warning("Bad PROXY header from %s: %s", _peer(self), exc)
            self._close()
            return
        if verdict is NEED_MORE:
            self.head = buffered
            return
        self.head = b""
        self._enter(NEW)
        rest = buffered
        if not isinstance(verdict, tuple):  # NOT_PROXY: plain HTTP (the header is optional)
            pass
        else:
            header, size = verdict
            rest = buffered[size:]
            if header.client is not None:
                self.peer = (header.client[0], str(header.client[1]))
            if header.tls:
                assert self.transport is not None
                sock = self.transport.get_extra_info("sockname")
                self.base_environ = self.state.base_environ(
                    sock[:2] if isinstance(sock, tuple) else None, "https"
                )
        if rest:
            self.data_received(bytes(rest))

    def eof_received(self) -> bool:
        phase = self.phase
        if phase is LINGERING or phase is CLOSED:
            return False  # the client read our answer and is done: close
        cycle = self.cycle
        if (
            (phase is EXCHANGE or phase is DISCARDING)
            and cycle is not None
            and cycle.delimited
            and cycle.length_left
        ):
            self._client_error(400, "peer closed the connection before the end of the body")
            return False
        conn = self.conn
        if conn is None:  # NEW or IDLE (or PROXY): nothing asked, nothing to answer
            self._close()
            return False
        conn.receive_data(b"")  # delimited: only noted, for the next parser's turn
        self._pump()
        # Keep the write side open while a response is still to be sent (half-close).
        return self.phase is EXCHANGE

    def _pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            assert self.transport is not None
            self.transport.pause_reading()
            self._arm()  # a stalled body is now the app's doing, not the client's

    def _resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            assert self.transport is not None
            if not self.transport.is_closing():
                self.transport.resume_reading()
            if self.phase is EXCHANGE:
                self.cycle.body_seen = self.loop.time()  # type: ignore[union-attr]
                self._arm()

    def _pump(self) -> None:
        """Pull events from h11 until it needs data or the app must catch up."""
        cycle = self.cycle
        if cycle is not None and cycle.delimited:
            return  # h11 holds the next request (if any) until this exchange ends
        conn = self.conn
        assert conn is not None
        body = self.body
        while True:
            phase = self.phase
            if phase is EXCHANGE and body is not None and not body.wants_data():
                self._pause_reading()  # request-body backpressure: the app reads too slowly
                return
            if phase is not HEAD and conn.their_state is _MUST_CLOSE:  # (HEAD: a fresh parser)
                # The client's last request is in (it asked to close, or is HTTP/1.0): whatever
                # it sends now is never answered, and h11 would raise on it ("Got data when
                # expecting EOF"), which would cost the response still in flight.
                self._pause_reading()
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._client_error(error_status(exc.error_status_hint, self.head), str(exc))
                return
            kind = type(event)
            if kind is _Data:
                data = event.data  # type: ignore[union-attr]
                cycle = self.cycle
                assert cycle is not None
                if phase is DISCARDING:
                    cycle.discarded += len(data)
                    if cycle.discarded > self.state.config.max_discard:
                        self._linger()
                        return
                else:
                    assert body is not None  # a body came: not bodiless
                    body.feed(data)
                    cycle.body_seen = self.loop.time()
                    self._arm()
            elif kind is _Request:
                self._on_request(event)  # type: ignore[arg-type]
                body = self.body  # made for the first request with a body
                cycle = self.cycle
                if self.phase is not EXCHANGE or cycle.bodiless or cycle.delimited:  # type: ignore[union-attr]
                    # Answered on the loop (an error: the connection is closing); or nothing
                    # more to read for this request: next_event would say EndOfMessage, then
                    # NEED_DATA, unless the client pipelined; or its body is delimited here.
                    return
            elif kind is _EndOfMessage:
                if phase is DISCARDING:
                    self._start_next_cycle()
                    return
                if body is not None and not cycle.bodiless:  # type: ignore[union-attr]
                    body.feed_eof()
                self._arm()
                if not _buffered(conn):
                    return  # the usual case: next_event would only say NEED_DATA
            elif event is _NEED_DATA:
                return
            elif event is _PAUSED:
                # A pipelined request is buffered behind the one in flight: stop reading until
                # its turn comes, so h11's buffer stays at one socket read.
                self._pause_reading()
                return
            elif kind is h11.ConnectionClosed:
                if phase is not EXCHANGE:
                    self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        state = self.state
        config = state.config
        conn = self.conn
        assert conn is not None
        self.cycle = cycle = Cycle(request.method == b"HEAD")
        self.blank = 0
        if request.http_version not in (b"1.1", b"1.0"):
            self._client_error(505, "unsupported HTTP version")
            return
        if request.method == b"CONNECT":
            # A tunnel is beyond WSGI: any 2xx an app gave would be a lie (RFC 9110 9.3.6).
            self._client_error(501, "CONNECT is not supported")
            return
        fields = request.headers.raw_items()  # a plain list: far cheaper to walk than Headers
        if len(fields) > config.limit_request_fields:
            self._client_error(431, "too many header fields")
            return
        if len(request.target) > config.limit_request_line:
            self._client_error(414, "request target too long")
            return
        head = self.head
        self.head = b""
        reason = check_head(head, len(fields))
        if reason is not None:
            self._client_error(400, reason)
            return
        size, longest, te, cl, host, connection = _scan_head(request, fields)
        rejection = check_fields(request.http_version, te, cl, host)
        if rejection is not None:
            self._client_error(*rejection)
            return
        if te:
            # h11 frames the body as chunked: check each chunk line the way RFC 9112 wants,
            # starting with the body bytes that came in the same read as the head.
            cycle.validator = validator = ChunkedValidator()
            reason = validator.feed(head, head_end(head))
            if reason is not None:
                self._client_error(400, reason)
                return
        field_limit = config.limit_request_field_size
        if field_limit and longest > field_limit:
            self._client_error(431, "header field too large")
            return
        if size > config.max_header_bytes:
            # h11 enforces its limit only on a head still incomplete; one that arrived whole in
            # a single read (up to 256 KiB on loopback) gets here unchecked.
            self._client_error(431, "request head too large")
            return
        if len(state.connections) > config.limit_concurrency:
            self._client_error(503, "over the connection limit")
            return
        # While stopping, a request that still arrives (on a connection accepted just before the
        # listener closed: with pre-fork workers sharing it, that happens on every reload) is
        # served with "Connection: close" (see _flush), not refused: the client did nothing wrong.
        # h11 parses requests only (see response): keep-alive is decided here and in _flush.
        cycle.http11 = http11 = request.http_version == b"1.1"
        if connection is None:
            cycle.keep_alive = http11
        else:
            tokens = {token.strip() for token in connection.lower().split(b",")}
            # RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only on "keep-alive"
            # (appendix C.2.2), and the response must then carry a length (see _flush).
            cycle.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
        # Without a body there is nothing more to read for this request; h11's EndOfMessage for it
        # comes only if later bytes make _pump ask (the next request pipelined behind it).
        cycle.bodiless = bodiless = not te and not cl
        if bodiless and state.health_target is not None and _is_health(request, state):
            self._answer_health()
            return
        if bodiless:
            wsgi_input: InputStream | EmptyInput = EMPTY_INPUT  # self.body is left as it is
        else:
            cycle.awaiting_continue = conn.they_are_waiting_for_100_continue
            body = self.body
            if body is None:
                body = self.body = RequestBody(
                    self.loop, config.body_buffer, self._resume_body, self._send_continue
                )
            body.reset(True, cycle.awaiting_continue, config.max_body_size)
            wsgi_input = InputStream(body)
        try:
            environ = request_environ(
                self.base_environ, request, wsgi_input, config.root_path, fields, self.peer
            )
        except Refused as refused:  # the target's form or authority, a conflicting singleton
            self._client_error(*refused.rejection)
            return
        length = environ.get("CONTENT_LENGTH")
        if length is not None and int(length) > config.max_body_size:
            self._client_error(413, "request body too large")
            return
        if state.proxy_trust is not None:
            apply_proxy_headers(environ, state.proxy_trust)
        self._enter(EXCHANGE)
        self.exchange = exchange = Exchange(
            self, environ, state.default_headers, cycle.head_request, http11
        )
        now = self.loop.time()
        cycle.app_deadline = now + config.timeout if config.timeout else 0.0
        cycle.body_seen = now
        if cl and not te:
            size = int(length)  # type: ignore[arg-type]  # h11 validated it
            if size:
                self._delimit(size)
        state.pool.submit(Exchange.run, exchange)
        self._arm()

    def _awaiting_continue(self) -> bool:
        """Whether the client holds its body back until a 100 Continue."""
        cycle = self.cycle
        assert cycle is not None
        if cycle.delimited:
            return cycle.awaiting_continue
        return self.conn.they_are_waiting_for_100_continue  # type: ignore[union-attr]

    def _delimit(self, length: int) -> None:
        """Take over a Content-Length body from h11: exactly ``length`` bytes, counted here.

        h11 copies each body byte three times (into its buffer, then twice to slice a chunk out)
        and compacts its buffer as it goes; for a body this framing needs no parser. h11 has
        validated the head and the length; the body bytes it already holds (from the read that
        brought the head) are taken from ``trailing_data``, and a fresh parser gets whatever
        follows the body, to parse once this exchange ends.
        """
        cycle = self.cycle
        assert cycle is not None
        buffered, closed = self.conn.trailing_data  # type: ignore[union-attr]
        self.conn = self.state.new_parser()
        cycle.delimited = True
        cycle.length_left = length
        if buffered:
            self._body_bytes(buffered)
        if closed:
            self.eof_received()

    def _body_bytes(self, data: bytes) -> None:
        """Bytes read while a delimited body is in flight: the body's, then the next request's."""
        cycle = self.cycle
        assert cycle is not None
        left = cycle.length_left
        if len(data) > left:
            # The next request, pipelined: parsed once this exchange ends. Reading pauses, so
            # at most this one read waits here.
            rest = data[left:]
            conn = self.conn
            assert conn is not None  # _delimit made it
            if (rest[0] == 13 or self.blank) and not conn.trailing_data[0]:
                rest, self.blank = skip_empty_lines(rest, self.blank)  # RFC 9112 2.2
            if rest:  # (receive_data(b"") would mean EOF)
                conn.receive_data(rest)
            self._pause_reading()
            data = data[:left]
            if not data:
                return
        cycle.length_left = left = left - len(data)
        if cycle.awaiting_continue:
            cycle.awaiting_continue = False  # it sent the body anyway
        if self.phase is DISCARDING:
            cycle.discarded += len(data)
            if not left:
                self._start_next_cycle()
            elif cycle.discarded > self.state.config.max_discard:
                self._linger()
            return
        body = self.body
        assert body is not None  # a delimited body is a body
        body.feed(data)
        if not left:
            body.feed_eof()
        cycle.body_seen = self.loop.time()
        self._arm()
        if left and not body.wants_data():
            self._pause_reading()  # request-body backpressure: the app reads too slowly

    def _resume_body(self) -> None:
        """The app drained the body buffer (called from its thread via the loop)."""
        if self.phase is EXCHANGE:
            self._resume_reading()
            self._pump()

    def _send_continue(self) -> None:
        """The app started reading a body the client holds back for ``100 Continue``."""
        if self.phase is not EXCHANGE:
            return
        cycle = self.cycle
        assert cycle is not None and self.transport is not None
        if not cycle.responded and not cycle.continue_sent and self._awaiting_continue():
            cycle.continue_sent = True
            self.transport.write(_CONTINUE)

    # -- writing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Take the app thread's pending batch and write it (scheduled by ``ResponseStream``)."""
        head, chunks, handoff, end, abort = self.stream.take()
        transport = self.transport
        assert transport is not None
        if self.phase is not EXCHANGE or transport.is_closing():
            # Gone, or given up on (--timeout): the app's output goes nowhere.
            if end or abort:
                self._end_exchange()
            return
        counted = None  # a head whose metrics wait for the end in this same batch
        if head is not None:
            cycle = self.cycle
            exchange = self.exchange
            assert cycle is not None and exchange is not None
            cycle.responded = True
            metrics = self.state.metrics
            if metrics is not None:
                if end and not abort:
                    counted = head  # one clock read for its first byte and its end
                else:
                    metrics.head_sent(exchange, head)
            if cycle.app_deadline:
                cycle.app_deadline = 0.0  # the app answered in time
                if not end:  # else the next phase (_end_exchange) sets its own deadline
                    self._arm()
            if cycle.keeps_alive(
                head,
                head.framing is UNTIL_CLOSE and not exchange.head_only,
                self.state.stopping,
                not cycle.bodiless and self._awaiting_continue(),
            ):
                end_of_head = END_KEEP_ALIVE if cycle.http11 else END_KEEP_ALIVE_10
            else:
                cycle.keep_alive = False
                end_of_head = END_CLOSE
            transport.writelines([head.data, end_of_head, *chunks])
        elif chunks:
            transport.writelines(chunks)
        if handoff:
            self._drain_then_grant()
        if abort:
            self._abort()
        if end or abort:
            self._end_exchange(counted)

    def _drain_then_grant(self) -> None:
        transport = self.transport
        assert transport is not None
        if transport.get_write_buffer_size() == 0:
            self.stream.grant()
            return
        # resume_writing fires when the buffer falls to the low mark: make that mark zero.
        self.draining = True
        transport.set_write_buffer_limits(high=0, low=0)

    def _grant_socket(self) -> None:
        self.draining = False
        config = self.state.config
        assert self.transport is not None
        self.transport.set_write_buffer_limits(config.write_buffer_high, config.write_buffer_low)
        self.stream.grant()

    def _end_exchange(self, head: Head | None = None) -> None:
        """The response is complete (or aborted): free the pool slot, go on or close.

        ``head``: the response's head, written with the end, for the metrics to count both."""
        exchange = self.exchange
        self.exchange = None
        self.state.job_done(exchange is not None and exchange.timed_out)
        transport = self.transport
        assert transport is not None
        complete = self.phase is EXCHANGE and not transport.is_closing()
        if self.state.metrics is not None and exchange is not None:
            self.state.metrics.exchange_ended(exchange, complete, head)
        if not complete:
            return  # closed under the app (gone, timed out, aborted)
        cycle = self.cycle
        assert cycle is not None
        # What the response head promised (_flush says close once the server is stopping): a
        # connection that promised keep-alive stays, IDLE, until shutdown() ends it safely.
        keep_alive = cycle.keep_alive
        if cycle.bodiless:
            unread, done = False, True
        elif cycle.delimited:
            unread = cycle.length_left > 0
            done = not unread
        else:
            theirs = self.conn.their_state  # type: ignore[union-attr]
            unread = theirs is _SEND_BODY
            # MUST_CLOSE with keep-alive: an HTTP/1.0 client that asked for it (h11 never keeps
            # 1.0 alive; it parses one request, and a fresh parser takes the next).
            done = theirs is _DONE or theirs is _MUST_CLOSE
        if keep_alive and done:
            self._start_next_cycle()
        elif keep_alive and unread:
            # The app did not read the whole body: drop the rest (bounded) to reach the next
            # request, rather than closing a keep-alive connection over a small leftover.
            self.body.close()  # type: ignore[union-attr]  # a body is unread: there is one
            self._enter(DISCARDING)
            self._resume_reading()
            self._pump()
        elif unread or self.state.stopping:
            # The client may still be sending the body (a 413, say); or the server is stopping
            # and a request the client sent before reading our "Connection: close" must not
            # turn the close into a reset that destroys this response.
            self._linger()
        else:
            self._close()

    def _start_next_cycle(self) -> None:
        conn = self.conn
        assert conn is not None
        buffered, closed = conn.trailing_data
        cycle = self.cycle
        assert cycle is not None
        if not cycle.delimited:
            # A fresh parser per request: h11 never saw the response (see response), so its own
            # next cycle is not available, and a new Connection costs less than one anyway.
            # (After a delimited body, the parser _delimit made holds what followed the body
            # and has parsed nothing yet: it takes the next request as it is.)
            if buffered[:1] == b"\r" or self.blank:  # empty lines before it (RFC 9112 2.2)
                buffered, self.blank = skip_empty_lines(buffered, self.blank)
            if buffered or closed:
                conn = self.state.new_parser()
                if buffered:
                    conn.receive_data(buffered)
                if closed:
                    conn.receive_data(b"")
        self.cycle = None
        # Nothing behind this request: the next one gets its parser with its first byte.
        self.conn = conn if buffered or closed else None
        # A pipelined request h11 already holds: its head is checked like any other.
        self.head = buffered
        self._enter(HEAD if buffered else IDLE)
        if not self.reading:
            self._resume_reading()
        if buffered or closed:
            self._pump()  # a pipelined request (or the client's EOF) is already in

    def _answer_health(self) -> None:
        """``--health-path``, answered here and never by the app: 200 while serving, 503 once a
        graceful stop began (so a load balancer stops sending before connections close)."""
        state = self.state
        cycle = self.cycle
        assert cycle is not None and self.transport is not None
        self._enter(EXCHANGE)
        cycle.responded = True
        if state.stopping:
            status, body = 503, b"stopping\n"
        else:
            status, body = 200, b"ok\n"
        head = error_head(status, body, state.default_headers)
        keep_alive = cycle.keep_alive and not state.stopping
        if keep_alive:
            end_of_head = END_KEEP_ALIVE if cycle.http11 else END_KEEP_ALIVE_10
        else:
            end_of_head = END_CLOSE
        self.transport.writelines(
            [head.data, end_of_head] if cycle.head_request else [head.data, end_of_head, body]
        )
        if keep_alive:
            self._start_next_cycle()
        else:
            self._close()

    # -- errors, timeouts, shutdown ----------------------------------------------------------

    def _arm(self) -> None:
        """Set the deadline of an ``EXCHANGE`` (see ``lifecycle.exchange_deadline``)."""
        if self.phase is EXCHANGE:
            self.deadline = exchange_deadline(
                self.cycle,  # type: ignore[arg-type]
                self.state.config,
                self.reading,
                self.body is None or self.body.complete,
                self.write_paused,
            )

    def _exchange_timeout(self) -> None:
        """One of ``_arm``'s deadlines passed while a request is in flight."""
        exchange = self.exchange
        cycle = self.cycle
        assert exchange is not None and cycle is not None and self.transport is not None
        now = self.loop.time()
        environ = exchange.environ
        what = f"{environ['REQUEST_METHOD']} {environ.get('RAW_URI', '')}"
        if cycle.app_deadline and now >= cycle.app_deadline:
            error_log.error(
                "Request timed out: the app has not answered %s in %gs; its thread is abandoned",
                what,
                self.state.config.timeout,
            )
            exchange.timed_out = True
            self.state.hung += 1
            kind = TIMEOUT_APP
            self._give_up(503)
        elif self.write_paused and now >= self.write_paused + self.state.config.write_timeout:
            error_log.info("Client %s stopped reading the response to %s", _peer(self), what)
            kind = TIMEOUT_WRITE
            self._abort()
        else:
            error_log.info("Client %s stalled sending the body of %s", _peer(self), what)
            kind = TIMEOUT_BODY
            self._give_up(408)
        if self.state.metrics is not None:
            self.state.metrics.timed_out(kind)

    def _give_up(self, status: int) -> None:
        """Abandon the request in flight: the app's output is dropped (its next write or read
        raises ClientDisconnected); the client gets ``status`` if no response head went out yet,
        else the connection is aborted."""
        cycle = self.cycle
        assert cycle is not None
        self.stream.close()
        if self.body is not None:
            self.body.close()
        if cycle.responded:
            self._abort()
            return
        self._write_error(status)
        self._close()

    def _write_error(self, status: int) -> None:
        """Send a plain-text ``status`` response that the server answers itself (no app)."""
        assert self.transport is not None
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        head = error_head(status, body, self.state.default_headers)
        cycle = self.cycle
        head_only = False
        if cycle is not None:
            cycle.responded = True
            cycle.keep_alive = False
            head_only = cycle.head_request
        metrics = self.state.metrics
        if metrics is not None:
            if self.exchange is not None:  # the server answers for the app (503, 408)
                metrics.head_sent(self.exchange, head)
            else:
                metrics.wrote(len(head.data))
            metrics.wrote(0 if head_only else len(body))
        if head_only:
            self.transport.writelines([head.data, END_CLOSE])
        else:
            self.transport.writelines([head.data, END_CLOSE, body])

    def _client_error(self, status: int, detail: str) -> None:
        """Answer a request we will not pass to the app, then close. No traceback: not our bug."""
        transport = self.transport
        assert transport is not None
        peer = self.peer[0] or "unix socket"
        error_log.debug("Invalid request from %s: %s %s", peer, status, detail)
        phase = self.phase
        if phase is EXCHANGE or phase is DISCARDING:
            # Broken body framing while the app runs (or after it, while the rest of the body
            # is dropped): the app's work is abandoned (it sees a disconnect on its next read or
            # write); the client gets the error if no response head went out yet, else an
            # aborted connection.
            self._give_up(status)
            return
        if self.state.metrics is not None:
            self.state.metrics.refused(status)  # never passed to the app
        if not transport.is_closing():
            self._write_error(status)
        self._linger()

    def _linger(self) -> None:
        """Close once the client has had the chance to read what was sent (nginx's lingering close).

        Closing a socket whose input is unread makes the kernel answer with a reset, and a reset
        destroys whatever the client has not read yet: a client still uploading the body would
        never see its 413, or the response before a discard overflow. So shut down only our
        side (the client sees EOF right after the response) and drop its input until its own
        EOF, for at most ``LINGER`` seconds. Only once the response is complete: nothing may be
        written after ``write_eof``.
        """
        transport = self.transport
        assert transport is not None
        if transport.is_closing() or not transport.can_write_eof():  # TLS cannot half-close
            self._close()
            return
        self._enter(LINGERING)
        transport.write_eof()
        self._resume_reading()

    def _close(self) -> None:
        self._enter(CLOSED)
        assert self.transport is not None
        self.transport.close()

    def _abort(self) -> None:
        """Drop the connection at once (a reset): the response cannot be finished."""
        self.stream.close()
        self._enter(CLOSED)
        assert self.transport is not None
        self.transport.abort()

    def abort(self) -> None:
        """The server gives up on this connection (graceful timeout, a bug while timing out)."""
        if self.transport is not None:
            self._abort()

    def on_deadline(self) -> None:
        """Called by the server's ticker once ``deadline`` has passed."""
        if self.state.metrics is not None:
            self.state.metrics.deadline_passed(self.phase)
        _ON_DEADLINE[self.phase](self)

    def _head_timeout(self) -> None:
        self._client_error(408, "timed out reading the request head")

    def shutdown(self) -> None:
        """Graceful stop (the server calls this repeatedly while it drains): end the connection
        without losing a request its client may already have sent.

        - ``EXCHANGE``/``DISCARDING``: nothing to do. The response says ``Connection: close``
          (see _flush) and the connection then closes with a lingering half-close
          (_end_exchange); one whose head went out before the stop, promising keep-alive,
          becomes ``IDLE`` like any other.
        - ``IDLE``: it keeps the rest of its keep-alive time. Its client (nginx's upstream
          pool, a ``requests.Session``) may send the next request at any moment and learns of a
          close only by sending into it; closing sooner than the keep-alive timeout would have
          is exactly the race the advertised timeout exists to avoid (the shipped nginx site
          sets ``keepalive_timeout`` below it, so nginx closes first). A request that arrives
          meanwhile is answered with ``Connection: close``; when the time is over the ticker
          closes it with a lingering half-close (_idle_timeout). ``--keep-alive`` at most (5 s
          by default), well inside ``--graceful-timeout``.
        - ``NEW``/``HEAD``: up to ``LINGER`` seconds more: it was accepted before the listener
          closed, so its request is most likely on the way or half in, and closing would drop
          it unanswered.
        """
        phase = self.phase
        if phase is EXCHANGE or phase is DISCARDING or phase is IDLE or phase is CLOSED:
            return
        if phase is LINGERING:
            if self.loop.time() >= self.deadline:
                self._close()
            return
        if phase is NEW or phase is HEAD:
            now = self.loop.time()
            self.deadline = min(self.deadline, now + LINGER)
            if now < self.deadline:
                return
        self._close()

    def _idle_timeout(self) -> None:
        """Keep-alive timeout: nothing was asked, nothing to say. While the server stops, close
        with a lingering half-close: a request that crossed our FIN is then read and dropped
        (its client sees EOF, which it may retry on) rather than answered with a reset."""
        if self.state.stopping:
            self._linger()
        else:
            self._close()


def _close_quietly(proto: HttpProtocol) -> None:
    proto._close()


#: What a passed deadline means in each phase (the deadlines themselves: lifecycle).
_ON_DEADLINE: dict[Phase, Callable[[HttpProtocol], None]] = {
    PROXY: _close_quietly,  # a balancer that never sent its header
    NEW: _close_quietly,  # nothing was asked, nothing to say
    IDLE: HttpProtocol._idle_timeout,
    HEAD: HttpProtocol._head_timeout,
    EXCHANGE: HttpProtocol._exchange_timeout,
    DISCARDING: _close_quietly,  # the client stalls in a body nobody wants
    LINGERING: _close_quietly,  # lingered long enough
    CLOSED: lambda proto: None,
}


def _nothing() -> None:
    """Stands for the callbacks of a closed connection's stream and body."""


def _peer(proto: HttpProtocol) -> str:
    return proto.peer[0] or "unix socket"


def _is_health(request: h11.Request, state: ServerState) -> bool:
    """Whether ``request`` asks for --health-path (GET or HEAD; any query string)."""
    target = request.target
    health = state.health_target
    assert health is not None
    return (
        target.startswith(health)
        and (len(target) == len(health) or target[len(health)] == 0x3F)  # "?"
        and request.method in (b"GET", b"HEAD")
    )


def _buffered(conn: h11.Connection) -> bool:
    """Whether h11 holds unread bytes or an EOF, i.e. whether ``next_event`` can be more than
    NEED_DATA (far cheaper to ask than ``next_event`` itself)."""
    data, closed = conn.trailing_data
    return closed or bool(data)


def _scan_head(
    request: h11.Request, fields: list[tuple[bytes, bytes]]
) -> tuple[int, int, bool, bool, bytes | None, bytes | None]:
    """One pass over the fields: the head's size as sent (give or take optional whitespace),
    the largest field (name and value), whether Transfer-Encoding and Content-Length are
    present, the Host value and the Connection value (several Connection fields joined as one
    list)."""
    size = len(request.method) + len(request.target) + 14  # " HTTP/1.1\r\n" and the blank line
    longest = 0
    te = cl = False
    host: bytes | None = None
    connection: bytes | None = None
    for raw_name, value in fields:
        field = len(raw_name) + len(value)
        size += field + 4  # ": " and "\r\n"
        if field > longest:
            longest = field
        name = raw_name.lower()
        if name == b"transfer-encoding":
            te = True
        elif name == b"content-length":
            cl = True
        elif name == b"host":
            host = value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
    return size, longest, te, cl, host, connection
