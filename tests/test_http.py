"""HTTP/1.x connection semantics over real sockets: keep-alive, pipelining, 100-continue, HEAD,
chunked framing both ways, Connection handling, server headers, unread bodies, half-close.

Responses are parsed by ``Wire``, which keeps one buffered reader per connection so pipelined
responses are never lost between reads (``conftest.read_response`` makes a fresh reader per call).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from apps import echo, hello, reads_body
from conftest import is_closed, recv_until_closed

# -- a tiny HTTP/1.x response reader ------------------------------------------------------------


@dataclass
class Resp:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of a list header, lowercased (``Connection``)."""
        return {t.strip().lower() for v in self.all(name) for t in v.split(",") if t.strip()}


class Wire:
    """A raw client connection that can read any number of responses in sequence."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _headers(self) -> list[tuple[str, str]]:
        headers = []
        while True:
            line = self.reader.readline()
            if line in (b"\r\n", b""):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"bad header line {line!r}"
            headers.append((name, value.strip()))

    def response(self, head_request: bool = False) -> Resp:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("connection closed before a response")
        assert line.endswith(b"\r\n"), line
        version, status, reason = line[:-2].decode("latin-1").split(" ", 2)
        code = int(status)
        headers = self._headers()
        resp = Resp(version, code, reason, headers, b"", [])
        if code < 200 or code in (204, 304) or head_request:
            return resp
        if "chunked" in resp.tokens("transfer-encoding"):
            body = bytearray()
            while True:
                size = int(self.reader.readline().split(b";")[0], 16)
                if size == 0:
                    resp.trailers = self._headers()
                    break
                body += self.reader.read(size)
                assert self.reader.read(2) == b"\r\n"
            resp.body = bytes(body)
        elif resp.get("content-length") is not None:
            resp.body = self.reader.read(int(resp.get("content-length") or 0))
        else:
            resp.body = self.reader.read()  # close-delimited
        return resp

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed (EOF or reset) before sending anything more.

        Only for asserting a close: a timeout leaves the reader unusable.
        """
        self.sock.settimeout(timeout)
        try:
            return self.reader.read1(1) == b""  # bytes already buffered count as "not closed"
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def wire(server: Any) -> Wire:
    return Wire(server.connect())


# -- apps -------------------------------------------------------------------------------------


