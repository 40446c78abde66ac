"""PEP 3333 from the app's side: start_response, write(), errors, close(), wsgi.input, file_wrapper.

Every test talks to a real server over loopback (on uvloop and on the stdlib loop) and checks the
bytes on the wire; what the app saw is reported back through closures and events.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import IteratorWrapper, WSGIWarning, validator

import pytest
from conftest import Running, is_closed, read_response, recv_until_closed

import wsgiloop.wsgi

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

Parsed = tuple[int, dict[str, str], bytes]  # status, headers (lowercase names), body

INTERNAL_ERROR = b"500 Internal Server Error\n"


# -- helpers -----------------------------------------------------------------------------------


def raw_request(
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            # Uneven chunks, so that chunk boundaries never line up with what the app reads.
            parts = [body[i : i + 7777] for i in range(0, len(body), 7777)]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def fetch(server: Running, method: str = "GET", path: str = "/", **kw: Any) -> Parsed:
    """One request on a fresh connection; the parsed response."""
    sock = server.connect()
    try:
        sock.sendall(raw_request(method, path, **kw))
        return read_response(sock)
    finally:
        sock.close()


def fetch_raw_until_closed(server: Running, path: str = "/") -> bytes:
    """Everything the server sends for one GET until it closes (raises on a hang)."""
    sock = server.connect()
    try:
        sock.sendall(raw_request("GET", path))
        return recv_until_closed(sock, timeout=10)
    finally:
        sock.close()


def parse_chunked(raw: bytes) -> tuple[bytes, list[bytes], bool]:
    """(head, body chunks, whether the terminating zero chunk arrived) of a chunked response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return head, chunks, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return head, chunks, after.startswith(b"\r\n")
        if len(after) < size + 2:
            return head, [*chunks, after[:size]], False
        chunks.append(after[:size])
        rest = after[size + 2 :]


