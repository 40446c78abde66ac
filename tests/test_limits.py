"""What the server answers itself, over real sockets: malformed requests, limits, timeouts.

Every error the server answers on its own closes the connection (``Connection: close`` and EOF),
never reaches the app, and is logged without a traceback (a bad client is not a server bug).
"""

from __future__ import annotations

import gc
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from apps import echo, hello
from conftest import is_closed, read_response, recv_until_closed

from wsgiloop.protocol import HttpProtocol


@pytest.fixture
def error_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog, also fed by ``wsgiloop.error`` (which does not propagate to the root logger)."""
    logger = logging.getLogger("wsgiloop.error")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def counting(app: Any) -> tuple[Any, list[str]]:
    """Wrap ``app`` to record each call's PATH_INFO."""
    calls: list[str] = []

    def wrapper(environ: dict[str, Any], start_response: Any) -> Any:
        calls.append(environ["PATH_INFO"])
        return app(environ, start_response)

    return wrapper, calls


def error_exchange(server: Any, data: bytes, pause: float = 0.0) -> tuple[int, bytes, bytes]:
    """Send ``data`` and read until the server closes: (status, head, body)."""
    sock = server.connect()
    try:
        sock.sendall(data)
        raw = recv_until_closed(sock)
    finally:
        sock.close()
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def assert_closing_error(head: bytes, body: bytes, status: int) -> None:
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 %d " % status), lines[0]
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    assert fields.get(b"connection", b"").lower() == b"close"
    assert int(fields[b"content-length"]) == len(body)  # the whole body came before the close


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    records = caplog.records  # read now: caplog swaps the list between test phases
    with_trace = [r.getMessage() for r in records if r.exc_info]
    assert not with_trace, with_trace
    assert not [r.getMessage() for r in records if r.levelno >= logging.ERROR]


# -- malformed requests → 400 ---------------------------------------------------------------------

MALFORMED = {
    "garbage": b"GARBAGE\r\n\r\n",
    "http09": b"GET /\r\n\r\n",
    "extra_token": b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
    "no_version": b"GET / \r\nHost: t\r\n\r\n",
    "lowercase_version": b"GET / http/1.1\r\nHost: t\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost t\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "nul_in_header": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    "missing_host_http11": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "obs_fold_line_start": b"GET / HTTP/1.1\r\n Host: t\r\n\r\n",
    "raw_non_ascii_target": b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",  # must be %-encoded
    "te_and_content_length": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_and_close_without_traceback(serve, error_log, data):
    app, calls = counting(hello)
    server = serve(app)
    status, head, body = error_exchange(server, data)
    assert status == 400
    assert_closing_error(head, body, 400)
    assert calls == []
    assert_no_traceback(error_log)
    assert any("400" in r.getMessage() for r in error_log.records)  # logged, at debug level


def test_malformed_request_after_a_good_one_on_the_same_connection(serve, error_log):
    server = serve(hello)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nNOT A REQUEST\r\n\r\n")
    raw = recv_until_closed(sock)
    sock.close()
    first, _, rest = raw.partition(b"Hello, world!")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 400 ")
    assert_no_traceback(error_log)


@pytest.mark.parametrize(
    ("coding", "expected"),
    [
        # chunked not final: the body length is unknown, RFC 9112 6.3 rule 4 demands 400
        (b"gzip", 400),
        # chunked final, an unknown coding before it: 501 (RFC 9112 6.1)
        (b"gzip, chunked", 501),
    ],
)
def test_unsupported_transfer_coding_is_refused(serve, error_log, coding, expected):
    app, calls = counting(echo)
    server = serve(app)
    request = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + coding + b"\r\n\r\nabc"
    status, head, body = error_exchange(server, request)
    assert status == expected
    assert_closing_error(head, body, expected)
    assert calls == []
    assert_no_traceback(error_log)


def test_broken_chunked_body_while_the_app_reads_it_gets_400_and_close(serve, error_log):
    server = serve(echo)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    time.sleep(0.05)  # the app is blocked in read() when the garbage arrives
    sock.sendall(b"not-hex\r\n\r\n")
    raw = recv_until_closed(sock)
    sock.close()
    # The app, blocked in read(), is abandoned (never a response built on a half body); the
    # client gets the 400 since no response head went out yet.
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:80]
    assert_no_traceback(error_log)


