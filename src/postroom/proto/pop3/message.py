"""Messages on the POP3 wire: size, byte-stuffing, TOP (RFC 1939 sections 3, 5, 7, 11).

Size rule (RFC 1939 section 11): a message's size is counted with CRLF line endings and
*without* the byte-stuffing, since the client removes the stuffing ("lines in the message
which start with the termination octet need not (and must not) be counted twice"). So the
size LIST/STAT report equals the octets a client has after reading a RETR response, minus
the terminating ``.CRLF``. That is also what Dovecot reports.

Stored messages normally end their lines with CRLF already. Others are normalised the same
way by :func:`wire_size` and :func:`retr_body`, so the two always agree: a bare LF becomes
CRLF, and a last line without a line ending gets CRLF. Everything uses ``bytes.count`` /
``replace`` / ``find`` over the whole message: no per-byte Python loop.
"""

from __future__ import annotations

import re

from postroom.proto.pop3.replies import END_MULTILINE

_BARE_LF = re.compile(rb"(?<!\r)\n")


def wire_size(content: bytes) -> int:
    """Octets RETR sends for ``content`` (stored bytes), not counting byte-stuffing."""
    if not content:
        return 0
    size = len(content) + content.count(b"\n") - content.count(b"\r\n")
    if not content.endswith(b"\n"):
        size += 2
    return size


def normalize(content: bytes) -> bytes:
    """``content`` with CRLF line endings throughout and a final CRLF (if not empty)."""
    if not content:
        return content
    if content.count(b"\n") != content.count(b"\r\n"):
        content = _BARE_LF.sub(b"\r\n", content)
    if not content.endswith(b"\n"):
        content += b"\r\n"
    return content


def byte_stuff(normalized: bytes) -> bytes:
    """Prefix every line that starts with "." with another "." (RFC 1939 section 3)."""
    # Most messages have no such line: one search is a third of what replace() costs.
    stuffed = normalized.replace(b"\r\n.", b"\r\n..") if b"\r\n." in normalized else normalized
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def top_part(normalized: bytes, lines: int) -> bytes:
    """Header, the blank line, and the first ``lines`` body lines (RFC 1939 section 7).

    A message without a blank line is all header and is returned whole.
    """
    if normalized.startswith(b"\r\n"):
        body = 2
    else:
        blank = normalized.find(b"\r\n\r\n")
        if blank < 0:
            return normalized
        body = blank + 4
    # split() stops after ``lines`` separators; what remains after them is cut off.
    parts = normalized[body:].split(b"\r\n", lines)
    if len(parts) <= lines:
        return normalized
    return normalized[: len(normalized) - len(parts[-1])]


def retr_body(content: bytes, crlf: bool = False) -> tuple[int, bytes]:
    """(size, wire bytes) for RETR: the stuffed message plus the terminating ".CRLF".

    ``crlf``: the caller guarantees CRLF line ends and a final CRLF (postroom's store
    invariant), so the two scans that check for bare LFs are skipped.
    """
    normalized = content if crlf else normalize(content)
    return len(normalized), byte_stuff(normalized) + END_MULTILINE


def top_body(content: bytes, lines: int, crlf: bool = False) -> bytes:
    """Wire bytes for TOP: the stuffed part plus the terminating ".CRLF"."""
    normalized = content if crlf else normalize(content)
    return byte_stuff(top_part(normalized, lines)) + END_MULTILINE