@pytest.fixture
def error_log() -> Iterator[list[logging.LogRecord]]:
    """Records logged on ``wsgiloop.error`` (it does not propagate, so caplog cannot see it)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("wsgiloop.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def ok(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


# -- start_response ----------------------------------------------------------------------------


def test_second_start_response_without_exc_info_is_a_500(serve, error_log):
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        start_response("201 Created", [("X-Second", "1")])
        return [b"unreachable"]

    status, headers, body = fetch(serve(app))
    assert (status, body) == (500, INTERNAL_ERROR)
    assert "x-first" not in headers and "x-second" not in headers
    assert any("second time" in str(r.exc_info[1]) for r in error_log if r.exc_info)


def test_start_response_with_exc_info_before_headers_are_sent_replaces_the_response(serve):
    def app(environ, start_response):
        start_response("200 OK", [("X-Original", "1"), ("Content-Type", "text/html")])
        try:
            raise LookupError("no such thing")
        except LookupError:
            start_response(
                "404 Not Found", [("Content-Type", "text/plain"), ("X-Replaced", "1")],
                sys.exc_info(),
            )
        return [b"replaced"]

    status, headers, body = fetch(serve(app))
    assert (status, body) == (404, b"replaced")
    assert headers["x-replaced"] == "1"
    assert "x-original" not in headers
    assert headers["content-type"] == "text/plain"


def test_exc_info_after_only_empty_chunks_can_still_replace_the_response(serve):
    """Empty blocks do not send the headers, so the app may still change its mind."""

    def app(environ, start_response):
        start_response("200 OK", [("X-Original", "1")])

        def body():
            yield b""
            try:
                raise RuntimeError("late failure")
            except RuntimeError:
                start_response("503 Service Unavailable", [("Content-Length", "4")], sys.exc_info())
            yield b"busy"

        return body()

    status, headers, body = fetch(serve(app))
    assert (status, body) == (503, b"busy")
    assert "x-original" not in headers


def test_exc_info_after_headers_are_sent_reraises_and_aborts_the_connection(serve, error_log):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"partial"
            try:
                raise ValueError("too late to change the status")
            except ValueError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            yield b"never"

        return body()

    raw = fetch_raw_until_closed(serve(app))
    head, chunks, complete = parse_chunked(raw)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"".join(chunks) == b"partial"
    assert not complete, "an aborted response must not look complete"
    assert b"never" not in raw
    assert any(
        r.exc_info and isinstance(r.exc_info[1], ValueError) for r in error_log
    ), "the re-raised error is logged"


# -- write() and when the headers go out -------------------------------------------------------


def test_write_callable_and_returned_iterable_keep_their_order(serve):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"1-")
        write(b"")  # an empty write sends nothing, not even a chunk terminator
        write(bytearray(b"2-"))

        def rest():
            yield b"3-"
            yield b"4"

        return rest()

    sock = serve(app).connect()
    sock.sendall(raw_request())
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"1-2-3-4")
    # The connection is still in a clean state: a second request gets the same answer.
    sock.sendall(raw_request())
    assert read_response(sock)[2] == b"1-2-3-4"
    sock.close()


def test_write_only_response_with_content_length_keeps_the_connection(serve):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Length", "6")])
        write(b"abc")
        write(b"def")
        return []

    sock = serve(app).connect()
    for _ in range(2):
        sock.sendall(raw_request())
        status, headers, body = read_response(sock)
        assert (status, headers["content-length"], body) == (200, "6", b"abcdef")
    sock.close()


def test_headers_wait_for_the_first_non_empty_chunk_so_an_early_error_is_a_clean_500(serve):
    def app(environ, start_response):
        start_response("200 OK", [("X-App", "1")])

        def body():
            yield b""
            yield b""
            raise RuntimeError("failed before producing anything")

        return body()

    status, headers, body = fetch(serve(app))
    assert (status, body) == (500, INTERNAL_ERROR)
    assert "x-app" not in headers
    assert headers["content-length"] == str(len(INTERNAL_ERROR))


# -- app errors --------------------------------------------------------------------------------


def test_app_exception_is_a_plain_500_logged_with_traceback_and_the_worker_lives_on(
    serve, error_log
):
    calls = []

    def app(environ, start_response):
        calls.append(threading.current_thread().name)
        if environ["PATH_INFO"] == "/boom":
            raise ZeroDivisionError("the app divided by zero")
        return ok(environ, start_response)

    server = serve(app, threads=1)
    status, headers, body = fetch(server, path="/boom")
    assert (status, body) == (500, INTERNAL_ERROR)
    assert headers["content-type"].startswith("text/plain")
    assert b"ZeroDivisionError" not in body  # nothing about the app leaks to the client
    errors = [r for r in error_log if r.levelno >= logging.ERROR and r.exc_info]
    assert errors, "the traceback is logged on wsgiloop.error"
    assert isinstance(errors[-1].exc_info[1], ZeroDivisionError)
    assert "/boom" in errors[-1].getMessage()
    assert "ZeroDivisionError" in logging.Formatter().format(errors[-1])
    # The only pool thread survived and serves the next request.
    assert fetch(server, path="/ok")[:3:2] == (200, b"ok")
    assert calls[0] == calls[1]


def test_app_calling_sys_exit_gets_a_500_instead_of_a_hung_connection(serve):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/exit":
            sys.exit(3)
        return ok(environ, start_response)

    server = serve(app, threads=1)
    status, _, body = fetch(server, path="/exit")
    assert (status, body) == (500, INTERNAL_ERROR)
    assert fetch(server, path="/ok")[0] == 200


def test_exception_mid_iteration_after_a_chunk_aborts_the_connection(serve, error_log):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"first chunk"
            raise RuntimeError("broke mid-stream")

        return body()

    raw = fetch_raw_until_closed(serve(app))
    head, chunks, complete = parse_chunked(raw)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"".join(chunks) == b"first chunk"
    assert not complete
    assert b"500 Internal" not in raw  # no second response glued onto the first
    assert any(r.exc_info and "broke mid-stream" in str(r.exc_info[1]) for r in error_log)


def test_non_bytes_block_after_a_chunk_aborts_the_connection(serve):
    def app(environ, start_response):
        start_response("200 OK", [])
        return iter([b"bytes first", "then a str"])

    head, chunks, complete = parse_chunked(fetch_raw_until_closed(serve(app)))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"".join(chunks) == b"bytes first"
    assert not complete


BAD_RESPONSES = {
    "int header value": ("200 OK", [("X-Num", 5)]),
    "bytes header name": ("200 OK", [(b"X-Bytes", "v")]),
    "CRLF in value": ("200 OK", [("X-Evil", "a\r\nSet-Cookie: session=stolen")]),
    "LF in value": ("200 OK", [("X-Evil", "a\nSet-Cookie: session=stolen")]),
    "space in name": ("200 OK", [("X Evil", "v")]),
    "colon in name": ("200 OK", [("X-Evil:Set-Cookie", "v")]),
    "empty name": ("200 OK", [("", "v")]),
    "not latin-1": ("200 OK", [("X-Evil", "\u20ac")]),
    "header not a pair": ("200 OK", [("X-Evil", "v", "extra")]),
    "headers not a list": ("200 OK", (("X-Evil", "v"),)),
    "bad content-length": ("200 OK", [("Content-Length", "ten")]),
    "four-digit status": ("2000 OK", [("X-Evil", "v")]),
    "status without code": ("OK", [("X-Evil", "v")]),
    "status not a str": (200, [("X-Evil", "v")]),
    "CRLF in reason": ("200 OK\r\nSet-Cookie: session=stolen", [("X-Evil", "v")]),
    "1xx final status": ("100 Continue", [("X-Evil", "v")]),
}


@pytest.mark.parametrize("status, headers", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_bad_status_or_header_from_the_app_is_a_clean_500(serve, status, headers):
    def app(environ, start_response):
        start_response(status, headers)
        return [b"app body"]

    sock = serve(app).connect()
    sock.sendall(raw_request())
    code, got_headers, body = read_response(sock)
    assert (code, body) == (500, INTERNAL_ERROR)
    assert "x-evil" not in got_headers and "set-cookie" not in got_headers
    assert got_headers["connection"] == "close"
    assert is_closed(sock)  # and nothing else follows the 500 on the wire
    sock.close()


BAD_BODIES: dict[str, Callable[[], Any]] = {
    "str": lambda: "a str body",
    "list of str": lambda: ["a str block"],
    "bytes object": lambda: b"iterates as ints",
    "None": lambda: None,
    "int": lambda: 42,
    "generator of str": lambda: (s for s in ["a str block"]),
}


@pytest.mark.parametrize("make_body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_non_bytes_or_non_iterable_body_is_a_500(serve, make_body):
    def app(environ, start_response):
        start_response("200 OK", [("X-App", "1")])
        return make_body()

    status, headers, body = fetch(serve(app))
    assert (status, body) == (500, INTERNAL_ERROR)
    assert "x-app" not in headers


def test_app_returning_without_start_response_is_a_500(serve):
    status, _, body = fetch(serve(lambda environ, start_response: [b"no status"]))
    assert (status, body) == (500, INTERNAL_ERROR)


# -- close() of the response iterable ----------------------------------------------------------


class Closing:
    """A response iterable that records ``close()``."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self.blocks = blocks
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.blocks)

    def close(self) -> None:
        self.closed.set()


