"""Dot-terminated DATA (RFC 5321 4.5.2): finding the end, unstuffing, stuffing.

Receiving (:class:`DotDecoder`) is stateful across reads: the end marker ``CRLF.CRLF`` may
be split at any byte between two reads, so the search restarts four bytes before the end
of what was already scanned (Twisted's chunk-by-chunk unstuffing misses exactly that).
The decoder works on whole buffers with ``bytes.find``/``count``/``replace``: no Python loop
per line or per byte, which is what keeps DATA fast.

SMTP smuggling (CVE-2023-51764/51765/51766): ONLY ``<CR><LF>.<CR><LF>`` ends the data.
``<LF>.<LF>``, ``<LF>.<CR><LF>``, ``<CR>.<CR>`` and friends are message content. The
decoder reports whether the message holds any bare CR or bare LF (and NUL), so the server
can read to the real end and then refuse it: nothing after a fake marker is ever taken
for a command, and a message that could be re-interpreted downstream is never accepted.

Sending (:func:`stuff`) is for the client core: it doubles leading dots and appends the
terminator.
"""

from __future__ import annotations

import re
from collections.abc import Generator

from postroom.proto.buffer import StreamReader, UnexpectedEOF

__all__ = [
    "DotDecoder",
    "has_bare_line_ending",
    "line_feeds",
    "read_chunk",
    "read_dot_data",
    "stuff",
    "unstuff",
]

_END = b"\r\n.\r\n"
_LINE_DOT = b"\r\n."
# The same two searches as compiled patterns: a literal pattern's search in ``re`` is one
# tight loop over the octets (about one cycle per octet), whereas ``bytes.find`` with a
# needle of two or more octets uses a skip table whose branches cost 2 to 5 times as much
# on mail text (a 100 KB message: ~30 us against 70-150 us per pass, every message).
_FIND_END = re.compile(re.escape(_END)).search
_FIND_LINE_DOT = re.compile(re.escape(_LINE_DOT)).search
# The decoder looks at each line that starts with a dot (every "CRLF." is either a stuffed
# line or the end), so that a message without any needs no unstuffing pass at all (most
# mail: one scan of a 100 KB message less). Past this many it only looks for the end and
# unstuffs the whole message, so a message of dot lines costs no Python loop per line.
_DOT_LINES_TRACKED = 64


class DotDecoder:
    """Collect one message after ``354`` until ``CRLF.CRLF``, with a size cap.

    Usage::

        dec = DotDecoder(max_size)
        used = dec.feed(chunk)      # None: all of chunk consumed, need more
        if used is not None:        # chunk[used:] belongs to the next command
            message = dec.message() # unstuffed, CRLF line ends kept; None if oversized

    ``max_size`` (0 = unlimited) bounds the *unstuffed* size as RFC 1870 defines it
    (CRLFs counted, the terminating dot and the doubled dots not). Once it is exceeded the
    decoder keeps only the last four bytes (enough to find a marker split across reads),
    so memory stays bounded while it keeps scanning for the real end.
    """

    __slots__ = (
        "_count_from",
        "_done",
        "_dot_lines",
        "_dropped",
        "_max",
        "_raw",
        "_scan_from",
        "_stuffed",
        "overflow",
    )

    def __init__(self, max_size: int = 0) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        # A virtual CRLF stands for the end of the DATA command line, so that a message
        # that is only "." + CRLF, or starts with a stuffed dot, needs no special case.
        self._raw = bytearray(b"\r\n")
        self._scan_from = 0
        self._count_from = 0
        self._stuffed = 0
        self._dropped = 0
        self._max = max_size
        self._done = False
        self._dot_lines = 0  # lines starting with a dot seen (> _DOT_LINES_TRACKED: stopped)
        self.overflow = False

    @property
    def size(self) -> int:
        """Unstuffed octets received so far (exact while not overflowed, a lower bound after)."""
        return len(self._raw) - 2 + self._dropped - self._stuffed

    def feed(self, data: bytes | bytearray | memoryview) -> int | None:
        """Take ``data``; return how many of its bytes ended the message, or None."""
        if self._done:
            raise RuntimeError("DotDecoder already finished")
        raw = self._raw
        old = len(raw)
        raw += data
        pos = self._find_end_by_lines() if self._dot_lines <= _DOT_LINES_TRACKED else -2
        if pos == -2:  # not looking at dot lines (any more)
            m = _FIND_END(raw, self._scan_from)
            pos = m.start() if m is not None else -1
            if pos < 0:
                # RFC 5321 4.5.2: the marker may straddle this read and the next one.
                self._scan_from = max(0, len(raw) - 4)
        if pos < 0:
            if self._max and not self.overflow:
                self._check_size(final=False)
            if self.overflow and self._dot_lines <= _DOT_LINES_TRACKED:
                # Discarded anyway: from now on only the end matters.
                self._dot_lines = _DOT_LINES_TRACKED + 1
                self._scan_from = max(0, len(raw) - 4)
            if self.overflow and len(raw) > 4:
                self._dropped += len(raw) - 4
                self._scan_from -= len(raw) - 4
                del raw[:-4]
            return None
        self._done = True
        used = pos + len(_END) - old
        # Keep the CRLF before the dot: it ends the message's last line.
        del raw[pos + 2 :]
        if self._max and not self.overflow:
            self._check_size(final=True)
        return used

    def _find_end_by_lines(self) -> int:
        """The end marker's offset by visiting each "CRLF." (a dot line or the end); -1:
        not yet (``_scan_from`` set for the next read); -2: too many dot lines, look for
        the marker only (``_scan_from`` set for that)."""
        raw = self._raw
        pos = self._scan_from
        while True:
            m = _FIND_LINE_DOT(raw, pos)
            if m is None:
                self._scan_from = max(pos, len(raw) - 2)  # "CR" or "CRLF" may end this read
                return -1
            p = m.start()
            after = raw[p + 3 : p + 5]
            if after == b"\r\n":
                return p
            if len(after) < 2 and b"\r\n".startswith(after):
                self._scan_from = p  # "CRLF." + nothing or CR: decided by the next read
                return -1
            self._dot_lines += 1
            if self._dot_lines > _DOT_LINES_TRACKED:
                self._scan_from = p
                return -2
            pos = p + 3

    def _check_size(self, *, final: bool) -> None:
        raw = self._raw
        # Cheap bound first: unstuffing only ever removes octets.
        if len(raw) - 2 + self._dropped <= self._max:
            return
        # Count the dots unstuff() will remove (each "CRLF." in the raw data, the virtual
        # CRLF covering the first line). While the end is not found, an occurrence in the
        # last four bytes might be the start of the marker itself: count it next time.
        end = len(raw) if final else len(raw) - 2
        if end > self._count_from:
            self._stuffed += raw.count(_LINE_DOT, self._count_from, end)
            self._count_from = max(self._count_from, len(raw) - 4)
        # While streaming, the last bytes may still turn out to be the start of the end
        # marker (".", CR) or a dot to remove: allow them until the end is known.
        if self.size - (0 if final else 3) > self._max:
            self.overflow = True

    def message(self) -> bytes | None:
        """The unstuffed message (CRLF line ends), or None when it was over ``max_size``."""
        if not self._done:
            raise RuntimeError("DotDecoder not finished")
        if self.overflow:
            return None
        with memoryview(self._raw) as view:
            data = bytes(view[2:])
        return unstuff(data) if self._dot_lines else data


