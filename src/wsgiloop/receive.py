"""h11's receive buffer, minus the copies of a body that arrives in whole socket reads.

h11 copies each byte it receives three times: into its ``bytearray`` buffer, then twice when
``ReceiveBuffer.maybe_extract_at_most`` slices a body chunk out of it; and as the buffer empties
and refills it is shrunk and regrown, which for 256 KiB reads means fresh pages from the kernel
each time. While a body streams in, each socket read is usually the next body chunk whole, so
``PassThroughBuffer`` keeps a read that arrives while it is empty as it is, and hands that same
``bytes`` object out when the reader asks for at least as much. Everything else (heads, chunk
lines, a read that holds the end of one message and the start of the next) goes through h11's
own code on its ``bytearray``, exactly as before.

This replaces a private attribute of ``h11.Connection`` (``_receive_buffer``); ``install`` checks
that it is what this code expects and otherwise leaves h11 alone.
"""

from __future__ import annotations

import h11
from h11._receivebuffer import ReceiveBuffer


class PassThroughBuffer(ReceiveBuffer):
    """A ``ReceiveBuffer`` that holds a read fed while empty uncopied (``_whole``).

    Invariant: ``_whole`` is set only while ``_data`` is empty, so the bytes in order are
    ``_data`` then ``_whole``, and only one of them is non-empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self._whole: bytes | None = None

    def _settle(self) -> None:
        """Move ``_whole`` into ``_data``, for h11's own parsing code."""
        whole = self._whole
        if whole is not None:
            self._whole = None
            self._data += whole

    def __iadd__(self, byteslike: bytes | bytearray) -> PassThroughBuffer:
        if self._whole is None and not self._data and type(byteslike) is bytes:
            self._whole = byteslike  # immutable: safe to keep without a copy
        else:
            self._settle()
            self._data += byteslike
        return self

    def __len__(self) -> int:
        whole = self._whole
        return len(self._data) if whole is None else len(whole)

    def __bytes__(self) -> bytes:
        whole = self._whole
        return bytes(self._data) if whole is None else whole

    def maybe_extract_at_most(self, count: int) -> bytes | bytearray | None:  # type: ignore[override]
        whole = self._whole
        if whole is not None and count >= len(whole):
            self._whole = None
            self._next_line_search = self._multiple_lines_search = 0
            return whole
        self._settle()
        data = self._data
        if not data:
            return None
        out = data[:count]  # h11 slices twice
        del data[:count]
        self._next_line_search = self._multiple_lines_search = 0
        return out

    def maybe_extract_next_line(self) -> bytearray | None:
        self._settle()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self) -> list[bytearray] | None:
        self._settle()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._settle()
        return super().is_next_line_obviously_invalid_request_line()


def install(conn: h11.Connection) -> bool:
    """Give a new ``conn`` a ``PassThroughBuffer``; False (h11 untouched) if h11 changed."""
    buffer = getattr(conn, "_receive_buffer", None)
    if type(buffer) is not ReceiveBuffer or len(buffer) or not hasattr(buffer, "_data"):
        return False
    conn._receive_buffer = PassThroughBuffer()
    return True
