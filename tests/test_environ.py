"""The PEP 3333 environ: sans-IO units, then what an app sees over a socket.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from typing import Any

import h11
import pytest
from conftest import read_response

from wsgiloop.environ import (
    SERVER_SOFTWARE,
    connection_environ,
    decode_path,
    request_environ,
    split_target,
)
from wsgiloop.filewrapper import FileWrapper

# -- split_target / decode_path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", (b"/", b"")),
        (b"/a/b", (b"/a/b", b"")),
        (b"/a?x=1&y=2", (b"/a", b"x=1&y=2")),
        (b"/a?", (b"/a", b"")),
        (b"/a?x=?y", (b"/a", b"x=?y")),  # only the first "?" splits
        (b"/a%3Fb?c", (b"/a%3Fb", b"c")),  # an encoded "?" stays in the path
        (b"http://example.com/p/q?x=1", (b"/p/q", b"x=1")),
        (b"HTTPS://Example.com:8443/p", (b"/p", b"")),
        (b"http://example.com", (b"/", b"")),
        (b"http://example.com?x=1", (b"/", b"x=1")),
        (b"http://user@example.com:80/p", (b"/p", b"")),
        (b"*", (b"*", b"")),
    ],
)
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/plain", "/plain"),
        (b"/caf%C3%A9", "/caf\xc3\xa9"),  # UTF-8 bytes, one str char per byte (PEP 3333)
        (b"/caf%c3%a9", "/caf\xc3\xa9"),
        (b"/caf\xc3\xa9", "/caf\xc3\xa9"),  # raw non-ASCII bytes: same native string
        (b"/a%20b", "/a b"),
        (b"/a+b", "/a+b"),  # "+" means space only in a query
        (b"/a%2Fb", "/a/b"),  # decoded, as every WSGI server does (RAW_URI keeps it)
        (b"/100%", "/100%"),  # a stray "%" is kept
        (b"/%zz", "/%zz"),
        (b"/%FF", "/\xff"),
    ],
)
def test_decode_path_percent_decodes_to_latin1(raw, expected):
    assert decode_path(raw) == expected


# -- request_environ ----------------------------------------------------------------------------


def base(**overrides: Any) -> dict[str, Any]:
    env = connection_environ(
        server=("127.0.0.1", 8000),
        peer=("10.1.2.3", 54321),
        url_scheme="http",
        script_name="",
        multiprocess=False,
    )
    env.update(overrides)
    return env


def make(
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    version: bytes = b"1.1",
    script_name: str = "",
) -> dict[str, Any]:
    request = h11.Request(
        method=method,
        target=target,
        headers=headers if headers is not None else [(b"Host", b"example.com")],
        http_version=version,
    )
    stream = io.BytesIO(b"")
    return request_environ(base(SCRIPT_NAME=script_name), request, stream, script_name)


def test_request_environ_core_keys():
    env = make(b"/caf%C3%A9?q=%20x+y", method=b"PATCH")
    assert env["REQUEST_METHOD"] == "PATCH"
    assert env["PATH_INFO"] == "/caf\xc3\xa9"
    assert env["QUERY_STRING"] == "q=%20x+y"  # raw
    assert env["RAW_URI"] == "/caf%C3%A9?q=%20x+y"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_HOST"] == "example.com"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.1.2.3", "54321")
    assert env["SERVER_SOFTWARE"] == SERVER_SOFTWARE
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    for key, value in env.items():
        if not key.startswith("wsgi."):
            assert type(value) is str, key  # PEP 3333: native strings only


def test_request_environ_http10():
    env = make(b"/", headers=[], version=b"1.0")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "HTTP_HOST" not in env


def test_request_environ_query_is_not_decoded():
    env = make(b"/?name=caf%C3%A9&a+b=%2B")
    assert env["QUERY_STRING"] == "name=caf%C3%A9&a+b=%2B"


def test_request_environ_content_headers_without_http_prefix():
    env = make(
        b"/",
        [
            (b"Host", b"h"),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"12"),
        ],
        method=b"POST",
    )
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_request_environ_repeated_headers_are_joined_with_commas():
    env = make(
        b"/",
        [(b"Host", b"h"), (b"X-Multi", b"a"), (b"Accept", b"text/html"), (b"X-Multi", b"b, c")],
    )
    assert env["HTTP_X_MULTI"] == "a,b, c"
    assert env["HTTP_ACCEPT"] == "text/html"


def test_request_environ_repeated_cookies_are_joined_with_semicolons():
    env = make(b"/", [(b"Host", b"h"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")])
    assert env["HTTP_COOKIE"] == "a=1; b=2"


def test_request_environ_drops_headers_with_underscores():
    env = make(
        b"/",
        [(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4"), (b"X_Forwarded_For", b"6.6.6.6")],
    )
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    env = make(b"/", [(b"Host", b"h"), (b"X_Forwarded_For", b"6.6.6.6")])
    assert "HTTP_X_FORWARDED_FOR" not in env


def test_request_environ_hides_transfer_encoding():
    env = make(b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], method=b"POST")
    assert "HTTP_TRANSFER_ENCODING" not in env
    assert "CONTENT_LENGTH" not in env


def test_request_environ_header_values_are_latin1():
    env = make(b"/", [(b"Host", b"h"), (b"X-Name", b"caf\xc3\xa9")])
    assert env["HTTP_X_NAME"] == "caf\xc3\xa9"


def test_request_environ_many_distinct_header_names():
    """Past the name cache's size, names are still mapped (and cached ones stay right)."""
    headers = [(b"Host", b"h")] + [(b"X-Unique-%d" % i, b"%d" % i) for i in range(700)]
    env = make(b"/", headers)
    assert env["HTTP_X_UNIQUE_0"] == "0"
    assert env["HTTP_X_UNIQUE_699"] == "699"
    assert env["HTTP_HOST"] == "h"


