from __future__ import annotations

from apps import hello
from conftest import read_response


def test_get_returns_app_body(serve):
    server = serve(hello)
    resp, body = server.request("GET", "/")
    assert resp.status == 200
    assert body == b"Hello, world!"
    assert resp.getheader("Server") == "wsgiloop"
    assert resp.getheader("Date")


def test_keep_alive_serves_many_requests_on_one_connection(serve):
    server = serve(hello)
    sock = server.connect()
    for _ in range(5):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"Hello, world!")
    sock.close()