def read_dot_data(reader: StreamReader, decoder: DotDecoder) -> Generator[None, None, None]:
    """Reader generator (see buffer.py): move bytes into ``decoder`` until the end marker.

    What follows the marker stays in ``reader`` for the next command. The buffer is handed
    over whole, never line by line.
    """
    buf = reader.buffer
    while True:
        if buf:
            used = decoder.feed(buf)
            if used is not None:
                del buf[:used]
                return
            buf.clear()
        elif reader.eof:
            raise UnexpectedEOF()
        else:
            yield


def read_chunk(reader: StreamReader, size: int, out: bytearray) -> Generator[None, None, None]:
    """Reader generator: append exactly ``size`` bytes to ``out`` (BDAT, RFC 3030 2).

    The caller has checked ``size`` against its limit (or skips the chunk instead).
    """
    buf = reader.buffer
    remaining = size
    while remaining:
        if not buf:
            if reader.eof:
                raise UnexpectedEOF()
            yield
            continue
        k = min(remaining, len(buf))
        if k == len(buf):
            out += buf
            buf.clear()
        else:
            with memoryview(buf) as view:
                out += view[:k]
            del buf[:k]
        remaining -= k


def unstuff(data: bytes) -> bytes:
    """Remove the transparency dots (RFC 5321 4.5.2) from a message without its terminator.

    "If the first character is a period and there are other characters on the line, the
    first character is deleted": one ``replace`` over the whole buffer, plus the first line.
    """
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


# A CR not followed by LF. The pattern starts with one literal octet, so ``re`` scans for
# it in one tight loop and tries the look-ahead only at each CR: on mail text that is
# about half the cost of ``bytes.count(b"\r\n")`` (a skip-table search whose branches
# cost more than the scan itself). At each match ``re`` spends some nanoseconds, so for
# very short lines (under ``_SHORT_LINE`` octets on average) the count is cheaper again.
_BARE_CR = re.compile(rb"\r(?!\n)").search
_SHORT_LINE = 16


def has_bare_line_ending(data: bytes | bytearray) -> bool:
    """True when ``data`` holds a CR not followed by LF or an LF not preceded by CR."""
    return line_feeds(data) is None


def line_feeds(data: bytes | bytearray) -> int | None:
    """The number of line ends of ``data`` when all are CRLF; None when it holds a CR not
    followed by LF or an LF not preceded by CR (:func:`has_bare_line_ending`).

    The count is a by-product of the check, handed on so that nothing counts the same
    octets again (the MIME scan's line count of a text body, ``scan(tail_lf=...)``).
    """
    lf = data.count(b"\n")
    if data.count(b"\r") != lf:
        return None
    # As many CRs as LFs: a bare LF exists exactly when a bare CR does (every CR followed
    # by an LF would make as many CRLF pairs as LFs), so one kind is enough to look for.
    if lf * _SHORT_LINE > len(data):
        return lf if data.count(b"\r\n") == lf else None
    return lf if _BARE_CR(data) is None else None


def stuff(message: bytes) -> bytes:
    """Dot-stuff ``message`` for DATA and append ``CRLF.CRLF`` (RFC 5321 4.5.2).

    The message should use CRLF line ends (callers refuse bare CR/LF first: relaying them
    is how smuggling reaches the next hop). A missing final CRLF is added.
    """
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
