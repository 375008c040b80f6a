"""FETCH attributes: the AST and its parser (RFC 9051 6.4.5, RFC 3516, RFC 7162).

``FETCH 1:* (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100>)`` becomes a tuple of
:class:`FetchAtt`. The macros ALL, FAST and FULL are expanded here (RFC 9051 6.4.5).
Each attribute carries ``name``: the exact item name to put in the FETCH response
(``BODY[1.2.HEADER.FIELDS (From To)]<0>``: PEEK dropped, partial reduced to its origin,
RFC 9051 7.5.2), computed once at parse time so the per-message loop does not rebuild it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from postroom.proto.imap import wire
from postroom.proto.imap.grammar import ImapPeerError, Parser, decode_utf8
from postroom.proto.imap.search import PartialRange, parse_partial_range

# Attribute kinds (upper case, as in the response except for the section forms).
ENVELOPE = "ENVELOPE"
FLAGS = "FLAGS"
INTERNALDATE = "INTERNALDATE"
RFC822 = "RFC822"
RFC822_HEADER = "RFC822.HEADER"
RFC822_SIZE = "RFC822.SIZE"
RFC822_TEXT = "RFC822.TEXT"
BODY = "BODY"  # the non-extensible BODYSTRUCTURE
BODYSTRUCTURE = "BODYSTRUCTURE"
UID = "UID"
MODSEQ = "MODSEQ"  # RFC 7162 3.1.4
BODY_SECTION = "BODY[]"  # BODY[section]<partial> and BODY.PEEK[...]
BINARY = "BINARY[]"  # BINARY[part]<partial> and BINARY.PEEK[...] (RFC 3516 4.2)
BINARY_SIZE = "BINARY.SIZE"  # BINARY.SIZE[part] (RFC 3516 4.2)

_SIMPLE = frozenset(
    {
        ENVELOPE,
        FLAGS,
        INTERNALDATE,
        RFC822,
        RFC822_HEADER,
        RFC822_SIZE,
        RFC822_TEXT,
        BODYSTRUCTURE,
        UID,
        MODSEQ,
    }
)

SectionText = Literal["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]


@dataclass(frozen=True, slots=True)
class Section:
    """``section-spec``: a part path (empty: the whole message) and an optional text spec.

    ``fields`` holds the header names of HEADER.FIELDS[.NOT] as the client wrote them
    (compare them case-insensitively).
    """

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        out = b".".join(b"%d" % n for n in self.part)
        if self.text is not None:
            out += (b"." if self.part else b"") + self.text.encode("ascii")
            if self.fields:
                out += b" (" + b" ".join(wire.astring(f) for f in self.fields) + b")"
        return out


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One FETCH data item. ``section`` only for BODY[]/BINARY[]/BINARY.SIZE;
    ``partial`` is (origin, length) of ``<origin.length>``; ``peek`` for the .PEEK forms."""

    kind: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False
    name: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self._response_name())

    def _response_name(self) -> bytes:
        if self.section is None:
            return self.kind.encode("ascii")
        base = b"BODY" if self.kind == BODY_SECTION else self.kind.removesuffix("[]").encode()
        out = base + b"[" + self.section.to_bytes() + b"]"
        if self.partial is not None:
            out += b"<%d>" % self.partial[0]
        return out

    @property
    def sets_seen(self) -> bool:
        """Fetching this marks the message \\Seen (RFC 9051 6.4.5: BODY[], BINARY[], RFC822)."""
        if self.kind in (BODY_SECTION, BINARY):
            return not self.peek
        return self.kind in (RFC822, RFC822_TEXT)


# Macros (RFC 9051 6.4.5).
MACROS: dict[str, tuple[FetchAtt, ...]] = {
    "FAST": (FetchAtt(FLAGS), FetchAtt(INTERNALDATE), FetchAtt(RFC822_SIZE)),
    "ALL": (FetchAtt(FLAGS), FetchAtt(INTERNALDATE), FetchAtt(RFC822_SIZE), FetchAtt(ENVELOPE)),
    "FULL": (
        FetchAtt(FLAGS),
        FetchAtt(INTERNALDATE),
        FetchAtt(RFC822_SIZE),
        FetchAtt(ENVELOPE),
        FetchAtt(BODY),
    ),
}

_NAME = re.compile(rb"[A-Za-z0-9.]+")
_PART = re.compile(rb"\d{1,10}(?:\.\d{1,10})*")
_TEXT = re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.IGNORECASE)
_TEXTS: dict[bytes, SectionText] = {
    b"HEADER.FIELDS.NOT": "HEADER.FIELDS.NOT",
    b"HEADER.FIELDS": "HEADER.FIELDS",
    b"HEADER": "HEADER",
    b"TEXT": "TEXT",
    b"MIME": "MIME",
}
# field-name = 1*ftext ; ftext = %d33-57 / %d59-126 (RFC 5322 3.6.8)
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def any_sets_seen(atts: tuple[FetchAtt, ...]) -> bool:
    return any(a.sets_seen for a in atts)


# Parsed attribute lists by the command text that follows the sequence set: a client
# sends the same FETCH items over and over (one message at a time), and parsing them
# costs more than the rest of the command. Bounded; only text without literals.
_PARSED: dict[bytes, tuple[tuple[FetchAtt, ...], int, int]] = {}
PARSE_CACHE_ENTRIES = 512
PARSE_CACHE_KEY = 1024


