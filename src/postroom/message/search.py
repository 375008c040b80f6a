"""Decoded views of a stored message for SEARCH (RFC 9051 6.4.4).

These read the stored bytes at the summary's offsets; they never re-scan the structure.
Decoding is best effort and never raises (see :mod:`postroom.message.encoded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from postroom.message.address import Address
from postroom.message.encoded import decode_charset, decode_raw, decode_transfer, decode_words
from postroom.message.headers import find_fields, unfold
from postroom.message.keys import sent_datetime
from postroom.message.model import Envelope, MessageSummary, SummaryError, root_envelope
from postroom.message.scanner import scan

__all__ = [
    "ENVELOPE_SEARCH_FIELDS",
    "envelope_search_texts",
    "header_values",
    "search_texts_of",
    "sent_date",
    "text_parts",
]

# The envelope fields SEARCH FROM/TO/CC/BCC/SUBJECT match, in the order of the tuple
# that envelope_search_texts() returns.
ENVELOPE_SEARCH_FIELDS = ("from", "to", "cc", "bcc", "subject")

SearchTexts = tuple[str | None, str | None, str | None, str | None, str | None]


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


def envelope_search_texts(summary: MessageSummary) -> SearchTexts:
    """What SEARCH FROM, TO, CC, BCC and SUBJECT match, case-folded (None: no such field).

    RFC 9051 6.4.4 defines these keys on the *envelope structure's* fields, so the text
    is built from the envelope: the subject with RFC 2047 words decoded; an address list
    as ``Name <mailbox@host>, ...`` (names decoded; a group as ``group:``). The result is
    ``str.casefold``-ed, so a case-insensitive substring match is ``needle.casefold() in
    text``, which a store can also evaluate in SQL (``instr``/``strpos``). Computed once
    per message at delivery or APPEND and stored (see ``Store.search_envelope``).
    """
    return _envelope_texts(summary.root.envelope)


def _envelope_texts(env: Envelope | None) -> SearchTexts:
    if env is None:
        return (None, None, None, None, None)
    subject = None if env.subject is None else _clean(decode_words(env.subject)).casefold()
    return (
        _addresses(env.from_), _addresses(env.to), _addresses(env.cc), _addresses(env.bcc),
        subject,
    )


def search_texts_of(summary: bytes, data: bytes) -> SearchTexts:
    """:func:`envelope_search_texts` from a stored summary, re-scanning ``data`` when the
    summary is unreadable (another format version, or none: queue-only blobs)."""
    try:
        return _envelope_texts(root_envelope(summary))  # no MIME tree: see root_envelope
    except SummaryError:
        return envelope_search_texts(scan(data))


def _addresses(addresses: tuple[Address, ...] | None) -> str | None:
    if addresses is None:
        return None
    parts: list[str] = []
    for a in addresses:
        if a.host is None:
            if a.mailbox:
                parts.append(decode_words(a.mailbox) + ":")  # group start; the end is skipped
            continue
        text = decode_raw(a.mailbox or b"") + "@" + decode_raw(a.host)
        if a.name:
            text = decode_words(a.name) + " <" + text + ">"
        parts.append(text)
    return _clean(", ".join(parts)).casefold()


def _clean(text: str) -> str:
    """Drop what cannot be stored as UTF-8 text (lone surrogates from odd charsets)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
