"""Commands of the selected state (RFC 9051 6.4) and their extensions.

CHECK, CLOSE, UNSELECT (RFC 3691), EXPUNGE and UID EXPUNGE (RFC 4315), SEARCH (ESEARCH
RFC 4731, SEARCHRES RFC 5182, CONDSTORE RFC 7162), FETCH (CONDSTORE/QRESYNC modifiers),
STORE (UNCHANGEDSINCE), COPY, MOVE (RFC 6851), SORT and THREAD (RFC 5256); every one of
them also in its UID form where one exists.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from postroom.proto.imap.commands.base import Command, CommandParser, no_arguments
from postroom.proto.imap.fetch import (
    FetchAtt,
    any_sets_seen,
    parse_fetch_atts,
    parse_fetch_modifiers,
)
from postroom.proto.imap.grammar import Parser
from postroom.proto.imap.search import (
    PartialRange,
    SearchKey,
    parse_charset,
    parse_return_spec,
    parse_search_program,
)
from postroom.proto.imap.sequence import SequenceSet, parse_sequence_set

SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
ThreadAlgorithm = Literal["ORDEREDSUBJECT", "REFERENCES"]
THREAD_ALGORITHMS: dict[str, ThreadAlgorithm] = {
    "ORDEREDSUBJECT": "ORDEREDSUBJECT",
    "REFERENCES": "REFERENCES",
}


class StoreMode(enum.Enum):
    """FLAGS replaces, +FLAGS adds, -FLAGS removes (RFC 9051 6.4.6)."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class _UidCommand(Command):
    """Base of the commands that have a UID form: ``uid`` picks it."""

    uid: bool

    @property
    def name(self) -> str:
        return "UID " + self.NAME if self.uid else self.NAME


@dataclass(frozen=True, slots=True)
class Check(Command):
    NAME = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    NAME = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    NAME = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(_UidCommand):
    """EXPUNGE, or UID EXPUNGE of ``uids`` only (RFC 4315 2.1)."""

    NAME = "EXPUNGE"
    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search(_UidCommand):
    """``returns`` None: classic ``* SEARCH``; a set (maybe empty = ALL): ESEARCH (RFC 4731).

    ``charset`` is the Python codec the strings were decoded with (None: none given).
    """

    NAME = "SEARCH"
    key: SearchKey
    charset: str | None = None
    returns: frozenset[str] | None = None
    partial: PartialRange | None = None  # RETURN (PARTIAL a:b), RFC 9394 / RFC 5267 4.4


@dataclass(frozen=True, slots=True)
class Fetch(_UidCommand):
    NAME = "FETCH"
    seqset: SequenceSet
    attributes: tuple[FetchAtt, ...]
    changed_since: int | None = None  # RFC 7162 3.1.4.1
    vanished: bool = False  # RFC 7162 3.2.6
    partial: PartialRange | None = None  # (PARTIAL a:b), RFC 9394 3.3

    @property
    def sets_seen(self) -> bool:
        """Some attribute implicitly sets \\Seen (unless the mailbox is read-only)."""
        return any_sets_seen(self.attributes)


@dataclass(frozen=True, slots=True)
class Store(_UidCommand):
    NAME = "STORE"
    seqset: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    unchanged_since: int | None = None  # RFC 7162 3.1.3


@dataclass(frozen=True, slots=True)
class Copy(_UidCommand):
    NAME = "COPY"
    seqset: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Move(_UidCommand):
    NAME = "MOVE"
    seqset: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Sort(_UidCommand):
    """``criteria``: (key, reverse) pairs in priority order (RFC 5256 3)."""

    NAME = "SORT"
    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    returns: frozenset[str] | None = None  # ESORT (RFC 5267 3): answer with ESEARCH
    partial: PartialRange | None = None


@dataclass(frozen=True, slots=True)
class Thread(_UidCommand):
    NAME = "THREAD"
    algorithm: ThreadAlgorithm
    charset: str
    key: SearchKey


def parse_expunge(p: Parser, tag: str, uid: bool) -> Expunge:
    if not uid:
        return Expunge(tag, False)
    # uid-expunge = "UID" SP "EXPUNGE" SP sequence-set
    p.sp()
    return Expunge(tag, True, parse_sequence_set(p))


def parse_search(p: Parser, tag: str, uid: bool) -> Search:
    # search = "SEARCH" [search-return-opts] SP search-program
    # search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP ...)] ")"
    p.sp()
    returns = partial = None
    if p.try_keyword("RETURN"):
        p.sp()
        returns, partial = parse_return_spec(p)
        p.sp()
    codec = None
    if p.try_keyword("CHARSET"):
        p.sp()
        codec = parse_charset(p)
        p.sp()
    key = parse_search_program(p, codec)
    return Search(tag, uid, key, codec, returns, partial)