def test_close_is_called_after_a_normal_response(serve):
    made: list[Closing] = []

    def app(environ, start_response):
        start_response("200 OK", [])
        made.append(Closing([b"a", b"b"]))
        return made[-1]

    assert fetch(serve(app))[::2] == (200, b"ab")
    assert made[0].closed.wait(5)


def test_close_is_called_after_an_app_error(serve):
    made: list[Closing] = []

    def failing() -> Iterator[bytes]:
        yield b"x"
        raise RuntimeError("mid-stream")

    def app(environ, start_response):
        start_response("200 OK", [])
        made.append(Closing(failing() if environ["PATH_INFO"] == "/mid" else ["not bytes"]))
        return made[-1]

    server = serve(app)
    assert fetch(server, path="/early")[0] == 500
    fetch_raw_until_closed(server, "/mid")
    assert made[0].closed.wait(5), "close() after an error before the headers"
    assert made[1].closed.wait(5), "close() after an error mid-stream"


def test_close_is_called_when_the_client_disconnects_mid_response(serve):
    # Not a generator: its ``finally`` would also run on garbage collection, without close().
    made: list[Closing] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ok":
            return ok(environ, start_response)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        made.append(Closing(itertools.repeat(b"z" * 65536)))  # endless
        return made[-1]

    server = serve(app, threads=1)
    sock = server.connect()
    sock.sendall(raw_request())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.close()  # with unread data: the kernel resets the connection
    assert made[0].closed.wait(5), "the endless response was closed once the client left"
    assert fetch(server, path="/ok")[::2] == (200, b"ok")  # and the only thread is free again


