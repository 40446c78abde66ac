"""``start_response`` by the book, without I/O.

``Response`` holds what the app declared (status, headers) and turns it into an ``h11.Response``
when the first body byte is ready. Validation happens here, in the app's thread, so a bad status
or header becomes an exception inside the app's call (and so a 500), never a broken response on
the wire.
"""

from __future__ import annotations

from http import HTTPStatus
from types import TracebackType
from typing import Any

import h11

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_DIGITS = frozenset("0123456789")
_STATUSES = frozenset(s.value for s in HTTPStatus)

#: App headers + server headers → h11's validated form, for header sets that repeat. Shared by
#: the pool threads: single dict operations are atomic, and a lost insert only costs a miss.
_VALIDATED: dict[tuple[tuple[bytes, bytes], ...], Any] = {}
_VALIDATED_MAX = 256


class Response:
    """The response state of one request, driven by the app through ``start_response``."""

    __slots__ = (
        "content_length",
        "extra_headers",
        "headers",
        "headers_sent",
        "reason",
        "status",
        "status_code",
    )

    def __init__(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        #: Headers the server adds (Server, Date, Connection) unless the app set them.
        self.extra_headers = extra_headers
        self.status = ""
        self.status_code = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.content_length: int | None = None

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
        self.status_code, self.reason = _parse_status(status)
        self.headers, self.content_length = _encode_headers(headers)
        self.status = status

    def head(self) -> h11.Response:
        """The h11 event for the status line and headers; raises on what h11 refuses."""
        if not self.status:
            raise RuntimeError("the application returned without calling start_response()")
        key = (*self.headers, *self.extra_headers)
        valid = _VALIDATED.get(key)
        if valid is not None:
            # The same header set as an earlier response (checked then): skip the merge and
            # h11's validation, the costliest part of a small response's head.
            return h11.Response(status_code=self.status_code, headers=valid, reason=self.reason)
        headers = self.headers
        if self.extra_headers:
            # Compare lowercased on both sides: the server's names are title-case (b"Server"),
            # the app's any case, and an app's own Date/Server/Connection must win, not repeat.
            present = {name.lower() for name, _ in headers}
            headers = headers + [h for h in self.extra_headers if h[0].lower() not in present]
        event = h11.Response(status_code=self.status_code, headers=headers, reason=self.reason)
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.clear()  # bounded; e.g. the Date header changes every second
        _VALIDATED[key] = event.headers
        return event


def _parse_status(status: str) -> tuple[int, bytes]:
    if type(status) is not str:
        raise TypeError(f"status must be a str, got {type(status).__name__}")
    code, _, reason = status.partition(" ")
    if len(code) != 3 or not _DIGITS.issuperset(code) or code[0] == "0":
        raise ValueError(f"invalid status {status!r}: expected e.g. '200 OK'")
    if "\r" in reason or "\n" in reason:
        raise ValueError(f"invalid status {status!r}: control characters in the reason")
    return int(code), reason.encode("latin-1")


def _encode_headers(
    headers: list[tuple[str, str]],
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """Check types, encode latin-1, find Content-Length; h11 validates names and values."""
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
            if not value.isdigit():
                raise ValueError(f"invalid Content-Length header {value!r}")
            length = int(value)
        encoded.append((bname, value.encode("latin-1")))
    return encoded, length


def error_head(
    status_code: int, body: bytes, extra_headers: list[tuple[bytes, bytes]], close: bool = True
) -> h11.Response:
    """A plain-text response head for errors the server answers itself (400, 500, 503 ...)."""
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    headers += extra_headers
    # h11 sends an empty reason phrase unless given one; logs and old clients expect the usual.
    reason = HTTPStatus(status_code).phrase.encode() if status_code in _STATUSES else b""
    return h11.Response(status_code=status_code, headers=headers, reason=reason)
