"""Receive buffer with generator readers, shared by every sans-IO core.

A core's parser is written as a generator that reads like blocking code::

    line = yield from reader.read_line(MAX_LINE)
    literal = yield from reader.read_exact(n)

Each reader yields (to say "I need more bytes") until it can return. The core drives the
generator after each ``feed_data`` call; when it yields, the core returns "need data" to
its caller. Every reader takes its limit as a required argument, so nothing can buffer
without bound: a line that grows past its limit raises :class:`LineTooLong` after the
buffered part is dropped, and the caller decides whether to skip the rest of the line
(``skip_line``) and answer, or to close the connection.

This idea is borrowed from websockets' ``StreamReader``; the code is ours.
"""

from __future__ import annotations

from collections.abc import Generator

# A reader generator yields None while it waits and returns its result.
Reader = Generator[None, None, bytes]


class LineTooLong(Exception):
    """A line exceeded the limit passed to :meth:`StreamReader.read_line`.

    The buffered part of the line has been discarded; the rest (up to the next LF) is
    still to come and can be dropped with :meth:`StreamReader.skip_line`.
    """


class UnexpectedEOF(Exception):
    """The peer closed the stream in the middle of something the reader was waiting for."""


class StreamReader:
    """Bytes received and not yet consumed, plus the end-of-stream flag."""

    __slots__ = ("buffer", "eof")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False

    def feed_data(self, data: bytes) -> None:
        self.buffer += data

    def feed_eof(self) -> None:
        self.eof = True

    def discard(self) -> None:
        """Drop everything buffered (STARTTLS: bytes after the command must not survive)."""
        del self.buffer[:]

    def __len__(self) -> int:
        return len(self.buffer)

    def read_line(self, max_len: int) -> Reader:
        """Return one line including its terminating LF (so callers can see CRLF vs LF).

        ``max_len`` counts the LF. On overflow the buffered bytes are dropped and
        :class:`LineTooLong` is raised; at end of stream :class:`UnexpectedEOF`.
        """
        start = 0
        while True:
            pos = self.buffer.find(b"\n", start)
            if pos >= 0:
                if pos + 1 > max_len:
                    del self.buffer[: pos + 1]
                    # The whole over-long line arrived at once: nothing left to skip,
                    # so tell the caller through the exception's argument.
                    raise LineTooLong(True)
                line = bytes(self.buffer[: pos + 1])
                del self.buffer[: pos + 1]
                return line
            start = len(self.buffer)
            if start >= max_len:
                del self.buffer[:]
                raise LineTooLong(False)
            if self.eof:
                raise UnexpectedEOF()
            yield

    def skip_line(self) -> Reader:
        """Discard bytes up to and including the next LF, without buffering them."""
        while True:
            pos = self.buffer.find(b"\n")
            if pos >= 0:
                del self.buffer[: pos + 1]
                return b""
            del self.buffer[:]
            if self.eof:
                raise UnexpectedEOF()
            yield

    def read_exact(self, n: int) -> Reader:
        """Return exactly ``n`` bytes. The caller has already checked ``n`` against its limit."""
        if n < 0:
            raise ValueError("negative length")
        while len(self.buffer) < n:
            if self.eof:
                raise UnexpectedEOF()
            yield
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def skip_exact(self, n: int) -> Reader:
        """Discard exactly ``n`` bytes without holding more than one read in memory."""
        while n > 0:
            if not self.buffer:
                if self.eof:
                    raise UnexpectedEOF()
                yield
                continue
            k = min(n, len(self.buffer))
            del self.buffer[:k]
            n -= k
        return b""

    def at_eof(self) -> bool:
        return self.eof and not self.buffer