def test_a_failing_close_is_logged_and_the_connection_goes_on(serve, error_log):
    class BadClose(Closing):
        def close(self) -> None:
            super().close()
            raise OSError("close failed")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return BadClose([b"ok"])

    sock = serve(app).connect()
    for _ in range(2):
        sock.sendall(raw_request())
        assert read_response(sock)[::2] == (200, b"ok")
    sock.close()
    assert any("closing the response iterable" in r.getMessage() for r in error_log)


# -- wsgiref.validate --------------------------------------------------------------------------


def validated(inner: App) -> tuple[App, list[IteratorWrapper]]:
    """``inner`` behind ``wsgiref.validate.validator``; the wrappers it returned, to check close."""
    checked = validator(inner)
    wrappers: list[IteratorWrapper] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        result = checked(environ, start_response)
        wrappers.append(result)
        return result

    return app, wrappers


def validator_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    how = environ["PATH_INFO"]
    if how == "/read":
        parts = []
        while True:
            part = stream.read(5)
            if not part:
                break
            parts.append(part)
        data = b"".join(parts)
    elif how == "/readline":
        lines = []
        while True:
            line = stream.readline()
            if not line:
                break
            lines.append(line)
        data = b"".join(lines)
    elif how == "/iter":
        data = b"".join(line for line in stream)
    else:
        data = b"hello from " + environ["REQUEST_METHOD"].encode()
    body = b"got " + data
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])

    def blocks() -> Iterator[bytes]:
        yield body[:3]
        yield body[3:]

    return blocks()


VALIDATOR_CASES = {
    "GET": ("GET", "/", None, False),
    "HEAD": ("HEAD", "/", None, False),
    "POST read(n)": ("POST", "/read", b"one\ntwo\nthree", False),
    "POST read(n) chunked": ("POST", "/read", b"one\ntwo\nthree", True),
    "POST readline": ("POST", "/readline", b"one\ntwo\nthree\n", False),
    "POST readline chunked": ("POST", "/readline", b"one\ntwo\nthree\n", True),
    "POST iteration": ("POST", "/iter", b"alpha\nbeta\n", False),
    "POST iteration chunked": ("POST", "/iter", b"alpha\nbeta\n", True),
}


