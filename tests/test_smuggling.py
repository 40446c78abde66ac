"""Request smuggling (RFC 9112 sections 2.2, 3, 5, 6, 7): every framing ambiguity is refused.

One table drives everything: each ``Case`` is raw bytes and what wsgiloop answers. Over real
sockets (both loops), a refused request gets its status and a closed connection and never
reaches the app; a valid edge case gets its 200, the app sees exactly the intended body, and
the connection stays usable. A case the server does not handle yet takes ``wired=False``: a
strict xfail, which turns into a failure the day the server does (then drop the flag). That is
how the cases only ``wsgiloop.strict`` refuses were written, before it was wired into
``protocol.py``; ``hangs`` marks a case whose unfixed server waits for a body forever.

A sans-IO model of the wiring (``wired_verdict``, the hook points in the ``wsgiloop.strict``
docstring) runs over the same table, so the table and ``strict.py`` agree independently of
the protocol. ``docs/hardening.md`` lists the same cases; a test checks that it names every one.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
from conftest import ROOT

from wsgiloop import strict
from wsgiloop.strict import ChunkedValidator, Rejection

NEEDS_WIRING = "needs strict.py wired into protocol.py"


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    status: int  # 200: valid, served and kept alive
    rfc: str
    layer: str  # who refuses it: "h11", "protocol" (protocol.py's own checks) or "strict"
    wired: bool = True  # False: the current server does not answer this way yet
    body: bytes = b""  # for a valid case: the body the app must see
    in_body: bool = False  # refused while reading the body: the app may already run, and then
    # the server can only close (no status line); "status" is what it answers if it can
    hangs: bool = False  # unwired, the server waits for a body that never comes (a 2 s timeout)
    socket: bool = True  # False: only in the sans-IO model (a second hanging case adds nothing)


def _req(head: bytes, body: bytes = b"", method: bytes = b"POST", version: bytes = b"1.1") -> bytes:
    """A request with ``Host: t`` first and the given extra header lines (CRLF-terminated)."""
    return b"%s / HTTP/%s\r\nHost: t\r\n%s\r\n%s" % (method, version, head, body)


CHUNKED = b"Transfer-Encoding: chunked\r\n"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"


def _chunked(body: bytes) -> bytes:
    return _req(CHUNKED, body)


CASES: list[Case] = [
    # -- Content-Length and Transfer-Encoding together, or Content-Length malformed (6.3) --------
    Case("cl_and_te", _req(b"Content-Length: 3\r\n" + CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"),
         400, "9112 6.3, 6.1", "strict"),
    Case("te_and_cl", _req(CHUNKED + b"Content-Length: 3\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
         400, "9112 6.3, 6.1", "strict"),
    Case("te_and_cl_zero", _req(CHUNKED + b"Content-Length: 0\r\n", HELLO_CHUNKED),
         400, "9112 6.3, 6.1", "strict"),
    Case("cl_conflicting_list", _req(b"Content-Length: 5, 6\r\n", b"hello!"),
         400, "9112 6.3", "h11"),
    Case("cl_conflicting_lines", _req(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
         400, "9112 6.3", "h11"),
    Case("cl_list_empty_element", _req(b"Content-Length: 5,\r\n", b"hello"),
         400, "9112 6.3", "h11"),
    Case("cl_plus", _req(b"Content-Length: +5\r\n", b"hello"), 400, "9110 8.6", "h11"),
    Case("cl_minus", _req(b"Content-Length: -1\r\n", b"hello"), 400, "9110 8.6", "h11"),
    Case("cl_hex", _req(b"Content-Length: 0x5\r\n", b"hello"), 400, "9110 8.6", "h11"),
    Case("cl_float", _req(b"Content-Length: 5.0\r\n", b"hello"), 400, "9110 8.6", "h11"),
    Case("cl_inner_space", _req(b"Content-Length: 5 5\r\n", b"hello"), 400, "9110 8.6", "h11"),
    Case("cl_empty", _req(b"Content-Length:\r\n"), 400, "9110 8.6", "h11"),
    Case("cl_21_digits", _req(b"Content-Length: %s\r\n" % (b"1" * 21)), 400, "9110 8.6", "h11"),
    Case("cl_over_max_body_size", _req(b"Content-Length: 18446744073709551616\r\n"),
         413, "9110 15.5.14", "protocol"),
    Case("cl_obs_fold", _req(b"Content-Length:\r\n 5\r\n", b"hello"), 400, "9112 5.2", "strict"),
    # -- Transfer-Encoding (6.1, 6.3 rule 4, 7) -------------------------------------------------
    # h11 hints 501 for all of these; 6.3 demands 400 as chunked is not the final coding.
    Case("te_gzip", _req(b"Transfer-Encoding: gzip\r\n", b"abc"), 400, "9112 6.3 (4)", "strict"),
    Case("te_identity", _req(b"Transfer-Encoding: identity\r\n", b"abc"), 400, "9112 6.3 (4)",
         "strict"),
    Case("te_empty", _req(b"Transfer-Encoding:\r\n", b"abc"), 400, "9112 6.3 (4)", "strict"),
    Case("te_quoted", _req(b'Transfer-Encoding: "chunked"\r\n', HELLO_CHUNKED), 400,
         "9112 6.3 (4)", "strict"),
    Case("te_chunked_then_gzip", _req(b"Transfer-Encoding: chunked, gzip\r\n", HELLO_CHUNKED),
         400, "9112 6.3 (4)", "strict"),
    Case("te_chunked_twice", _req(b"Transfer-Encoding: chunked, chunked\r\n", HELLO_CHUNKED),
         400, "9112 7", "strict"),
    Case("te_two_lines", _req(CHUNKED + CHUNKED, HELLO_CHUNKED), 400, "9112 7", "strict"),
    Case("te_gzip_then_chunked", _req(b"Transfer-Encoding: gzip, chunked\r\n", HELLO_CHUNKED),
         501, "9112 6.1", "h11"),
    Case("te_trailing_comma", _req(b"Transfer-Encoding: chunked,\r\n", HELLO_CHUNKED),
         501, "9112 6.1; 9110 5.6.1", "h11"),
    Case("te_http10", _req(CHUNKED, HELLO_CHUNKED, version=b"1.0"), 400, "9112 6.1", "strict"),
    Case("te_http10_with_cl", _req(CHUNKED + b"Content-Length: 5\r\n", HELLO_CHUNKED,
                                   version=b"1.0"), 400, "9112 6.1", "strict"),
    Case("te_obs_fold", _req(b"Transfer-Encoding:\r\n chunked\r\n", HELLO_CHUNKED), 400,
         "9112 5.2", "strict"),
    # h11 unfolds this into "chunked abc" and hints 501; the fold is what is wrong.
    Case("te_obs_fold_continuation", _req(b"Transfer-Encoding: chunked\r\n abc\r\n",
                                          HELLO_CHUNKED), 400, "9112 5.2", "strict"),
    Case("te_space_before_colon", _req(b"Transfer-Encoding : chunked\r\n", HELLO_CHUNKED), 400,
         "9112 5.1", "h11"),
    Case("te_vertical_tab", _req(b"Transfer-Encoding:\x0bchunked\r\n", HELLO_CHUNKED), 400,
         "9110 5.5", "h11"),
    # -- line endings: bare LF / bare CR (2.2) ---------------------------------------------------
    Case("bare_lf_request_line", b"GET / HTTP/1.1\nHost: t\r\n\r\n", 400, "9112 2.2", "strict"),
    Case("bare_lf_field_line", b"GET / HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400, "9112 2.2",
         "strict"),
    Case("bare_lf_everywhere", b"GET / HTTP/1.1\nHost: t\n\n", 400, "9112 2.2", "strict"),
    Case("bare_lf_blank_line", b"GET / HTTP/1.1\r\nHost: t\r\n\n", 400, "9112 2.2", "strict"),
    Case("bare_lf_before_blank_line", b"GET / HTTP/1.1\r\nHost: t\n\r\n", 400, "9112 2.2",
         "strict"),
    Case("bare_lf_hides_content_length",
         _req(b"X-A: a\nContent-Length: 5\r\n", b"hello"), 400, "9112 2.2", "strict"),
    Case("bare_cr_request_line", b"GET / HTTP/1.1\rHost: t\r\n\r\n", 400, "9112 2.2", "h11"),
    Case("bare_cr_field_value", _req(b"X-A: a\rb\r\n"), 400, "9112 2.2", "h11"),
    Case("cr_cr_lf", b"GET / HTTP/1.1\r\r\nHost: t\r\n\r\n", 400, "9112 2.2", "h11"),
    # RFC 9112 2.2: SHOULD ignore at least one empty line before a request-line; bounded.
    Case("ok_leading_crlf", b"\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", 200, "9112 2.2", "-"),
    Case("ok_leading_crlf_4", b"\r\n" * 4 + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", 200,
         "9112 2.2", "-"),
    Case("leading_crlf_5", b"\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", 400,
         "9112 2.2", "h11"),
    Case("leading_bare_lf", b"\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 2.2", "h11"),
    # -- field lines (5) --------------------------------------------------------------------------
    Case("obs_fold", _req(b"X-A: a\r\n b\r\n"), 400, "9112 5.2", "strict"),
    Case("obs_fold_tab", _req(b"X-A: a\r\n\tb\r\n"), 400, "9112 5.2", "strict"),
    Case("obs_fold_first_line", b"GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400, "9112 5.2", "h11"),
    Case("space_before_colon", _req(b"X-A : b\r\n"), 400, "9112 5.1", "h11"),
    Case("tab_before_colon", _req(b"X-A\t: b\r\n"), 400, "9112 5.1", "h11"),
    Case("space_in_name", _req(b"X A: b\r\n"), 400, "9110 5.1", "h11"),
    Case("empty_name", _req(b": b\r\n"), 400, "9110 5.1", "h11"),
    Case("no_colon", _req(b"X-A b\r\n"), 400, "9112 5", "h11"),
    Case("name_del", _req(b"X\x7fA: b\r\n"), 400, "9110 5.1", "h11"),
    Case("name_non_ascii", _req(b"X\xffA: b\r\n"), 400, "9110 5.1", "h11"),
    Case("nul_in_value", _req(b"X-A: a\x00b\r\n"), 400, "9110 5.5", "h11"),
    # -- request line (3) -------------------------------------------------------------------------
    Case("method_bad_byte", b"G(ET / HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9110 9.1", "h11"),
    Case("method_nul", b"GET\x00 / HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9110 9.1", "h11"),
    Case("target_space", b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("target_tab", b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("target_del", b"GET /a\x7f HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("target_non_ascii", b"GET /\xe9 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("double_space", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3", "h11"),
    Case("tab_separators", b"GET\t/\tHTTP/1.1\r\nHost: t\r\n\r\n", 400, "9112 3", "h11"),
    Case("version_lowercase", b"GET / http/1.1\r\nHost: t\r\n\r\n", 400, "9112 2.3", "h11"),
    Case("version_junk", b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", 400, "9112 2.3", "h11"),
    Case("version_1_2", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505, "9110 15.6.6", "protocol"),
    Case("version_2_0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, "9110 15.6.6", "protocol"),
    Case("http09", b"GET /\r\n\r\n", 400, "9112 2.3", "h11"),
    # -- Host (3.2) -----------------------------------------------------------------------------
    Case("host_missing", b"GET / HTTP/1.1\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("host_twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "9112 3.2", "h11"),
    Case("host_twice_http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "9112 3.2",
         "h11"),
    Case("host_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "9112 3.2", "strict"),
    Case("host_slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "9112 3.2", "strict"),
    Case("host_userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "9112 3.2", "strict"),
    Case("host_non_ascii", b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", 400, "9112 3.2",
         "strict"),
    # -- sizes ----------------------------------------------------------------------------------
    Case("head_too_large", _req(b"X-Big: %s\r\n" % (b"a" * 70000), method=b"GET"), 431,
         "6585 5", "protocol"),
    Case("too_many_fields", _req(b"".join(b"X-%d: v\r\n" % i for i in range(101)),
                                 method=b"GET"), 431, "6585 5", "protocol"),
    Case("target_too_long", b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"a" * 9000), 414,
         "9110 15.5.15", "protocol"),
    # -- chunked framing (7.1): refused while the body is read --------------------------------
    Case("chunk_size_trailing_space", _chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1",
         "strict", in_body=True),
    Case("chunk_size_trailing_tab", _chunked(b"5\t\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1",
         "strict", in_body=True),
    Case("chunk_size_17_digits", _chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"), 400,
         "9112 7.1", "strict", in_body=True),
    Case("chunk_size_wraps_64_bits", _chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400,
         "9112 7.1", "strict", in_body=True, hangs=True),
    Case("chunk_size_over_2_63", _chunked(b"8000000000000005\r\nhello\r\n0\r\n\r\n"), 400,
         "9112 7.1", "strict", in_body=True, hangs=True, socket=False),
    Case("chunk_size_21_digits", _chunked(b"%s\r\nhello\r\n0\r\n\r\n" % (b"0" * 20 + b"5")),
         400, "9112 7.1", "h11", in_body=True),
    Case("chunk_size_leading_space", _chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1",
         "h11", in_body=True),
    Case("chunk_size_not_hex", _chunked(b"g\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_size_0x", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_size_negative", _chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_size_empty", _chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_size_bare_lf", _chunked(b"5\nhello\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_ext_empty", _chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1.1", "strict",
         in_body=True),
    Case("chunk_ext_no_name", _chunked(b"5;=x\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1.1",
         "strict", in_body=True),
    Case("chunk_ext_control", _chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1.1",
         "strict", in_body=True),
    Case("chunk_ext_nul", _chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1.1",
         "strict", in_body=True),
    Case("chunk_ext_bare_cr", _chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400, "9112 7.1.1",
         "strict", in_body=True),
    Case("chunk_ext_open_quote", _chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), 400, "9112 7.1.1",
         "strict", in_body=True),
    Case("chunk_ext_too_long", _chunked(b"5;a=%s\r\nhello\r\n0\r\n\r\n" % (b"x" * 20000)), 400,
         "9112 7.1.1", "strict", in_body=True),
    Case("chunk_ext_bws_before_semicolon", _chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), 400,
         "9112 7.1.1", "h11", in_body=True),  # RFC-valid BWS, but h11 refuses it: harmless
    Case("chunk_data_no_crlf", _chunked(b"5\r\nhelloXX0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_data_bare_lf", _chunked(b"5\r\nhello\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("chunk_data_too_long", _chunked(b"5\r\nhello!\r\n0\r\n\r\n"), 400, "9112 7.1", "h11",
         in_body=True),
    Case("last_chunk_bare_lf", _chunked(b"5\r\nhello\r\n0\r\n\n"), 400, "9112 7.1", "strict",
         in_body=True),
    Case("trailer_bare_lf", _chunked(b"5\r\nhello\r\n0\r\nX-T: v\n\r\n"), 400, "9112 7.1.2",
         "strict", in_body=True),
    Case("trailer_obs_fold", _chunked(b"5\r\nhello\r\n0\r\nX-T: v\r\n w\r\n\r\n"), 400,
         "9112 5.2", "strict", in_body=True),
    Case("trailer_space_before_colon", _chunked(b"5\r\nhello\r\n0\r\nX-T : v\r\n\r\n"), 400,
         "9112 5.1", "h11", in_body=True),
    # -- valid edge cases: served, and the connection stays in sync -----------------------------
    Case("ok_cl_identical_list", _req(b"Content-Length: 5, 5\r\n", b"hello"), 200, "9110 8.6",
         "-", body=b"hello"),
    Case("ok_cl_identical_lines", _req(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
         200, "9110 8.6", "-", body=b"hello"),
    Case("ok_cl_leading_zeros", _req(b"Content-Length: 005\r\n", b"hello"), 200, "9110 8.6",
         "-", body=b"hello"),
    Case("ok_chunked", _chunked(HELLO_CHUNKED), 200, "9112 7.1", "-", body=b"hello"),
    Case("ok_chunked_upper_hex", _chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), 200, "9112 7.1",
         "-", body=b"0123456789"),
    Case("ok_chunk_size_16_digits", _chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), 200,
         "9112 7.1", "-", body=b"hello"),
    Case("ok_chunk_ext_tokens", _chunked(b"5;a=b;c\r\nhello\r\n0;d\r\n\r\n"), 200,
         "9112 7.1.1", "-", body=b"hello"),
    Case("ok_chunk_ext_quoted", _chunked(b'5;a="x y\\"z"\r\nhello\r\n0\r\n\r\n'), 200,
         "9112 7.1.1", "-", body=b"hello"),
    Case("ok_chunk_ext_bws", _chunked(b"5; a = b\r\nhello\r\n0\r\n\r\n"), 200, "9112 7.1.1",
         "-", body=b"hello"),
    Case("ok_chunked_trailers", _chunked(b"5\r\nhello\r\n0\r\nX-T: v\r\nY:\r\n\r\n"), 200,
         "9112 7.1.2", "-", body=b"hello"),
    Case("ok_chunked_many_chunks", _chunked(b"1\r\nh\r\n2\r\nel\r\n2\r\nlo\r\n0\r\n\r\n"), 200,
         "9112 7.1", "-", body=b"hello"),
    Case("ok_te_mixed_case", _req(b"Transfer-Encoding: ChUnKeD\r\n", HELLO_CHUNKED), 200,
         "9112 7", "-", body=b"hello"),
    Case("ok_value_tab_trailing_ws", _req(b"X-A: a\tb \t\r\n"), 200, "9110 5.5", "-"),
    Case("ok_value_obs_text", _req(b"X-A: caf\xe9\r\n"), 200, "9110 5.5", "-"),
    Case("ok_value_control_byte", _req(b"X-A: a\x01b\r\n"), 200, "9110 5.5", "-"),
    Case("ok_empty_value", _req(b"X-A:\r\n"), 200, "9110 5.5", "-"),
    Case("ok_host_empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 200, "9112 3.2", "-"),
    Case("ok_host_ipv6_port", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200, "9112 3.2",
         "-"),
    Case("ok_absolute_form", b"GET http://t/x?y HTTP/1.1\r\nHost: t\r\n\r\n", 200, "9112 3.2.2",
         "-"),
    Case("ok_asterisk_form", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 200, "9112 3.2.4", "-"),
    Case("ok_http10_keep_alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200,
         "9112 C.2.2", "-"),
]

BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), "duplicate case ids"


def _params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=() if case.wired else pytest.mark.xfail(strict=True, reason=NEEDS_WIRING),
        )
        for case in cases
    ]


REFUSED = [c for c in CASES if c.status != 200 and c.socket]
VALID = [c for c in CASES if c.status == 200]


# -- over real sockets ----------------------------------------------------------------------------


class Probe:
    """Echoes the request body; counts calls and completed bodies."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            self.calls += 1
        body = environ["wsgi.input"].read()
        with self.lock:
            self.bodies.append(body)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


