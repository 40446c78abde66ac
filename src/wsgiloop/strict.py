"""Strict RFC 9112 framing checks for what h11 accepts leniently: request smuggling defence.

h11 already refuses most malformed requests (both Content-Length and Transfer-Encoding,
conflicting or signed Content-Length values, bare CR in the head, whitespace before a colon, bad
bytes in the method, target or field names and values, a missing or repeated Host). Where it is
lenient, a proxy in front of wsgiloop may frame the same bytes differently, and a request hidden
in what the proxy took for a body reaches the app as a request of its own. This module closes
those gaps. Everything here is pure (bytes and ``h11.Request`` in, a verdict out: no I/O, no
state beyond the ``ChunkedValidator`` object) and costs a few ``bytes.count``/``find`` calls per
request. ``docs/hardening.md`` tabulates every case, which layer rejects it and why.

What it rejects that h11 lets through
    - a bare LF as a line ending anywhere in the head (RFC 9112 2.2 lets a recipient accept it;
      a proxy that does not would see a different head), and a bare CR (2.2: invalid; h11
      refuses it too, but the check costs one ``count``);
    - obsolete line folding (5.2: reject or unfold; h11 unfolds, so ``Transfer-Encoding:`` plus
      a folded ``chunked`` frames the body as chunked where a proxy may see no coding at all);
    - Transfer-Encoding in an HTTP/1.0 request (6.1: "MUST treat the message as if the framing
      is faulty");
    - a Host value that is no ``uri-host [ ":" port ]`` (RFC 9112 3.2: MUST answer 400);
    - chunk lines h11 reads loosely (7.1): whitespace after the size, more than 16 hex digits
      (h11 takes 20, i.e. sizes a 64-bit proxy wraps around), extensions that are no
      ``;name[=token / quoted-string]`` (h11 takes ``;`` and then any byte but LF, bare CR and
      control bytes included), and trailer lines ending in a bare LF or folded;
    - a request-target in none of the four forms of 3.2, or an absolute-form one whose
      authority is invalid, empty or carries userinfo (``check_target``; h11 checks only that
      the target is visible ASCII), and a repeated singleton field with another value
      (``SINGLETON_KEYS``): both raised as ``Refused`` by ``environ.request_environ``.

What it lets through that h11 refuses
    Up to ``MAX_EMPTY_LINE_BYTES`` of empty lines (CRLF) before a request-line, which RFC 9112
    2.2 says a server SHOULD ignore: ``skip_empty_lines`` strips them before h11 sees them.

Which status (RFC 9112 6.1 and 6.3)
    A Transfer-Encoding whose final coding is not ``chunked`` leaves the body length unknown:
    6.3 rule 4 says the server MUST answer 400 and close. Only when ``chunked`` is final (and
    appears once: 7, "MUST NOT apply chunked more than once") can the framing be trusted, and
    an unknown coding before it is then a 501 (6.1, SHOULD). h11 answers 501 to all of them;
    ``error_status`` maps its hint accordingly. Everything else here is a 400.

How the protocol should feed it (the hook points in ``protocol.py``)
    1. Keep ``head = bytearray()``: the raw bytes of the head being read. In ``data_received``,
       append ``data`` while ``conn.their_state is h11.IDLE`` (h11 still waits for a request).
       In ``_start_next_cycle``, right after ``conn.start_next_cycle()``, seed it with
       ``bytearray(conn.trailing_data[0])`` (a pipelined request h11 already holds; empty
       otherwise). No cap is needed: h11 raises 431 once its own buffer of an incomplete head
       passes ``max_incomplete_event_size``, so ``head`` never outgrows that plus one read.
    2. When h11 yields the ``Request`` (first lines of ``_on_request``):
       ``check_head(head, len(request.headers))``, then, where ``_scan_head`` reports both
       framings, ``check_request(request)`` (or better: have ``_scan_head``'s loop also note
       the Host value and call ``check_fields``, so the headers are walked once). Either gives
       a reason: ``_client_error(status, reason)``. ``check_head`` finds the end of the head
       itself, so ``head`` may hold body bytes after it.
    3. If the request is chunked, create ``ChunkedValidator()`` and feed it the body bytes
       already read: ``validator.feed(head, head_end(head))``; from then on, in
       ``data_received``, feed every ``data`` while ``not validator.done`` (also while the
       protocol is discarding an unread body: that is exactly when a smuggled request would
       follow). A reason means 400 and close, as an h11 error in the body does.
    4. In the ``except h11.RemoteProtocolError`` of ``_pump``, answer
       ``error_status(exc.error_status_hint, head)`` instead of the hint itself.

Chunk lines: a shadow validator, not a replacement reader
    h11 never exposes the raw chunk lines. Two ways to check them:

    - ``ChunkedValidator`` (recommended, implemented here): a tiny state machine fed with the
      same raw bytes h11 gets. It skips chunk data by counting (O(1) per read, whatever the
      size) and runs one ``find`` and one regex per chunk line. It only uses h11's public API
      (``trailing_data``), is tested sans-IO, and is strictly narrower than h11's grammar:
      whatever it accepts, h11 frames identically (``test_fuzz`` checks this differentially),
      so the two can never disagree on where a body ends without the validator rejecting.
    - Replacing h11's reader (``conn._reader = StrictChunkedReader()`` after the ``Request``,
      a subclass of ``h11._readers.ChunkedReader``): no second pass over the lines, but it
      leans on three private h11 details (``Connection._reader``, the ``ReceiveBuffer`` methods
      and the LocalProtocolError→RemoteProtocolError re-raise in ``next_event``), where the
      protocol uses h11's public API only. The saving is one regex per chunk line, a few
      hundred nanoseconds; not worth the coupling.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, NamedTuple

import h11

__all__ = [
    "HOST",
    "MAX_EMPTY_LINE_BYTES",
    "SINGLETON_KEYS",
    "ChunkedValidator",
    "Refused",
    "Rejection",
    "check_fields",
    "check_head",
    "check_request",
    "check_target",
    "error_status",
    "head_end",
    "skip_empty_lines",
    "valid_host",
]


class Rejection(NamedTuple):
    """Why a request is refused: the status to answer (then close) and a reason for the log."""

    status: int
    reason: str


# -- the request head ---------------------------------------------------------------------------


def head_end(raw: bytes | bytearray) -> int:
    """The index just past the CRLF CRLF that ends the head in ``raw``, or -1 if there is none."""
    end = raw.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


def check_head(raw: bytes | bytearray, fields: int = -1) -> str | None:
    """Why the request head at the start of ``raw`` must be refused (400), or None.

    ``raw`` holds the head exactly as received, from the first byte of the request line, and
    may go on past the head (body bytes, a pipelined request): only the head is checked. Call
    it once h11 has yielded the ``Request`` for these bytes, with ``fields`` set to
    ``len(request.headers)``: when every line is the request line or a field, no scan for
    folded lines is needed; without it (-1), two more scans look for them. If ``raw`` has no
    CRLF CRLF at all, h11 can only have ended the head at a bare LF: that is the reason given.

    The head ends at the first CRLF CRLF; h11 ends it at the first ``\\n\\r?\\n``, which may
    come earlier only through a bare LF, and any bare LF before this end is refused: so whenever
    this accepts, h11 and this function agree on where the head ends. NUL and bytes outside
    the grammar are h11's to refuse (it does, in every part of the head).
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return "bare LF line ending in the request head"
    stop = end + 2  # every line of the head, each with its CRLF; not the final blank line
    lines = raw.count(b"\r\n", 0, stop)
    if raw.count(b"\n", 0, stop) != lines:
        return "bare LF line ending in the request head"
    if raw.count(b"\r", 0, stop) != lines:
        return "bare CR in the request head"
    # The request line, then one line per field h11 reports: no line is left for a fold. (h11
    # drops a repeated identical Content-Length line, so a surplus line is only a hint.)
    if lines != fields + 1 and (raw.find(b"\n ", 0, stop) >= 0 or raw.find(b"\n\t", 0, stop) >= 0):
        return "obsolete line folding in the request head"
    return None


