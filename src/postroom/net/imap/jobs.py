"""What IMAP runs in worker processes (:mod:`postroom.net.offload`): pure functions.

Each takes and returns plain values (bytes, str, tuples): they cross a pipe, and trees of
frozen dataclasses pickle slowly (a 10,000-part ``MessageSummary`` takes longer to pickle
than to parse). The shell sends only work that would hold the event loop for long:

* :func:`text_hits`: which SEARCH needles occur in one big message (header text, body
  text, named header fields), for messages over ``BIG_MESSAGE`` octets or with a huge
  summary (decoding a 50 MB text part is one long C call);
* :func:`thread_rows`: THREAD over many messages or many references;
* :func:`render_items`: FETCH items that need the MIME tree of a message with a huge
  summary (BODYSTRUCTURE of 10,000 parts: about 0.3 s of Python), or HEADER.FIELDS of
  a header with thousands of fields;
* :func:`light_of`: the light view (SORT/THREAD/SEARCH keys) of a huge summary.

The same helpers serve the shell when it evaluates small messages itself, so both paths
give the same answers.
"""

from __future__ import annotations

from postroom.deliver import summarize
from postroom.message import MessageSummary, SummaryError, text_parts
from postroom.message.encoded import decode_words
from postroom.message.headers import find_fields, unfold
from postroom.net.imap.light import Light, light
from postroom.net.imap.thread import Item, thread_response
from postroom.proto.imap.fetch import FetchAtt
from postroom.proto.imap.grammar import ImapPeerError

# A message this big (or whose stored summary is HUGE_SUMMARY or more) is searched in a
# worker process.
BIG_MESSAGE = 1024 * 1024
HUGE_SUMMARY = 64 * 1024
# A header block this big is searched (SEARCH HEADER/TEXT) and filtered (FETCH
# HEADER.FIELDS) in a worker process: both walk it field by field in Python.
BIG_HEADER = 64 * 1024

# (header-text needles found, body-text needles found, (field, needle) pairs found)
Hits = tuple[frozenset[str], frozenset[str], frozenset[tuple[str, str]]]
ItemRow = tuple[int, int, int, str, bool, "str | None", str, "str | None"]


def parse_summary(raw: bytes, data: bytes | None) -> MessageSummary | None:
    """The stored summary, re-scanned from ``data`` when unreadable (another version)."""
    try:
        return MessageSummary.from_bytes(raw)
    except SummaryError:
        return None if data is None else MessageSummary.from_bytes(summarize(data))


def header_text(data: bytes, start: int, end: int) -> str:
    """What SEARCH TEXT matches in the header: RFC 2047 words decoded, case-folded."""
    return decode_words(data[start:end]).casefold()


def body_text(data: bytes, summary: MessageSummary) -> str:
    """What SEARCH BODY and TEXT match in the body: decoded text parts, case-folded."""
    return "\n".join(text_parts(data, summary)).casefold()


def field_matches(data: bytes, start: int, end: int, field: str, needle: str) -> bool:
    """SEARCH HEADER ``field`` ``needle`` (case-folded) against ``data[start:end]``: a
    decoded value contains it; an empty needle asks whether the field exists."""
    found = find_fields(data, (field.encode("utf-8"),), start, end)
    if not needle:
        return next(found, None) is not None
    return any(needle in decode_words(unfold(m.group(2))).casefold() for m in found)


def text_hits(data: bytes, raw_summary: bytes, header: tuple[int, int],
              header_needles: tuple[str, ...], body_needles: tuple[str, ...],
              fields: tuple[tuple[str, str], ...]) -> Hits:
    """Which needles (case-folded) occur in the message: see the module docstring.
    ``header`` is the (start, end) of the top-level header block; the summary is only
    parsed for body needles."""
    start, end = header
    in_header: frozenset[str] = frozenset()
    if header_needles:
        text = header_text(data, start, end)
        in_header = frozenset(n for n in header_needles if n in text)
    in_body: frozenset[str] = frozenset()
    if body_needles:
        summary = parse_summary(raw_summary, data)
        if summary is not None:
            text = body_text(data, summary)
            in_body = frozenset(n for n in body_needles if n in text)
    return in_header, in_body, fields_matching(data, start, end, fields)


def fields_matching(data: bytes, start: int, end: int,
                    pairs: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    """The (field, needle) pairs of SEARCH HEADER keys that ``data[start:end]`` matches,
    in one pass over the header whatever the number of keys (:func:`field_matches`)."""
    if not pairs:
        return frozenset()
    by_name: dict[bytes, list[tuple[str, str]]] = {}
    for field, needle in pairs:
        by_name.setdefault(field.encode("utf-8").lower(), []).append((field, needle))
    found: set[tuple[str, str]] = set()
    for m in find_fields(data, tuple(by_name), start, end):
        wanted = [p for p in by_name[m.group(1).lower()] if p not in found]
        if not wanted:
            continue
        value = decode_words(unfold(m.group(2))).casefold()
        found.update(p for p in wanted if p[1] in value)  # "" is in every value: exists
    return frozenset(found)


def light_of(raw_summary: bytes) -> Light | None:
    """:func:`~postroom.net.imap.light.light` of a huge summary: its JSON holds the whole
    MIME tree (a megabyte for 10,000 parts), decoded to read a few top-level fields."""
    return light(raw_summary)


def item_row(i: Item) -> ItemRow:
    """An :class:`Item` as a flat tuple; the references as one space-separated string
    (message ids never contain whitespace, ``keys.msg_ids``). Pickling a list of tuples
    of a few strings is fast; pickling hundreds of thousands of small strings is one long
    C call that holds the GIL, and so the event loop, for as long as it runs."""
    return (i.number, i.seq, i.date, i.subject, i.reply, i.message_id,
            " ".join(i.references), i.in_reply_to)


def thread_rows(algorithm: str, rows: list[ItemRow]) -> bytes:
    """The ``* THREAD`` response for the :func:`item_row` of each matching message."""
    items = [Item(n, seq, date, subject, reply, mid, tuple(refs.split()) if refs else (), irt)
             for n, seq, date, subject, reply, mid, refs, irt in rows]
    return thread_response(algorithm, items)


def render_items(atts: tuple[FetchAtt, ...], raw_summary: bytes, data: bytes | None,
                 rev2: bool, tag: str) -> tuple[bytes, ...] | None:
    """The FETCH items ``atts`` that need the MIME tree, for a message whose stored summary
    is huge; None when a part's transfer encoding is unknown (BINARY: the shell answers
    ``NO [UNKNOWN-CTE]``). ``data`` may be the header block alone (header items only)."""
    from postroom.net.imap.fetch import _Renderer  # (fetch imports this module)

    summary = MessageSummary.from_bytes(raw_summary)
    renderer = _Renderer.for_items(rev2, tag)
    try:
        return tuple(renderer.item(att, summary, data) for att in atts)
    except ImapPeerError:
        return None
