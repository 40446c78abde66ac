"""Read a chunked request body whole before the app runs, for apps that need its length.

PEP 3333 with ``wsgi.input_terminated`` lets a server hand a chunked body over as a stream that
simply ends, and wsgiloop does. But frameworks written for CGI read ``wsgi.input`` only up to
``CONTENT_LENGTH``: Django, for one, sees a chunked upload sent straight to the server as an
empty body (behind nginx it works, as nginx de-chunks and sets Content-Length). With
``--spool-chunked-body`` (off by default), the app thread first reads such a body whole, in
memory up to ``--body-buffer`` bytes and then in an anonymous temporary file (``TMPDIR``),
within ``--max-body-size`` (beyond it: 413, as for any body), and calls the app with that file
as ``wsgi.input`` and ``CONTENT_LENGTH`` set: what waitress does with every body.

The cost is the one of buffering: the app starts only once the whole body is in (the time counts
toward ``--timeout``, the stalls toward ``--body-timeout``), and a large upload takes disk.
Bodies with a Content-Length are left streaming.
"""

from __future__ import annotations

from tempfile import SpooledTemporaryFile
from typing import Any

from .bridge import EMPTY_INPUT

_BLOCK = 64 * 1024


def spool_chunked_body(environ: dict[str, Any], memory: int) -> SpooledTemporaryFile[bytes] | None:
    """Replace a chunked ``wsgi.input`` by a file holding the whole body and set CONTENT_LENGTH.

    Returns the file, which the caller closes once the response is done (that deletes it), or
    None when the request has no chunked body. Whatever reading the body raises (the client
    gone, ``BodyTooLarge``) propagates, as it would from the app's own read.
    """
    source = environ["wsgi.input"]
    if source is EMPTY_INPUT or "CONTENT_LENGTH" in environ:
        return None
    spool: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(max_size=memory)  # noqa: SIM115
    size = 0
    try:
        while block := source.read(_BLOCK):
            spool.write(block)
            size += len(block)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    environ["wsgi.input"] = spool
    environ["CONTENT_LENGTH"] = str(size)
    return spool