def _exchange(server: Any, raw: bytes, status: int, timeout: float) -> bytes:
    """Send ``raw`` and read until the server closes the connection.

    Returns early once a status other than ``status`` arrives: the server then means to go on
    with the connection (a request it accepted), and waiting for its keep-alive timeout would
    only slow the failure down.
    """
    sock = server.connect()
    sock.settimeout(timeout)
    expected = b"HTTP/1.1 %d " % status
    received = b""
    try:
        sock.sendall(raw)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
            if len(received) >= len(expected) and not received.startswith(expected):
                break
        return received
    finally:
        sock.close()


@pytest.mark.parametrize("case", _params(REFUSED))
def test_refused_request_gets_its_status_and_a_close(serve, case):
    app = Probe()
    server = serve(app, graceful_timeout=2)
    raw = _exchange(server, case.raw, case.status, timeout=2.0 if case.hangs else 10.0)
    responses = raw.count(b"HTTP/1.1 ")
    if case.in_body and not raw:
        # Refused while the app was reading the body: nothing may be said any more, only the
        # connection dropped, and the app never saw the body end.
        assert app.bodies == []
        return
    assert responses == 1, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 %d " % case.status), status_line
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
    assert fields.get(b"connection", b"").lower() == b"close"
    assert int(fields[b"content-length"]) == len(body)
    assert app.bodies == []
    if not case.in_body:
        assert app.calls == 0


