"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways once the client asked for it.

After the tagged OK of ``COMPRESS DEFLATE`` every octet in both directions is a raw
DEFLATE stream (RFC 1951, no zlib header: ``wbits=-15``). The server flushes with
``Z_SYNC_FLUSH`` at the end of each burst of responses, so the client can decode every
response as soon as it arrives (RFC 4978 4).

Inflating is bounded: one call produces at most ``MAX_INFLATE`` octets and keeps the rest
of its input for the next call, so a small "zip bomb" cannot make us allocate gigabytes
before the command receiver's limits see the text.
"""

from __future__ import annotations

import zlib

MAX_INFLATE = 256 * 1024
# Level 6 (the zlib default) with a smaller memory level: ~70 KB of zlib state per
# compressing session instead of ~270 KB, for a few percent of compression ratio.
LEVEL = 6
MEM_LEVEL = 5


class DeflateError(Exception):
    """The client's compressed stream is corrupt: close the connection."""


class Deflate:
    __slots__ = ("_in", "_out", "_tail")

    def __init__(self) -> None:
        self._in = zlib.decompressobj(-15)
        self._out = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, MEM_LEVEL)
        self._tail = b""

    def compress(self, data: bytes) -> bytes:
        return self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def has_pending(self) -> bool:
        """Compressed input is waiting that the last :meth:`decompress` did not expand."""
        return bool(self._tail)

    def decompress(self, data: bytes) -> bytes:
        """Inflate ``data`` (after what is left over from before), at most MAX_INFLATE."""
        if self._tail:
            data = self._tail + data
        try:
            out = self._in.decompress(data, MAX_INFLATE)
        except zlib.error as exc:
            raise DeflateError(str(exc)) from None
        self._tail = self._in.unconsumed_tail
        if self._in.eof:
            raise DeflateError("the client ended the compressed stream")
        return out
