"""SEARCH keys: the AST and its parser (RFC 9051 6.4.4, RFC 3501 6.4.4, RFC 7162, RFC 5032).

A search program becomes a tree of frozen dataclasses. Several keys in a row (and a
parenthesised group) mean AND: :class:`And`. Flag keys are normalized so the executor has
fewer cases: ``UNSEEN`` is ``FlagKey(SEEN, present=False)``, ``NEW`` is
``And(RECENT, NOT SEEN)``, ``OLD`` is ``FlagKey(RECENT, False)``, header shortcuts (FROM,
TO, CC, BCC, SUBJECT) are :class:`HeaderKey` with a lower-case field name.

Strings are decoded to ``str`` here, with the command's CHARSET (default UTF-8, a superset
of the US-ASCII default of RFC 3501). An unknown charset is ``NO [BADCHARSET (...)]``
(RFC 9051 6.4.4). Nesting is bounded twice: parentheses by the parser's depth limit, and
NOT/OR chains by :data:`MAX_KEY_DEPTH` (clients build long OR chains, but never hundreds);
search strings by their total size (:data:`MAX_SEARCH_TEXT`).
"""

from __future__ import annotations

import codecs
import datetime
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Literal, TypeVar

from postroom.proto.imap.grammar import (
    ANSWERED,
    BAD,
    DELETED,
    DRAFT,
    FLAGGED,
    NO,
    RECENT,
    SEEN,
    ImapPeerError,
    Parser,
    decode_utf8,
)
from postroom.proto.imap.sequence import SequenceSet, parse_sequence_set

T = TypeVar("T")

MAX_KEY_DEPTH = 100
# Octets of search strings in one program. Every message is compared with every string,
# and one comparison cannot be interrupted: a thousand 64 KiB literals (within the
# command limits) made each message cost tens of milliseconds of the event loop. Real
# clients send a few words; Dovecot caps a whole command at 64 KiB.
MAX_SEARCH_TEXT = 64 * 1024

# Charsets we decode search strings in. Advertised in BADCHARSET: the two we must support
# (RFC 9051 6.4.4); the others are accepted because real clients send them.
ADVERTISED_CHARSETS = ("US-ASCII", "UTF-8")
_ACCEPTED_CODECS = frozenset(
    codecs.lookup(name).name
    for name in (
        "ascii",
        "utf-8",
        "latin-1",
        "iso8859-2",
        "iso8859-3",
        "iso8859-4",
        "iso8859-5",
        "iso8859-6",
        "iso8859-7",
        "iso8859-8",
        "iso8859-9",
        "iso8859-10",
        "iso8859-13",
        "iso8859-14",
        "iso8859-15",
        "iso8859-16",
        "cp1250",
        "cp1251",
        "cp1252",
        "cp1253",
        "cp1254",
        "cp1255",
        "cp1256",
        "cp1257",
        "cp1258",
        "koi8-r",
        "koi8-u",
        "gb2312",
        "gbk",
        "gb18030",
        "big5",
        "euc_jp",
        "iso2022_jp",
        "shift_jis",
        "euc_kr",
    )
)

# RFC 4731, RFC 5182 (SAVE), RFC 5267 4 (CONTEXT, UPDATE; PARTIAL carries a range)
RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE", "PARTIAL"})


class SearchKey:
    """Base class of every search key node."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AllKey(SearchKey):
    """ALL: every message."""


@dataclass(frozen=True, slots=True)
class FlagKey(SearchKey):
    """The message has (``present``) or lacks the flag (system flag or keyword)."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey(SearchKey):
    """Header ``field`` (lower case) contains ``value``; empty value: the field exists."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class TextKey(SearchKey):
    """BODY (body only) or TEXT (header and body) contains ``value``."""

    where: Literal["BODY", "TEXT"]
    value: str


@dataclass(frozen=True, slots=True)
class DateKey(SearchKey):
    """Internal date (INTERNAL) or Date: header (SENT) is BEFORE/ON/SINCE ``date``.

    Dates compare without time or zone (RFC 9051 6.4.4).
    """

    field: Literal["INTERNAL", "SENT"]
    op: Literal["BEFORE", "ON", "SINCE"]
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SizeKey(SearchKey):
    """RFC822.SIZE is LARGER or SMALLER than ``size``."""

    op: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class AgeKey(SearchKey):
    """Internal date is OLDER or YOUNGER than ``seconds`` before now (RFC 5032)."""

    op: Literal["OLDER", "YOUNGER"]
    seconds: int


@dataclass(frozen=True, slots=True)
class SeqKey(SearchKey):
    """Message numbers (``uid`` False) or UIDs in the set (may use "$", RFC 5182)."""

    seqset: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ModSeqKey(SearchKey):
    """MODSEQ >= ``modseq``, optionally of one flag's metadata entry (RFC 7162 3.1.5)."""

    modseq: int
    entry: str | None = None
    entry_type: Literal["priv", "shared", "all"] | None = None


