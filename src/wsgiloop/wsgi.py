"""The app-thread half of a request: call the WSGI app and stream its response to the loop.

``Exchange`` is created on the loop when h11 yields a request and then runs, once, on a pool
thread (``Exchange.run``). It talks to the loop only through the connection's ``ResponseStream``:

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
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .bridge import BodyTooLarge, ClientDisconnected, ResponseStream
from .filewrapper import FileWrapper, sendfile_all
from .logs import access_log, error_log, log_access
from .response import ExcInfo, Response, error_head

if TYPE_CHECKING:
    from .protocol import HttpProtocol

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_INTERNAL_ERROR = b"500 Internal Server Error\n"
_TOO_LARGE = b"413 Content Too Large\n"


class Exchange:
    """One request/response, handed from the loop to a pool thread."""

    __slots__ = (
        "environ",
        "head_only",
        "protocol",
        "response",
        "sent",
        "started",
        "stream",
    )

    def __init__(
        self,
        protocol: HttpProtocol,
        environ: dict[str, Any],
        extra_headers: list[tuple[bytes, bytes]],
        head_only: bool,
    ) -> None:
        self.protocol = protocol
        self.stream: ResponseStream = protocol.stream
        self.environ = environ
        self.response = Response(extra_headers)
        self.head_only = head_only
        self.sent = 0  # body bytes handed to the loop
        self.started = time.monotonic()

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
        response = self.response
        head = None
        if not response.headers_sent:
            if self.protocol.state.stopping:
                response.extra_headers = [*response.extra_headers, (b"Connection", b"close")]
            head = response.head()
            response.headers_sent = True
        if self.head_only:
            chunks = []
        else:
            length = response.content_length
            if length is not None:
                chunks = self._clip(chunks, length)
            for chunk in chunks:
                self.sent += len(chunk)
        self.stream.send(head, chunks, end=end)

    def _clip(self, chunks: list[bytes], length: int) -> list[bytes]:
        """Drop what goes past the declared Content-Length (as gunicorn does), once logged."""
        room = length - self.sent
        total = 0
        for chunk in chunks:
            total += len(chunk)
        if total <= room:
            return chunks
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
        """Try the ``os.sendfile`` path; False means the caller should iterate instead."""
        span = wrapper.sendfile_span()
        sock = self.protocol.socket_fd
        if span is None or sock is None or self.head_only:
            return False
        file_fd, offset, available = span
        response = self.response
        if response.headers_sent or not response.status:
            return False
        count = available
        if response.content_length is None:
            response.headers.append((b"Content-Length", str(available).encode()))
            response.content_length = available
        else:
            count = min(available, response.content_length)
        self.stream.send(response.head(), None)
        response.headers_sent = True
        self.stream.handoff()
        self.protocol.account_passthrough(count)
        stream = self.stream
        sent = sendfile_all(sock, file_fd, offset, count, lambda: stream.closed)
        self.sent += sent
        if sent < response.content_length:
            raise OSError(f"file ended after {sent} of {response.content_length} bytes")
        return True

    # -- the pool thread's job ---------------------------------------------------------------

    def run(self) -> None:
        """Call the app and deliver its response. Never raises."""
        protocol = self.protocol
        state = protocol.state
        result: Any = None
        ended = False  # an end or abort reached the stream: the loop will free the pool slot
        try:
            result = state.app(self.environ, self.start_response)
            if type(result) is list or type(result) is tuple:
                chunks = [c if type(c) is bytes else _as_bytes(c) for c in result]
                self._push([c for c in chunks if c], end=True)
            else:
                if not (type(result) is FileWrapper and self._send_file(result)):
                    for chunk in result:
                        if type(chunk) is not bytes:
                            chunk = _as_bytes(chunk)
                        if chunk:
                            self._push([chunk], end=False)
                            if self.head_only:
                                break  # the head is out; the body would be dropped anyway
                self._push([], end=True)
            ended = True
        except ClientDisconnected:
            # The stream refused the send, so no end reached the loop: free the slot below.
            error_log.debug("Client %s disconnected", self.environ.get("REMOTE_ADDR"))
        except Exception as exc:
            ended = self._fail(exc)
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    error_log.exception("Error closing the response iterable")
            if not ended:
                protocol.loop.call_soon_threadsafe(protocol.state.pool.done)
            if access_log.isEnabledFor(logging.INFO):
                status = self.response.status if self.response.headers_sent else "-"
                log_access(
                    state.config.access_log_format,
                    self.environ,
                    status,
                    self.sent,
                    time.monotonic() - self.started,
                )

    def _fail(self, exc: Exception) -> bool:
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
        try:
            if response.headers_sent:
                self.stream.send(None, None, abort=True)
            else:
                body = _TOO_LARGE if too_large else _INTERNAL_ERROR
                response.headers_sent = True
                response.status = "413 Content Too Large" if too_large else "500 Internal Server Error"
                head = error_head(413 if too_large else 500, body, response.extra_headers)
                self.stream.send(head, [] if self.head_only else [body], end=True)
                self.sent = 0 if self.head_only else len(body)
        except ClientDisconnected:
            return False
        return True


def _as_bytes(chunk: Any) -> bytes:
    """Accept bytes-like blocks (bytearray, memoryview); anything else is the app's bug."""
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(
        f"WSGI response blocks must be bytes, got {type(chunk).__name__}"
        + (" (encode str bodies first)" if isinstance(chunk, str) else "")
    )