@pytest.mark.parametrize(
    ("target", "script", "path"),
    [
        (b"/app/users", "/app", "/users"),
        (b"/app", "/app", ""),
        (b"/app/", "/app", "/"),
        (b"/users", "/app", "/users"),  # a proxy already stripped the prefix
        (b"/apps/x", "/app", "/apps/x"),  # not a path-segment prefix: left alone
        (b"/app%2Fx", "/app", "/x"),
    ],
)
def test_request_environ_root_path_splits_script_name(target, script, path):
    env = make(target, script_name=script)
    assert env["SCRIPT_NAME"] == script
    assert env["PATH_INFO"] == path


def test_request_environ_absolute_form_uses_the_target_authority():
    env = make(b"http://example.org:8080/p?x=1", [(b"Host", b"ignored.example")])
    assert env["PATH_INFO"] == "/p"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_HOST"] == "example.org:8080"  # RFC 9112 3.2.2: Host is ignored
    assert env["RAW_URI"] == "http://example.org:8080/p?x=1"


def test_request_environ_asterisk_form():
    env = make(b"*", method=b"OPTIONS")
    assert (env["REQUEST_METHOD"], env["PATH_INFO"], env["QUERY_STRING"]) == ("OPTIONS", "", "")
    assert env["RAW_URI"] == "*"


def test_request_environ_does_not_share_state_between_requests():
    shared = base()
    before = dict(shared)
    request = h11.Request(method=b"GET", target=b"/a", headers=[(b"Host", b"h"), (b"X-A", b"1")])
    first = request_environ(shared, request, None, "")
    request = h11.Request(method=b"GET", target=b"/b", headers=[(b"Host", b"h")])
    second = request_environ(shared, request, None, "")
    assert "HTTP_X_A" in first and "HTTP_X_A" not in second
    assert (first["PATH_INFO"], second["PATH_INFO"]) == ("/a", "/b")
    assert shared == before


