"""FETCH BODY[section]<partial> and BINARY[section] from stored bytes + parse summary.

Sections are served by slicing the stored message at the summary's offsets; nothing is
re-scanned. Only HEADER.FIELDS[.NOT] builds new bytes (one regex over the header block).

Part numbers (RFC 9051 6.4.5): the top-level message is a message entity. Walking a part
path, a number selects the n-th child of a multipart; a non-multipart entity only has
part 1, itself ("non-multipart messages ... only have a part 1"); when the path goes on
below a message/rfc822 (or message/global) part, it continues inside the encapsulated
message. So for a message/rfc822 part 3: ``3`` is the whole encapsulated message,
``3.HEADER``/``3.TEXT`` its header and body, ``3.1`` its first part (or its body when it
is not multipart), ``3.1.MIME`` that part's MIME header.

A part number that does not exist, and HEADER/TEXT on a part that is not a message,
yield the empty string, as Dovecot does (a FETCH must not fail because a client guessed
a part number). Misuse of the API — a MIME spec without part number, an unknown text
spec, bytes that are not the summarised message — raises :class:`ValueError`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from postroom.message import MessageSummary, Part
from postroom.message.encoded import decode_transfer

__all__ = [
    "TEXT_SPECS",
    "SectionSpec",
    "UnknownCTE",
    "apply_partial",
    "binary_size",
    "decode_part",
    "extract",
    "find_part",
]

HEADER = "HEADER"
HEADER_FIELDS = "HEADER.FIELDS"
HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
TEXT = "TEXT"
MIME = "MIME"
TEXT_SPECS = frozenset({None, HEADER, HEADER_FIELDS, HEADER_FIELDS_NOT, TEXT, MIME})

_CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """``section`` of FETCH BODY[...] / BINARY[...] (RFC 9051 6.4.5).

    *part*: part path, e.g. ``(1, 2)`` for "1.2"; empty for the whole message.
    *text*: None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME".
    *fields*: header field names for HEADER.FIELDS[.NOT] (any case, str or bytes).
    *partial*: ``<origin.length>`` as (origin, length), applied after extraction.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str | bytes, ...] = ()
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class UnknownCTE:
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode.

    The caller answers ``NO [UNKNOWN-CTE]`` (RFC 3516 4.3, RFC 9051 7.1).
    """

    encoding: str


def find_part(summary: MessageSummary, path: tuple[int, ...]) -> Part | None:
    """The part a non-empty part path designates, or None when there is no such part."""
    node = summary.root
    last = len(path) - 1
    for i, number in enumerate(path):
        if node.multipart:
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1:
            return None
        if i < last and not node.multipart:
            # going deeper below a non-multipart: only into an encapsulated message
            if node.message is None:
                return None
            node = node.message
    return node


def _check(data: bytes, summary: MessageSummary) -> None:
    if len(data) != summary.size:
        raise ValueError(
            f"message is {len(data)} octets but its summary describes {summary.size}"
        )


def apply_partial(raw: bytes, partial: tuple[int, int] | None) -> bytes:
    """``<origin.length>``: the octets from *origin*, at most *length* of them."""
    if partial is None:
        return raw
    origin, length = partial
    if origin < 0 or length < 0:
        raise ValueError("partial origin and length must be non-negative")
    return raw[origin : origin + length]


def _slice(data: bytes, start: int, end: int, partial: tuple[int, int] | None) -> bytes:
    """``data[start:end]`` with the partial applied, copying only once."""
    if partial is not None:
        origin, length = partial
        if origin < 0 or length < 0:
            raise ValueError("partial origin and length must be non-negative")
        start, end = min(start + origin, end), min(start + origin + length, end)
    return data[start:end]


_FIELD_TAIL = rb"[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?"
# Every field, for requests naming more than ALTERNATION_MAX fields: matching each line
# against thousands of alternatives took seconds over a big header (issue 9), so then
# every field is matched once and its name looked up (RFC 5322 2.2 field-name chars).
_ANY_FIELD = re.compile(rb"(?m)^([!-9;-~]+)" + _FIELD_TAIL)
ALTERNATION_MAX = 32


@functools.lru_cache(maxsize=256)
def _fields_regex(names: frozenset[bytes]) -> re.Pattern[bytes]:
    """Whole fields (continuation lines and final line break included) named in *names*."""
    alternatives = b"|".join(re.escape(n) for n in sorted(names))
    return re.compile(rb"(?mi)^(?:" + alternatives + rb")" + _FIELD_TAIL)


def _matching_fields(data: bytes, names: frozenset[bytes], start: int, end: int) -> Iterator[re.Match[bytes]]:
    if len(names) <= ALTERNATION_MAX:
        yield from _fields_regex(names).finditer(data, start, end)
        return
    for m in _ANY_FIELD.finditer(data, start, end):
        if m.group(1).lower() in names:
            yield m


@functools.lru_cache(maxsize=256)  # one FETCH asks the same fields of every message
def _field_names(fields: tuple[str | bytes, ...]) -> frozenset[bytes]:
    return frozenset(
        (f.encode("utf-8") if isinstance(f, str) else f).lower() for f in fields if f
    )


def _header_fields(data: bytes, entity: Part, fields: tuple[str | bytes, ...], *,
                   exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT of a message entity.

    Fields keep their message order and their folded lines; the result always ends with
    the blank line (RFC 9051 6.4.5: the blank line is part of every header section).
    """
    start, end = entity.header_start, entity.header_end
    names = _field_names(fields)
    if not names:
        return (data[start:end] if exclude else b"") + _CRLF
    out: list[bytes] = []
    pos = start
    for m in _matching_fields(data, names, start, end):
        if exclude:
            out.append(data[pos : m.start()])
            pos = m.end()
        else:
            out.append(m.group())
            if not m.group().endswith(b"\n"):
                out.append(_CRLF)  # last line of a header that has no blank line
    if exclude:
        tail = data[pos:end]
        out.append(tail)
        if tail and not tail.endswith(b"\n"):
            out.append(_CRLF)
    out.append(_CRLF)
    return b"".join(out)


