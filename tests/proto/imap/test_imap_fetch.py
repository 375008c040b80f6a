"""FETCH attributes: every item, sections, partials, macros, modifiers, response names."""

from __future__ import annotations

import pytest
from imap_driver import drive_both

from postroom.proto.imap.commands import Fetch, State
from postroom.proto.imap.fetch import (
    BINARY,
    BINARY_SIZE,
    BODY_SECTION,
    MACROS,
    FetchAtt,
    Section,
    parse_fetch_atts,
    parse_fetch_modifiers,
)
from postroom.proto.imap.grammar import ImapPeerError, Parser
from postroom.proto.imap.receiver import ConnectionClosed
from postroom.proto.imap.sequence import SequenceSet


def atts(data: bytes) -> tuple[FetchAtt, ...]:
    p = Parser(data)
    result = parse_fetch_atts(p)
    p.expect_end()
    return result


SIMPLE = [
    "ENVELOPE",
    "FLAGS",
    "INTERNALDATE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.SIZE",
    "RFC822.TEXT",
    "BODY",
    "BODYSTRUCTURE",
    "UID",
    "MODSEQ",
]


@pytest.mark.parametrize("name", SIMPLE)
def test_simple_attributes(name: str) -> None:
    assert atts(name.lower().encode()) == (FetchAtt(name),)
    assert atts(b"(" + name.encode() + b")") == (FetchAtt(name),)
    assert FetchAtt(name).name == name.encode()


@pytest.mark.parametrize("macro", ["ALL", "FAST", "FULL"])
def test_macros(macro: str) -> None:
    assert atts(macro.encode()) == MACROS[macro]
    with pytest.raises(ImapPeerError):
        atts(b"(" + macro.encode() + b")")  # macros are not attributes


SECTIONS = [
    (b"BODY[]", FetchAtt(BODY_SECTION, Section()), b"BODY[]"),
    (b"BODY.PEEK[]", FetchAtt(BODY_SECTION, Section(), peek=True), b"BODY[]"),
    (b"BODY[HEADER]", FetchAtt(BODY_SECTION, Section((), "HEADER")), b"BODY[HEADER]"),
    (b"body[text]", FetchAtt(BODY_SECTION, Section((), "TEXT")), b"BODY[TEXT]"),
    (b"BODY[1]", FetchAtt(BODY_SECTION, Section((1,))), b"BODY[1]"),
    (b"BODY[1.2.3]", FetchAtt(BODY_SECTION, Section((1, 2, 3))), b"BODY[1.2.3]"),
    (b"BODY[1.2.MIME]", FetchAtt(BODY_SECTION, Section((1, 2), "MIME")), b"BODY[1.2.MIME]"),
    (b"BODY[2.HEADER]", FetchAtt(BODY_SECTION, Section((2,), "HEADER")), b"BODY[2.HEADER]"),
    (b"BODY[3.TEXT]", FetchAtt(BODY_SECTION, Section((3,), "TEXT")), b"BODY[3.TEXT]"),
    (
        b"BODY.PEEK[HEADER.FIELDS (From To cc)]",
        FetchAtt(BODY_SECTION, Section((), "HEADER.FIELDS", ("From", "To", "cc")), peek=True),
        b"BODY[HEADER.FIELDS (From To cc)]",
    ),
    (
        b'BODY[1.HEADER.FIELDS.NOT ("Received" X-Foo)]',
        FetchAtt(BODY_SECTION, Section((1,), "HEADER.FIELDS.NOT", ("Received", "X-Foo"))),
        b"BODY[1.HEADER.FIELDS.NOT (Received X-Foo)]",
    ),
    (
        b"BODY[]<0.2048>",
        FetchAtt(BODY_SECTION, Section(), (0, 2048)),
        b"BODY[]<0>",
    ),
    (
        b"BODY.PEEK[1.TEXT]<100.50>",
        FetchAtt(BODY_SECTION, Section((1,), "TEXT"), (100, 50), True),
        b"BODY[1.TEXT]<100>",
    ),
    (b"BINARY[]", FetchAtt(BINARY, Section()), b"BINARY[]"),
    (b"BINARY[1.2]", FetchAtt(BINARY, Section((1, 2))), b"BINARY[1.2]"),
    (
        b"BINARY.PEEK[1]<0.10>",
        FetchAtt(BINARY, Section((1,)), (0, 10), True),
        b"BINARY[1]<0>",
    ),
    (b"BINARY.SIZE[1]", FetchAtt(BINARY_SIZE, Section((1,))), b"BINARY.SIZE[1]"),
    (b"BINARY.SIZE[]", FetchAtt(BINARY_SIZE, Section()), b"BINARY.SIZE[]"),
]


@pytest.mark.parametrize(("data", "att", "name"), SECTIONS)
def test_sections(data: bytes, att: FetchAtt, name: bytes) -> None:
    assert atts(data) == (att,)
    assert att.name == name