def describe(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answers "METHOD PATH BODY" with a Content-Length (reads the whole body)."""
    body = environ["wsgi.input"].read()
    out = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode() + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]


def generated(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Three blocks from a generator and no Content-Length: the server must frame it."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen() -> Iterable[bytes]:
        yield b"one,"
        yield b"two,"
        yield b"three"

    return gen()


def generated_with_length(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "10")])

    def gen() -> Iterable[bytes]:
        yield b"01234"
        yield b"56789"

    return gen()


def ignores_body(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "7")])
    return [b"ignored"]


GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"


def get(path: str = "/") -> bytes:
    return GET % path.encode()


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


# -- keep-alive ---------------------------------------------------------------------------------


def test_http11_keep_alive_serves_several_requests_on_one_connection(serve):
    ports: list[str] = []

    def app(environ, start_response):
        ports.append(environ["REMOTE_PORT"])
        return describe(environ, start_response)

    server = serve(app)
    w = wire(server)
    for i in range(4):
        w.send(get(f"/r{i}"))
        resp = w.response()
        assert (resp.status, resp.body) == (200, f"GET /r{i} ".encode())
        assert "close" not in resp.tokens("connection")
    assert len(set(ports)) == 1 and len(ports) == 4  # one TCP connection
    assert not is_closed(w.sock, 0.1)
    w.close()


def test_http10_closes_by_default(serve):
    server = serve(hello)
    w = wire(server)
    w.send(b"GET / HTTP/1.0\r\n\r\n")
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"Hello, world!")
    assert "keep-alive" not in resp.tokens("connection")
    assert w.closed()
    w.close()


def test_http10_keep_alive_with_content_length_stays_open(serve):
    server = serve(describe)
    w = wire(server)
    for path in ("/a", "/b", "/c"):
        w.send(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % path.encode())
        resp = w.response()
        assert (resp.status, resp.body) == (200, f"GET {path} ".encode())
        assert resp.tokens("connection") == {"keep-alive"}
    assert not is_closed(w.sock, 0.2)
    w.close()


def test_http10_keep_alive_without_content_length_is_close_delimited(serve):
    server = serve(generated)
    w = wire(server)
    w.send(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    resp = w.response()
    assert resp.status == 200
    assert resp.tokens("connection") == {"close"}
    assert resp.get("transfer-encoding") is None and resp.get("content-length") is None
    assert resp.body == b"one,two,three"  # read until the server closed
    w.close()


def test_http10_keep_alive_post_body_then_next_request(serve):
    server = serve(describe)
    w = wire(server)
    w.send(b"POST /p HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc")
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"POST /p abc")
    w.send(b"GET /q HTTP/1.0\r\n\r\n")
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"GET /q ")
    assert w.closed()  # no keep-alive asked the second time
    w.close()


# -- pipelining ---------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(serve):
    server = serve(describe)
    w = wire(server)
    w.send(get("/first") + post("/second", b"payload") + get("/third") + get("/fourth"))
    bodies = [w.response().body for _ in range(4)]
    assert bodies == [b"GET /first ", b"POST /second payload", b"GET /third ", b"GET /fourth "]
    w.send(get("/after"))
    assert w.response().body == b"GET /after "
    w.close()


def test_pipelined_requests_with_chunked_body_and_slow_first_response(serve):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.1)  # the next requests are already buffered when this one ends
        return describe(environ, start_response)

    server = serve(app)
    w = wire(server)
    chunked = (
        b"PUT /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    w.send(get("/slow") + chunked + b"DELETE /d HTTP/1.1\r\nHost: t\r\n\r\n")
    assert [w.response().body for _ in range(3)] == [b"GET /slow ", b"PUT /c abcde", b"DELETE /d "]
    w.close()


def test_pipelined_request_after_connection_close_is_not_answered(serve):
    calls: list[str] = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return describe(environ, start_response)

    server = serve(app)
    w = wire(server)
    w.send(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + get("/b"))
    resp = w.response()
    assert resp.body == b"GET /a "
    assert w.closed()
    assert calls == ["/a"]
    w.close()


# -- Expect: 100-continue -----------------------------------------------------------------------


def _expect_head(length: int, path: str = "/") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
        % (path.encode(), length)
    )


def test_expect_100_continue_is_sent_when_the_app_reads_the_body(serve):
    may_read = threading.Event()

    def app(environ, start_response):
        may_read.wait(10)
        return echo(environ, start_response)

    server = serve(app)
    w = wire(server)
    w.send(_expect_head(5))
    try:
        # Nothing may arrive before the app reads wsgi.input (a wait can only miss a bug here).
        ready, _, _ = select.select([w.sock], [], [], 0.2)
        assert not ready, w.sock.recv(100)
    finally:
        may_read.set()
    interim = w.response()
    assert (interim.status, interim.version) == (100, "HTTP/1.1")
    assert interim.reason == "Continue"
    w.send(b"hello")
    final = w.response()
    assert (final.status, final.body) == (200, b"hello")
    # The connection is still in sync.
    w.send(post("/", b"again"))
    assert w.response().body == b"again"
    w.close()


def test_expect_100_continue_is_not_sent_when_the_app_ignores_the_body(serve):
    calls: list[int] = []

    def app(environ, start_response):
        calls.append(1)
        return ignores_body(environ, start_response)

    server = serve(app)
    w = wire(server)
    w.send(_expect_head(1000))
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"ignored")  # no 100 before it
    # The client never got a 100 and so may never send the body; the server cannot know where
    # the next request would start: it says so and closes.
    assert "close" in resp.tokens("connection")
    assert w.closed()
    assert calls == [1]
    w.close()


def test_expect_100_continue_body_sent_anyway_keeps_connection_in_sync(serve):
    """RFC 9110 10.1.1: a client may send the body without waiting for the 100."""
    server = serve(describe)
    w = wire(server)
    w.send(_expect_head(4, "/x") + b"data" + get("/y"))
    first = w.response()
    if first.status == 100:  # allowed: the app read the body, maybe before it all arrived
        first = w.response()
    assert first.body == b"POST /x data"
    assert w.response().body == b"GET /y "
    w.close()


# -- HEAD ---------------------------------------------------------------------------------------


def test_head_has_get_headers_and_no_body(serve):
    server = serve(hello)
    w = wire(server)
    w.send(get())
    got = w.response()
    w.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = w.response(head_request=True)
    assert head.status == 200
    assert head.get("content-length") == "13" == got.get("content-length")
    assert head.get("content-type") == got.get("content-type")
    # No body bytes followed: the next response starts right after the head.
    w.send(get())
    assert w.response().body == b"Hello, world!"
    w.close()


def test_head_with_generator_app_sends_no_body(serve):
    closed: list[bool] = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])

        def gen():
            try:
                yield b"01234"
                yield b"56789"
            finally:
                closed.append(True)

        return gen()

    server = serve(app)
    w = wire(server)
    w.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/g"))
    head = w.response(head_request=True)
    assert head.status == 200 and head.get("content-length") == "10"
    full = w.response()
    assert full.body == b"0123456789"
    assert closed == [True, True]  # the HEAD's generator was closed too
    w.close()


def test_head_with_generator_app_without_length(serve):
    server = serve(generated)
    w = wire(server)
    w.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = w.response(head_request=True)
    assert head.status == 200
    w.send(get())
    resp = w.response()  # would be garbled if the HEAD response had carried a body
    assert (resp.status, resp.body) == (200, b"one,two,three")
    w.close()


# -- chunked bodies -----------------------------------------------------------------------------


def test_chunked_request_body_is_reassembled(serve):
    server = serve(echo)
    w = wire(server)
    w.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    assert w.response().body == b"hello world"
    w.send(get())
    assert w.response().status == 200
    w.close()


def test_chunked_request_body_with_extensions_and_trailers(serve):
    server = serve(echo)
    w = wire(server)
    w.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"A;name=value\r\n0123456789\r\n"
        b"3;a=1;b=\"q\"\r\nabc\r\n"
        b"0;last\r\nX-Checksum: 1234\r\nX-Other: y\r\n\r\n"
    )
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"0123456789abc")
    w.send(get())
    assert w.response().status == 200  # the trailers were consumed, the connection is in sync
    w.close()


def test_chunked_request_body_sent_in_dribbles(serve):
    server = serve(echo)
    w = wire(server)
    w.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    payload = b""
    for i in range(5):
        piece = bytes([65 + i]) * (i + 1)
        payload += piece
        w.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.01)
    w.send(b"0\r\n\r\n")
    assert w.response().body == payload
    w.close()


def test_response_without_length_is_chunked_for_http11(serve):
    server = serve(generated)
    w = wire(server)
    w.send(get())
    resp = w.response()
    assert resp.tokens("transfer-encoding") == {"chunked"}
    assert resp.get("content-length") is None
    assert resp.body == b"one,two,three"
    w.send(get())  # chunked framing keeps the connection alive
    assert w.response().body == b"one,two,three"
    w.close()


def test_response_without_length_is_close_delimited_for_http10(serve):
    server = serve(generated)
    w = wire(server)
    w.send(b"GET / HTTP/1.0\r\n\r\n")
    raw = recv_until_closed(w.sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert body == b"one,two,three"
    w.close()


def test_response_with_length_is_not_chunked(serve):
    server = serve(generated_with_length)
    w = wire(server)
    w.send(get())
    resp = w.response()
    assert resp.get("content-length") == "10" and resp.get("transfer-encoding") is None
    assert resp.body == b"0123456789"
    w.close()


# -- Connection: close, Date, Server ------------------------------------------------------------


def test_client_connection_close_is_honoured(serve):
    server = serve(hello)
    w = wire(server)
    w.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    resp = w.response()
    assert resp.status == 200 and resp.body == b"Hello, world!"
    assert "close" in resp.tokens("connection")
    assert w.closed()
    w.close()


def test_client_connection_close_among_other_tokens_is_honoured(serve):
    server = serve(hello)
    w = wire(server)
    w.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: TE, Close\r\nTE: trailers\r\n\r\n")
    resp = w.response()
    assert "close" in resp.tokens("connection")
    assert w.closed()
    w.close()


def test_date_and_server_headers_are_present(serve):
    server = serve(hello)
    w = wire(server)
    w.send(get())
    resp = w.response()
    assert resp.get("server") == "wsgiloop"
    date = resp.get("date")
    assert date is not None and date.endswith(" GMT")
    w.close()


def test_app_date_and_server_headers_are_not_duplicated(serve):
    def app(environ, start_response):
        name_case = environ["PATH_INFO"] == "/lower"
        start_response(
            "200 OK",
            [
                ("server" if name_case else "Server", "my-app/1.0"),
                ("date" if name_case else "Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("Content-Length", "0"),
            ],
        )
        return []

    server = serve(app)
    w = wire(server)
    for path in ("/title", "/lower"):
        w.send(get(path))
        resp = w.response()
        assert resp.all("server") == ["my-app/1.0"], resp.headers
        assert resp.all("date") == ["Thu, 01 Jan 1970 00:00:00 GMT"], resp.headers
    w.close()


def test_server_and_date_headers_can_be_disabled(serve):
    server = serve(hello, server_header=False, date_header=False)
    w = wire(server)
    w.send(get())
    resp = w.response()
    assert resp.all("server") == [] and resp.all("date") == []
    w.close()


# -- unread request bodies ----------------------------------------------------------------------


def test_small_unread_body_sent_with_the_head_is_discarded(serve):
    server = serve(ignores_body)
    w = wire(server)
    w.send(post("/", b"x" * 5000) + get())
    assert w.response().body == b"ignored"
    assert w.response().body == b"ignored"
    w.close()


def test_small_unread_body_sent_after_the_response_is_discarded(serve):
    calls: list[str] = []

    def app(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        return ignores_body(environ, start_response)

    server = serve(app)
    w = wire(server)
    w.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n\r\n")
    assert w.response().body == b"ignored"  # answered before the body arrived
    w.send(b"y" * 3000 + get())  # the body bytes must not be parsed as a request
    assert w.response().body == b"ignored"
    assert calls == ["POST", "GET"]
    w.close()


def test_small_unread_chunked_body_is_discarded(serve):
    server = serve(ignores_body)
    w = wire(server)
    w.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    assert w.response().body == b"ignored"
    w.send(b"4\r\nefgh\r\n0\r\n\r\n" + get())
    assert w.response().status == 200
    w.close()


def test_large_unread_body_closes_the_connection(serve):
    calls: list[str] = []

    def app(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        return ignores_body(environ, start_response)

    server = serve(app, max_discard=4096)
    w = wire(server)
    w.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
    assert w.response().body == b"ignored"
    try:
        w.send(b"z" * 65536)
    except OSError:
        pass  # already closed and reset: fine
    assert w.closed()
    assert calls == ["POST"]
    w.close()


def test_large_unread_body_response_survives_the_close(serve):
    """The server stops discarding after max_discard, but must not reset the connection while
    the client is still sending: the reset would destroy the response it has not read yet."""
    server = serve(ignores_body, max_discard=4096)
    w = wire(server)
    w.send(post("/", b"q" * (32 << 20)))  # in one go, more than the socket buffers hold
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"ignored")
    assert w.closed()
    w.close()


def test_partly_read_body_rest_is_discarded(serve):
    def app(environ, start_response):
        first = environ["wsgi.input"].read(3)
        start_response("200 OK", [("Content-Length", str(len(first)))])
        return [first]

    server = serve(app)
    w = wire(server)
    w.send(post("/", b"abcdefgh") + post("/", b"123456"))
    assert w.response().body == b"abc"
    assert w.response().body == b"123"
    w.close()


# -- half-close ---------------------------------------------------------------------------------


def test_half_closed_client_still_gets_its_response(serve):
    server = serve(hello)
    sock = server.connect()
    sock.sendall(get())
    sock.shutdown(socket.SHUT_WR)
    raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\nHello, world!")
    sock.close()


def test_half_closed_client_gets_response_of_a_slow_app_with_body(serve):
    def app(environ, start_response):
        time.sleep(0.1)  # the EOF arrives while the app runs
        return echo(environ, start_response)

    server = serve(app)
    sock = server.connect()
    sock.sendall(post("/", b"body!"))
    sock.shutdown(socket.SHUT_WR)
    raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\nbody!")
    sock.close()


def test_half_closed_client_gets_all_pipelined_responses(serve):
    server = serve(describe)
    sock = server.connect()
    sock.sendall(get("/1") + get("/2"))
    sock.shutdown(socket.SHUT_WR)
    raw = recv_until_closed(sock)
    assert raw.count(b"HTTP/1.1 200 ") == 2
    assert raw.index(b"GET /1 ") < raw.index(b"GET /2 ")
    sock.close()


# -- graceful stop ------------------------------------------------------------------------------


def _begin_stop(server: Any) -> None:
    server.loop.call_soon_threadsafe(server.server.stop)


def test_request_arriving_during_graceful_stop_is_served_and_closed(serve):
    """A connection accepted before the stop gets its request answered (with Connection: close),
    not a 503 and not a silent close: with pre-fork workers this is every reload's race."""
    server = serve(describe)
    w = wire(server)
    w.send(b"GET /late HTTP/1.1\r\n")  # the connection is known to the server, its head half-sent
    time.sleep(0.05)
    _begin_stop(server)
    time.sleep(0.1)
    w.send(b"Host: t\r\n\r\n")
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"GET /late ")
    assert "close" in resp.tokens("connection")
    assert w.closed()
    w.close()