def extract(data: bytes, summary: MessageSummary, spec: SectionSpec) -> bytes:
    """The octets of BODY[section]<partial> (RFC 9051 6.4.5), b"" for missing parts."""
    _check(data, summary)
    text = spec.text
    if text not in TEXT_SPECS:
        raise ValueError(f"unknown section text {text!r}")
    partial = spec.partial

    if not spec.part:
        entity: Part | None = summary.root
        if text is None:
            return _slice(data, 0, len(data), partial)
        if text == MIME:
            raise ValueError("MIME needs a part number (RFC 9051 section-text)")
    else:
        node = find_part(summary, spec.part)
        if node is None:
            return b""
        if text is None:
            return _slice(data, node.body_start, node.body_end, partial)
        if text == MIME:
            return _slice(data, node.header_start, node.body_start, partial)
        # HEADER/TEXT/HEADER.FIELDS address the message inside a message/rfc822 part
        entity = node.message

    if entity is None:
        return b""
    if text == HEADER:
        return _slice(data, entity.header_start, entity.body_start, partial)
    if text == TEXT:
        return _slice(data, entity.body_start, entity.body_end, partial)
    raw = _header_fields(data, entity, spec.fields, exclude=text == HEADER_FIELDS_NOT)
    return apply_partial(raw, partial)


def decode_part(data: bytes, summary: MessageSummary,
                path: tuple[int, ...]) -> bytes | UnknownCTE:
    """BINARY[path]: the part's body with its Content-Transfer-Encoding undone (RFC 3516).

    Base64 is decoded leniently (junk ignored, padding repaired), quoted-printable per
    RFC 2045 6.7; 7bit/8bit/binary are returned as they are, as are multipart and message
    parts (their encoding must be one of those). An empty path means the whole message:
    returned as stored, except that a non-multipart message has its body decoded after its
    header (the header is not rewritten). A missing part gives b"".
    """
    _check(data, summary)
    if path:
        node = find_part(summary, path)
        if node is None:
            return b""
        body = data[node.body_start : node.body_end]
        if node.multipart:
            return body
        decoded = decode_transfer(body, node.encoding)
        if decoded is None:
            return UnknownCTE(node.encoding or "")
        return decoded
    root = summary.root
    if root.multipart or root.encoding is None:
        return data
    decoded = decode_transfer(data[root.body_start : root.body_end], root.encoding)
    if decoded is None:
        return UnknownCTE(root.encoding)
    return data[root.header_start : root.body_start] + decoded


def binary_size(data: bytes, summary: MessageSummary,
                path: tuple[int, ...]) -> int | UnknownCTE:
    """BINARY.SIZE[path]: octets :func:`decode_part` would return (decoded on demand)."""
    result = decode_part(data, summary, path)
    if isinstance(result, UnknownCTE):
        return result
    return len(result)
