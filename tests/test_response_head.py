"""``Response.head()``: the memo of validated header sets gives what a fresh validation gives."""

from __future__ import annotations

import h11
import pytest

from wsgiloop import response as response_module
from wsgiloop.response import Response


def _head(headers: list[tuple[str, str]], extra: list[tuple[bytes, bytes]]) -> h11.Response:
    response = Response(extra)
    response.start_response("200 OK", headers)
    return response.head()


def test_repeated_header_set_gives_the_same_head() -> None:
    extra = [(b"Server", b"wsgiloop"), (b"Date", b"Wed, 25 Nov 2026 11:00:00 GMT")]
    first = _head([("Content-Type", "text/plain"), ("Date", "mine")], extra)
    second = _head([("Content-Type", "text/plain"), ("Date", "mine")], extra)
    assert list(first.headers) == list(second.headers)
    assert (b"date", b"mine") in list(second.headers)  # the app's Date still wins
    assert [n for n, _ in second.headers].count(b"date") == 1


def test_new_server_headers_are_not_served_from_the_memo() -> None:
    app = [("Content-Type", "text/plain")]
    _head(app, [(b"Date", b"Wed, 25 Nov 2026 11:00:00 GMT")])
    later = _head(app, [(b"Date", b"Wed, 25 Nov 2026 11:00:01 GMT")])
    assert (b"date", b"Wed, 25 Nov 2026 11:00:01 GMT") in list(later.headers)


def test_invalid_headers_are_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(h11.LocalProtocolError):
            _head([("Bad Name", "x")], [])


def test_memo_is_bounded() -> None:
    for i in range(response_module._VALIDATED_MAX * 2):
        _head([("X-N", str(i))], [])
    assert len(response_module._VALIDATED) <= response_module._VALIDATED_MAX