def parse_fetch(p: Parser, tag: str, uid: bool) -> Fetch:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    p.sp()
    seqset = parse_sequence_set(p)
    p.sp()
    atts = parse_fetch_atts(p)
    changed_since = partial = None
    vanished = False
    if p.try_sp():
        changed_since, vanished, partial = parse_fetch_modifiers(p, uid=uid)
    return Fetch(tag, uid, seqset, atts, changed_since, vanished, partial)


# store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
_STORE_ITEM = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)
_STORE_MODES = {b"": StoreMode.REPLACE, b"+": StoreMode.ADD, b"-": StoreMode.REMOVE}


def parse_store(p: Parser, tag: str, uid: bool) -> Store:
    # store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
    # store-modifiers = SP "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")"   (RFC 7162)
    p.sp()
    seqset = parse_sequence_set(p)
    p.sp()
    unchanged_since = None
    if p.peek() == 0x28:

        def modifier() -> None:
            nonlocal unchanged_since
            if p.keyword("a STORE modifier") != "UNCHANGEDSINCE":
                raise p.error("Unknown STORE modifier")
            p.sp()
            unchanged_since = p.mod_sequence_valzer()

        p.paren_list(modifier, allow_empty=False)
        p.sp()
    m = p.match(_STORE_ITEM)
    if m is None:
        raise p.error("Expected FLAGS, +FLAGS or -FLAGS")
    mode = _STORE_MODES[m.group(1)]
    silent = m.group(2) is not None
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        items = [p.flag()]
        while p.try_sp():
            items.append(p.flag())
            p.count()
        flags = tuple(dict.fromkeys(items))
    return Store(tag, uid, seqset, mode, flags, silent, unchanged_since)


def _copy_like(cls: type[Copy | Move]) -> Callable[[Parser, str, bool], Command]:
    def parse(p: Parser, tag: str, uid: bool) -> Command:
        # copy = "COPY" SP sequence-set SP mailbox ; move likewise (RFC 6851 3)
        p.sp()
        seqset = parse_sequence_set(p)
        p.sp()
        return cls(tag, uid, seqset, p.mailbox())

    return parse


def _search_criteria(p: Parser) -> tuple[str, SearchKey]:
    # search-criteria = charset 1*(SP search-key)   (RFC 5256 4, charset mandatory)
    codec = parse_charset(p)
    p.sp()
    return codec, parse_search_program(p, codec)


def parse_sort(p: Parser, tag: str, uid: bool) -> Sort:
    # sort = ["UID" SP] "SORT" [search-return-opts] SP sort-criteria SP search-criteria
    # sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"
    # sort-criterion = ["REVERSE" SP] sort-key          (RFC 5256 5, RFC 5267 5)
    p.sp()
    returns = partial = None
    if p.try_keyword("RETURN"):
        p.sp()
        returns, partial = parse_return_spec(p)
        p.sp()

    def criterion() -> tuple[str, bool]:
        reverse = p.try_keyword("REVERSE")
        if reverse:
            p.sp()
        key = p.keyword("a sort key")
        if key not in SORT_KEYS:
            raise p.error("Unknown sort key")
        return key, reverse

    criteria = tuple(p.paren_list(criterion, allow_empty=False))
    p.sp()
    codec, key = _search_criteria(p)
    return Sort(tag, uid, criteria, codec, key, returns, partial)


def parse_thread(p: Parser, tag: str, uid: bool) -> Thread:
    # thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    p.sp()
    algorithm = THREAD_ALGORITHMS.get(p.keyword("a threading algorithm"))
    if algorithm is None:
        raise p.error("Unknown threading algorithm")
    p.sp()
    codec, key = _search_criteria(p)
    return Thread(tag, uid, algorithm, codec, key)


def _both(parse: Callable[[Parser, str, bool], Command], name: str) -> dict[str, CommandParser]:
    return {
        name: lambda p, tag: parse(p, tag, False),
        "UID " + name: lambda p, tag: parse(p, tag, True),
    }


PARSERS: dict[str, CommandParser] = {
    "CHECK": no_arguments(Check),
    "CLOSE": no_arguments(Close),
    "UNSELECT": no_arguments(Unselect),
    **_both(parse_expunge, "EXPUNGE"),
    **_both(parse_search, "SEARCH"),
    **_both(parse_fetch, "FETCH"),
    **_both(parse_store, "STORE"),
    **_both(_copy_like(Copy), "COPY"),
    **_both(_copy_like(Move), "MOVE"),
    **_both(parse_sort, "SORT"),
    **_both(parse_thread, "THREAD"),
}