# uri-host [ ":" port ] (RFC 9112 3.2, RFC 3986 3.2.2 and 3.2.3): an IP-literal in brackets
# (IPv6 or IPvFuture), else a reg-name or IPv4address (both within reg-name's alphabet, with
# "%" only as a percent-encoding), then an optional port of digits. This refuses what lets a
# Host value re-route a request or split a URL (whitespace, "@" of userinfo, "/", "?", "#", "\\",
# non-ASCII) and also what no URL can hold ("a:b", "a]", "%zz"). An empty reg-name is in the
# grammar (a Host field may be empty when the target has no authority); ``check_target`` refuses
# an absolute-form target whose host is empty (RFC 9110 4.2.1).
_SUB_DELIMS: Final = rb"!$&'()*+,;="
_REG_NAME: Final = rb"(?:[-A-Za-z0-9._~%s]|%%[0-9A-Fa-f]{2})*" % _SUB_DELIMS
_IP_LITERAL: Final = rb"\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~:%s]+)\]" % _SUB_DELIMS
#: The alphabet of ``uri-host [":" port]``: group 1 is the host (brackets kept), group 2 the
#: port (or None). ``valid_host`` also checks that a bracketed IPv6 literal is one.
HOST: Final = re.compile(rb"(%s|%s)(?::([0-9]*))?" % (_IP_LITERAL, _REG_NAME))
_host_match = HOST.fullmatch