# -- versions → 505 -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"])
def test_unsupported_http_version_gets_505(serve, error_log, version):
    app, calls = counting(hello)
    server = serve(app)
    status, head, body = error_exchange(server, b"GET / %s\r\nHost: t\r\n\r\n" % version)
    assert status == 505
    assert_closing_error(head, body, 505)
    assert calls == []
    assert_no_traceback(error_log)


# -- size limits → 431, 414, 413 -------------------------------------------------------------------


def _big_head(size: int) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


def test_header_section_over_max_header_bytes_gets_431_when_sent_at_once(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, max_header_bytes=4096)
    status, head, body = error_exchange(server, _big_head(6000))
    assert status == 431
    assert_closing_error(head, body, 431)
    assert calls == []
    assert_no_traceback(error_log)


def test_header_section_over_max_header_bytes_gets_431_when_sent_in_pieces(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, max_header_bytes=4096)
    sock = server.connect()
    data = _big_head(20000)
    try:
        for i in range(0, len(data), 1000):
            sock.sendall(data[i : i + 1000])
            time.sleep(0.001)
    except OSError:
        pass  # the server answered and closed before the rest went out
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert calls == []
    assert_no_traceback(error_log)


def test_header_section_within_max_header_bytes_is_served(serve):
    server = serve(hello, max_header_bytes=4096)
    sock = server.connect()
    sock.sendall(_big_head(3000))
    status, _, body = read_response(sock)
    sock.close()
    assert (status, body) == (200, b"Hello, world!")


def _fields(n: int) -> bytes:
    """A request with ``n`` header fields, Host included."""
    extra = b"".join(b"X-F%d: v\r\n" % i for i in range(n - 1))
    return b"GET / HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def test_more_header_fields_than_limit_request_fields_gets_431(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, limit_request_fields=10)
    status, head, body = error_exchange(server, _fields(11))
    assert status == 431
    assert_closing_error(head, body, 431)
    assert calls == []
    assert_no_traceback(error_log)


def test_exactly_limit_request_fields_is_served(serve):
    server = serve(hello, limit_request_fields=10)
    sock = server.connect()
    sock.sendall(_fields(10))
    assert read_response(sock)[0] == 200
    sock.close()


def test_limit_request_field_size_counts_name_and_value_and_allows_exactly_the_limit(serve):
    # gunicorn's --limit-request-field_size: a field's name plus its value, at most the limit.
    server = serve(hello, limit_request_field_size=20)
    for value, status in ((b"v" * 17, 200), (b"v" * 18, 431)):  # "X-A" + value: 20, then 21
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: " + value + b"\r\n\r\n")
        assert read_response(sock)[0] == status, value
        sock.close()


def test_target_over_limit_request_line_gets_414(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, limit_request_line=100)
    target = b"/" + b"x" * 100  # 101 bytes
    status, head, body = error_exchange(server, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target)
    assert status == 414
    assert_closing_error(head, body, 414)
    assert calls == []
    assert_no_traceback(error_log)


def test_target_at_limit_request_line_is_served(serve):
    server = serve(hello, limit_request_line=100)
    sock = server.connect()
    sock.sendall(b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"x" * 99))
    assert read_response(sock)[0] == 200
    sock.close()


def test_content_length_over_max_body_size_gets_413_without_calling_the_app(serve, error_log):
    app, calls = counting(echo)
    server = serve(app, max_body_size=100)
    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n"
    status, head, body = error_exchange(server, request)  # the body is never sent
    assert status == 413
    assert_closing_error(head, body, 413)
    assert calls == []
    assert_no_traceback(error_log)


