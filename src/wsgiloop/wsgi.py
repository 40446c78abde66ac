"""The app-thread half of a request: call the WSGI app and stream its response to the loop.

``Exchange`` is created on the loop when h11 yields a request and then runs, once, on a pool
thread (``Exchange.run``). Of its connection it knows only the ``Channel`` interface: the app and
the settings, the ``ResponseStream`` it writes the response to, the raw socket for ``sendfile``,
and how to hand its pool slot back when the stream is gone. Through the stream:

- a list or tuple body (the usual small response) goes to the loop in one hop with its head and
  the end-of-message;
- any other iterable is pushed chunk by chunk as the app yields (PEP 3333 forbids holding back a
  block), coalesced into one hop whenever the loop has not yet taken the previous batch;
- a ``wsgi.file_wrapper`` over a regular file is sent with ``os.sendfile`` (see ``filewrapper``).

Whatever happens, the iterable's ``close()`` is called, exactly one end or abort reaches the loop
(which frees the pool slot), and an app error becomes a 500 or, once headers are out, an abort.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .bridge import BodyTooLarge, ClientDisconnected, ResponseStream
from .filewrapper import FileWrapper, sendfile_all
from .logs import access_log, error_log, log_access
from .response import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    ExcInfo,
    Response,
    encode_chunk,
    error_head,
)
from .spool import spool_chunked_body

if TYPE_CHECKING:
    from .config import Config
    from .hooks import RequestHooks

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Shared(Protocol):
    """What an app thread reads of its worker's shared state (``state.ServerState``): plain
    attributes, fixed for the worker's life, so the pool thread reads them without a call."""

    app: WSGIApp
    config: Config
    #: ``pre_request``/``post_request``, or None when neither is defined.
    request_hooks: RequestHooks | None


class Channel(Protocol):
    """What an app thread may use of its connection (``protocol.HttpProtocol`` on the loop side).

    Everything here is safe to call from an app thread; nothing else of the connection is.
    """

    @property
    def stream(self) -> ResponseStream: ...

    @property
    def state(self) -> Shared: ...

    def socket_fd(self) -> int | None:
        """The raw socket for ``os.sendfile``, or None where the transport must do the writing."""

    def release(self, exchange: Exchange) -> None:
        """The exchange ended without an end or abort reaching the stream (it was closed): have
        the loop free its pool slot."""

_INTERNAL_ERROR = b"500 Internal Server Error\n"
_TOO_LARGE = b"413 Content Too Large\n"



