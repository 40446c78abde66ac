"""Coverage-guided fuzzing of wsgiloop's request path with atheris (libFuzzer), for long runs.

Not a pytest module (see ``conftest.py`` here and ``README.md``). Targets, chosen with
``WSGILOOP_FUZZ_TARGET``:

``protocol`` (default)
    The input is cut into reads and fed to a real ``HttpProtocol`` sans-IO (``sansio.Driver``),
    answered by an app that echoes what it understood. Fails on anything raised out of the
    protocol, anything logged with a traceback or at ERROR, a pool slot never freed, output
    that is no sequence of responses, a response after an error status, or an error status on
    a connection left open.
``chunked``
    ``wsgiloop.strict.ChunkedValidator`` against h11 on the same bytes: fails where both accept
    a chunked body but end it at different bytes (the desynchronisation smuggling needs), or
    where cutting the input into reads changes the validator's verdict.
``head``
    ``wsgiloop.strict.check_head`` against h11: fails where it accepts a head but h11 ends it
    elsewhere, where it raises, or where the ``fields`` hint changes its verdict.

Run ``python tests/fuzz/fuzz_http.py make-corpus DIR`` once for seed inputs, then
``python tests/fuzz/fuzz_http.py DIR [libFuzzer flags]``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: makes ``fuzz.sansio`` importable

import atheris  # noqa: E402

with atheris.instrument_imports(include=["wsgiloop", "h11", "fuzz"]):
    from fuzz import sansio

SEEDS = {
    "get": b"GET /a/b?c=d HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    "post_length": b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    "post_chunked": (
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nX-T: v\r\n\r\n"
    ),
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: t\r\n\r\n"
    b"POST /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok",
    "http10": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    "smuggle": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n",
}

TARGET = os.environ.get("WSGILOOP_FUZZ_TARGET", "protocol")
_driver: sansio.Driver | None = None


def _pieces(fdp: atheris.FuzzedDataProvider, raw_limit: int) -> tuple[bytes, list[int]]:
    cuts = [fdp.ConsumeIntInRange(0, 2048) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    return fdp.ConsumeBytes(raw_limit), cuts


def _cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(raw)}), len(raw)]:
        pieces.append(raw[start:cut])
        start = cut
    return pieces


def fuzz_protocol(data: bytes) -> None:
    global _driver
    if _driver is None:
        _driver = sansio.Driver()
    fdp = atheris.FuzzedDataProvider(data)
    eof = fdp.ConsumeBool()
    raw, cuts = _pieces(fdp, sansio.MAX_INPUT)
    outcome = _driver.run(_cut(raw, cuts), eof=eof)
    if outcome.problems:
        raise AssertionError(outcome.problems)


def fuzz_chunked(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw, cuts = _pieces(fdp, 8192)
    problems = sansio.chunked_problems(raw, cuts)
    if problems:
        raise AssertionError(problems)


def fuzz_head(data: bytes) -> None:
    problems = sansio.head_problems(data)
    if problems:
        raise AssertionError(problems)


TARGETS = {"protocol": fuzz_protocol, "chunked": fuzz_chunked, "head": fuzz_head}


def make_corpus(directory: str) -> None:
    """Seed inputs: each valid request, prefixed with the bytes the target consumes first."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, raw in SEEDS.items():
        # protocol: eof flag, no cuts; chunked: no cuts, then the body after the head
        (out / f"{name}.protocol").write_bytes(b"\x01\x00" + raw)
        if b"chunked" in raw:
            (out / f"{name}.chunked").write_bytes(b"\x00" + raw[raw.index(b"\r\n\r\n") + 4 :])
        (out / f"{name}.head").write_bytes(raw)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "make-corpus":
        make_corpus(sys.argv[2])
        return
    logging.getLogger("wsgiloop.error").setLevel(logging.INFO)  # only problems, not every 400
    logging.getLogger("wsgiloop.access").setLevel(logging.CRITICAL + 1)
    atheris.Setup(sys.argv, TARGETS[TARGET])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