@dataclass(frozen=True, slots=True)
class Not(SearchKey):
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Or(SearchKey):
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class And(SearchKey):
    keys: tuple[SearchKey, ...]


_FLAG_KEYS: dict[str, tuple[str, bool]] = {
    "ANSWERED": (ANSWERED, True),
    "DELETED": (DELETED, True),
    "DRAFT": (DRAFT, True),
    "FLAGGED": (FLAGGED, True),
    "SEEN": (SEEN, True),
    "RECENT": (RECENT, True),
    "OLD": (RECENT, False),
    "UNANSWERED": (ANSWERED, False),
    "UNDELETED": (DELETED, False),
    "UNDRAFT": (DRAFT, False),
    "UNFLAGGED": (FLAGGED, False),
    "UNSEEN": (SEEN, False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS: dict[str, tuple[Literal["INTERNAL", "SENT"], Literal["BEFORE", "ON", "SINCE"]]] = {
    "BEFORE": ("INTERNAL", "BEFORE"),
    "ON": ("INTERNAL", "ON"),
    "SINCE": ("INTERNAL", "SINCE"),
    "SENTBEFORE": ("SENT", "BEFORE"),
    "SENTON": ("SENT", "ON"),
    "SENTSINCE": ("SENT", "SINCE"),
}
_KEYS_WITH_ARGUMENTS = frozenset(
    {
        *_HEADER_KEYS,
        *_DATE_KEYS,
        "BODY",
        "TEXT",
        "HEADER",
        "KEYWORD",
        "UNKEYWORD",
        "LARGER",
        "SMALLER",
        "OLDER",
        "YOUNGER",
        "UID",
        "NOT",
        "OR",
        "MODSEQ",
    }
)
_ENTRY_TYPES: dict[str, Literal["priv", "shared", "all"]] = {
    "priv": "priv",
    "shared": "shared",
    "all": "all",
}
_SEQ_START = frozenset(b"0123456789*$")


def lookup_charset(name: str) -> str:
    """Python codec name for a CHARSET argument, or ``NO [BADCHARSET ...]``."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = ""
    if codec not in _ACCEPTED_CODECS:
        raise ImapPeerError(
            "Unsupported charset",
            status=NO,
            code="BADCHARSET (" + " ".join(ADVERTISED_CHARSETS) + ")",
        )
    return codec


def parse_charset(p: Parser) -> str:
    """``charset = atom / quoted`` → Python codec name."""
    raw = p.quoted() if p.peek() == 0x22 else p.atom("a charset")
    return lookup_charset(raw.decode("ascii", "replace"))


class _SearchParser:
    __slots__ = ("codec", "key_depth", "p", "text_octets")

    def __init__(self, p: Parser, codec: str | None) -> None:
        self.p = p
        self.codec = codec
        self.key_depth = 0
        self.text_octets = 0

    def text(self) -> str:
        raw = self.p.astring()
        self.text_octets += len(raw)
        if self.text_octets > MAX_SEARCH_TEXT:
            raise self.p.error("Search strings too long", code="LIMIT")
        if self.codec is None or self.codec == "utf-8":
            return decode_utf8(raw, "search string")
        try:
            return raw.decode(self.codec)
        except UnicodeDecodeError:
            raise ImapPeerError("Search string is not valid in its charset") from None

    def program(self) -> SearchKey:
        # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key)
        keys = [self.key()]
        while self.p.try_sp():
            keys.append(self.key())
        return keys[0] if len(keys) == 1 else And(tuple(keys))

    def key(self) -> SearchKey:
        p = self.p
        p.count()
        c = p.peek()
        if c == 0x28:  # "(" search-key *(SP search-key) ")"
            p.open_paren()
            keys = [self.key()]
            while not p.close_paren():
                p.sp()
                keys.append(self.key())
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if c in _SEQ_START:
            return SeqKey(parse_sequence_set(p))
        word = p.keyword("a search key")
        flag = _FLAG_KEYS.get(word)
        if flag is not None:
            return FlagKey(*flag)
        if word == "ALL":
            return AllKey()
        if word == "NEW":
            return And((FlagKey(RECENT, True), FlagKey(SEEN, False)))
        if word not in _KEYS_WITH_ARGUMENTS:
            raise p.error("Unknown search key")
        p.sp()
        header = _HEADER_KEYS.get(word)
        if header is not None:
            return HeaderKey(header, self.text())
        date_key = _DATE_KEYS.get(word)
        if date_key is not None:
            return DateKey(date_key[0], date_key[1], p.date())
        if word in ("BODY", "TEXT"):
            return TextKey("BODY" if word == "BODY" else "TEXT", self.text())
        if word == "HEADER":
            name = decode_utf8(p.astring(), "header name").lower()
            p.sp()
            return HeaderKey(name, self.text())
        if word in ("KEYWORD", "UNKEYWORD"):
            return FlagKey(p.atom("a keyword").decode("ascii"), word == "KEYWORD")
        if word == "LARGER":
            return SizeKey("LARGER", p.number64())
        if word == "SMALLER":
            return SizeKey("SMALLER", p.number64())
        if word == "OLDER":
            return AgeKey("OLDER", p.nz_number())
        if word == "YOUNGER":
            return AgeKey("YOUNGER", p.nz_number())
        if word == "UID":
            return SeqKey(parse_sequence_set(p), uid=True)
        if word == "NOT":
            return Not(self.nested())
        if word == "OR":
            left = self.nested()
            p.sp()
            return Or(left, self.nested())
        return self.modseq()  # the only one left: "MODSEQ"

    def nested(self) -> SearchKey:
        self.key_depth += 1
        if self.key_depth > MAX_KEY_DEPTH:
            raise self.p.error("Search keys nested too deeply", code="LIMIT")
        key = self.key()
        self.key_depth -= 1
        return key

    def modseq(self) -> ModSeqKey:
        # "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
        # search-modseq-ext = SP entry-name SP entry-type-req (RFC 7162 7)
        p = self.p
        if p.peek() == 0x22:
            entry = decode_utf8(p.quoted(), "entry name")
            if not entry.lower().startswith("/flags/"):
                raise p.error("Invalid MODSEQ entry name")
            p.sp()
            kind = _ENTRY_TYPES.get(p.atom("an entry type").decode("ascii").lower())
            if kind is None:
                raise p.error("Invalid MODSEQ entry type")
            p.sp()
            return ModSeqKey(p.mod_sequence_valzer(), entry, kind)
        return ModSeqKey(p.mod_sequence_valzer())


def parse_search_program(p: Parser, codec: str | None = None) -> SearchKey:
    """Search keys at the cursor; ``codec`` from :func:`parse_charset` or None (UTF-8)."""
    return _SearchParser(p, codec).program()


PartialRange = tuple[int, int]


def parse_return_spec(p: Parser) -> tuple[frozenset[str], PartialRange | None]:
    """Return options and the PARTIAL range, if any (RFC 4731, RFC 5267 4, RFC 9394 4).

    ``partial-range = nz-number ":" nz-number / "-" nz-number ":" "-" nz-number``; the
    range comes back ordered (``4:2`` is ``2:4``, ``-1:-5`` is ``-5:-1`` as written
    ``-1:-5``: (first, last) with first the one nearer the end the count starts from).
    PARTIAL and ALL exclude each other.
    """
    partial: PartialRange | None = None

    def option() -> str:
        nonlocal partial
        word = p.keyword("a RETURN option")
        if word not in RETURN_OPTIONS:
            raise ImapPeerError("Unknown SEARCH RETURN option", status=BAD)
        if word == "PARTIAL":
            if partial is not None:
                raise ImapPeerError("PARTIAL given twice", status=BAD)
            p.sp()
            partial = parse_partial_range(p)
        return word

    options = frozenset(p.paren_list(option))
    if partial is not None and "ALL" in options:
        raise ImapPeerError("PARTIAL and ALL cannot be combined", status=BAD)
    return options, partial


def parse_partial_range(p: Parser) -> PartialRange:
    """``partial-range`` (RFC 9394 4), ordered as :func:`parse_return_spec` explains."""
    negative = p.try_char(b"-")
    first = p.nz_number()
    p.expect_char(b":", "':' in the PARTIAL range")
    if negative:
        p.expect_char(b"-", "'-' in the PARTIAL range")
    last = p.nz_number()
    low, high = min(first, last), max(first, last)
    return (-low, -high) if negative else (low, high)


def partial_items(numbers: Sequence[T], partial: PartialRange | None) -> Sequence[T]:
    """The members ``PARTIAL first:last`` selects (RFC 9394 3.1, 3.3): 1-based positions
    in ``numbers``, counted from the end when negative (-1 is the last)."""
    if partial is None:
        return numbers
    first, last = partial
    if first > 0:
        return numbers[first - 1 : last]
    n = len(numbers)
    start, stop = max(n + last, 0), n + first + 1  # -1:-3 = the last three
    return numbers[start:stop] if stop > 0 else []