def parse_fetch_atts(p: Parser) -> tuple[FetchAtt, ...]:
    """``"ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")"``.

    The result for the same remaining command text is always the same (the parse depends
    on nothing else when there are no literals), so it is remembered (``_PARSED``): the
    parser position and item count advance exactly as a real parse would.
    """
    start = p.pos
    key = p.data[start:] if not p.literals and len(p.data) - start <= PARSE_CACHE_KEY else None
    if key is not None:
        hit = _PARSED.get(key)
        if hit is not None:
            atts, consumed, items = hit
            p.count(items)
            p.pos = start + consumed
            return atts
    items0 = p.items
    atts = _parse_fetch_atts(p)
    if key is not None:
        if len(_PARSED) >= PARSE_CACHE_ENTRIES:
            _PARSED.clear()
        _PARSED[key] = (atts, p.pos - start, p.items - items0)
    return atts


def _parse_fetch_atts(p: Parser) -> tuple[FetchAtt, ...]:
    if p.peek() == 0x28:
        atts = p.paren_list(lambda: _fetch_att(p), allow_empty=False)
        return tuple(dict.fromkeys(atts))
    save = p.pos
    m = p.match(_NAME)
    if m is not None:
        macro = MACROS.get(m.group().upper().decode("ascii"))
        if macro is not None:
            return macro
    p.pos = save
    return (_fetch_att(p),)


def _fetch_att(p: Parser) -> FetchAtt:
    m = p.match(_NAME)
    if m is None:
        raise p.error("Expected a FETCH attribute")
    word = m.group().upper().decode("ascii")
    if p.peek() != 0x5B:  # no "[": a plain attribute
        if word in _SIMPLE or word == BODY:
            return FetchAtt(word)
        raise p.error("Unknown FETCH attribute")
    if word in ("BODY", "BODY.PEEK"):
        section = _section(p)
        return FetchAtt(BODY_SECTION, section, _partial(p), word == "BODY.PEEK")
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        section = _binary_section(p)
        if word == "BINARY.SIZE":
            return FetchAtt(BINARY_SIZE, section)
        return FetchAtt(BINARY, section, _partial(p), word == "BINARY.PEEK")
    raise p.error("Unknown FETCH attribute")


def _section(p: Parser) -> Section:
    # section = "[" [section-spec] "]"
    # section-spec = section-msgtext / (section-part ["." section-text])
    # section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
    # section-text = section-msgtext / "MIME"
    p.expect_char(b"[", "'['")
    part = _part_numbers(p)
    text: SectionText | None = None
    fields: tuple[str, ...] = ()
    if not part or p.try_char(b"."):
        m = p.match(_TEXT)
        if m is not None:
            text = _TEXTS[m.group().upper()]
            if text == "MIME" and not part:
                raise p.error("MIME needs a part number")
            if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
                p.sp()
                fields = tuple(p.paren_list(lambda: _field_name(p), allow_empty=False))
        elif part:
            raise p.error("Invalid section")
    p.expect_char(b"]", "']'")
    return Section(part, text, fields)


def _binary_section(p: Parser) -> Section:
    # section-binary = "[" [section-part] "]" (RFC 3516 4.2)
    p.expect_char(b"[", "'['")
    part = _part_numbers(p)
    p.expect_char(b"]", "']'")
    return Section(part)


def _part_numbers(p: Parser) -> tuple[int, ...]:
    # section-part = nz-number *("." nz-number)
    m = p.match(_PART)
    if m is None:
        return ()
    part = tuple(int(n) for n in m.group().split(b"."))
    if 0 in part:
        raise p.error("Section part numbers start at 1")
    p.count(len(part))
    return part


def _field_name(p: Parser) -> str:
    name = decode_utf8(p.astring(), "header field name")
    if _FIELD_NAME.fullmatch(name) is None:
        raise ImapPeerError("Invalid header field name")
    return name


def _partial(p: Parser) -> tuple[int, int] | None:
    # partial = "<" number64 "." nz-number64 ">"
    if not p.try_char(b"<"):
        return None
    origin = p.number64()
    p.expect_char(b".", "'.' in partial")
    length = p.number(maximum=0x7FFFFFFFFFFFFFFF, nonzero=True)
    p.expect_char(b">", "'>'")
    return origin, length


def parse_fetch_modifiers(
    p: Parser, *, uid: bool
) -> tuple[int | None, bool, PartialRange | None]:
    """``"(" fetch-modifier *(SP fetch-modifier) ")"`` → (CHANGEDSINCE, VANISHED, PARTIAL).

    RFC 7162 3.1.4.1 / 3.2.6: CHANGEDSINCE takes mod-sequence-valzer; VANISHED needs
    UID FETCH and CHANGEDSINCE. RFC 9394 3.3 and 4: ``modifier-partial = "PARTIAL" SP
    partial-range``, the same range as SEARCH RETURN (PARTIAL); the grammar puts it in
    ``fetch-modifier``, so plain FETCH takes it too. A modifier given twice is BAD.
    """
    changed_since: int | None = None
    vanished = False
    partial: PartialRange | None = None
    seen: set[str] = set()

    def modifier() -> None:
        nonlocal changed_since, vanished, partial
        word = p.keyword("a FETCH modifier")
        if word in seen:
            raise p.error(f"{word} given twice")
        seen.add(word)
        if word == "CHANGEDSINCE":
            p.sp()
            changed_since = p.mod_sequence_valzer()
        elif word == "VANISHED":
            vanished = True
        elif word == "PARTIAL":
            p.sp()
            partial = parse_partial_range(p)
        else:
            raise p.error("Unknown FETCH modifier")

    p.paren_list(modifier, allow_empty=False)
    if vanished and (not uid or changed_since is None):
        raise p.error("VANISHED needs UID FETCH and CHANGEDSINCE")
    return changed_since, vanished, partial