@pytest.mark.parametrize("case", _params(VALID))
def test_valid_edge_case_is_served_and_the_connection_kept(serve, case):
    app = Probe()
    server = serve(app)
    sock = server.connect()
    try:
        # The same request again behind it: a framing error would desynchronise the second one.
        sock.sendall(case.raw + case.raw)
        for _ in range(2):
            status, body = _read_one(sock)
            assert (status, body) == (200, case.body)
        sock.sendall(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_one(sock) == (200, b"")
    finally:
        sock.close()
    assert app.bodies == [case.body, case.body, b""]


def _read_one(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length, read byte-exactly (the socket is reused after)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        data = sock.recv(1)
        assert data, f"closed after {head!r}"
        head += data
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = b""
    while len(body) < length:
        data = sock.recv(length - len(body))
        assert data
        body += data
    return int(head.split()[1]), body


# -- the same table against a sans-IO model of the proposed wiring --------------------------------


def wired_verdict(raw: bytes) -> tuple[int, bytes]:
    """What ``protocol.py`` answers once strict.py is wired as its docstring proposes.

    Returns (status, body seen by the app). Follows the protocol's own checks with the default
    ``Config`` limits, in its order: h11 errors (with ``strict.error_status``), 505, 431, 414,
    the head size, then ``strict.check_head``/``check_request``, 413; and for a chunked body,
    ``ChunkedValidator`` next to h11.
    """
    raw, _ = strict.skip_empty_lines(raw, 0)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
    conn.receive_data(raw)
    conn.receive_data(b"")
    body = b""
    validator: ChunkedValidator | None = None
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            return 400, b""
        if event.http_version not in (b"1.1", b"1.0"):
            return 505, b""
        if len(event.headers) > 100:
            return 431, b""
        if len(event.target) > 8190:
            return 414, b""
        size = len(event.method) + len(event.target) + 14
        size += sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > 65536:
            return 431, b""
        reason = strict.check_head(raw, len(event.headers))
        if reason is not None:
            return 400, b""
        rejection = strict.check_request(event)
        if rejection is not None:
            return rejection.status, b""
        names = [n for n, _ in event.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            return 400, b""
        if b"transfer-encoding" in names:
            validator = ChunkedValidator()
            if validator.feed(raw, strict.head_end(raw)) is not None:
                return 400, b""
        for name, value in event.headers:
            if name == b"content-length" and int(value) > 1 << 30:
                return 413, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return 400, b""
    except h11.RemoteProtocolError as exc:
        return strict.error_status(exc.error_status_hint, raw), b""
    assert validator is None or validator.done
    return 200, body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wired_model_answers_as_the_table_says(case):
    assert wired_verdict(case.raw) == (case.status, case.body)


def test_hardening_doc_lists_every_case():
    doc = (ROOT / "docs" / "hardening.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, missing


# -- strict.py, directly --------------------------------------------------------------------------

GOOD_HEAD = b"GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (GOOD_HEAD, None),
        (GOOD_HEAD + b"BODY\nwith\rbare\n\n", None),  # only the head is looked at
        (b"GET / HTTP/1.1\r\n\r\n", None),
        (b"GET / HTTP/1.1\nHost: t\r\n\r\n", "bare LF line ending in the request head"),
        (b"GET / HTTP/1.1\r\nHost: t\n\n", "bare LF line ending in the request head"),
        (b"GET / HTTP/1.1\r\nHost: t\n\r\nX: y\r\n\r\n", "bare LF line ending in the request head"),
        (b"GET / HTTP/1.1\r\nHost: t\r\n\n\r\n\r\n", "bare LF line ending in the request head"),
        (b"GET / HTTP/1.1\rHost: t\r\n\r\n", "bare CR in the request head"),
        (b"GET / HTTP/1.1\r\nHost: t\r\r\n\r\n", "bare CR in the request head"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "obsolete line folding in the request head"),
        (b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", "obsolete line folding in the request head"),
        (b"GET / HTTP/1.1\r\n Host: t\r\n\r\n", "obsolete line folding in the request head"),
        (b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n", None),  # h11's to refuse, and it does
        (b"", "bare LF line ending in the request head"),
    ],
)
def test_check_head(raw, reason):
    assert strict.check_head(raw) == reason
    assert strict.check_head(bytearray(raw)) == reason


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.layer in ("strict", "-")], ids=lambda c: c.id
)
def test_check_head_with_h11s_field_count_agrees_with_the_full_scan(case):
    try:
        fields = len(_parse(case.raw).headers)
    except (h11.RemoteProtocolError, AssertionError):
        return  # h11 refuses it first
    assert strict.check_head(case.raw, fields) == strict.check_head(case.raw)


def test_check_head_field_count_is_only_a_hint():
    # h11 keeps one of two identical Content-Length lines: a line more than fields, no fold.
    raw = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    assert len(_parse(raw).headers) == 2
    assert strict.check_head(raw, 2) is None
    folded = b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n"
    assert len(_parse(folded).headers) == 2
    assert strict.check_head(folded, 2) == "obsolete line folding in the request head"


def test_head_end():
    assert strict.head_end(GOOD_HEAD + b"rest") == len(GOOD_HEAD)
    assert strict.head_end(b"GET / HTTP/1.1\r\n") == -1


def _parse(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GOOD_HEAD, None),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
         Rejection(400, "Transfer-Encoding in an HTTP/1.0 request")),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         Rejection(400, "both Transfer-Encoding and Content-Length")),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Rejection(400, "invalid Host header value")),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", Rejection(400, "invalid Host header value")),
        (b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", Rejection(400, "invalid Host header value")),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: xn--caf-dma.example:8080\r\n\r\n", None),
        (b"GET / HTTP/1.0\r\n\r\n", None),
    ],
)
def test_check_request(raw, expected):
    assert strict.check_request(_parse(raw)) == expected


