"""``start_response`` and the response head, sans-IO: validation, framing, the memo of heads.

Heads are read back with h11 acting as the client, so what is checked is what a real HTTP parser
makes of the bytes, not a string comparison with our own serialiser.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from typing import Any

import h11
import pytest

from wsgiloop import response as response_module
from wsgiloop.response import (
    CHUNKED,
    END_CLOSE,
    END_KEEP_ALIVE,
    END_KEEP_ALIVE_10,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Head,
    InvalidHeader,
    Response,
    encode_chunk,
    error_head,
)

SERVER_HEADERS = [(b"Server", b"wsgiloop"), (b"Date", b"Thu, 01 Jan 1970 00:00:00 GMT")]


def as_client_sees(head: Head, end: bytes = END_KEEP_ALIVE, method: bytes = b"GET") -> h11.Response:
    """Parse a head (plus the loop's ending) the way a client would."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    client.receive_data(head.data + end)
    event = client.next_event()
    assert type(event) is h11.Response, event
    return event


def head_of(
    status: str,
    headers: list[tuple[str, str]],
    extra: list[tuple[bytes, bytes]] | None = None,
    http11: bool = True,
) -> Head:
    r = Response(extra or [])
    r.start_response(status, headers)
    return r.head(http11)


# -- status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        ("200 OK", 200, b"OK"),
        ("404 Not Found", 404, b"Not Found"),
        ("599 Some Custom Reason", 599, b"Some Custom Reason"),
        ("204 ", 204, b""),
        ("418 I'm a teapot", 418, b"I'm a teapot"),
        ("200 Caf\xe9", 200, b"Caf\xe9"),  # latin-1 reason
    ],
)
def test_status_is_parsed_and_written_as_given(status, code, reason):
    r = Response([])
    r.start_response(status, [])
    assert (r.status_code, r.reason, r.status) == (code, reason, status)
    seen = as_client_sees(r.head())
    assert (seen.status_code, seen.reason) == (code, reason)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("200OK", ValueError),
        ("OK 200", ValueError),
        ("20 OK", ValueError),
        ("2000 OK", ValueError),
        ("099 Low", ValueError),
        ("2x0 OK", ValueError),
        ("", ValueError),
        ("200 OK\r\nX-Injected: 1", ValueError),
        ("200 OK\n", ValueError),
        ("200 O\x00K", ValueError),
        (b"200 OK", TypeError),
        (200, TypeError),
    ],
)
def test_bad_status_is_refused_in_start_response(status, error):
    r = Response([])
    with pytest.raises(error):
        r.start_response(status, [])
    assert not r.status  # a failed call does not count as the one start_response


@pytest.mark.parametrize("status", ["100 Continue", "101 Switching Protocols", "199 Odd"])
def test_interim_status_is_no_final_response(status):
    r = Response([])
    r.start_response(status, [])
    with pytest.raises(ValueError, match="interim"):
        r.head()


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ((("A", "b"),), TypeError),  # a tuple, not a list
        ([("A", "b", "c")], TypeError),
        ([["A", "b"]], TypeError),
        ([(b"A", "b")], TypeError),
        ([("A", b"b")], TypeError),
        ([("A", 1)], TypeError),
        ([("Content-Length", "abc")], ValueError),
        ([("Content-Length", "-1")], ValueError),
        ([("Content-Length", "\u0661")], ValueError),  # a digit, but not an ASCII one
        ([("X-Euro", "\u20ac")], UnicodeEncodeError),  # not latin-1
    ],
)
def test_bad_headers_are_refused_in_start_response(headers, error):
    r = Response([])
    with pytest.raises(error):
        r.start_response("200 OK", headers)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "line\r\nInjected: yes")],
        [("X-A", "a\nb")],
        [("X-A", "a\rb")],
        [("X-A", "nul\x00")],
        [("X-A", "bell\x07")],
        [("Bad Name", "v")],
        [("X:A", "v")],
        [("", "v")],
        [("Content-Length", "1"), ("Content-Length", "2")],
    ],
)
def test_head_refuses_what_would_corrupt_the_wire(headers):
    r = Response([])
    r.start_response("200 OK", headers)
    with pytest.raises(InvalidHeader):
        r.head()


def test_header_values_lose_surrounding_whitespace_and_keep_inner():
    seen = as_client_sees(head_of("200 OK", [("X-A", " a  b\t"), ("Content-Length", "0")]))
    assert (b"x-a", b"a  b") in list(seen.headers)