class Exchange:
    """One request/response, handed from the loop to a pool thread."""

    __slots__ = (
        "channel",
        "environ",
        "head_only",
        "http11",
        "overflowed",
        "response",
        "sent",
        "started",
        "stream",
        "timed_out",
    )

    def __init__(
        self,
        channel: Channel,
        environ: dict[str, Any],
        extra_headers: list[tuple[bytes, bytes]],
        head_only: bool,
        http11: bool = True,
    ) -> None:
        self.channel = channel
        self.stream: ResponseStream = channel.stream
        self.environ = environ
        self.response = Response(extra_headers)
        self.head_only = head_only
        self.http11 = http11
        self.sent = 0  # body bytes handed to the loop
        self.overflowed = False  # the app went past its Content-Length: stop iterating
        self.started = time.monotonic()
        self.timed_out = False  # set on the loop when --timeout gave up on this app call

    # -- what the app calls ------------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        self.response.start_response(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the block is on its way before this returns."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if data:
            self._push([data], end=False)

    # -- sending -----------------------------------------------------------------------------

    def _push(self, chunks: list[bytes], end: bool) -> None:
        """Frame ``chunks`` (and the end) for the wire and queue them for the loop."""
        response = self.response
        head = None
        if not response.headers_sent:
            head = response.head(self.http11)
            response.headers_sent = True
            if head.framing is NO_BODY:
                # 204/304 never have content: drop any, as for HEAD, rather than break framing
                # over, say, a 304 that carries the body of the 200 it replaces.
                self.head_only = True
        if self.head_only:
            self.stream.send(head, None, end=end)
            return
        framing = response.framing
        if framing is LENGTH:
            length: int = response.content_length  # type: ignore[assignment]
            total = 0
            for data in chunks:
                total += len(data)
            if self.sent + total > length:
                chunks = self._clip(chunks, length)  # rare: past its Content-Length
                total = sum(len(data) for data in chunks)
            self.sent += total
            if end and self.sent < length:
                # The client would wait for the missing bytes forever, or take the next response
                # for them: the response is broken, and only dropping the connection says so.
                error_log.error(
                    "%s %s: the app sent %d bytes of its Content-Length of %d; aborting",
                    self.environ["REQUEST_METHOD"],
                    self.environ["PATH_INFO"],
                    self.sent,
                    length,
                )
                self.stream.send(head, chunks, abort=True)
                return
        elif framing is CHUNKED:
            framed: list[bytes] = []
            for data in chunks:
                self.sent += len(data)
                framed += encode_chunk(data)
            if end:
                framed.append(LAST_CHUNK)
            chunks = framed
        else:  # UNTIL_CLOSE: the loop closes the connection after the end
            for data in chunks:
                self.sent += len(data)
        self.stream.send(head, chunks, end=end)

    def _clip(self, chunks: list[bytes], length: int) -> list[bytes]:
        """Drop what goes past the declared Content-Length (as gunicorn does), once logged.

        Sets ``overflowed`` so that ``run`` stops iterating: every further block would be dropped
        too, and an endless generator would otherwise spin its pool thread forever.
        """
        room = length - self.sent
        total = 0
        for chunk in chunks:
            total += len(chunk)
        if total <= room:
            return chunks
        if self.overflowed:
            return []
        self.overflowed = True
        error_log.warning(
            "%s %s: the app sent more than its Content-Length of %d; the excess was dropped",
            self.environ["REQUEST_METHOD"],
            self.environ["PATH_INFO"],
            length,
        )
        clipped: list[bytes] = []
        for chunk in chunks:
            if room <= 0:
                break
            clipped.append(chunk[:room])
            room -= len(chunk)
        return clipped

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Try the ``os.sendfile`` path; False means the caller should iterate instead.

        For HEAD this only adds the Content-Length a GET would get (and True: the caller ends the
        response with the head alone), so HEAD and GET of the same file have the same headers.
        """
        span = wrapper.sendfile_span()
        sock = self.channel.socket_fd()
        if span is None or sock is None or not self.channel.state.config.sendfile:
            return False
        file_fd, offset, available = span
        response = self.response
        if response.headers_sent or not response.status or response.status_code in (204, 304):
            return False
        if response.content_length is None:
            response.headers.append((b"Content-Length", str(available).encode()))
            response.content_length = available
        head = response.head(self.http11)
        if response.framing is not LENGTH:
            return False  # the app asked for Transfer-Encoding: iterate and chunk
        count = min(available, response.content_length)
        if self.head_only:
            return True
        self.stream.send(head, None)
        response.headers_sent = True
        stream = self.stream
        own_fd = stream.handoff(sock, count)  # a private duplicate: see ResponseStream.handoff
        before = self.sent
        try:
            sent = sendfile_all(
                own_fd,
                file_fd,
                offset,
                count,
                lambda: stream.closed,
                self.channel.state.config.write_timeout,
                on_sent=self._count_sent,  # the access log's bytes, if the client goes midway
            )
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientDisconnected("client disconnected during sendfile") from exc
        except TimeoutError as exc:
            error_log.info(
                "Client %s stopped reading the file sent for %s %s",
                self.environ.get("REMOTE_ADDR"),
                self.environ["REQUEST_METHOD"],
                self.environ.get("RAW_URI", ""),
            )
            raise ClientDisconnected("client stopped reading during sendfile") from exc
        finally:
            os.close(own_fd)
        self.sent = before + sent
        if sent < response.content_length:
            raise OSError(f"file ended after {sent} of {response.content_length} bytes")
        return True

    def _count_sent(self, n: int) -> None:
        self.sent += n

    # -- the pool thread's job ---------------------------------------------------------------

    def run(self) -> None:
        """Call the app and deliver its response. Never raises."""
        channel = self.channel
        result: Any = None
        spooled = None  # the chunked body read ahead of the app (--spool-chunked-body)
        ended = False  # an end or abort reached the stream: the loop will free the pool slot
        if self.stream.closed:
            # Abandoned while waiting for a thread (client gone, or --timeout): don't run it.
            channel.release(self)
            return
        shared = channel.state
        hooks = shared.request_hooks
        config = shared.config
        try:
            if hooks is not None:
                hooks.before(self.environ)
            if config.spool_chunked_body:
                spooled = spool_chunked_body(self.environ, config.body_buffer)
            result = shared.app(self.environ, self.start_response)
            if type(result) is list or type(result) is tuple:
                if len(result) == 1 and type(result[0]) is bytes:  # the usual: one block
                    chunks = [result[0]] if result[0] else []
                else:
                    chunks = [c if type(c) is bytes else _as_bytes(c) for c in result]
                    chunks = [c for c in chunks if c]
                if self.response.content_length is None:
                    _set_known_length(self.response, chunks, self.head_only)
                self._push(chunks, end=True)
            else:
                if not (type(result) is FileWrapper and self._send_file(result)):
                    for chunk in result:
                        if type(chunk) is not bytes:
                            chunk = _as_bytes(chunk)
                        if chunk:
                            self._push([chunk], end=False)
                            if self.head_only or self.overflowed:
                                break  # the head is out; the body would be dropped anyway
                self._push([], end=True)
            ended = True
        except ClientDisconnected:
            # Usually the stream refused a send (the loop saw the connection go), and then no
            # end reached the loop: free the slot below. But sendfile can fail first, or the body
            # framing broke: then have the loop drop the connection, as it may not notice itself
            # (it does not read while a pipelined request waits), and free the slot.
            error_log.debug("Client %s disconnected", self.environ.get("REMOTE_ADDR"))
            ended = self._abort()
        except BaseException as exc:
            # BaseException too: an app's ``sys.exit()`` must not leave the client waiting
            # forever on a response nobody will send (the pool thread lives on regardless).
            ended = self._fail(exc)
        finally:
            # (A list has no close(): asking would raise and swallow an AttributeError.)
            if result is not None and type(result) is not list and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    error_log.exception("Error closing the response iterable")
            if spooled is not None:
                spooled.close()
            if not ended:
                channel.release(self)
            if hooks is not None:
                response = self.response
                hooks.after(
                    self.environ,
                    response.status if response.headers_sent else "",
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers],
                    self.sent,
                )
            if access_log.isEnabledFor(logging.INFO):
                status = self.response.status if self.response.headers_sent else "-"
                log_access(
                    config.access_log_format,
                    self.environ,
                    status,
                    self.sent,
                    time.monotonic() - self.started,
                )

    def _fail(self, exc: BaseException) -> bool:
        """Answer an app failure: 500 (or 413) if nothing was sent yet, else abort."""
        environ = self.environ
        response = self.response
        too_large = isinstance(exc, BodyTooLarge)
        if too_large:
            error_log.info("Request body too large from %s", environ.get("REMOTE_ADDR"))
        else:
            error_log.error(
                "Error handling request %s %s",
                environ["REQUEST_METHOD"],
                environ.get("RAW_URI", environ["PATH_INFO"]),
                exc_info=exc,
            )
        if response.headers_sent:
            return self._abort()
        body = _TOO_LARGE if too_large else _INTERNAL_ERROR
        response.headers_sent = True
        if too_large:
            code, response.status = 413, "413 Content Too Large"
        else:
            code, response.status = 500, "500 Internal Server Error"
        head = error_head(code, body, response.extra_headers)
        try:
            self.stream.send(head, [] if self.head_only else [body], end=True)
        except ClientDisconnected:
            return False
        self.sent = 0 if self.head_only else len(body)
        return True

    def _abort(self) -> bool:
        """Have the loop drop the connection; False if it is gone already (no abort reached it)."""
        try:
            self.stream.send(None, None, abort=True)
        except ClientDisconnected:
            return False
        return True


def _set_known_length(response: Response, chunks: list[bytes], head_only: bool) -> None:
    """Give a list or tuple body without a Content-Length the length it has.

    PEP 3333 lets a server compute it when the iterable has one element; a list or tuple is
    complete when the app returns it, so the same holds for any length. Without it, HTTP/1.1
    gets a chunked response and HTTP/1.0 a close. Not for a status without content (204, 304),
    an app's own Transfer-Encoding, a response already started with ``write()``, or a HEAD
    whose app returned no body (a GET might have one: a 0 would be a lie).
    """
    if response.headers_sent or not response.status or response.status_code in (204, 304):
        return
    total = 0
    for chunk in chunks:
        total += len(chunk)
    if head_only and not total:
        return
    for name, _ in response.headers:
        if name.lower() == b"transfer-encoding":
            return
    response.headers.append((b"Content-Length", b"%d" % total))
    response.content_length = total


def _as_bytes(chunk: Any) -> bytes:
    """Accept bytes-like blocks (bytearray, memoryview); anything else is the app's bug."""
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(
        f"WSGI response blocks must be bytes, got {type(chunk).__name__}"
        + (" (encode str bodies first)" if isinstance(chunk, str) else "")
    )