def test_check_fields():
    assert strict.check_fields(b"1.1", True, False, b"t") is None
    assert strict.check_fields(b"1.0", False, True, None) is None
    te_10 = strict.check_fields(b"1.0", True, False, None)
    assert te_10 == (400, "Transfer-Encoding in an HTTP/1.0 request")
    both = strict.check_fields(b"1.1", True, True, b"t")
    assert both == (400, "both Transfer-Encoding and Content-Length")
    assert strict.check_fields(b"1.1", False, False, b"a:b@c") == (400, "invalid Host header value")
    assert strict.check_fields(b"1.1", False, False, b"") is None


@pytest.mark.parametrize(
    ("te_lines", "status"),
    [
        (b"Transfer-Encoding: gzip\r\n", 400),
        (b"Transfer-Encoding: gzip, chunked\r\n", 501),
        (b"transfer-encoding:gzip,CHUNKED\r\n", 501),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"Transfer-Encoding: chunked, gzip\r\n", 400),
        (b"Transfer-Encoding: chunked,\r\n", 501),
        (b"Transfer-Encoding:\r\n", 400),
        (b'Transfer-Encoding: "chunked"\r\n', 400),
    ],
)
def test_error_status_maps_h11s_501(te_lines, status):
    raw = b"POST / HTTP/1.1\r\nHost: t\r\n" + te_lines + b"\r\n"
    with pytest.raises(h11.RemoteProtocolError) as info:
        _parse(raw)
    assert info.value.error_status_hint == 501
    assert strict.error_status(501, raw) == status


