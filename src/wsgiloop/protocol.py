"""The asyncio side of a connection: bytes in → h11 events → exchanges; batches out → bytes.

``HttpProtocol`` moves bytes and events and nothing else: request → environ lives in ``environ``,
start_response and framing decisions in ``response``/``wsgi``, the backpressure mechanics in
``bridge``. Everything here runs on the event loop thread.

Life of a connection::

    idle ──bytes──▶ reading head ──Request──▶ exchange on a pool thread ──end──▶ idle
      ▲  (keep-alive timeout)   (header timeout)   (body fed with backpressure)      │
      └──────────── next request: a fresh h11 parser (or discard unread body) ◀──────┘

h11 parses the requests; the responses it never sees (``response`` writes them). Pipelined
requests stay in h11's buffer (reading pauses) until the response before them ends, then move
to the next parser with ``trailing_data``.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11

from .bridge import EMPTY_INPUT, EmptyInput, InputStream, RequestBody, ResponseStream
from .environ import request_environ
from .logs import error_log
from .proxy import apply_proxy_headers
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
    from .server import ServerState

_Connection = h11.Connection
_SERVER = h11.SERVER
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_Request = h11.Request
_NEED_DATA = h11.NEED_DATA
_PAUSED = h11.PAUSED
_DONE = h11.DONE
_SEND_BODY = h11.SEND_BODY
_IDLE = h11.IDLE
_MUST_CLOSE = h11.MUST_CLOSE

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_PEER = ("", "")  # a Unix socket: the proxy in front knows the client (see proxy)

#: Seconds a closing connection keeps reading (and dropping) what the client still sends, so the
#: close does not turn into a reset that destroys the answer before the client has read it.
LINGER = 2.0


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection."""

    __slots__ = (
        "app_deadline",
        "awaiting_continue",
        "base_environ",
        "blank",
        "bodiless",
        "body",
        "body_seen",
        "conn",
        "continue_sent",
        "deadline",
        "delimited",
        "discarded",
        "discarding",
        "draining",
        "exchange",
        "fresh",
        "head",
        "head_request",
        "http11",
        "idle",
        "keep_alive",
        "length_left",
        "lingering",
        "loop",
        "peer",
        "reading",
        "responded",
        "state",
        "stream",
        "transport",
        "validator",
        "write_paused",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.deadline = 0.0  # loop.time() after which the connection is timed out; 0: none
        self.idle = True  # no byte of a next request yet
        self.fresh = True  # no request yet on this connection
        self.reading = True
        # The request in flight: its HTTP version, whether the connection may stay open after it
        # (the client's wish, then the response's: see _flush), whether the response head went
        # out, whether a 100 Continue did.
        self.http11 = True
        self.head_request = False  # a HEAD: no response to it has a body, errors included
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), and h11's
        # EndOfMessage for it is left unasked for (see _on_request).
        self.bodiless = False
        # A Content-Length body is delimited here rather than by h11 (see _body_bytes): whether
        # this request's is, how many of its bytes are still to come, and whether the client
        # still holds it back for a 100 Continue (h11 no longer sees the body to tell).
        self.delimited = False
        self.length_left = 0
        self.awaiting_continue = False
        self.keep_alive = True
        self.responded = False
        self.continue_sent = False
        self.discarding = False  # response done, dropping the unread rest of the body
        self.discarded = 0
        self.draining = False  # waiting for the write buffer to empty before a sendfile
        self.lingering = False  # answered and half-closed, dropping input until EOF (_linger)
        # Strict framing (see strict): the raw bytes of the head being read, and the shadow
        # validator of a chunked body, fed the same bytes h11 gets.
        self.head: bytes | bytearray = b""
        self.validator: ChunkedValidator | None = None
        self.blank = 0  # bytes of empty lines skipped before this request-line (strict)
        # Timeouts of a request in flight (see _arm): when the app must have answered, when body
        # bytes last arrived, since when the client has not been reading (0: not paused).
        self.app_deadline = 0.0
        self.body_seen = 0.0
        self.write_paused = 0.0

    # -- connection lifetime -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        state = self.state
        config = state.config
        state.connections.add(self)
        self.conn = self._new_parser()
        self.transport.set_write_buffer_limits(  # type: ignore[union-attr]
            config.write_buffer_high, config.write_buffer_low
        )
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        # The environ keys that do not change per request are shared by every connection to the
        # same local address; only the client's address is this connection's own.
        self.base_environ = state.base_environ(sock[:2] if isinstance(sock, tuple) else None)
        self.peer = (peer[0], str(peer[1])) if isinstance(peer, tuple) else _NO_PEER
        self.stream = ResponseStream(self.loop, self._flush, config.write_buffer_high)
        self.body = RequestBody(
            self.loop, config.body_buffer, self._resume_body, self._send_continue
        )
        self.deadline = self.loop.time() + config.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        # Wake a blocked app thread: its next write or read raises ClientDisconnected, so the
        # app's iterable is closed and its pool thread freed.
        self.stream.close()
        self.body.close()
        self.deadline = 0.0
        # Their callbacks are bound methods of this protocol: without them, reference counting
        # frees a closed connection at once instead of leaving cycles to the cyclic GC.
        self.stream.on_ready = self.body.request_more = self.body.on_first_read = _nothing

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

    @property
    def socket_fd(self) -> int | None:
        """The raw socket for ``os.sendfile``, or None where the transport must do the writing."""
        transport = self.transport
        if transport is None or transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # read only so that the close is no reset (see _linger)
        if self.delimited:
            self._body_bytes(data)
            return
        if self.idle:
            self.idle = False
            self.deadline = self.loop.time() + self.state.config.header_timeout
        conn = self.conn
        if conn.their_state is _IDLE:
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
        else:
            validator = self.validator
            if validator is not None and not validator.done:
                reason = validator.feed(data)
                if reason is not None:
                    self._client_error(400, reason)
                    return
        conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        if self.lingering:
            return False  # the client read our answer and is done: close
        if self.delimited and self.length_left:
            self._client_error(400, "peer closed the connection before the end of the body")
            return False
        self.conn.receive_data(b"")  # delimited: only noted, for the next parser's turn
        self._pump()
        # Keep the write side open while a response is still to be sent (half-close).
        return self.exchange is not None and not self.discarding

    def _pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            assert self.transport is not None
            self.transport.pause_reading()
            if self.exchange is not None:
                self._arm()  # a stalled body is now the app's doing, not the client's

    def _resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            assert self.transport is not None
            if not self.transport.is_closing():
                self.transport.resume_reading()
            if self.exchange is not None and not self.lingering:
                self.body_seen = self.loop.time()
                self._arm()

    def _pump(self) -> None:
        """Pull events from h11 until it needs data or the app must catch up."""
        if self.delimited:
            return  # h11 holds the next request (if any) until this exchange ends
        conn = self.conn
        body = self.body
        while True:
            if self.exchange is not None and not self.discarding and not body.wants_data():
                self._pause_reading()  # request-body backpressure: the app reads too slowly
                return
            if conn.their_state is _MUST_CLOSE:
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
                if self.discarding:
                    self.discarded += len(data)
                    if self.discarded > self.state.config.max_discard:
                        self._linger()
                        return
                else:
                    body.feed(data)
                    self.body_seen = self.loop.time()
                    self._arm()
            elif kind is _Request:
                self._on_request(event)  # type: ignore[arg-type]
                if self.exchange is None or self.bodiless or self.delimited:
                    # Answered on the loop (an error: the connection is closing); or nothing
                    # more to read for this request: next_event would say EndOfMessage, then
                    # NEED_DATA, unless the client pipelined; or its body is delimited here.
                    return
            elif kind is _EndOfMessage:
                if self.discarding:
                    self._start_next_cycle()
                    return
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
                if self.exchange is None:
                    self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        state = self.state
        config = state.config
        conn = self.conn
        self.deadline = 0.0
        self.fresh = False
        self.blank = 0
        self.head_request = request.method == b"HEAD"
        if request.http_version not in (b"1.1", b"1.0"):
            self._client_error(505, "unsupported HTTP version")
            return
        if request.method == b"CONNECT":
            # A tunnel is beyond WSGI: any 2xx an app gave would be a lie (RFC 9110 9.3.6).
            self._client_error(501, "CONNECT is not supported")
            return
        if len(request.headers) > config.limit_request_fields:
            self._client_error(431, "too many header fields")
            return
        if len(request.target) > config.limit_request_line:
            self._client_error(414, "request target too long")
            return
        head = self.head
        self.head = b""
        reason = check_head(head, len(request.headers))
        if reason is not None:
            self._client_error(400, reason)
            return
        fields = request.headers.raw_items()
        size, te, cl, host, connection = _scan_head(request, fields)
        rejection = check_fields(request.http_version, te, cl, host)
        if rejection is not None:
            self._client_error(*rejection)
            return
        if te:
            # h11 frames the body as chunked: check each chunk line the way RFC 9112 wants,
            # starting with the body bytes that came in the same read as the head.
            self.validator = validator = ChunkedValidator()
            reason = validator.feed(head, head_end(head))
            if reason is not None:
                self._client_error(400, reason)
                return
        else:
            self.validator = None
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
        # served with "Connection: close" (see wsgi), not refused: the client did nothing wrong.
        # h11 parses requests only (see response): keep-alive is decided here and in _flush.
        self.http11 = http11 = request.http_version == b"1.1"
        if connection is None:
            self.keep_alive = http11
        else:
            tokens = {token.strip() for token in connection.lower().split(b",")}
            # RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only on "keep-alive"
            # (appendix C.2.2), and the response must then carry a length (see _flush).
            self.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
        # Without a body there is nothing more to read for this request; h11's EndOfMessage for it
        # comes only if later bytes make _pump ask (the next request pipelined behind it).
        self.bodiless = bodiless = not te and not cl
        if bodiless:
            wsgi_input: InputStream | EmptyInput = EMPTY_INPUT  # self.body is left as it is
        else:
            self.awaiting_continue = conn.they_are_waiting_for_100_continue
            self.body.reset(True, self.awaiting_continue, config.max_body_size)
            wsgi_input = InputStream(self.body)
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
        self.exchange = Exchange(
            self, environ, state.default_headers, self.head_request, http11
        )
        if cl and not te:
            size = int(length)  # type: ignore[arg-type]  # h11 validated it
            if size:
                self._delimit(size)
        state.pool.submit(Exchange.run, self.exchange)
        now = self.loop.time()
        self.app_deadline = now + config.timeout if config.timeout else 0.0
        self.body_seen = now
        self._arm()

    def _awaiting_continue(self) -> bool:
        """Whether the client holds its body back until a 100 Continue."""
        if self.delimited:
            return self.awaiting_continue
        return self.conn.they_are_waiting_for_100_continue

    def _delimit(self, length: int) -> None:
        """Take over a Content-Length body from h11: exactly ``length`` bytes, counted here.

        h11 copies each body byte three times (into its buffer, then twice to slice a chunk out)
        and compacts its buffer as it goes; for a body this framing needs no parser. h11 has
        validated the head and the length; the body bytes it already holds (from the read that
        brought the head) are taken from ``trailing_data``, and a fresh parser gets whatever
        follows the body, to parse once this exchange ends.
        """
        buffered, closed = self.conn.trailing_data
        self.conn = self._new_parser()
        self.delimited = True
        self.length_left = length
        if buffered:
            self._body_bytes(buffered)
        if closed:
            self.eof_received()

    def _body_bytes(self, data: bytes) -> None:
        """Bytes read while a delimited body is in flight: the body's, then the next request's."""
        left = self.length_left
        if len(data) > left:
            # The next request, pipelined: parsed once this exchange ends. Reading pauses, so
            # at most this one read waits here.
            rest = data[left:]
            if (rest[0] == 13 or self.blank) and not self.conn.trailing_data[0]:
                rest, self.blank = skip_empty_lines(rest, self.blank)  # RFC 9112 2.2
            if rest:  # (receive_data(b"") would mean EOF)
                self.conn.receive_data(rest)
            self._pause_reading()
            data = data[:left]
            if not data:
                return
        self.length_left = left = left - len(data)
        if self.awaiting_continue:
            self.awaiting_continue = False  # it sent the body anyway
        if self.discarding:
            self.discarded += len(data)
            if not left:
                self._start_next_cycle()
            elif self.discarded > self.state.config.max_discard:
                self._linger()
            return
        body = self.body
        body.feed(data)
        if not left:
            body.feed_eof()
        self.body_seen = self.loop.time()
        self._arm()
        if left and not body.wants_data():
            self._pause_reading()  # request-body backpressure: the app reads too slowly

    def _resume_body(self) -> None:
        """The app drained the body buffer (called from its thread via the loop)."""
        if self.exchange is not None and not self.discarding:
            self._resume_reading()
            self._pump()

    def _send_continue(self) -> None:
        """The app started reading a body the client holds back for ``100 Continue``."""
        if self._awaiting_continue() and not self.responded and not self.continue_sent:
            assert self.transport is not None
            self.continue_sent = True
            self.transport.write(_CONTINUE)

    # -- writing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Take the app thread's pending batch and write it (scheduled by ``ResponseStream``)."""
        head, chunks, handoff, end, abort = self.stream.take()
        transport = self.transport
        assert transport is not None
        if transport.is_closing() or self.exchange is None:
            # Gone, or given up on (--timeout): the app's output goes nowhere.
            if end or abort:
                self._end_exchange()
            return
        if head is not None:
            self.responded = True
            if self.app_deadline:
                self.app_deadline = 0.0  # the app answered in time
                self._arm()
            if (
                head.close
                or not self.keep_alive
                or self.state.stopping
                or (head.framing is UNTIL_CLOSE and not self.exchange.head_only)
                # A final answer without a 100: the client may never send the body it holds
                # back, so where a next request would start is unknown (RFC 9110 10.1.1).
                or (not self.continue_sent and not self.bodiless and self._awaiting_continue())
            ):
                self.keep_alive = False
                end_of_head = END_CLOSE
            else:
                end_of_head = END_KEEP_ALIVE if self.http11 else END_KEEP_ALIVE_10
            transport.writelines([head.data, end_of_head, *chunks])
        elif chunks:
            transport.writelines(chunks)
        if handoff:
            self._drain_then_grant()
        if abort:
            transport.abort()
        if end or abort:
            self._end_exchange()

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

    def _end_exchange(self) -> None:
        """The response is complete (or aborted): free the pool slot, go on or close."""
        state = self.state
        exchange = self.exchange
        state.job_done(exchange is not None and exchange.timed_out)
        transport = self.transport
        assert transport is not None
        conn = self.conn
        if transport.is_closing() or (exchange is not None and exchange.timed_out):
            self.exchange = None
            return
        theirs = conn.their_state
        keep_alive = self.keep_alive and not self.state.stopping
        if self.delimited:
            unread = self.length_left > 0
            done = not unread
        else:
            unread = theirs is _SEND_BODY and not self.bodiless
            # MUST_CLOSE with keep-alive: an HTTP/1.0 client that asked for it (h11 never keeps
            # 1.0 alive; it parses one request, and a fresh parser takes the next).
            done = theirs is _DONE or theirs is _MUST_CLOSE or self.bodiless
        if keep_alive and done:
            self._start_next_cycle()
        elif keep_alive and unread:
            # The app did not read the whole body: drop the rest (bounded) to reach the next
            # request, rather than closing a keep-alive connection over a small leftover.
            self.body.close()
            self.discarding = True
            self.discarded = 0
            self.deadline = self.loop.time() + self.state.config.header_timeout
            self._resume_reading()
            self._pump()
        elif unread:
            self._linger()  # the client may still be sending the body (a 413, say)
        else:
            self.exchange = None
            self._close()

    def _start_next_cycle(self) -> None:
        self.exchange = None
        self.discarding = False
        self.responded = self.continue_sent = self.head_request = self.bodiless = False
        self.awaiting_continue = False
        self.length_left = 0
        buffered, closed = self.conn.trailing_data
        if self.delimited:
            # The parser _delimit made holds what followed the body and has parsed nothing yet:
            # it takes the next request as it is.
            self.delimited = False
        else:
            # A fresh parser per request: h11 never saw the response (see response), so its own
            # next cycle is not available, and a new Connection costs less than one anyway.
            self.conn = conn = self._new_parser()
            if buffered[:1] == b"\r" or self.blank:  # empty lines before it (RFC 9112 2.2)
                buffered, self.blank = skip_empty_lines(buffered, self.blank)
            if buffered:
                conn.receive_data(buffered)
            if closed:
                conn.receive_data(b"")
        # A pipelined request h11 already holds: its head is checked like any other.
        self.head = buffered
        self.idle = True
        self.deadline = self.loop.time() + self.state.config.keepalive_timeout
        self._resume_reading()
        if buffered or closed:
            self._pump()  # a pipelined request (or the client's EOF) is already in

    def _new_parser(self) -> h11.Connection:
        return _Connection(_SERVER, max_incomplete_event_size=self.state.config.max_header_bytes)

    def job_done_elsewhere(self, exchange: Exchange) -> None:
        """The app thread ended without handing an end to the stream (it was closed)."""
        self.state.job_done(exchange.timed_out)
        if self.exchange is exchange:
            self.exchange = None

    # -- errors, timeouts, shutdown ----------------------------------------------------------

    def _arm(self) -> None:
        """Set ``deadline`` for a request in flight: the earliest of its three timeouts.

        - the app must start its response within ``--timeout`` (``app_deadline``);
        - the client must not stall the body it is sending for ``--body-timeout`` (counted only
          while we read: when the app reads slowly and reading is paused, nobody is late);
        - the client must read some of the response within ``--write-timeout`` once the
          transport has paused the app (``write_paused``).
        """
        config = self.state.config
        deadline = self.app_deadline or float("inf")
        if self.reading and not self.bodiless and not self.body.complete and config.body_timeout:
            deadline = min(deadline, self.body_seen + config.body_timeout)
        if self.write_paused and config.write_timeout:
            deadline = min(deadline, self.write_paused + config.write_timeout)
        self.deadline = 0.0 if deadline == float("inf") else deadline

    def _exchange_timeout(self) -> None:
        """One of ``_arm``'s deadlines passed while a request is in flight."""
        exchange = self.exchange
        assert exchange is not None and self.transport is not None
        now = self.loop.time()
        environ = exchange.environ
        what = f"{environ['REQUEST_METHOD']} {environ.get('RAW_URI', '')}"
        if self.app_deadline and now >= self.app_deadline:
            error_log.error(
                "Request timed out: the app has not answered %s in %gs; its thread is abandoned",
                what,
                self.state.config.timeout,
            )
            exchange.timed_out = True
            self.state.hung += 1
            self._give_up(503)
        elif self.write_paused and now >= self.write_paused + self.state.config.write_timeout:
            error_log.info("Client %s stopped reading the response to %s", _peer(self), what)
            self.stream.close()
            self.transport.abort()
        else:
            error_log.info("Client %s stalled sending the body of %s", _peer(self), what)
            self._give_up(408)

    def _give_up(self, status: int) -> None:
        """Abandon the request in flight: the app's output is dropped (its next write or read
        raises ClientDisconnected); the client gets ``status`` if no response head went out yet,
        else the connection is aborted."""
        assert self.transport is not None
        self.stream.close()
        self.body.close()
        self.deadline = 0.0
        if self.responded:
            self.transport.abort()
            return
        self._write_error(status)
        self._close()

    def _write_error(self, status: int) -> None:
        """Send a plain-text ``status`` response that the server answers itself (no app)."""
        assert self.transport is not None
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        head = error_head(status, body, self.state.default_headers)
        self.responded = True
        self.keep_alive = False
        if self.head_request:
            self.transport.writelines([head.data, END_CLOSE])
        else:
            self.transport.writelines([head.data, END_CLOSE, body])


    def _client_error(self, status: int, detail: str) -> None:
        """Answer a request we will not pass to the app, then close. No traceback: not our bug."""
        transport = self.transport
        assert transport is not None
        peer = self.peer[0] or "unix socket"
        error_log.debug("Invalid request from %s: %s %s", peer, status, detail)
        if self.exchange is not None:
            # Broken body framing while the app runs: the app's work is abandoned (it sees a
            # disconnect on its next read or write); the client gets the error if no response
            # head went out yet, else an aborted connection.
            self._give_up(status)
            return
        if not self.responded and not transport.is_closing():
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
        self.exchange = None  # any response is complete and its pool slot freed
        self.discarding = False
        self.lingering = True
        transport.write_eof()
        self.deadline = self.loop.time() + LINGER
        self._resume_reading()

    def _close(self) -> None:
        self.deadline = 0.0
        assert self.transport is not None
        self.transport.close()

    def on_deadline(self) -> None:
        """Called by the server's ticker once ``deadline`` has passed."""
        if self.lingering or self.discarding:
            self._close()  # the client stalls in a body nobody wants, or lingered long enough
        elif self.exchange is not None:
            self._exchange_timeout()
        elif self.idle:
            self._close()  # keep-alive timeout: nothing was asked, nothing to say
        else:
            self._client_error(408, "timed out reading the request head")

    def shutdown(self) -> None:
        """Graceful stop: close now if idle; otherwise after the current response.

        The server calls this repeatedly while it drains. A connection without a first request
        yet gets up to ``LINGER`` seconds more: it was accepted before the listener closed, so
        its request is most likely on the way, and closing would drop it unanswered.
        """
        if self.exchange is not None:
            return
        if self.fresh and self.deadline:
            now = self.loop.time()
            self.deadline = min(self.deadline, now + LINGER)
            if now < self.deadline:
                return
        self._close()


