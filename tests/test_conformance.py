"""What the app sees (issue 14): request-target forms, Host and authority, fragments, singleton
fields, empty lines before a request-line, proxy headers, and lengths for apps that need one.

One table drives the socket tests, in the style of ``test_smuggling``: each ``Case`` is raw bytes
and the answer; a refused one gets its status and a close and never reaches the app; a valid one
is served twice on one connection (the same bytes pipelined behind it), and the environ the app
got holds the listed values. ``docs/hardening.md`` lists every case (a test checks it).

Then the class, generated: request-lines built from the RFC 9112 / RFC 3986 grammar, and
mutations of them, sent over a socket and also through the sans-IO path (h11, ``strict``,
``environ``): either the app is not called, or PATH_INFO starts with "/" (or is empty for
``OPTIONS *``), HTTP_HOST is in the Host grammar (checked here independently of ``strict``), and
no singleton field the app sees had a conflicting duplicate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import socket
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from conftest import ROOT, Running, read_response, recv_until_closed, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiloop import strict
from wsgiloop.environ import request_environ

SCALE = int(os.environ.get("WSGILOOP_FUZZ_EXAMPLES", "1"))


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    status: int  # 200: valid, served and kept alive
    rfc: str
    environ: dict[str, str] = field(default_factory=dict)  # what the app must see (200 only)


def _get(target: bytes, *fields: bytes, method: bytes = b"GET") -> bytes:
    lines = b"".join(f + b"\r\n" for f in fields)
    return b"%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, target, lines)


CASES: list[Case] = [
    # -- request-target forms (RFC 9112 3.2) -----------------------------------------------------
    Case("target_no_form", _get(b"foo"), 400, "9112 3.2, 3"),
    Case("target_asterisk_get", _get(b"*"), 400, "9112 3.2.4"),
    Case("target_authority_form_get", _get(b"a:1"), 400, "9112 3.2.3"),
    Case("target_ftp_scheme", _get(b"ftp://b/c"), 400, "9112 3.2.2"),
    Case("target_odd_scheme", _get(b"s://]ufd/:", method=b"PUT"), 400, "9112 3.2.2"),
    Case("target_scheme_no_slashes", _get(b"http:/x"), 400, "9112 3.2.2"),
    Case("target_fragment_only", _get(b"#a"), 400, "9112 3.2"),
    Case("target_asterisk_with_query", _get(b"*?x", method=b"OPTIONS"), 400, "9112 3.2.4"),
    Case("ok_options_asterisk", _get(b"*", method=b"OPTIONS"), 200, "9112 3.2.4",
         {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "", "QUERY_STRING": "", "RAW_URI": "*"}),
    # -- the authority of an absolute-form target (3.2.2; RFC 9110 4.2) --------------------------
    Case("authority_angle_brackets", _get(b"http://a<b>/x"), 400, "9112 3.2.2, 3.2"),
    Case("authority_backslash", _get(b"http://a\\b/x"), 400, "9112 3.2.2, 3.2"),
    Case("authority_quote", _get(b'http://a"b/x'), 400, "9112 3.2.2, 3.2"),
    Case("authority_empty_host", _get(b"http:///x"), 400, "9110 4.2.1"),
    Case("authority_empty", _get(b"http://"), 400, "9110 4.2.1"),
    Case("authority_userinfo", _get(b"http://u@evil/x"), 400, "9110 4.2.4"),
    Case("authority_empty_userinfo", _get(b"http://@a/x"), 400, "9110 4.2.4"),
    Case("authority_port_letters", _get(b"http://a:b/x"), 400, "9112 3.2.2; 3986 3.2.3"),
    Case("authority_bad_ipv6", _get(b"http://[1::2::3]/x"), 400, "3986 3.2.2"),
    Case("authority_bad_percent", _get(b"http://a%zz/x"), 400, "3986 3.2.2"),
    Case("ok_authority_https_upper", _get(b"HTTPS://Example.com:8443/p?q"), 200, "9112 3.2.2",
         {"HTTP_HOST": "Example.com:8443", "PATH_INFO": "/p", "QUERY_STRING": "q"}),
    Case("ok_authority_ipv6", _get(b"http://[::1]:8080"), 200, "9112 3.2.2",
         {"HTTP_HOST": "[::1]:8080", "PATH_INFO": "/", "QUERY_STRING": ""}),
    Case("ok_authority_query_only", _get(b"http://h?x=1"), 200, "9112 3.2.2",
         {"HTTP_HOST": "h", "PATH_INFO": "/", "QUERY_STRING": "x=1"}),
    # -- the Host field (3.2) ---------------------------------------------------------------------
    Case("host_port_letters", b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400, "9112 3.2"),
    Case("host_bad_percent", b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400, "9112 3.2"),
    Case("host_stray_bracket", b"GET / HTTP/1.1\r\nHost: a]\r\n\r\n", 400, "9112 3.2"),
    Case("host_bad_ipv6", b"GET / HTTP/1.1\r\nHost: [:::]\r\n\r\n", 400, "9112 3.2"),
    Case("ok_host_percent_encoded", b"GET / HTTP/1.1\r\nHost: a%41b:81\r\n\r\n", 200, "9112 3.2",
         {"HTTP_HOST": "a%41b:81"}),
    # -- fragments: dropped, RAW_URI keeps them (3.2.1) -------------------------------------------
    Case("ok_fragment_in_path", _get(b"/a#b"), 200, "9112 3.2.1",
         {"PATH_INFO": "/a", "QUERY_STRING": "", "RAW_URI": "/a#b"}),
    Case("ok_fragment_after_query", _get(b"/a?x=1#b?c"), 200, "9112 3.2.1",
         {"PATH_INFO": "/a", "QUERY_STRING": "x=1", "RAW_URI": "/a?x=1#b?c"}),
    Case("ok_fragment_encoded_hash_kept", _get(b"/a%23b#c"), 200, "9112 3.2.1",
         {"PATH_INFO": "/a#b", "QUERY_STRING": ""}),
    Case("ok_fragment_absolute_form", _get(b"http://h#f/x"), 200, "9112 3.2.1",
         {"HTTP_HOST": "h", "PATH_INFO": "/", "QUERY_STRING": ""}),
    # -- singleton fields (RFC 9110 5.3, 8.3, 11.6.2) ---------------------------------------------
    Case("content_type_conflicting",
         _get(b"/", b"Content-Type: text/plain", b"Content-Type: application/json"), 400,
         "9110 8.3, 5.3"),
    Case("content_type_conflicting_boundary",
         _get(b"/", b"Content-Type: multipart/form-data; boundary=a",
              b"Content-Type: multipart/form-data; boundary=b"), 400, "9110 8.3, 5.3"),
    Case("authorization_conflicting",
         _get(b"/", b"Authorization: Basic YTpi", b"Authorization: Basic Yzpk"), 400,
         "9110 11.6.2"),
    Case("proxy_authorization_conflicting",
         _get(b"/", b"Proxy-Authorization: Basic YTpi", b"Proxy-Authorization: Basic Yzpk"), 400,
         "9110 11.7.2"),
    Case("origin_conflicting", _get(b"/", b"Origin: https://a", b"Origin: https://b"), 400,
         "6454 7.3"),
    Case("range_conflicting", _get(b"/", b"Range: bytes=0-1", b"Range: bytes=5-6"), 400,
         "9110 14.2"),
    Case("ok_content_type_identical_repeat",
         _get(b"/", b"Content-Type: text/plain", b"content-type: text/plain"), 200, "9110 5.3",
         {"CONTENT_TYPE": "text/plain"}),
    Case("ok_list_field_joined", _get(b"/", b"Accept: a/b", b"Accept: c/d"), 200, "9110 5.3",
         {"HTTP_ACCEPT": "a/b,c/d"}),
    Case("ok_cookie_joined", _get(b"/", b"Cookie: a=1", b"Cookie: b=2"), 200, "6265 5.4",
         {"HTTP_COOKIE": "a=1; b=2"}),
    # -- empty lines before the request-line (2.2) -----------------------------------------------
    Case("ok_crlf_after_post_body",
         b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab\r\n", 200, "9112 2.2",
         {"PATH_INFO": "/p", "CONTENT_LENGTH": "2"}),
    Case("ok_crlf_after_chunked_body",
         b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
         b"\r\n", 200, "9112 2.2", {"PATH_INFO": "/c"}),
    # -- the rest of the environ ------------------------------------------------------------------
    Case("ok_remote_host_is_remote_addr", _get(b"/"), 200, "3875 4.1.9",
         {"REMOTE_HOST": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1"}),
]

BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), "duplicate case ids"
REFUSED = [c for c in CASES if c.status != 200]
VALID = [c for c in CASES if c.status == 200]


class Recorder:
    """Reads the body, records the environ (without the streams) and answers with the body."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        seen = {k: v for k, v in environ.items() if isinstance(v, str)}
        with self.lock:
            self.environs.append(seen)
        start_response("200 OK", [("Content-Type", "text/plain")])  # length: see the list rule
        return [body]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_refused_request_gets_its_status_a_close_and_no_app_call(serve, recorder, case):
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(case.raw)
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.count(b"HTTP/1.1 ") == 1, raw[:300]
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 %d " % case.status), head
    assert b"\r\nconnection: close" in head
    assert recorder.environs == []


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_request_is_served_kept_alive_and_the_app_sees_the_environ(
    serve, recorder, case, split
):
    server = serve(recorder)
    sock = server.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = case.raw + case.raw + b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n"
    if split == "whole":
        sock.sendall(raw)
    else:  # the server gets the bytes in whatever pieces TCP makes of them: each must work
        for i in range(len(raw)):
            sock.sendall(raw[i : i + 1])
    for _ in range(3):
        status, headers, _ = read_response(sock)
        assert status == 200
        assert "close" not in headers.get("connection", "")
    sock.close()
    first, second, last = recorder.environs
    for seen in (first, second):
        assert {key: seen.get(key) for key in case.environ} == case.environ
    assert last["PATH_INFO"] == "/last"