def test_error_status_passes_other_hints_through():
    assert strict.error_status(400, b"") == 400
    assert strict.error_status(431, b"Transfer-Encoding: gzip\r\n\r\n") == 431


CHUNK_BODIES = {
    "last_chunk_only": (b"0\r\n\r\n", None),
    "one_chunk": (b"5\r\nhello\r\n0\r\n\r\n", None),
    "extensions_and_trailers": (
        b"5;a=b;c=\"q\\\"\";d\r\nhello\r\n0;e=f\r\nX: y\r\nZ:\r\n\r\n", None
    ),
    "bws_before_first_semicolon": (  # RFC-valid, but h11 refuses it, and so do we
        b"5 ;a\r\nhello\r\n0\r\n\r\n", "malformed chunk size or extension"
    ),
    "bws_before_later_semicolon": (b"5;a ; b = c\r\nhello\r\n0\r\n\r\n", None),
    "ext_trailing_space": (b"5;a \r\n", "malformed chunk size or extension"),
    "trailer_nul": (b"0\r\nX: a\x00\r\n\r\n", "malformed trailer field"),
    "trailer_vertical_tab": (b"0\r\nX: a\x0bb\r\n\r\n", "malformed trailer field"),
    "trailer_empty_value_and_ows": (b"0\r\nX: \t\r\nY:a b \r\n\r\n", None),
    "size_2_64_minus_1": (b"ffffffffffffffff\r\n", "chunk size too large"),
    "size_2_63_minus_1": (b"7fffffffffffffff\r\n", None),  # valid, still waiting for its data
    "size_17_digits": (b"00000000000000005\r\n", "malformed chunk size or extension"),
    "size_20_digits": (b"ffffffffffffffffffff\r\n", "malformed chunk size or extension"),
    "size_trailing_space": (b"5 \r\n", "malformed chunk size or extension"),
    "size_trailing_tab": (b"5\t\r\n", "malformed chunk size or extension"),
    "ext_empty": (b"5;\r\n", "malformed chunk size or extension"),
    "ext_no_value": (b"5;a=\r\n", "malformed chunk size or extension"),
    "ext_control": (b"5;a\x01\r\n", "malformed chunk size or extension"),
    "ext_bare_cr": (b"5;a\rb\r\n", "bare CR or LF in a chunk line"),
    "size_bare_lf": (b"5\n", "bare CR or LF in a chunk line"),
    "size_empty": (b"\r\n", "malformed chunk size or extension"),
    "size_not_hex": (b"x\r\n", "malformed chunk size or extension"),
    "data_too_long": (b"5\r\nhelloX\r\n", "chunk data not followed by CRLF"),
    "data_then_bare_cr": (b"5\r\nhello\rX", "chunk data not followed by CRLF"),
    "data_then_bare_lf": (b"5\r\nhello\n", "chunk data not followed by CRLF"),
    "last_chunk_bare_lf": (b"0\r\n\n", "bare CR or LF in the trailer section"),
    "trailer_bare_lf": (b"0\r\nX: y\n", "bare CR or LF in the trailer section"),
    "trailer_obs_fold": (
        b"0\r\nX: y\r\n z\r\n\r\n", "obsolete line folding in the trailer section"
    ),
    "trailer_space_before_colon": (b"0\r\nX : y\r\n\r\n", "malformed trailer field"),
    "trailer_bare_cr": (b"0\r\nX: a\rb\r\n\r\n", "bare CR or LF in the trailer section"),
    "line_too_long": (b"5;a=%s\r\n" % (b"x" * 5000), "chunk line too long"),
    "line_too_long_before_lf": (b"5;a=%s" % (b"x" * 5000), "chunk line too long"),
    "extensions_over_budget": (
        b"".join(b"1;e=%s\r\nx\r\n" % (b"y" * 1000) for _ in range(20)),
        "too many chunk extension bytes",
    ),
    "trailer_over_budget": (b"0\r\n" + b"X: %s\r\n" % (b"y" * 4000) * 20,
                            "trailer section too large"),
}


