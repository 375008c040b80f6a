"""MIME structure scanning with byte offsets, and what IMAP and SEARCH derive from it.

:func:`scan` reads a stored message once (at delivery or APPEND) and returns a
:class:`MessageSummary`: the MIME tree with byte offsets of every header and body, the
ENVELOPE of every message, and SORT/THREAD keys. The summary is stored beside the message
(:meth:`MessageSummary.to_bytes` / :meth:`MessageSummary.from_bytes`); FETCH ENVELOPE,
BODYSTRUCTURE and BODY[section] are then answered from it by
:mod:`postroom.proto.imap.bodystructure` and :mod:`postroom.proto.imap.sections`, and
SEARCH uses :func:`header_values` and :func:`text_parts`.

Nothing here performs I/O; nothing raises on malformed messages.
"""

from postroom.message.address import MISSING_HOST, MISSING_MAILBOX, Address
from postroom.message.keys import base_subject, casemap
from postroom.message.model import (
    Envelope,
    MessageSummary,
    Part,
    SummaryError,
    SummaryVersionError,
)
from postroom.message.scanner import MAX_DEPTH, MAX_FIELD_VALUE, MAX_PARTS, scan
from postroom.message.search import (
    ENVELOPE_SEARCH_FIELDS,
    envelope_search_texts,
    header_values,
    search_texts_of,
    sent_date,
    text_parts,
)

__all__ = [
    "ENVELOPE_SEARCH_FIELDS",
    "MAX_DEPTH",
    "MAX_FIELD_VALUE",
    "MAX_PARTS",
    "MISSING_HOST",
    "MISSING_MAILBOX",
    "Address",
    "Envelope",
    "MessageSummary",
    "Part",
    "SummaryError",
    "SummaryVersionError",
    "base_subject",
    "casemap",
    "envelope_search_texts",
    "header_values",
    "scan",
    "search_texts_of",
    "sent_date",
    "text_parts",
]