def test_the_pipelined_get_behind_a_crlf_after_a_post_body_is_answered(serve, recorder):
    # The bytes of issue 14: before, 200 then 400, and the GET was lost.
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert read_response(sock)[::2] == (200, b"ab")
    assert read_response(sock)[0] == 200
    sock.close()
    assert [e["PATH_INFO"] for e in recorder.environs] == ["/", "/next"]


def test_a_stream_of_crlfs_is_refused_not_skipped_forever(serve, recorder):
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(b"\r\n" * 1000)
    raw = recv_until_closed(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert recorder.environs == []


def test_hardening_doc_lists_every_case():
    doc = (ROOT / "docs" / "hardening.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, missing


# -- strict's pure functions, directly ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        (b"GET", b"/a?b#c", None),  # origin-form: the caller's fast path
        (b"OPTIONS", b"*", None),
        (b"GET", b"http://h", None),
        (b"GET", b"hTTpS://h:1/p?q#f", None),
        (b"GET", b"http://[v7.a:b]/", None),
        (b"GET", b"*", "asterisk-form target with a method other than OPTIONS"),
        (b"GET", b"h:1", "request-target in no request-target form"),
        (b"GET", b"ws://h/", "request-target in no request-target form"),
        (b"GET", b"http://u:p@h/", "userinfo in the request-target"),
        (b"GET", b"http://h@/", "userinfo in the request-target"),
        (b"GET", b"http://:80/", "empty host in the request-target"),
        (b"GET", b"http://h:8x/", "invalid authority in the request-target"),
        (b"GET", b"http://[fe80::1%25eth0]/", "invalid authority in the request-target"),
    ],
)
def test_check_target(method, target, reason):
    rejection = strict.check_target(method, target)
    assert (rejection.reason if rejection else None) == reason
    assert rejection is None or rejection.status == 400


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"", True), (b"h", True), (b"h:", True), (b"h:80", True), (b":80", True),
        (b"1.2.3.4:5", True), (b"[::1]", True), (b"[::ffff:1.2.3.4]:443", True),
        (b"a%41", True), (b"a_b~c!$&'()*+,;=", True),
        (b"a:b", False), (b"a:1:2", False), (b"a%4", False), (b"a%zz", False), (b"[::1", False),
        (b"::1", False), (b"[:::]", False), (b"[g::1]", False), (b"a b", False), (b"a/b", False),
        (b"u@h", False), (b"h\\x", False), (b"caf\xc3\xa9", False), (b"a]", False),
    ],
)
def test_host_grammar_and_the_independent_checker_agree(value, valid):
    assert (strict.valid_host(value) is not None) == valid
    assert (strict.check_fields(b"1.1", False, False, value) is None) == valid
    assert host_in_grammar(value.decode("latin-1")) == valid