def test_repeated_identical_content_length_is_sent_once():
    head = head_of("200 OK", [("Content-Length", "3"), ("content-length", "3")])
    assert head.data.lower().count(b"content-length") == 1
    assert head.framing == LENGTH


def test_content_length_is_recorded():
    r = Response([])
    r.start_response("200 OK", [("content-length", " 42 "), ("X-A", "b")])
    assert r.content_length == 42
    r = Response([])
    r.start_response("200 OK", [("X-A", "b")])
    assert r.content_length is None


def test_server_headers_are_added_unless_the_app_set_them():
    seen = as_client_sees(head_of("200 OK", [("Content-Length", "0")], SERVER_HEADERS))
    names = [n for n, _ in seen.headers]
    assert names.count(b"server") == 1 and names.count(b"date") == 1

    mine = [("server", "mine"), ("DATE", "Fri, 02 Jan 1970 00:00:00 GMT"), ("Content-Length", "0")]
    seen = as_client_sees(head_of("200 OK", mine, SERVER_HEADERS))
    assert [v for n, v in seen.headers if n == b"server"] == [b"mine"]
    assert [v for n, v in seen.headers if n == b"date"] == [b"Fri, 02 Jan 1970 00:00:00 GMT"]


def test_head_before_start_response_is_an_error():
    with pytest.raises(RuntimeError, match="start_response"):
        Response([]).head()


# -- framing (RFC 9112 6.3) --------------------------------------------------------------------


def test_content_length_from_the_app_frames_the_body():
    head = head_of("200 OK", [("Content-Length", "5")])
    assert head.framing == LENGTH and not head.close
    assert b"transfer-encoding" not in head.data.lower()


def test_no_length_is_chunked_for_http11_and_until_close_for_http10():
    head = head_of("200 OK", [("Content-Type", "text/plain")], http11=True)
    assert head.framing == CHUNKED
    assert (b"transfer-encoding", b"chunked") in list(as_client_sees(head).headers)
    head = head_of("200 OK", [("Content-Type", "text/plain")], http11=False)
    assert head.framing == UNTIL_CLOSE
    assert b"transfer-encoding" not in head.data.lower()


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_bodiless_statuses_get_no_framing_headers(status):
    head = head_of(status, [("ETag", '"x"')])
    assert head.framing == NO_BODY
    assert b"transfer-encoding" not in head.data.lower()


def test_transfer_encoding_from_the_app_is_replaced_by_the_servers_own():
    r = Response([])
    r.start_response(
        "200 OK", [("Transfer-Encoding", "gzip, chunked"), ("Content-Length", "9")]
    )
    head = r.head()
    # The server frames the body itself (chunked wins over a length, RFC 9112 6.3) and applies
    # no coding it was told about: one Transfer-Encoding, chunked, and no Content-Length.
    assert head.framing == CHUNKED and r.content_length is None
    seen = as_client_sees(head)
    assert [v for n, v in seen.headers if n == b"transfer-encoding"] == [b"chunked"]
    assert b"content-length" not in dict(seen.headers)


@pytest.mark.parametrize(("value", "close"), [("close", True), ("Keep-Alive", False)])
def test_connection_from_the_app_is_read_not_repeated(value, close):
    head = head_of("200 OK", [("Connection", value), ("Content-Length", "0")])
    assert head.close is close
    assert b"connection" not in head.data.lower()  # the loop writes the one Connection header


@pytest.mark.parametrize(
    ("end", "connection"),
    [(END_KEEP_ALIVE, None), (END_KEEP_ALIVE_10, b"keep-alive"), (END_CLOSE, b"close")],
)
def test_each_ending_completes_a_valid_head(end, connection):
    seen = as_client_sees(head_of("200 OK", [("Content-Length", "0")]), end)
    assert dict(seen.headers).get(b"connection") == connection


def test_chunks_decode_to_the_body():
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    head = head_of("200 OK", [])
    parts = [b"a", b"", b"x" * 70000]
    wire = head.data + END_KEEP_ALIVE
    for part in parts:
        if part:
            wire += b"".join(encode_chunk(part))
    client.receive_data(wire + LAST_CHUNK)
    body = b""
    while True:
        event = client.next_event()
        if type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage:
            break
    assert body == b"".join(parts)


# -- the server's own error responses ----------------------------------------------------------