BAD = [
    b"()",
    b"(FLAGS",
    b"(FLAGS  UID)",
    b"BOGUS",
    b"BODY[",
    b"BODY[0]",
    b"BODY[1.]",
    b"BODY[.1]",
    b"BODY[MIME]",
    b"BODY[HEADER.FIELDS]",
    b"BODY[HEADER.FIELDS ()]",
    b"BODY[HEADER.FIELDS (a:b)]",
    b"BODY[HEADER.FIELDS.NOTX (a)]",
    b"BODY[TEXTX]",
    b"BODY[1.FOO]",
    b"BODY[]<0>",
    b"BODY[]<0.0>",
    b"BODY[]<x.1>",
    b"BODY[] <0.1>",
    b"BODY.PEEK",
    b"BINARY",
    b"BINARY[HEADER]",
    b"BINARY.SIZE[1]<0.1>",
    b"BODYSTRUCTURE[]",
    b"FLAGS[]",
    b"RFC822[]",
]


@pytest.mark.parametrize("data", BAD)
def test_bad_attributes(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        atts(data)


def test_duplicates_collapse_and_order_kept() -> None:
    assert atts(b"(UID FLAGS UID)") == (FetchAtt("UID"), FetchAtt("FLAGS"))


def test_sets_seen() -> None:
    assert FetchAtt(BODY_SECTION, Section()).sets_seen
    assert not FetchAtt(BODY_SECTION, Section(), peek=True).sets_seen
    assert FetchAtt(BINARY, Section()).sets_seen
    assert not FetchAtt(BINARY_SIZE, Section()).sets_seen
    assert FetchAtt("RFC822").sets_seen
    assert FetchAtt("RFC822.TEXT").sets_seen
    assert not FetchAtt("RFC822.HEADER").sets_seen
    assert not FetchAtt("BODY").sets_seen


@pytest.mark.parametrize(
    ("data", "uid", "result"),
    [
        (b"(CHANGEDSINCE 5)", False, (5, False, None)),
        (b"(changedsince 0)", False, (0, False, None)),
        (b"(CHANGEDSINCE 5 VANISHED)", True, (5, True, None)),
        (b"(VANISHED CHANGEDSINCE 5)", True, (5, True, None)),
        # RFC 9394 3.3: PARTIAL, with the range ordered as SEARCH RETURN (PARTIAL) has it
        (b"(PARTIAL 1:30)", True, (None, False, (1, 30))),
        (b"(PARTIAL 30:1)", True, (None, False, (1, 30))),
        (b"(partial -1:-30)", True, (None, False, (-1, -30))),
        (b"(PARTIAL -30:-1 CHANGEDSINCE 9)", False, (9, False, (-1, -30))),
        (b"(CHANGEDSINCE 9 VANISHED PARTIAL 5:5)", True, (9, True, (5, 5))),
    ],
)
def test_modifiers(data: bytes, uid: bool, result: tuple[int, bool, object]) -> None:
    assert parse_fetch_modifiers(Parser(data), uid=uid) == result


@pytest.mark.parametrize(
    ("data", "uid"),
    [(b"()", True), (b"(VANISHED)", True), (b"(CHANGEDSINCE 5 VANISHED)", False), (b"(FOO)", True),
     (b"(PARTIAL)", True), (b"(PARTIAL 0:5)", True), (b"(PARTIAL -1:5)", True),
     (b"(PARTIAL 1:-5)", True), (b"(PARTIAL 1:2 PARTIAL 3:4)", True), (b"(PARTIAL *:5)", True),
     (b"(CHANGEDSINCE 1 CHANGEDSINCE 2)", True)],
)
def test_bad_modifiers(data: bytes, uid: bool) -> None:
    with pytest.raises(ImapPeerError):
        parse_fetch_modifiers(Parser(data), uid=uid)


@pytest.mark.parametrize(("data", "att", "name"), SECTIONS)
def test_sections_through_receiver(data: bytes, att: FetchAtt, name: bytes) -> None:
    events = drive_both(b"a1 FETCH 1:* (UID " + data + b")\r\n", state=State.SELECTED)
    assert events == [
        Fetch("a1", False, SequenceSet.parse("1:*"), (FetchAtt("UID"), att)),
        ConnectionClosed(),
    ]


def test_repeated_attribute_lists_parse_alike_from_the_cache() -> None:
    text = b"(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From To)]<0.100>) (CHANGEDSINCE 5)"
    first = Parser(text)
    a1 = parse_fetch_atts(first)
    second = Parser(b"xx" + text, pos=2)
    a2 = parse_fetch_atts(second)
    assert a1 == a2 and [a.name for a in a1] == [a.name for a in a2]
    assert second.pos - 2 == first.pos and second.items == first.items > 0
    # the item limit still applies to a remembered list
    small = Parser(text, max_items=first.items - 1)
    with pytest.raises(ImapPeerError):
        parse_fetch_atts(small)
    # errors are never remembered
    for _ in range(2):
        with pytest.raises(ImapPeerError):
            atts(b"(UID BOGUS)")