@pytest.mark.parametrize(
    "method, path, body, chunked", VALIDATOR_CASES.values(), ids=VALIDATOR_CASES.keys()
)
def test_validator_wrapped_app_passes(serve, method, path, body, chunked):
    app, wrappers = validated(validator_app)
    server = serve(app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sock = server.connect()
        for _ in range(2):  # twice on one connection: the first left it in a clean state
            sock.sendall(raw_request(method, path, body, chunked=chunked))
            status, headers, got = read_response(sock) if method != "HEAD" else _read_head(sock)
            assert status == 200, got
            expected = b"got " + (body if body is not None else b"hello from " + method.encode())
            assert headers["content-length"] == str(len(expected))
            assert got == (b"" if method == "HEAD" else expected)
        sock.close()
    assert len(wrappers) == 2
    # close() runs on the app thread after the response was handed over: allow it a moment.
    for _ in range(100):
        if all(wrapper.closed for wrapper in wrappers):
            break
        threading.Event().wait(0.05)
    assert all(wrapper.closed for wrapper in wrappers), "the server closed what it was given"
    assert not [w for w in caught if issubclass(w.category, WSGIWarning)]


def _read_head(sock: socket.socket) -> Parsed:
    """A HEAD response: the head only, although it declares a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, "closed before the end of the head"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b"", "a HEAD response has no body"
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, b""


# -- wsgi.input --------------------------------------------------------------------------------

BODY = b"first line\nsecond\n\n" + b"x" * 40 + b"\nlast, no newline"

READS: dict[str, Callable[[Any], Any]] = {
    "read()": lambda s: [s.read(), s.read(), s.read(10)],
    "read(None)": lambda s: [s.read(None), s.read(None)],
    "read(n)": lambda s: [s.read(3), s.read(0), s.read(20), s.read(1000), s.read(5), s.read()],
    "readline()": lambda s: [s.readline() for _ in range(7)],
    "readline(n)": lambda s: [
        *(s.readline(4), s.readline(100), s.readline(0), s.readline(3)),
        *(s.readline(None), s.readline(-1)),
    ],
    "readlines()": lambda s: [s.readlines(), s.readlines()],
    "readlines(hint)": lambda s: [s.readlines(12), s.readlines()],
    "iteration": lambda s: [list(s), list(s)],
    "mixed": lambda s: [s.readline(), s.read(4), next(iter(s)), s.read(), s.readline()],
}


def reading_app(how: Callable[[Any], Any]) -> App:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = repr(how(environ["wsgi.input"])).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("how", READS.values(), ids=READS.keys())
def test_wsgi_input_reads_like_a_file(serve, how, chunked):
    """Each way of reading gives what the same calls give on ``io.BytesIO`` (the oracle)."""
    expected = repr(how(io.BytesIO(BODY))).encode()
    status, _, got = fetch(serve(reading_app(how)), "POST", "/", body=BODY, chunked=chunked)
    assert (status, got) == (200, expected)


def test_wsgi_input_without_a_body_is_at_eof(serve):
    how = READS["read(n)"]
    status, _, got = fetch(serve(reading_app(how)))
    assert (status, got) == (200, repr([b""] * 6).encode())


BIG_READS: dict[str, Callable[[Any], Any]] = {
    "read()": lambda s: hashlib.sha256(s.read()).hexdigest(),
    "read(n) > buffer": lambda s: [hashlib.sha256(s.read(300_000)).hexdigest(), len(s.read())],
    "readline() > buffer": lambda s: [len(line) for line in s],
    "readline(n) > buffer": lambda s: [len(s.readline(100_000)) for _ in range(8)],
}


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("how", BIG_READS.values(), ids=BIG_READS.keys())
def test_reads_larger_than_the_body_buffer_do_not_deadlock(serve, how, chunked):
    body = os.urandom(150_000).replace(b"\n", b"-") + b"\n" + os.urandom(200_000)
    expected = repr(how(io.BytesIO(body))).encode()
    server = serve(reading_app(how), body_buffer=16 * 1024)
    status, _, got = fetch(server, "POST", "/", body=body, chunked=chunked)
    assert (status, got) == (200, expected)


# -- Content-Length declared by the app --------------------------------------------------------


@pytest.mark.parametrize("as_generator", [False, True], ids=["list", "generator"])
def test_body_longer_than_declared_content_length_is_clipped(serve, as_generator, error_log):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        blocks = [b"0123456789", b"ABCDEFGHIJ"] if as_generator else [b"0123456789ABCDEFGHIJ"]
        return iter(blocks) if as_generator else blocks

    sock = serve(app).connect()
    for _ in range(2):  # the framing stayed intact: the connection is reusable
        sock.sendall(raw_request())
        status, headers, body = read_response(sock)
        assert (status, headers["content-length"], body) == (200, "10", b"0123456789")
    sock.close()
    assert any("Content-Length" in r.getMessage() for r in error_log)


def test_endless_body_past_content_length_is_not_iterated_forever(serve):
    closed = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])

        def endless() -> Iterator[bytes]:
            try:
                while True:
                    yield b"0123456789"
            finally:
                closed.set()

        return endless()

    server = serve(app, threads=1)
    assert fetch(server)[::2] == (200, b"0123456789")
    assert closed.wait(5), "iteration stopped once the declared length was exceeded"
    assert fetch(server)[::2] == (200, b"0123456789")  # and the only thread is free again


@pytest.mark.parametrize("as_generator", [False, True], ids=["list", "generator"])
def test_body_shorter_than_declared_content_length_aborts_the_connection(serve, as_generator):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        return iter([b"01234"]) if as_generator else [b"01234"]

    raw = fetch_raw_until_closed(serve(app))  # raises TimeoutError if the server hangs
    head, _, body = raw.partition(b"\r\n\r\n")
    assert len(body) < 10, "the client never sees a complete response"
    if head:
        assert head.startswith(b"HTTP/1.1 200 ")


# -- wsgi.file_wrapper -------------------------------------------------------------------------


def test_environ_offers_wsgi_file_wrapper(serve):
    seen: list[Any] = []

    def app(environ, start_response):
        seen.append(environ.get("wsgi.file_wrapper"))
        return ok(environ, start_response)

    fetch(serve(app))
    assert seen[0] is not None, "environ has no wsgi.file_wrapper (PEP 3333 optional extension)"
    wrapper = seen[0](io.BytesIO(b"abc"), 2)
    assert list(wrapper) == [b"ab", b"c"]


@pytest.fixture
def data_file() -> Iterator[tuple[str, bytes]]:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    yield f.name, data
    os.unlink(f.name)


@pytest.fixture(scope="module")
def big_file() -> Iterator[tuple[str, bytes]]:
    """Larger than the kernel's socket buffers can absorb (tcp_wmem's max is 4 MiB by default)."""
    data = os.urandom(24 * 1024 * 1024)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        yield f.name, data


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Byte counts passed to ``sendfile_all``: proof that the zero-copy path was taken."""
    calls: list[int] = []
    real = wsgiloop.wsgi.sendfile_all

    def counting(
        sock: int, fd: int, offset: int, count: int, gone: Callable[[], bool], stall: float = 0.0,
        **kwargs: Any,
    ) -> int:
        calls.append(count)
        return real(sock, fd, offset, count, gone, stall, **kwargs)

    monkeypatch.setattr(wsgiloop.wsgi, "sendfile_all", counting)
    return calls