def test_error_head_closes_and_carries_reason_and_server_headers():
    head = error_head(413, b"too big\n", SERVER_HEADERS)
    assert head.close and head.framing == LENGTH
    seen = as_client_sees(head, END_CLOSE)
    assert seen.status_code == 413
    assert seen.reason == HTTPStatus(413).phrase.encode()  # the name varies by Python version
    headers = dict(seen.headers)
    assert headers[b"connection"] == b"close"
    assert headers[b"content-length"] == b"8"
    assert headers[b"server"] == b"wsgiloop"


# -- start_response and exc_info (PEP 3333) ----------------------------------------------------


def test_start_response_twice_without_exc_info_is_an_error():
    r = Response([])
    r.start_response("200 OK", [])
    with pytest.raises(RuntimeError, match="second time"):
        r.start_response("500 Oops", [])
    assert r.status_code == 200


def _exc_info() -> Any:
    try:
        raise KeyError("boom")
    except KeyError:
        return sys.exc_info()


def test_start_response_with_exc_info_before_headers_sent_replaces_the_response():
    r = Response([])
    r.start_response("200 OK", [("Content-Length", "5"), ("X-A", "1")])
    r.start_response("500 Internal Server Error", [("X-B", "2")], _exc_info())
    assert (r.status_code, r.reason) == (500, b"Internal Server Error")
    assert r.headers == [(b"X-B", b"2")]
    assert r.content_length is None


def test_start_response_with_exc_info_as_first_call_is_allowed():
    r = Response([])
    r.start_response("503 Service Unavailable", [], _exc_info())
    assert r.status_code == 503


def test_start_response_with_exc_info_after_headers_sent_reraises_it():
    r = Response([])
    r.start_response("200 OK", [])
    r.headers_sent = True
    info = _exc_info()
    with pytest.raises(KeyError, match="boom") as caught:
        r.start_response("500 Internal Server Error", [], info)
    assert caught.value is info[1]
    assert r.status_code == 200  # unchanged: too late


# -- the memo of heads -----------------------------------------------------------------------


def test_repeated_header_set_gives_the_same_head():
    extra = [(b"Server", b"wsgiloop"), (b"Date", b"Wed, 25 Nov 2026 11:00:00 GMT")]
    app = [("Content-Type", "text/plain"), ("Date", "mine")]
    first = head_of("200 OK", app, extra)
    second = head_of("200 OK", app, extra)
    assert second is first  # served from the memo
    headers = list(as_client_sees(second).headers)
    assert (b"date", b"mine") in headers  # the app's Date still wins
    assert [n for n, _ in headers].count(b"date") == 1


def test_memo_keys_on_status_version_and_server_headers():
    app = [("Content-Type", "text/plain")]
    one = head_of("200 OK", app, [(b"Date", b"Wed, 25 Nov 2026 11:00:00 GMT")])
    later = head_of("200 OK", app, [(b"Date", b"Wed, 25 Nov 2026 11:00:01 GMT")])
    assert b"11:00:01" in later.data and later is not one
    assert head_of("404 Not Found", app).data.startswith(b"HTTP/1.1 404 ")
    assert head_of("200 OK", app, http11=False).framing == UNTIL_CLOSE
    assert head_of("200 OK", app, http11=True).framing == CHUNKED


def test_invalid_headers_are_refused_every_time():
    for _ in range(2):
        with pytest.raises(InvalidHeader):
            head_of("200 OK", [("Bad Name", "x")])


def test_memo_is_bounded():
    for i in range(response_module._HEADS_MAX * 2):
        head_of("200 OK", [("X-N", str(i))])
    assert len(response_module._HEADS) <= response_module._HEADS_MAX


def test_a_header_the_server_adds_to_one_response_is_not_in_the_next_with_the_same_start() -> None:
    # start_response results are cached by what the app passed: each response still gets its
    # own list, so the Content-Length the server adds to a list body stays with that response.
    first = Response([])
    first.start_response("200 OK", [("Content-Type", "text/plain")])
    first.headers.append((b"Content-Length", b"5"))
    second = Response([])
    second.start_response("200 OK", [("Content-Type", "text/plain")])
    assert second.headers == [(b"Content-Type", b"text/plain")]
    assert second.content_length is None
    assert second.head().framing == CHUNKED


def test_a_cached_start_is_still_refused_when_its_headers_are_not_tuples() -> None:
    good = Response([])
    good.start_response("200 OK", [("Content-Type", "text/plain")])
    bad = Response([])
    with pytest.raises(TypeError, match="tuple"):
        bad.start_response("200 OK", [["Content-Type", "text/plain"]])  # type: ignore[list-item]