# -- skip_empty_lines, sans-IO --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "given_to_h11"),
    [
        ([b"\r\nGET"], b"GET"),
        ([b"\r", b"\nGET"], b"GET"),
        ([b"\r", b"\n", b"\r", b"\n", b"GET"], b"GET"),
        ([b"\r", b"GET"], b"\rGET"),  # a bare CR goes back to h11, which refuses it
        ([b"\nGET"], b"\nGET"),  # a bare LF is never an empty line here
        ([b"\r\n" * 4 + b"GET"], b"GET"),
        ([b"\r\n" * 5 + b"GET"], b"\r\nGET"),  # past the bound, h11 sees (and refuses) the rest
        ([b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\nGET"], b"\r\nGET"),
        ([b"GET"], b"GET"),
    ],
)
def test_skip_empty_lines_is_bounded_and_handles_split_reads(pieces, given_to_h11):
    skipped = 0
    out = b""
    for piece in pieces:
        data, skipped = strict.skip_empty_lines(piece, skipped)
        out += data
    assert out == given_to_h11
    assert skipped <= strict.MAX_EMPTY_LINE_BYTES


# -- the one-element list, the access log, REMOTE_HOST ---------------------------------------------


def _list_app(body: list[bytes], status: str = "200 OK", headers: Any = ()) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, list(headers))
        return body

    return app


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_list_body_without_a_length_gets_one(serve, version):
    server = serve(_list_app([b"hello"]))
    sock = server.connect()
    keep = b"Connection: keep-alive\r\n" if version == b"1.0" else b""
    request = b"GET / HTTP/%s\r\nHost: t\r\n%s\r\n" % (version, keep)
    sock.sendall(request)
    status, headers, body = read_response(sock)
    assert (status, headers.get("content-length"), body) == (200, "5", b"hello")
    assert "transfer-encoding" not in headers
    sock.sendall(request)  # the connection stayed open, HTTP/1.0 included
    assert read_response(sock)[::2] == (200, b"hello")
    sock.close()