def test_connection_environ_wsgi_keys():
    env = connection_environ(
        server=("::1", 443), peer=("::1", 1), url_scheme="https", script_name="/s",
        multiprocess=True,
    )
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "https"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.errors"] is sys.stderr
    assert env["wsgi.file_wrapper"] is FileWrapper
    assert env["SCRIPT_NAME"] == "/s"


@pytest.mark.parametrize(("scheme", "port"), [("http", "80"), ("https", "443")])
def test_connection_environ_on_a_unix_socket(scheme, port):
    env = connection_environ(
        server=None, peer=None, url_scheme=scheme, script_name="", multiprocess=False
    )
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", port)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("", "")


# -- over a socket: what the app sees -----------------------------------------------------------


class Recorder:
    """An app that keeps each environ (and what its file objects could do) for the test."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        seen = dict(environ)
        seen["body"] = body
        errors = environ["wsgi.errors"]
        seen["errors_writable"] = callable(getattr(errors, "write", None)) and callable(
            getattr(errors, "flush", None)
        )
        errors.write("")  # must not raise
        errors.flush()
        with self.lock:
            self.environs.append(seen)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    @property
    def last(self) -> dict[str, Any]:
        assert self.environs, "the app was not called"
        return self.environs[-1]


def exchange(server: Any, data: bytes) -> tuple[int, Any]:
    sock = server.connect()
    try:
        sock.sendall(data)
        status, _, _ = read_response(sock)
        return status, sock.getsockname()
    finally:
        sock.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PURGE"])
def test_app_sees_request_method(serve, recorder, method):
    server = serve(recorder)
    request = f"{method} / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
    assert exchange(server, request)[0] == 200
    assert recorder.last["REQUEST_METHOD"] == method


def test_app_sees_script_name_and_path_info_with_root_path(serve, recorder):
    server = serve(recorder, root_path="/api")
    exchange(server, b"GET /api/users/7?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    env = recorder.last
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/users/7")
    assert env["QUERY_STRING"] == "x=1"
    exchange(server, b"GET /api HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (recorder.last["SCRIPT_NAME"], recorder.last["PATH_INFO"]) == ("/api", "")


def test_app_sees_empty_script_name_without_root_path(serve, recorder):
    server = serve(recorder)
    exchange(server, b"GET /api/users HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (recorder.last["SCRIPT_NAME"], recorder.last["PATH_INFO"]) == ("", "/api/users")


def test_app_sees_percent_decoded_path_as_latin1(serve, recorder):
    server = serve(recorder)
    exchange(server, b"GET /caf%C3%A9/a%20b HTTP/1.1\r\nHost: t\r\n\r\n")
    env = recorder.last
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a b"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a b"
    assert env["RAW_URI"] == "/caf%C3%A9/a%20b"


def test_app_sees_raw_query_string(serve, recorder):
    server = serve(recorder)
    exchange(server, b"GET /p?a=%20b&c=d+e&f=%C3%A9&&g HTTP/1.1\r\nHost: t\r\n\r\n")
    assert recorder.last["QUERY_STRING"] == "a=%20b&c=d+e&f=%C3%A9&&g"


def test_app_sees_empty_query_string_when_there_is_none(serve, recorder):
    server = serve(recorder)
    exchange(server, b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n")
    assert recorder.last["QUERY_STRING"] == ""


def test_app_sees_content_type_and_length(serve, recorder):
    server = serve(recorder)
    exchange(
        server,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 7\r\n\r\n{\"a\":1}",
    )
    env = recorder.last
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"], env["body"]) == (
        "application/json",
        "7",
        b'{"a":1}',
    )


def test_app_sees_no_content_length_for_a_chunked_body(serve, recorder):
    server = serve(recorder)
    exchange(
        server,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    env = recorder.last
    assert env.get("CONTENT_LENGTH", "") == ""
    assert "HTTP_TRANSFER_ENCODING" not in env
    assert env["body"] == b"abc"
    assert env["wsgi.input_terminated"] is True


def test_app_sees_server_and_remote_addresses(serve, recorder):
    server = serve(recorder)
    _, client = exchange(server, b"GET / HTTP/1.1\r\nHost: whatever\r\n\r\n")
    env = recorder.last
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(server.port))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(client[1]))
    assert env["HTTP_HOST"] == "whatever"


def test_a_wildcard_bind_gives_each_connection_the_address_its_client_reached(serve, recorder):
    # One listener on every address: SERVER_NAME is the local address of each connection (the
    # whole of 127/8 is loopback on Linux), not one fixed for the listener, as it is for a
    # listener bound to one address (asked once when it starts, not once per connection).
    server = serve(recorder, bind=["0.0.0.0:0"])
    seen = []
    for local in ("127.0.0.1", "127.0.0.2"):
        with socket.create_connection((local, server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        seen.append((recorder.last["SERVER_NAME"], recorder.last["SERVER_PORT"]))
    assert seen == [("127.0.0.1", str(server.port)), ("127.0.0.2", str(server.port))]


def test_each_connection_sees_its_own_remote_port_though_the_base_environ_is_shared(
    serve, recorder
):
    server = serve(recorder)
    ports = []
    for _ in range(3):
        _, client = exchange(server, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert recorder.last["REMOTE_PORT"] == str(client[1])
        ports.append(client[1])
    assert len(set(ports)) == 3
    state = server.server.state  # type: ignore[union-attr]
    assert state.base_environ(("127.0.0.1", server.port))["REMOTE_PORT"] == ""  # never written


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_app_sees_server_protocol(serve, recorder, version):
    server = serve(recorder)
    exchange(server, f"GET / HTTP/{version}\r\nHost: t\r\n\r\n".encode())
    assert recorder.last["SERVER_PROTOCOL"] == f"HTTP/{version}"


def test_app_sees_repeated_headers_joined(serve, recorder):
    server = serve(recorder)
    exchange(
        server,
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Multi: one\r\nAccept: */*\r\nX-Multi: two\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n\r\n",
    )
    env = recorder.last
    assert env["HTTP_X_MULTI"] == "one,two"
    assert env["HTTP_COOKIE"] == "a=1; b=2"


def test_app_does_not_see_headers_with_underscores(serve, recorder):
    server = serve(recorder)
    exchange(
        server,
        b"GET / HTTP/1.1\r\nHost: t\r\nX_Auth_User: admin\r\nX-Auth-User: alice\r\n"
        b"Only_Underscore: x\r\n\r\n",
    )
    env = recorder.last
    assert env["HTTP_X_AUTH_USER"] == "alice"
    assert "HTTP_ONLY_UNDERSCORE" not in env


def test_app_sees_wsgi_keys(serve, recorder):
    server = serve(recorder)
    exchange(server, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    env = recorder.last
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["errors_writable"] is True
    assert callable(env["wsgi.file_wrapper"])
    stream = env["wsgi.input"]
    for name in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(stream, name)), name
    for key, value in env.items():
        if not key.startswith("wsgi.") and key not in ("body", "errors_writable"):
            assert type(value) is str, key


def test_app_sees_https_url_scheme_when_configured(serve, recorder):
    server = serve(recorder, url_scheme="https")
    exchange(server, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert recorder.last["wsgi.url_scheme"] == "https"


def test_app_sees_absolute_form_target_as_path_and_host(serve, recorder):
    server = serve(recorder)
    exchange(
        server,
        b"GET http://example.com:8080/a/b%20c?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    env = recorder.last
    assert env["PATH_INFO"] == "/a/b c"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["RAW_URI"] == "http://example.com:8080/a/b%20c?x=1"


def test_each_request_on_a_connection_gets_a_fresh_environ(serve, recorder):
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\nX-Only-First: 1\r\n\r\n")
    read_response(sock)
    sock.sendall(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n")
    read_response(sock)
    sock.close()
    first, second = recorder.environs
    assert (first["PATH_INFO"], second["PATH_INFO"]) == ("/one", "/two")
    assert "HTTP_X_ONLY_FIRST" in first and "HTTP_X_ONLY_FIRST" not in second
    assert first is not second