def file_app(path: str, opened: list[Any]) -> App:
    """Serves ``path`` through wsgi.file_wrapper, from ``?offset`` (a seek) plus ``?consume``
    (bytes read first, so the OS position is ahead of ``tell()``); ``?length`` declares one."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = dict(p.split("=") for p in environ["QUERY_STRING"].split("&") if p)
        f = open(path, "rb")  # noqa: SIM115  # closed by the server through the wrapper
        f.seek(int(query.get("offset", 0)))
        f.read(int(query.get("consume", 0)))
        opened.append(f)
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in query:
            headers.append(("Content-Length", query["length"]))
        write = start_response("200 OK", headers)
        if "prefix" in query:
            write(b"prefix:")
        return environ["wsgi.file_wrapper"](f)

    return app


@pytest.mark.parametrize(
    "query, offset",
    [("", 0), ("offset=1", 1), ("offset=65536", 65536), ("offset=1000003", 1_000_003),
     ("consume=10", 10), ("offset=5&consume=100000", 100_005)],
)
def test_file_wrapper_sends_a_real_file_with_sendfile(
    serve, data_file, sendfile_calls, query, offset
):
    path, data = data_file
    opened: list[Any] = []
    sock = serve(file_app(path, opened)).connect()
    for _ in range(2):  # h11 accounted for the sendfile bytes: the connection stays usable
        sock.sendall(raw_request(path=f"/?{query}"))
        status, headers, body = read_response(sock)
        assert status == 200
        assert headers["content-length"] == str(len(data) - offset)
        assert len(body) == len(data) - offset
        assert body == data[offset:]
    sock.close()
    assert sendfile_calls == [len(data) - offset] * 2
    # close() runs in the app thread right after the end of the response is handed over.
    assert wait_until(lambda: all(f.closed for f in opened))


def test_file_wrapper_sendfile_to_a_slow_reader(serve, big_file, sendfile_calls, monkeypatch):
    """The socket fills up mid-file: sendfile waits for writability instead of failing."""
    path, data = big_file
    writes: list[int] = []
    real_sendfile = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        try:
            n = real_sendfile(out_fd, in_fd, offset, count)
        except BlockingIOError:
            n = -1
            raise
        finally:
            writes.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    server = serve(file_app(path, []))
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(raw_request())
    threading.Event().wait(0.3)  # let the server hit a full socket before reading anything
    status, _, body = read_response(sock)
    assert (status, hashlib.sha256(body).digest()) == (200, hashlib.sha256(data).digest())
    assert sendfile_calls == [len(data)]
    assert -1 in writes, "the socket never filled up: the waiting path went untested"
    sock.close()


def test_file_wrapper_honours_a_smaller_declared_content_length(serve, data_file, sendfile_calls):
    path, data = data_file
    status, headers, body = fetch(serve(file_app(path, [])), path="/?offset=100&length=5000")
    assert (status, headers["content-length"], body) == (200, "5000", data[100:5100])
    assert sendfile_calls == [5000]


def test_file_wrapper_after_write_is_streamed_not_sendfiled(serve, data_file, sendfile_calls):
    """Once write() sent the head, sendfile could not add Content-Length: iterate instead."""
    path, data = data_file
    status, _, body = fetch(serve(file_app(path, [])), path="/?prefix=1&offset=7")
    assert status == 200
    assert body == b"prefix:" + data[7:]
    assert sendfile_calls == []


def test_file_wrapper_over_bytesio_is_streamed_in_blocks(serve, sendfile_calls):
    data = os.urandom(10_000)
    buffers: list[io.BytesIO] = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        buffers.append(io.BytesIO(data))
        return environ["wsgi.file_wrapper"](buffers[-1], 4096)

    raw = fetch_raw_until_closed_with(serve(app), raw_request(headers={"Connection": "close"}))
    head, chunks, complete = parse_chunked(raw)
    assert head.startswith(b"HTTP/1.1 200 ") and complete
    assert [len(c) for c in chunks] == [4096, 4096, 10_000 - 8192]  # one chunk per block
    assert b"".join(chunks) == data
    assert sendfile_calls == []
    assert buffers[0].closed


def fetch_raw_until_closed_with(server: Running, request: bytes) -> bytes:
    sock = server.connect()
    try:
        sock.sendall(request)
        return recv_until_closed(sock)
    finally:
        sock.close()


def test_head_with_a_file_wrapper_sends_the_get_headers_and_no_body(
    serve, data_file, sendfile_calls
):
    path, data = data_file
    opened: list[Any] = []
    sock = serve(file_app(path, opened)).connect()
    sock.sendall(raw_request("HEAD", "/?offset=10"))
    status, headers, _ = _read_head(sock)
    assert status == 200
    assert headers.get("content-length") == str(len(data) - 10), headers
    assert "transfer-encoding" not in headers
    # Nothing was sent after the head: the next response on the connection is intact.
    sock.sendall(raw_request("GET", "/?offset=10"))
    status, headers, body = read_response(sock)
    assert (status, body == data[10:]) == (200, True)
    sock.close()
    assert sendfile_calls == [len(data) - 10]  # for the GET only
    assert wait_until(lambda: all(f.closed for f in opened))


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def test_sendfile_never_writes_to_a_descriptor_the_loop_has_closed(
    serve, big_file, monkeypatch, error_log
):
    """When a client resets mid-file the loop closes its socket, and the next accepted connection
    may get the same descriptor number. The app thread, between its check that the connection
    is still there and its next ``os.sendfile``, must not end up writing to that number: the
    file would go to another client.

    ``os.sendfile`` is wrapped. Once armed, its next call (made while the client still reads)
    holds until the client has reset, the loop has dropped the connection and a second client
    has connected: exactly the unlucky interleaving. Then the descriptor it was given must still
    be the first connection's socket.
    """
    path, data = big_file
    server = serve(file_app(path, []), threads=1)
    connections = server.server.state.connections
    real_sendfile = os.sendfile
    first_length = 20_000_000  # the first response declares this; the second sends all
    inodes: dict[int, int | None] = {}  # response (by its end offset) -> inode of its socket
    violations: list[tuple[int, int | None]] = []
    armed, holding = threading.Event(), threading.Event()
    first_connection: list[Any] = []

    def checked_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        response = offset + count
        if armed.is_set() and response == first_length:
            armed.clear()
            holding.set()
            for _ in range(400):
                if first_connection[0] not in connections and len(connections) == 1:
                    break
                threading.Event().wait(0.025)
        inode = _inode(out_fd)
        if inodes.setdefault(response, inode) != inode:
            violations.append((out_fd, inode))
            raise BrokenPipeError("the descriptor no longer is this connection's socket")
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", checked_sendfile)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(raw_request(path=f"/?length={first_length}"))
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    threading.Event().wait(0.2)  # the socket fills up: the app thread waits in sendfile_all
    (proto,) = connections
    first_connection.append(proto)
    armed.set()
    received = 0
    while not holding.is_set():  # read until the app thread is back in sendfile, held there
        chunk = sock.recv(65536)
        assert chunk, "the response ended early"
        received += len(chunk)
        assert received < len(data), "the app thread never called sendfile again"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST

    # A second client, connecting at once; the only pool thread serves it once freed.
    status, _, body = fetch(server)
    assert violations == [], "sendfile was given a descriptor the loop had closed"
    assert (status, len(body), body == data) == (200, len(data), True)
    assert not [r for r in error_log if r.levelno >= logging.ERROR], "a disconnect is no app error"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_body_of_a_204_or_304_is_dropped_and_the_connection_kept(serve, status):
    """These never have content; an app that returns some anyway (a 304 with the body of the
    200 it replaces) loses the body, not the connection."""

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return ok(environ, start_response)
        start_response(status, [("ETag", '"v1"')])
        return iter([b"a body that ", b"must not be sent"])

    sock = serve(app).connect()
    sock.sendall(raw_request())
    code, headers, body = read_response(sock)
    assert (code, headers["etag"], body) == (int(status[:3]), '"v1"', b"")
    sock.sendall(raw_request(path="/next"))
    assert read_response(sock)[::2] == (200, b"ok")
    sock.close()


def test_client_reset_mid_sendfile_with_a_pipelined_request_drops_the_connection(
    serve, big_file, error_log
):
    """With a request pipelined behind, the loop stops reading, and with sendfile it has nothing
    to write either: only the app thread sees the reset. The connection must still be dropped
    (not left open forever), the slot freed, and nothing logged as an app error."""
    path, _ = big_file
    server = serve(file_app(path, []), threads=1)
    connections = server.server.state.connections
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(raw_request() + raw_request(path="/?offset=5"))  # the second waits in h11
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    threading.Event().wait(0.2)  # the socket fills up: the app thread waits in sendfile_all
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST

    for _ in range(200):
        if not connections:
            break
        threading.Event().wait(0.025)
    assert not connections, "the reset connection was left open"
    assert fetch(server)[0] == 200
    assert not [r for r in error_log if r.levelno >= logging.ERROR], "a disconnect is no app error"


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
