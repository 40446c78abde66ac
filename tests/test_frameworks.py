"""Real frameworks end to end over a socket: a small Flask app and a minimal Django project.

Django is configured here, in-module (``settings.configure``), with this module as its URLconf;
Django's settings are process-wide, so no other test module may configure Django differently.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import django
import pytest
from conftest import Running, read_response
from django.conf import settings
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from flask import Flask, Response, jsonify, request, stream_with_context


def get_response(
    conn: http.client.HTTPConnection,
    method: str,
    url: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, url, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


# -- Flask -------------------------------------------------------------------------------------


def make_flask_app(closed: list[str]) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "Hello from Flask"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return jsonify(id=item_id, q=request.args.get("q"), agent=request.headers.get("X-Agent"))

    @app.post("/items")
    def create_item() -> Any:
        return jsonify(created=request.get_json()), 201

    @app.post("/form")
    def form() -> str:
        upload = request.files.get("upload")
        extra = f" +{upload.filename}:{len(upload.read())}" if upload else ""
        return f"{request.form['name']} is {request.form['age']}{extra}"

    @app.get("/stream")
    def stream() -> Response:
        @stream_with_context
        def generate() -> Iterator[str]:
            # The request context is still there while the server iterates the body.
            count = int(request.args["n"])
            for i in range(count):
                yield f"line {i} of {count} for {request.path}\n"

        return Response(generate(), mimetype="text/plain")

    @app.after_request
    def record_close(response: Response) -> Response:
        # Werkzeug runs these when the server calls close() on the response iterable.
        request_path = request.path
        response.call_on_close(lambda: closed.append(request_path))
        return response

    return app


@pytest.fixture
def flask_server(serve: Any) -> tuple[Running, list[str]]:
    closed: list[str] = []
    return serve(make_flask_app(closed)), closed


def test_flask_routes_json_and_keep_alive(flask_server):
    server, _ = flask_server
    conn = server.http()
    resp, body = get_response(conn, "GET", "/")
    assert (resp.status, body) == (200, b"Hello from Flask")
    assert resp.getheader("Content-Type").startswith("text/html")

    resp, body = get_response(conn, "GET", "/items/42?q=caf%C3%A9", headers={"X-Agent": "t"})
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"id": 42, "q": "café", "agent": "t"}

    payload = {"name": "widget", "tags": ["a", "b"], "price": 9.5}
    resp, body = get_response(
        conn, "POST", "/items", json.dumps(payload), {"Content-Type": "application/json"}
    )
    assert (resp.status, json.loads(body)) == (201, {"created": payload})
    conn.close()


def test_flask_form_post_urlencoded_and_multipart(flask_server):
    server, _ = flask_server
    conn = server.http()
    resp, body = get_response(
        conn, "POST", "/form", urlencode({"name": "Ada", "age": "36"}),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (resp.status, body) == (200, b"Ada is 36")

    boundary = "wsgiloopboundary"
    content = os.urandom(300_000)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nGrace\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="age"\r\n\r\n85\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="f.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    resp, body = get_response(
        conn, "POST", "/form", b"".join(parts),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert (resp.status, body) == (200, b"Grace is 85 +f.bin:300000")
    conn.close()


def test_flask_reads_a_chunked_request_body(flask_server):
    """No Content-Length: Werkzeug reads to EOF because the server sets wsgi.input_terminated."""
    server, _ = flask_server
    payload = json.dumps({"name": "chunked", "data": "x" * 100_000}).encode()
    pieces = [payload[i : i + 8192] for i in range(0, len(payload), 8192)]
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    sock = server.connect()
    sock.sendall(
        b"POST /items HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    status, _, answer = read_response(sock)
    assert (status, json.loads(answer)) == (201, {"created": json.loads(payload)})
    sock.close()


def test_flask_streaming_response_with_stream_with_context(flask_server):
    server, closed = flask_server
    sock = server.connect()
    sock.sendall(b"GET /stream?n=50 HTTP/1.1\r\nHost: test\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"  # streamed, not buffered into one length
    assert body.decode().splitlines() == [f"line {i} of 50 for /stream" for i in range(50)]
    sock.close()
    for _ in range(100):
        if "/stream" in closed:
            break
        time.sleep(0.05)
    assert closed == ["/stream"], "the server called close() on Flask's response iterable"


def test_flask_unknown_route_is_404_and_wrong_method_405(flask_server):
    server, _ = flask_server
    resp, body = server.request("GET", "/nope")
    assert resp.status == 404
    assert b"Not Found" in body
    resp, _ = server.request("DELETE", "/")
    assert resp.status == 405


# -- Django ------------------------------------------------------------------------------------


def dj_index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django", content_type="text/plain")


def dj_json(request: HttpRequest, n: int) -> JsonResponse:
    return JsonResponse({"n": n, "q": request.GET.get("q"), "path": request.path})


@csrf_exempt
def dj_submit(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    text = f"{request.POST['name']} ({request.POST['role']})"
    return HttpResponse(text, content_type="text/plain")


@csrf_exempt
def dj_upload(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"%d bytes" % len(request.body), content_type="text/plain")


def dj_protected(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a POST here needs a CSRF token")


def dj_stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse((f"row {i}\n" for i in range(20)), content_type="text/plain")


#: The file ``dj_file`` serves, created by the ``django_app`` fixture.
SERVED_FILE: dict[str, str] = {}


def dj_file(request: HttpRequest) -> FileResponse:
    return FileResponse(open(SERVED_FILE["path"], "rb"))  # Django closes it


urlpatterns = [
    path("", dj_index),
    path("json/<int:n>", dj_json),
    path("submit", dj_submit),
    path("protected", dj_protected),
    path("upload", dj_upload),
    path("stream", dj_stream),
    path("file", dj_file),
]


@pytest.fixture(scope="module")
def django_app() -> Iterator[Any]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="wsgiloop-tests-only",
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[
                "django.middleware.common.CommonMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
            ],
            DATABASES={},
            USE_TZ=True,
        )
    from django.core.wsgi import get_wsgi_application

    with tempfile.NamedTemporaryFile(prefix="wsgiloop-django-") as f:
        f.write(os.urandom(200_000))
        f.flush()
        SERVED_FILE["path"] = f.name
        yield get_wsgi_application()


def test_django_view_json_and_404(serve, django_app):
    server = serve(django_app)
    conn = server.http()
    resp, body = get_response(conn, "GET", "/")
    assert (resp.status, body) == (200, b"Hello from Django")
    resp, body = get_response(conn, "GET", "/json/7?q=x%20y")
    assert resp.status == 200
    assert json.loads(body) == {"n": 7, "q": "x y", "path": "/json/7"}
    resp, body = get_response(conn, "GET", "/missing")
    assert resp.status == 404
    conn.close()
    assert django.VERSION >= (4, 2)


def test_django_csrf_exempt_post_and_protected_post(serve, django_app):
    server = serve(django_app)
    form = urlencode({"name": "Linus", "role": "maintainer"})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    resp, body = server.request("POST", "/submit", form.encode(), headers)
    assert (resp.status, body) == (200, b"Linus (maintainer)")
    # Without csrf_exempt the middleware refuses the same POST: it really is in the chain.
    resp, _ = server.request("POST", "/protected", form.encode(), headers)
    assert resp.status == 403


def test_django_streaming_and_file_responses(serve, django_app):
    server = serve(django_app)
    sock = server.connect()
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, body = read_response(sock)
    assert (status, headers["transfer-encoding"]) == (200, "chunked")
    assert body == b"".join(f"row {i}\n".encode() for i in range(20))

    sock.sendall(b"GET /file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, body = read_response(sock)
    with open(SERVED_FILE["path"], "rb") as f:
        expected = f.read()
    assert (status, headers["content-length"], body == expected) == (200, str(len(expected)), True)
    sock.close()


@pytest.mark.parametrize("spool", [False, True])
def test_django_sees_a_chunked_upload_only_with_spool_chunked_body(serve, django_app, spool):
    # Django reads CONTENT_LENGTH bytes of wsgi.input; a chunked body has no CONTENT_LENGTH.
    server = serve(django_app, spool_chunked_body=spool, body_buffer=4096)
    body = os.urandom(50_000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7000]), body[i : i + 7000])
                      for i in range(0, len(body), 7000))
    sock = server.connect()
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n" + chunks + b"0\r\n\r\n")
    status, _, answer = read_response(sock)
    sock.close()
    assert (status, answer) == (200, b"50000 bytes" if spool else b"0 bytes")