def valid_host(value: bytes) -> re.Match[bytes] | None:
    """The match of a Host value (or an authority without userinfo) in the grammar, or None.

    The IP-literal is checked with ``ipaddress`` (a rare, bracketed case), so ``[:::]`` or
    ``[1::2::3]`` are refused too; IPvFuture (``[v1.x]``) passes on its alphabet. Zone IDs
    (RFC 6874) are refused: no browser sends one.
    """
    match = _host_match(value)
    if match is not None and value[:1] == b"[" and value[1:2] not in (b"v", b"V"):
        try:
            ipaddress.IPv6Address(match.group(1)[1:-1].decode("ascii"))
        except ValueError:
            return None
    return match


_valid_host = valid_host
_PLAIN_NAME: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-."


def _plain_host(value: bytes) -> bool:
    """``name`` or ``name:digits`` of letters, digits, "-" and "." (nearly every Host value):
    valid without the regex, at a third of its cost."""
    name, _, port = value.partition(b":")
    return not name.translate(None, _PLAIN_NAME) and (not port or port.isdigit())


def check_request(request: h11.Request) -> Rejection | None:
    """Why a request h11 parsed must be refused, or None.

    Checks what h11 accepts but RFC 9112 does not: Transfer-Encoding in HTTP/1.0 (6.1), a Host
    value that is not ``uri-host [":" port]`` (3.2), and, as a second line of defence should a
    future h11 stop refusing it, Transfer-Encoding together with Content-Length (6.3). A loop
    over the headers; the protocol, which loops over them anyway (``_scan_head``), can collect
    the three facts there and call ``check_fields`` instead.
    """
    te = cl = False
    host: bytes | None = None
    for name, value in request.headers:  # h11 gives lower-case names
        if name == b"host":
            host = value
        elif name == b"transfer-encoding":
            te = True
        elif name == b"content-length":
            cl = True
    return check_fields(request.http_version, te, cl, host)