def test_content_length_over_max_body_size_with_expect_gets_413_and_no_100(serve):
    app, calls = counting(echo)
    server = serve(app, max_body_size=100)
    request = (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    status, head, body = error_exchange(server, request)
    assert status == 413  # first and only response: no 100 Continue before it
    assert_closing_error(head, body, 413)
    assert calls == []


def test_413_reaches_a_client_that_is_still_uploading(serve):
    """The close after the 413 must not reset the connection under a client mid-upload (the
    reset would destroy the unread 413): http.client sends the whole body before reading."""
    app, calls = counting(echo)
    server = serve(app, max_body_size=100)
    conn = server.http()
    try:
        conn.request("POST", "/", body=b"u" * (32 << 20))  # more than socket buffers hold
        resp = conn.getresponse()
        assert resp.status == 413
        assert resp.getheader("Connection") == "close"
        resp.read()
    finally:
        conn.close()
    assert calls == []


def test_413_from_a_chunked_upload_reaches_the_client(serve):
    """Found only as the app reads: the 413 comes from the app's thread, then the same close."""
    server = serve(echo, max_body_size=100)
    conn = server.http()
    try:
        body = iter([b"c" * 65536] * 512)  # 32 MiB, more than socket buffers hold
        conn.request("POST", "/", body=body, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        resp.read()
    finally:
        conn.close()


def test_content_length_at_max_body_size_is_served(serve):
    server = serve(echo, max_body_size=100)
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"b" * 100)
    assert read_response(sock)[:3:2] == (200, b"b" * 100)
    sock.close()


def test_chunked_body_over_max_body_size_gets_413_once_read(serve, error_log):
    server = serve(echo, max_body_size=100)
    chunk = b"x" * 80
    request = (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"50\r\n" + chunk + b"\r\n50\r\n" + chunk + b"\r\n0\r\n\r\n"
    )
    status, head, body = error_exchange(server, request)
    assert status == 413
    assert_closing_error(head, body, 413)
    assert_no_traceback(error_log)


@pytest.mark.parametrize(
    "value",
    [b"abc", b"-1", b"+5", b"1.0", b"0x10", b"5 5", b"1, 2"],
    ids=["alpha", "negative", "plus", "decimal", "hex", "space", "conflicting_list"],
)
def test_invalid_content_length_gets_400(serve, error_log, value):
    app, calls = counting(echo)
    server = serve(app)
    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %s\r\n\r\nabcde" % value
    status, head, body = error_exchange(server, request)
    assert status == 400
    assert_closing_error(head, body, 400)
    assert calls == []
    assert_no_traceback(error_log)


def test_conflicting_content_length_headers_get_400(serve, error_log):
    app, calls = counting(echo)
    server = serve(app)
    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
    status, head, body = error_exchange(server, request)
    assert status == 400
    assert_closing_error(head, body, 400)
    assert calls == []


# -- concurrency limit → 503 -----------------------------------------------------------------------


def test_limit_concurrency_answers_503_to_a_second_connection(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, limit_concurrency=1)
    first = server.connect()
    first.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(first)[0] == 200  # the first connection is established and kept alive
    status, head, body = error_exchange(server, b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 503
    assert_closing_error(head, body, 503)
    assert calls == ["/first"]
    assert_no_traceback(error_log)
    # Once the first connection is gone, a new one is served (the server notices the close
    # asynchronously, hence the retries). shutdown(): read_response keeps a makefile() of the
    # socket alive, and then close() alone does not close the descriptor.
    first.shutdown(socket.SHUT_RDWR)
    first.close()
    deadline = time.monotonic() + 10
    while True:
        sock = server.connect()
        sock.sendall(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
        status = read_response(sock)[0]
        sock.close()
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == 200


# -- timeouts --------------------------------------------------------------------------------------


def test_keepalive_timeout_closes_an_idle_connection(serve):
    server = serve(hello, keepalive_timeout=0.3)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    assert is_closed(sock, timeout=10)
    assert recv_until_closed(sock) == b""  # closed silently: nothing was asked
    sock.close()


def test_keepalive_timeout_restarts_with_each_request(serve):
    server = serve(hello, keepalive_timeout=1.0)
    sock = server.connect()
    for _ in range(3):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        time.sleep(0.4)  # 1.2 s in all: longer than one timeout, each gap shorter
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()


def test_header_timeout_on_a_half_sent_head_answers_408_and_closes(serve, error_log):
    app, calls = counting(hello)
    server = serve(app, header_timeout=0.5)
    status, head, body = error_exchange(server, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert status == 408
    assert_closing_error(head, body, 408)
    assert calls == []
    assert_no_traceback(error_log)


def test_header_timeout_replaces_keepalive_timeout_once_a_request_starts(serve):
    server = serve(hello, keepalive_timeout=0.3, header_timeout=30)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET / HTTP/1.1\r\n")  # a second request begins within the keep-alive time
    time.sleep(1.0)  # well past the keep-alive timeout, far from the header timeout
    sock.sendall(b"Host: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()


def test_header_timeout_on_a_silent_new_connection_closes_it(serve):
    server = serve(hello, header_timeout=0.5)
    sock = server.connect()
    assert recv_until_closed(sock) == b""
    sock.close()


def test_header_timeout_is_not_extended_by_dribbling_bytes(serve):
    server = serve(hello, header_timeout=0.5)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
    give_up = time.monotonic() + 10  # the client would dribble for this long
    answered = False
    while not answered and time.monotonic() < give_up:
        try:
            sock.sendall(b"X-Drip: 1\r\n")  # a byte now and then must not reset the clock
        except OSError:
            break
        answered = bool(select.select([sock], [], [], 0.05)[0])
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 408 ")


def test_request_after_keepalive_timeout_refused_cleanly(serve):
    server = serve(hello, keepalive_timeout=0.3)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(sock)[0] == 200
    assert is_closed(sock, timeout=10)
    with pytest.raises((ConnectionError, OSError)):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(sock)
    sock.close()


# -- every error closes ----------------------------------------------------------------------------


def test_error_response_closes_even_when_the_client_asked_for_keep_alive(serve):
    server = serve(hello, limit_request_line=50)
    sock = server.connect()
    sock.sendall(b"GET /%s HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n" % (b"y" * 60))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # never answered
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 414 ")
    assert raw.count(b"HTTP/1.1") == 1


def test_error_response_to_head_request_has_no_body(serve):
    server = serve(hello, limit_request_line=50)
    sock = server.connect()
    sock.sendall(b"HEAD /%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"y" * 60))
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 414 ")
    assert raw.endswith(b"\r\n\r\n")  # head only


def test_error_statuses_carry_their_reason_phrase(serve):
    server = serve(hello, limit_request_fields=2)
    _, head, _ = error_exchange(server, _fields(3))
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 431 Request Header Fields Too Large"


def test_server_survives_a_client_that_resets(serve):
    server = serve(hello)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    resp, body = server.request("GET", "/")
    assert (resp.status, body) == (200, b"Hello, world!")


# -- memory: a closed connection leaves nothing behind -------------------------------------------


@pytest.mark.parametrize("ending", ["client closes", "server closes"])
def test_a_closed_connection_is_freed_without_the_cyclic_gc(serve, ending):
    """Reference counting alone frees a connection's protocol, parser and queues once it closes:
    under load the cyclic GC would otherwise collect every connection, and pause to do it."""

    def protocols() -> int:  # with the GC off, objects left in cycles stay in this list
        return sum(1 for o in gc.get_objects() if type(o) is HttpProtocol)

    server = serve(hello)
    state = server.server.state  # type: ignore[union-attr]
    gc.collect()
    gc.disable()
    try:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert protocols() == 1
        if ending == "client closes":
            sock.close()
        else:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert recv_until_closed(sock).startswith(b"HTTP/1.1 200 ")
            sock.close()
        deadline = time.monotonic() + 10
        while state.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not state.connections
        time.sleep(0.1)  # let the loop finish the callbacks of the close
        assert protocols() == 0, "the closed connection is only reachable through a cycle"
    finally:
        gc.enable()


def test_connect_gets_501_without_calling_the_app(serve, error_log):
    """A WSGI app cannot open a tunnel: a 2xx from it would be a lie the client acts on."""
    app, calls = counting(hello)
    server = serve(app)
    status, _, _ = error_exchange(
        server, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert status == 501
    assert calls == []
    assert_no_traceback(error_log)