@pytest.mark.parametrize(("body", "reason"), CHUNK_BODIES.values(), ids=CHUNK_BODIES.keys())
def test_chunked_validator(body, reason):
    whole = ChunkedValidator()
    assert whole.feed(body) == reason
    # Byte by byte, the same verdict: no state is lost between reads.
    split = ChunkedValidator()
    verdicts = [split.feed(body[i : i + 1]) for i in range(len(body))]
    assert next((v for v in verdicts if v is not None), None) == reason
    if reason is not None:
        assert split.feed(b"5\r\nhello\r\n") == reason  # spent


def test_chunked_validator_stops_at_the_end_of_the_body():
    validator = ChunkedValidator()
    body = b"5\r\nhello\r\n0\r\nX: y\r\n\r\n"
    rest = b"GET / HTTP/1.1\nwhatever\r\n"
    assert validator.feed(b"HEAD" + body + rest, 4) is None
    assert validator.done
    assert validator.end == 4 + len(body)
    assert validator.feed(b"\x00garbage") is None  # the next request is not its business


def test_chunked_validator_skips_big_chunks_by_counting():
    validator = ChunkedValidator()
    assert validator.feed(b"100000\r\n") is None
    for _ in range(16):
        assert validator.feed(b"\n" * 65536) is None  # data: any bytes, never scanned
    assert validator.feed(b"\r\n0\r\n\r\n") is None
    assert validator.done


def test_strict_module_is_typed_and_documented():
    source = Path(strict.__file__).read_text()
    assert "from __future__ import annotations" in source
    assert strict.__doc__ and "hook points" in strict.__doc__
