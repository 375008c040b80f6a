"""Decoded views of a stored message for SEARCH (RFC 9051 6.4.4).

These read the stored bytes at the summary's offsets; they never re-scan the structure.
Decoding is best effort and never raises (see :mod:`postroom.message.encoded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from postroom.message.encoded import decode_charset, decode_transfer, decode_words
from postroom.message.headers import find_fields, unfold
from postroom.message.keys import sent_datetime
from postroom.message.model import MessageSummary

__all__ = ["header_values", "sent_date", "text_parts"]


def header_values(data: bytes, summary: MessageSummary, name: str | bytes) -> list[str]:
    """Decoded values of every top-level header field called *name*, in message order.

    For SEARCH FROM/TO/CC/BCC/SUBJECT/HEADER: unfolded (RFC 5322 2.2.3), RFC 2047 words
    decoded, 8-bit text decoded as UTF-8 (else Latin-1), surrounding whitespace removed.
    *name* is case-insensitive. Only the header block is read, so *data* may be the stored
    message or just its first ``summary.root.body_start`` bytes.
    """
    key = (name.encode("utf-8") if isinstance(name, str) else name).lower()
    if not key:
        return []
    root = summary.root
    return [
        decode_words(unfold(m.group(2))).strip()
        for m in find_fields(data, (key,), root.header_start, root.header_end)
    ]


def text_parts(data: bytes, summary: MessageSummary) -> Iterator[str]:
    """Decoded text of every text/* leaf part, encapsulated messages included.

    For SEARCH BODY/TEXT: the Content-Transfer-Encoding is undone (unknown encodings are
    searched as they are), then the charset is decoded with errors replaced. HTML parts
    are yielded as they are; stripping markup is the caller's choice.
    """
    for part in summary.root.walk():
        if part.multipart or part.type != "text":
            continue
        body = data[part.body_start : part.body_end]
        decoded = decode_transfer(body, part.encoding)
        yield decode_charset(body if decoded is None else decoded, part.charset)


def sent_date(summary: MessageSummary) -> datetime | None:
    """The Date header as an aware datetime in the sender's zone, None when unusable.

    For SENTBEFORE/SENTON/SENTSINCE (compare ``.date()``, RFC 9051 6.4.4 ignores time and
    zone) and SORT DATE (compare the instant). None: use INTERNALDATE (RFC 5256 2.2).
    """
    return sent_datetime(summary.sent_date)
