"""``start_response`` and response framing, by the book, without I/O.

``Response`` holds what the app declared (status, headers). When the first body bytes are
ready, ``head()`` validates it and serialises the status line and headers, and picks the body's
framing (RFC 9112 section 6.3): the app's Content-Length, else chunked for an HTTP/1.1 client,
else the body runs until the connection closes. Validation happens here, in the app's thread,
so a bad status or header becomes an exception inside the app's call (and so a 500), never a
broken response on the wire.

The head leaves out one thing: the ``Connection`` header and the blank line that ends the head.
Whether the connection stays open is decided on the loop when the head goes out (the server may
have started stopping; a client may still be holding back a body for ``100 Continue``), so the
loop appends one of the ``END_*`` constants.

h11 parses requests; responses are written here rather than by h11, because h11's writer costs
as much per response as its parser does per request (a third of a small request's time), while
a response head that repeats (same status, same headers) is a dictionary hit here.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from types import TracebackType
from typing import Any

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: Body framings (RFC 9112 6.3), as chosen by ``head()``.
LENGTH = 1  # Content-Length, from the app
CHUNKED = 2  # Transfer-Encoding: chunked (HTTP/1.1 clients)
UNTIL_CLOSE = 3  # no length, an HTTP/1.0 client: the body ends when the connection closes
NO_BODY = 4  # 1xx, 204, 304: never content, whatever the headers say

#: What the loop appends to a head: the Connection header, if any, and the blank line.
END_KEEP_ALIVE = b"\r\n"
END_KEEP_ALIVE_10 = b"Connection: keep-alive\r\n\r\n"  # HTTP/1.0 keep-alive must be explicit
END_CLOSE = b"Connection: close\r\n\r\n"

#: The last chunk of a chunked body (no trailers: WSGI has no way to send any).
LAST_CHUNK = b"0\r\n\r\n"

_DIGITS = frozenset("0123456789")
_STATUSES = frozenset(s.value for s in HTTPStatus)
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+").fullmatch
#: A field value once stripped of surrounding whitespace: visible characters, spaces, tabs and
#: obs-text (RFC 9110 5.5). CR, LF, NUL and the other controls would split or corrupt the head.
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*").fullmatch
_OWS = b" \t"
#: Hop-by-hop headers the server owns (PEP 3333 forbids apps to set them): what the app says is
#: read (Content-Length, a "close" in Connection) but the server writes its own.
_FRAMING_NAMES = frozenset((b"connection", b"transfer-encoding"))


class InvalidHeader(ValueError):
    """A header name or value that cannot go on the wire as given."""


class Head:
    """A validated, serialised response head and what the loop needs to know about it."""

    __slots__ = ("close", "data", "framing", "status")

    def __init__(self, data: bytes, framing: int, close: bool, status: int) -> None:
        self.data = data  # status line and headers, without Connection and the final CRLF
        self.framing = framing
        self.close = close  # the connection must close after this response (app's or framing's)
        self.status = status  # the code on the status line (for the metrics)


#: (status, app headers...) as the app passed them to start_response → (code, reason, encoded
#: headers, Content-Length), already checked: an app sends the same few heads over and over, and
#: the encoded headers, being the same objects each time, then hash at no cost in ``_HEADS``.
_STARTS: dict[tuple[Any, ...], tuple[int, bytes, tuple[tuple[bytes, bytes], ...], int | None]] = {}
_STARTS_MAX = 256
#: (status, HTTP/1.1?, app headers..., server headers...) → Head, for heads that repeat. Shared by
#: the pool threads: single dict operations are atomic, and a lost insert only costs a miss.
_HEADS: dict[tuple[Any, ...], Head] = {}
_HEADS_MAX = 256


class Response:
    """The response state of one request, driven by the app through ``start_response``."""

    __slots__ = (
        "content_length",
        "extra_headers",
        "framing",
        "headers",
        "headers_sent",
        "reason",
        "status",
        "status_code",
    )

    def __init__(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        #: Headers the server adds (Server, Date) unless the app set them.
        self.extra_headers = extra_headers
        self.status = ""
        self.status_code = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.content_length: int | None = None
        self.framing = 0  # set by head()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Any:
        """PEP 3333 ``start_response``; returns nothing useful, ``write`` is added by the caller."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # Too late to change the response: re-raise so the server aborts it.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the traceback reference cycle
        elif self.status:
            raise RuntimeError("start_response() called a second time without exc_info")
        key: tuple[Any, ...] = ()
        try:
            key = (status, *headers)
            start = _STARTS.get(key)
        except TypeError:  # not iterable, or an unhashable item: _encode_headers says which
            start = None
        if start is None:
            code, reason = _parse_status(status)
            encoded, length = _encode_headers(headers)  # raises for what made the key fail
            start = (code, reason, tuple(encoded), length)
            if len(_STARTS) >= _STARTS_MAX:
                _STARTS.clear()  # bounded: e.g. a Content-Length per response size
            _STARTS[key] = start
        self.status_code, self.reason, encoded_headers, self.content_length = start
        self.headers = list(encoded_headers)  # its own: a Content-Length may be appended
        self.status = status

    def head(self, http11: bool = True) -> Head:
        """The serialised head for a client speaking HTTP/1.1 (or 1.0); raises on a bad header."""
        if not self.status:
            raise RuntimeError("the application returned without calling start_response()")
        key = (self.status, http11, *self.headers, *self.extra_headers)
        head = _HEADS.get(key)
        if head is None:
            head = _build_head(
                self.status_code, self.reason, self.headers, self.extra_headers, http11
            )
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()  # bounded; e.g. the Date header changes every second
            _HEADS[key] = head
        self.framing = head.framing
        if head.framing is not LENGTH:
            self.content_length = None  # e.g. Transfer-Encoding from the app overrides it
        return head