def test_idle_keep_alive_connection_is_closed_at_graceful_stop_once_its_keep_alive_is_over(serve):
    # Not at once: a request its client sends meanwhile must be answered (see test_lifecycle).
    server = serve(hello, keepalive_timeout=1)
    w = wire(server)
    w.send(get())
    assert w.response().status == 200
    _begin_stop(server)
    assert w.closed()
    w.close()


def test_response_in_flight_finishes_at_graceful_stop(serve):
    started = threading.Event()

    def app(environ, start_response):
        started.set()
        time.sleep(0.3)
        return hello(environ, start_response)

    server = serve(app)
    w = wire(server)
    w.send(get())
    assert started.wait(10)
    _begin_stop(server)
    resp = w.response()
    assert (resp.status, resp.body) == (200, b"Hello, world!")
    assert "close" in resp.tokens("connection")
    assert w.closed()
    w.close()


# -- Content-Length bodies, delimited by the server (protocol._delimit) -------------------------


@pytest.mark.parametrize("length", ["0", "00", "000"])
def test_zero_content_length_in_any_spelling_is_an_empty_body(serve, length):
    server = serve(describe)
    w = wire(server)
    w.send(b"POST /z HTTP/1.1\r\nHost: t\r\nContent-Length: %s\r\n\r\n" % length.encode())
    assert w.response().body == b"POST /z "
    w.send(get("/next"))
    assert w.response().body == b"GET /next "
    w.close()


@pytest.mark.parametrize("split", [1, 7, 30, 47, 60])
def test_length_delimited_body_and_pipelined_requests_split_anywhere(serve, split):
    """The body ends exactly at its length, however the reads fall: the bytes after it are the
    next requests, answered in order once the one before them is done."""
    server = serve(describe)
    w = wire(server)
    data = post("/a", b"0123456789" * 3) + post("/b", b"xy") + get("/c")
    w.send(data[:split])
    time.sleep(0.02)
    w.send(data[split:])
    assert [w.response().body for _ in range(3)] == [
        b"POST /a " + b"0123456789" * 3,
        b"POST /b xy",
        b"GET /c ",
    ]
    w.close()


def test_client_closing_mid_body_gets_400_and_the_app_sees_a_disconnect(serve):
    seen: list[str] = []
    server = serve(reads_body(seen))
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
    time.sleep(0.05)
    sock.shutdown(socket.SHUT_WR)
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:60]
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["ClientDisconnected"]