def _nothing() -> None:
    """Stands for the callbacks of a closed connection's stream and body."""


def _peer(proto: HttpProtocol) -> str:
    return proto.peer[0] or "unix socket"


def _buffered(conn: h11.Connection) -> bool:
    """Whether h11 holds unread bytes or an EOF, i.e. whether ``next_event`` can be more than
    NEED_DATA (far cheaper to ask than ``next_event`` itself)."""
    data, closed = conn.trailing_data
    return closed or bool(data)


def _scan_head(
    request: h11.Request, fields: list[tuple[bytes, bytes]]
) -> tuple[int, bool, bool, bytes | None, bytes | None]:
    """One pass over the fields: the head's size as sent (give or take optional whitespace),
    whether Transfer-Encoding and Content-Length are present, the Host value and the
    Connection value (several Connection fields joined as one list)."""
    size = len(request.method) + len(request.target) + 14  # " HTTP/1.1\r\n" and the blank line
    te = cl = False
    host: bytes | None = None
    connection: bytes | None = None
    for raw_name, value in fields:
        size += len(raw_name) + len(value) + 4  # ": " and "\r\n"
        name = raw_name.lower()
        if name == b"transfer-encoding":
            te = True
        elif name == b"content-length":
            cl = True
        elif name == b"host":
            host = value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
    return size, te, cl, host, connection