def _build_head(
    code: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    extra_headers: list[tuple[bytes, bytes]],
    http11: bool,
) -> Head:
    if code < 200:
        raise ValueError(f"{code} is an interim status, not a final response")
    lines = [b"HTTP/1.1 %d %s\r\n" % (code, reason)]
    present = set()
    length: bytes | None = None
    te = close = False
    for name, value in headers:
        if not _TOKEN(name):
            raise InvalidHeader(f"invalid header name {name!r}")
        value = value.strip(_OWS)
        if not _VALUE(value):
            raise InvalidHeader(f"invalid value for header {name.decode('latin-1')}: {value!r}")
        lower = name.lower()
        present.add(lower)
        if lower in _FRAMING_NAMES:
            if lower == b"transfer-encoding":
                te = True  # the server frames the body: the app's codings are not applied
            elif b"close" in value.lower():
                close = True
            continue
        if lower == b"content-length":
            if length is not None:
                if value != length:
                    raise InvalidHeader("conflicting Content-Length headers")
                continue  # the same length twice: send it once
            length = value
        lines.append(b"%s: %s\r\n" % (name, value))
    # The server's headers (Server, Date) unless the app set its own: compared lowercased, as the
    # server's names are title-case and an app's own must win, not repeat.
    for name, value in extra_headers:
        if name.lower() not in present:
            lines.append(b"%s: %s\r\n" % (name, value))
    if code in (204, 304):
        framing = NO_BODY
    elif length is not None and not te:
        framing = LENGTH
    else:
        if length is not None:  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3): drop it
            lines = [line for line in lines if not line.lower().startswith(b"content-length:")]
        if http11:
            framing = CHUNKED
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            framing = UNTIL_CLOSE
    return Head(b"".join(lines), framing, close, code)


def encode_chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as buffers for ``writelines`` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


#: Status line → (code, reason), for the few statuses an app uses over and over.
_STATUSES_SEEN: dict[str, tuple[int, bytes]] = {}
_STATUSES_SEEN_MAX = 64


def _parse_status(status: str) -> tuple[int, bytes]:
    if type(status) is not str:
        raise TypeError(f"status must be a str, got {type(status).__name__}")
    parsed = _STATUSES_SEEN.get(status)
    if parsed is None:
        parsed = _check_status(status)
        if len(_STATUSES_SEEN) < _STATUSES_SEEN_MAX:
            _STATUSES_SEEN[status] = parsed
    return parsed


def _check_status(status: str) -> tuple[int, bytes]:
    code, _, reason = status.partition(" ")
    if len(code) != 3 or not _DIGITS.issuperset(code) or code[0] == "0":
        raise ValueError(f"invalid status {status!r}: expected e.g. '200 OK'")
    if not _VALUE(reason.encode("latin-1")) or "\t" in reason:
        raise ValueError(f"invalid status {status!r}: control characters in the reason")
    return int(code), reason.encode("latin-1")


def _encode_headers(
    headers: list[tuple[str, str]],
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """Check types, encode latin-1, find Content-Length; ``head()`` validates names and values."""
    if type(headers) is not list:
        raise TypeError(f"headers must be a list, got {type(headers).__name__}")
    encoded: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"header must be a (name, value) tuple, got {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"header name and value must be str, got {item!r}")
        bname = name.encode("latin-1")
        if bname.lower() == b"content-length":
            value = value.strip(" \t")
            if not value.isdigit() or not value.isascii():
                raise ValueError(f"invalid Content-Length header {value!r}")
            length = int(value)
        encoded.append((bname, value.encode("latin-1")))
    return encoded, length


def error_head(status_code: int, body: bytes, extra_headers: list[tuple[bytes, bytes]]) -> Head:
    """A plain-text response head for errors the server answers itself (400, 500, 503 ...).

    The connection closes after it: whatever went wrong, the next bytes on it are suspect.
    """
    # Reason phrases from http.HTTPStatus: logs and old clients expect the usual ones.
    reason = HTTPStatus(status_code).phrase.encode() if status_code in _STATUSES else b""
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    head = _build_head(status_code, reason, headers, extra_headers, True)
    head.close = True
    return head