def test_a_list_length_is_not_added_where_it_would_be_wrong(serve):
    chunked = _list_app([b"x"], headers=[("Transfer-Encoding", "chunked")])
    no_content = _list_app([], status="204 No Content")
    for app, request, expected in [
        (chunked, b"GET", None),  # the app's own Transfer-Encoding
        (no_content, b"GET", None),  # RFC 9110 8.6: no Content-Length in a 204
        (_list_app([]), b"HEAD", None),  # a HEAD whose app left out the body GET would have
        (_list_app([b"abc"]), b"HEAD", "3"),  # the length GET would send
    ]:
        server = serve(app)
        sock = server.connect()
        sock.sendall(b"%s / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % request)
        head = recv_until_closed(sock).partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        sock.close()
        length = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:]
                  if ln.startswith("content-length:")]
        assert length == ([] if expected is None else [expected]), (request, head)


def test_access_log_counts_the_bytes_of_a_download_cut_short(serve, tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(20 << 20))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    server = serve(app, access_log=True, write_timeout=5)
    # The access logger does not propagate (see logs): listen on it directly, not through root.
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.INFO)
    collect.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("wsgiloop.access")
    level = access.level
    access.addHandler(collect)
    access.setLevel(logging.INFO)
    try:
        sock = server.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 3 << 20:
            chunk = sock.recv(1 << 16)
            assert chunk
            received += len(chunk)
        sock.close()  # the client goes at about 3 MiB of 20
        deadline = threading.Event()
        for _ in range(400):
            if records:
                break
            deadline.wait(0.025)
    finally:
        access.removeHandler(collect)
        access.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1, lines
    match = re.search(r'"GET /big HTTP/1.1" 200 (\d+) ', lines[0])  # the combined format's %b
    assert match is not None, lines[0]
    sent = int(match.group(1))
    # At least what this client read (minus the head), at most the file: what went out.
    assert received - 4096 <= sent < 20 << 20, (received, sent)