def check_fields(http_version: bytes, te: bool, cl: bool, host: bytes | None) -> Rejection | None:
    """``check_request`` without the loop: whether Transfer-Encoding and Content-Length are
    present, and the Host value (None: no Host field; h11 demands one in HTTP/1.1)."""
    if host is not None and not _plain_host(host) and _valid_host(host) is None:
        return Rejection(400, "invalid Host header value")
    if te:
        if http_version == b"1.0":
            return Rejection(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            return Rejection(400, "both Transfer-Encoding and Content-Length")
    return None


# -- the request-target, singleton fields, empty lines before the request-line -----------------


class Refused(ValueError):
    """Raised by ``environ.request_environ`` for a request the app must not see."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


def check_target(method: bytes, target: bytes) -> Rejection | None:
    """Why a request-target that is not in origin-form must be refused (400), or None.

    RFC 9112 3.2: a request-target is origin-form (``/path?query``), absolute-form
    (``http://authority/path?query``), authority-form (CONNECT only; refused before as 501) or
    asterisk-form (``*``, OPTIONS only); anything else (``foo``, ``a:1``, ``ftp://b/c``,
    ``GET *``) makes the request-line invalid, which "SHOULD" get 400 (3), and would hand the app
    a ``PATH_INFO`` not starting with ``/``, which CGI and so PEP 3333 do not allow. h11 checks
    only the alphabet (visible ASCII). In absolute-form the authority replaces the Host field
    (3.2.2), so it is held to the same grammar, and also refused when its host is empty
    (RFC 9110 4.2.1: an http URI with an empty host "MUST" be rejected as invalid) and when it
    carries userinfo (``http://u@evil/x``; RFC 9110 4.2.4: a recipient "SHOULD" treat it as an
    error, since ``u@`` is a way to make a URL look as if it pointed elsewhere). The scheme is
    http or https in any case (3.1 of RFC 3986: case-insensitive). A ``#fragment`` is not
    checked here: ``environ`` drops it (see the docstring of ``request_environ``).

    Origin-form (the first byte is ``/``) is the caller's fast path and passes unchecked here.
    """
    if target[:1] == b"/":
        return None
    if target == b"*":
        if method == b"OPTIONS":
            return None
        return Rejection(400, "asterisk-form target with a method other than OPTIONS")
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return Rejection(400, "request-target in no request-target form")
    end = len(rest)
    for delimiter in b"/?#":
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end]
    if b"@" in authority:
        return Rejection(400, "userinfo in the request-target")
    match = _valid_host(authority)
    if match is None:
        return Rejection(400, "invalid authority in the request-target")
    if not match.group(1):
        return Rejection(400, "empty host in the request-target")
    return None


#: Environ keys of fields that RFC 9110 defines as a single value, not a list, and where a proxy
#: or WAF that reads one value and an app that reads another would disagree on what matters:
#: the media type (and multipart boundary) of the body (8.3), credentials (11.6.2, 11.7.2), the
#: origin a CSRF check compares (RFC 6454 7.3: "MUST NOT" be sent twice) and the byte ranges a
#: cache and the app would serve (14.2). Joining such a field with "," (RFC 9110 5.3 allows it
#: for list fields only) makes a value neither side sent; last-one-wins hides the first from
#: the app. So a repeat with another value is a 400; an identical repeat is kept once. Host and
#: Content-Length are h11's (a repeated Host is refused, conflicting lengths too).
SINGLETON_KEYS: Final = frozenset(
    (
        "CONTENT_TYPE",
        "HTTP_AUTHORIZATION",
        "HTTP_PROXY_AUTHORIZATION",
        "HTTP_ORIGIN",
        "HTTP_RANGE",
    )
)

#: How many bytes of empty lines (CRLF) before a request-line are skipped: RFC 9112 2.2 says a
#: server "SHOULD ignore at least one"; the CRLF some old clients send after a POST body is the
#: case. Beyond this h11 sees the rest and refuses it (400), so a stream of CRLFs costs nothing.
MAX_EMPTY_LINE_BYTES: Final = 8


def skip_empty_lines(data: bytes, skipped: int) -> tuple[bytes, int]:
    """Strip the empty lines (CRLF) that precede a request-line; bounded, split reads included.

    Call it with the bytes that start a request (no byte of its request-line read yet) and the
    count of bytes skipped so far before this request (0 at first). Returns the bytes to give
    h11 and the new count. An odd count means a CR that ended the previous read is pending: the
    next read must begin with its LF, or the CR is given back so that h11 refuses the bare CR.
    Only whole CRLFs are skipped, never a bare LF (RFC 9112 2.2 lets a server refuse those, and
    this project does everywhere); past ``MAX_EMPTY_LINE_BYTES`` nothing more is skipped.
    """
    start = 0
    if skipped & 1:
        if data[:1] != b"\n":
            return b"\r" + data, skipped - 1
        start = 1
        skipped += 1
    size = len(data)
    while skipped < MAX_EMPTY_LINE_BYTES and start < size and data[start] == 13:
        if start + 1 == size:  # a CR at the end of this read: its LF may be in the next
            return b"", skipped + 1
        if data[start + 1] != 10:
            break
        start += 2
        skipped += 2
    return (data[start:] if start else data), skipped


_TE_LINE: Final = re.compile(rb"(?im)^transfer-encoding[ \t]*:([^\r\n]*)")


def error_status(hint: int, raw: bytes | bytearray) -> int:
    """The status to answer an ``h11.RemoteProtocolError`` with, given the head as received.

    h11 hints 501 for any Transfer-Encoding other than exactly one ``chunked``. RFC 9112 6.3
    (rule 4) demands 400 when ``chunked`` is not the final coding (the body length is unknown)
    and section 7 forbids applying ``chunked`` twice; only an unknown coding before a single,
    final ``chunked`` is the 501 of section 6.1. Other hints pass through. Costs nothing on the
    good path: it is called only for a request h11 refused.
    """
    if hint != 501:
        return hint
    if check_head(raw) is not None:
        # h11 unfolded an obs-fold into the Transfer-Encoding value ("chunked abc"): the fold is
        # the fault, and every fold is a 400 (5.2), as ``check_head`` answers when h11 lets the
        # head through.
        return 400
    end = raw.find(b"\r\n\r\n")
    codings: list[bytes] = []
    for match in _TE_LINE.finditer(raw, 0, end if end >= 0 else len(raw)):
        codings += (c.strip(b" \t").lower() for c in match.group(1).split(b","))
    codings = [c for c in codings if c]
    if codings and codings[-1] == b"chunked" and codings.count(b"chunked") == 1:
        return 501
    return 400


# -- chunked bodies -----------------------------------------------------------------------------

_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXT: Final = rb"%s(?:[ \t]*=[ \t]*(?:%s|%s))?" % (_TOKEN, _TOKEN, _QUOTED)
#: chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1, 7.1.1), at most 16 hex digits. The BWS the RFC
#: allows before the first ";" is refused, as h11 refuses it: this grammar stays a subset of
#: h11's, so the two can only disagree by this side refusing.
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;[ \t]*%s(?:[ \t]*;[ \t]*%s)*)?)\r\n" % (_EXT, _EXT)
)
#: field-name ":" OWS field-value OWS CRLF: no whitespace before the colon, nothing folded (5.1,
#: 5.2), and h11's field-value (no NUL, no whitespace but SP and HTAB inside).
_TRAILER_LINE: Final = re.compile(
    rb"%s:[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*\r\n" % _TOKEN
)
_MAX_SIZE: Final = (1 << 63) - 1  # a size a signed 64-bit parser in front of us can hold

_SIZE, _DATA, _CR, _LF, _TRAILER, _DONE = range(6)


class ChunkedValidator:
    """Checks the framing of one chunked request body as its raw bytes arrive (RFC 9112 7.1).

    ``feed`` takes the bytes exactly as read from the socket and returns a reason at the first
    violation, None otherwise. Once the last chunk's trailer section has ended, ``done`` is
    true and ``end`` is the offset, in the last fed buffer, just past the body; further bytes
    (a pipelined request) are ignored. After a violation the object is spent: every ``feed``
    returns the same reason.

    Chunk data is skipped by counting, so the cost is per chunk line, not per byte. Limits:
    ``max_line`` bytes per chunk-size line and per trailer line (h11 has none short of its
    incomplete-event limit), ``max_extensions`` bytes of chunk extensions per body (a client
    sending 1-byte chunks with long extensions makes the server parse far more than the body,
    as in CVE-2023-39326 and CVE-2024-22019), ``max_trailer`` bytes of trailer section.
    """

    __slots__ = (
        "_ext",
        "_line",
        "_remaining",
        "_state",
        "_trailer",
        "end",
        "error",
        "max_extensions",
        "max_line",
        "max_trailer",
    )

    def __init__(
        self, max_line: int = 4096, max_extensions: int = 16384, max_trailer: int = 65536
    ) -> None:
        self.max_line = max_line
        self.max_extensions = max_extensions
        self.max_trailer = max_trailer
        self._state = _SIZE
        self._line = bytearray()  # a chunk-size or trailer line split across reads
        self._remaining = 0  # chunk data bytes still to come
        self._ext = 0  # chunk-extension bytes so far
        self._trailer = 0  # trailer-section bytes so far
        self.end = -1
        self.error: str | None = None

    @property
    def done(self) -> bool:
        """The body and its trailer section are complete (and were valid)."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray, start: int = 0) -> str | None:
        """Check ``data[start:]``, the next bytes of the body; a reason if they break framing."""
        if self.error is not None or self._state == _DONE:
            return self.error
        reason = self._feed(data, start)
        if reason is not None:
            self.error = reason
        return reason

    def _feed(self, data: bytes | bytearray, i: int) -> str | None:
        n = len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - i)
                i += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CR
            elif state in (_CR, _LF):
                if data[i] != (13 if state == _CR else 10):
                    return "chunk data not followed by CRLF"
                i += 1
                self._state = _LF if state == _CR else _SIZE
            elif state == _DONE:
                return None
            else:  # a chunk-size line or a trailer line
                newline = data.find(b"\n", i)
                line_end = n if newline < 0 else newline + 1
                if len(self._line) + line_end - i > self.max_line:
                    return "chunk line too long" if state == _SIZE else "trailer line too long"
                if newline < 0:
                    self._line += data[i:]
                    return None
                if self._line:
                    self._line += data[i:line_end]
                    line = bytes(self._line)
                    self._line.clear()
                else:
                    line = bytes(data[i:line_end])
                i = line_end
                reason = self._size_line(line) if state == _SIZE else self._trailer_line(line)
                if reason is not None:
                    return reason
                if self._state == _DONE:
                    self.end = i
                    return None
        return None

    def _size_line(self, line: bytes) -> str | None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                return "bare CR or LF in a chunk line"
            return "malformed chunk size or extension"
        size = int(match.group(1), 16)
        if size > _MAX_SIZE:
            return "chunk size too large"
        ext = len(match.group(2))
        if ext:
            self._ext += ext
            if self._ext > self.max_extensions:
                return "too many chunk extension bytes"
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER
        return None

    def _trailer_line(self, line: bytes) -> str | None:
        self._trailer += len(line)
        if self._trailer > self.max_trailer:
            return "trailer section too large"
        if line == b"\r\n":
            self._state = _DONE
            return None
        if _TRAILER_LINE.fullmatch(line) is None:
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                return "bare CR or LF in the trailer section"
            if line[:1] in (b" ", b"\t"):
                return "obsolete line folding in the trailer section"
            return "malformed trailer field"
        return None