# -- --spool-chunked-body --------------------------------------------------------------------------


def length_reader(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads CONTENT_LENGTH bytes and no more, as Django and other CGI-minded frameworks do."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (length, hashlib.sha256(body).hexdigest().encode())]


def _chunked_post(body: bytes, piece: int = 1000) -> bytes:
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
        for i in range(0, len(body), piece)
    )
    head = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("size", [0, 10, 100_000])
def test_spooled_chunked_body_reaches_an_app_that_reads_content_length(serve, size):
    body = os.urandom(size)
    # A small --body-buffer: the 100 kB body goes to a temporary file, and must come back whole.
    server = serve(length_reader, spool_chunked_body=True, body_buffer=4096)
    sock = server.connect()
    sock.sendall(_chunked_post(body))
    status, _, answer = read_response(sock)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # and the connection goes on
    assert read_response(sock)[::2] == (200, b"0 " + hashlib.sha256(b"").hexdigest().encode())
    sock.close()
    assert (status, answer) == (200, b"%d %s" % (size, hashlib.sha256(body).hexdigest().encode()))


def test_without_spooling_such_an_app_sees_an_empty_chunked_body(serve):
    server = serve(length_reader)
    sock = server.connect()
    sock.sendall(_chunked_post(b"hello"))
    assert read_response(sock)[::2] == (200, b"0 " + hashlib.sha256(b"").hexdigest().encode())
    sock.close()


def test_a_spooled_body_over_max_body_size_is_413_and_the_app_is_not_called(serve):
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        return length_reader(environ, start_response)

    server = serve(app, spool_chunked_body=True, max_body_size=5000)
    sock = server.connect()
    sock.sendall(_chunked_post(os.urandom(6000)))
    status = read_response(sock)[0]
    sock.close()
    assert status == 413
    assert calls == []


def test_spool_option_is_on_the_command_line():
    from wsgiloop.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--spool-chunked-body", "m:app"])
    assert config_from_args(args, environ={}).spool_chunked_body is True
    assert config_from_args(build_parser().parse_args(["m:app"]), environ={}).spool_chunked_body \
        is False


# -- proxy headers over a socket ------------------------------------------------------------------


def test_proxy_headers_from_a_trusted_peer_x_forwarded_port_keeps_an_explicit_host_port(
    serve, recorder
):
    server = serve(recorder, proxy_headers=True, forwarded_allow_ips=["127.0.0.1"])
    sock = server.connect()
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: www.example.com:8080\r\nX-Forwarded-Port: 5000\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    assert read_response(sock)[0] == 200
    sock.close()
    (env,) = recorder.environs
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "www.example.com:8080", "www.example.com", "8080"
    )
    assert (env["REMOTE_ADDR"], env["REMOTE_HOST"], env["wsgi.url_scheme"]) == (
        "203.0.113.9", "203.0.113.9", "https"
    )
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"  # applied, and kept for the logs


def test_proxy_headers_from_an_untrusted_peer_are_removed(serve, recorder):
    server = serve(recorder, proxy_headers=True, forwarded_allow_ips=["192.0.2.1"])
    sock = server.connect()
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: evil\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nForwarded: for=1.2.3.4\r\n\r\n"
    )
    assert read_response(sock)[0] == 200
    sock.close()
    (env,) = recorder.environs
    assert not [k for k in env if "FORWARDED" in k]
    assert (env["REMOTE_ADDR"], env["HTTP_HOST"], env["wsgi.url_scheme"]) == (
        "127.0.0.1", "t", "http"
    )


def test_without_proxy_headers_nothing_is_interpreted_or_removed(serve, recorder):
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()
    (env,) = recorder.environs
    assert (env["REMOTE_ADDR"], env["HTTP_X_FORWARDED_FOR"]) == ("127.0.0.1", "1.2.3.4")


# -- the class, generated -------------------------------------------------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
PCHAR = UNRESERVED + SUB_DELIMS + ":@"


def host_in_grammar(value: str) -> bool:
    """``uri-host [":" port]`` of RFC 3986 3.2.2-3.2.3, written out here without ``strict``."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        literal, rest = value[1:end], value[end + 1 :]
        if literal[:1] in ("v", "V"):
            version, dot, tail = literal[1:].partition(".")
            ok = bool(version) and all(c in string.hexdigits for c in version) and bool(dot) \
                and bool(tail) and all(c in UNRESERVED + SUB_DELIMS + ":" for c in tail)
        else:
            try:
                ipaddress.IPv6Address(literal)
                ok = True
            except ValueError:
                ok = False
        if not ok:
            return False
    else:
        colon = value.find(":")
        name, rest = (value, "") if colon < 0 else (value[:colon], value[colon:])
        i = 0
        while i < len(name):
            if name[i] == "%":
                if not all(c in string.hexdigits for c in name[i + 1 : i + 3]) or i + 3 > len(name):
                    return False
                i += 3
            elif name[i] in UNRESERVED + SUB_DELIMS:
                i += 1
            else:
                return False
    return rest == "" or (rest[0] == ":" and all(c in string.digits for c in rest[1:]))


SINGLETONS = {
    "content-type": "CONTENT_TYPE",
    "authorization": "HTTP_AUTHORIZATION",
    "proxy-authorization": "HTTP_PROXY_AUTHORIZATION",
    "origin": "HTTP_ORIGIN",
    "range": "HTTP_RANGE",
}


@st.composite
def reg_names(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(UNRESERVED + SUB_DELIMS),
                                    st.builds(lambda: "%41")), max_size=12))
    return "".join(parts)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    name = draw(st.one_of(
        reg_names(),
        st.builds(lambda a, b: f"{a}.{b}.0.1", st.integers(0, 255), st.integers(0, 255)),
        st.sampled_from(["[::1]", "[2001:db8::7]", "[v1.x:y]", "[::ffff:1.2.3.4]"]),
    ))
    port = draw(st.one_of(st.none(), st.integers(0, 99999).map(str), st.just("")))
    return name if port is None else f"{name}:{port}"


@st.composite
def segments(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(st.one_of(st.sampled_from(PCHAR), st.just("%2F")), max_size=8)))


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """(method, request-target) in one of the four forms of RFC 9112 3.2, with the method that
    form is for or another one."""
    path = "/" + "/".join(draw(st.lists(segments(), max_size=4)))
    query = draw(st.one_of(st.just(""), st.builds(lambda s: "?" + s, segments())))
    fragment = draw(st.one_of(st.just(""), st.builds(lambda s: "#" + s, segments())))
    form = draw(st.sampled_from(["origin", "absolute", "asterisk", "authority"]))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "DELETE", "PATCH"]))
    if form == "origin":
        return method, path + query + fragment
    if form == "asterisk":
        return draw(st.sampled_from(["OPTIONS", method])), "*"
    userinfo = draw(st.one_of(st.just(""), st.just("u@"), st.just("u:p@")))
    authority = userinfo + draw(hosts())
    if form == "authority":
        return method, authority
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "s", "http:", ""]))
    rest = draw(st.sampled_from([path, "", path + query])) + fragment
    return method, f"{scheme}://{authority}{rest}"


INTERESTING = "#@<>\"\\%[]:*?/ .;,=&'~{}|^`"


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few characters inserted, replaced or deleted (the mutations)."""
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        char = draw(st.sampled_from(INTERESTING + "aZ09"))
        if op == "insert":
            text = text[:pos] + char + text[pos:]
        elif op == "replace" and pos < len(text):
            text = text[:pos] + char + text[pos + 1 :]
        elif pos < len(text):
            text = text[:pos] + text[pos + 1 :]
    return text


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]]]:
    """A request head (bytes) and its fields; the request-line and Host from the grammar, often
    mutated, and sometimes a singleton field twice (with the same or another value)."""
    method, target = draw(targets())
    if draw(st.booleans()):
        target = draw(mutated(target))
    host = draw(hosts())
    if draw(st.booleans()):
        host = draw(mutated(host))
    fields = [("Host", host)]
    for name in draw(st.lists(st.sampled_from(sorted(SINGLETONS)), max_size=2)):
        first = draw(st.sampled_from(["a/b", "c/d"]))
        fields.append((name, first))
        if draw(st.booleans()):
            fields.append((name.upper(), draw(st.sampled_from([first, "e/f"]))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    return (head + "\r\n").encode("latin-1"), fields


def check_invariants(seen: dict[str, Any] | None, fields: list[tuple[str, str]]) -> None:
    """The class of issue 14: what an app may be handed, if it is called at all."""
    if seen is None:
        return  # refused: fine, whatever the reason
    path = seen["PATH_INFO"]
    if seen["REQUEST_METHOD"] == "OPTIONS" and seen["RAW_URI"] == "*":
        assert path == ""
    else:
        assert path.startswith("/"), seen["RAW_URI"]
    assert "#" not in seen["QUERY_STRING"]
    assert host_in_grammar(seen["HTTP_HOST"]), seen["HTTP_HOST"]
    values: dict[str, set[str]] = {}
    for name, value in fields:
        if name.lower() in SINGLETONS:
            values.setdefault(SINGLETONS[name.lower()], set()).add(value)
    for key, sent in values.items():
        assert len(sent) == 1, f"{key}: the app was called with conflicting values {sent}"
        assert seen[key] == sent.pop()


def sansio_environ(raw: bytes) -> dict[str, Any] | None:
    """h11, then ``strict`` and ``environ`` as the protocol calls them: the environ, or None."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request)
    if strict.check_head(raw, len(event.headers)) is not None:
        return None
    host = next((v for n, v in event.headers if n == b"host"), None)
    if strict.check_fields(event.http_version, False, False, host) is not None:
        return None
    if event.method == b"CONNECT":
        return None
    base = {"REMOTE_ADDR": "127.0.0.1", "SCRIPT_NAME": ""}
    try:
        return request_environ(base, event, None, "")
    except strict.Refused:
        return None


@settings(max_examples=1500 * SCALE, deadline=None, database=None)
@given(requests())
def test_generated_request_lines_sansio(request):
    raw, fields = request
    check_invariants(sansio_environ(raw), fields)


@pytest.fixture(scope="module")
def one_server() -> Iterator[tuple[Running, Recorder]]:
    recorder = Recorder()
    running = start_server(recorder, threads=2)
    yield running, recorder
    running.stop()
    assert not running.errors


@settings(max_examples=150 * SCALE, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(requests())
def test_generated_request_lines_over_a_socket(one_server, request):
    server, recorder = one_server
    raw, fields = request
    with recorder.lock:
        recorder.environs.clear()
    sock = server.connect()
    try:
        sock.sendall(raw[:-2] + b"Connection: close\r\n\r\n")
        answer = recv_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    status = int(answer.split(b" ", 2)[1])
    with recorder.lock:
        environs = list(recorder.environs)
    if status == 200:
        (seen,) = environs
        check_invariants(seen, fields)
    else:
        assert 400 <= status < 600 and environs == [], (status, raw)
    # The sans-IO path decides the same: served exactly when it builds an environ.
    assert (sansio_environ(raw) is not None) == (status == 200), raw
