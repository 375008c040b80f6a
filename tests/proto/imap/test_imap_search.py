"""SEARCH keys: every key of RFC 9051/3501, CONDSTORE MODSEQ, RFC 5032, charsets, limits."""

from __future__ import annotations

import datetime

import pytest
from imap_driver import drive_both

from postroom.proto.imap.commands import Search, State
from postroom.proto.imap.grammar import ImapPeerError, Parser
from postroom.proto.imap.receiver import ConnectionClosed, ContinuationRequest
from postroom.proto.imap.search import (
    AgeKey,
    AllKey,
    And,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    Not,
    Or,
    SearchKey,
    SeqKey,
    SizeKey,
    TextKey,
    lookup_charset,
    parse_search_program,
)
from postroom.proto.imap.sequence import SequenceSet


def search(data: bytes, codec: str | None = None, literals: tuple[bytes, ...] = ()) -> SearchKey:
    p = Parser(data, literals)
    key = parse_search_program(p, codec)
    p.expect_end()
    return key


D = datetime.date(1994, 2, 1)

KEYS: list[tuple[bytes, SearchKey]] = [
    (b"ALL", AllKey()),
    (b"ANSWERED", FlagKey("\\Answered")),
    (b"DELETED", FlagKey("\\Deleted")),
    (b"DRAFT", FlagKey("\\Draft")),
    (b"FLAGGED", FlagKey("\\Flagged")),
    (b"SEEN", FlagKey("\\Seen")),
    (b"RECENT", FlagKey("\\Recent")),
    (b"OLD", FlagKey("\\Recent", False)),
    (b"NEW", And((FlagKey("\\Recent"), FlagKey("\\Seen", False)))),
    (b"UNANSWERED", FlagKey("\\Answered", False)),
    (b"UNDELETED", FlagKey("\\Deleted", False)),
    (b"UNDRAFT", FlagKey("\\Draft", False)),
    (b"UNFLAGGED", FlagKey("\\Flagged", False)),
    (b"unseen", FlagKey("\\Seen", False)),
    (b"KEYWORD $Forwarded", FlagKey("$Forwarded")),
    (b"UNKEYWORD Junk", FlagKey("Junk", False)),
    (b"BCC bob", HeaderKey("bcc", "bob")),
    (b'CC "Bob Smith"', HeaderKey("cc", "Bob Smith")),
    (b"FROM smith", HeaderKey("from", "smith")),
    (b"SUBJECT {5}\r\n", HeaderKey("subject", "hello")),
    (b"TO alice", HeaderKey("to", "alice")),
    (b'HEADER X-Spam-Flag ""', HeaderKey("x-spam-flag", "")),
    (b"HEADER Message-ID <abc@x>", HeaderKey("message-id", "<abc@x>")),
    (b"BODY word", TextKey("BODY", "word")),
    (b'TEXT "two words"', TextKey("TEXT", "two words")),
    (b"BEFORE 1-Feb-1994", DateKey("INTERNAL", "BEFORE", D)),
    (b"ON 1-Feb-1994", DateKey("INTERNAL", "ON", D)),
    (b'SINCE "1-Feb-1994"', DateKey("INTERNAL", "SINCE", D)),
    (b"SENTBEFORE 1-Feb-1994", DateKey("SENT", "BEFORE", D)),
    (b"SENTON 1-Feb-1994", DateKey("SENT", "ON", D)),
    (b"SENTSINCE 1-Feb-1994", DateKey("SENT", "SINCE", D)),
    (b"LARGER 1000", SizeKey("LARGER", 1000)),
    (b"SMALLER 9223372036854775807", SizeKey("SMALLER", 2**63 - 1)),
    (b"OLDER 3600", AgeKey("OLDER", 3600)),
    (b"YOUNGER 60", AgeKey("YOUNGER", 60)),
    (b"UID 1:*", SeqKey(SequenceSet.parse("1:*"), uid=True)),
    (b"UID $", SeqKey(SequenceSet.parse("$"), uid=True)),
    (b"2:4,7", SeqKey(SequenceSet.parse("2:4,7"))),
    (b"*", SeqKey(SequenceSet.parse("*"))),
    (b"$", SeqKey(SequenceSet.parse("$"))),
    (b"NOT SEEN", Not(FlagKey("\\Seen"))),
    (b"OR SEEN FLAGGED", Or(FlagKey("\\Seen"), FlagKey("\\Flagged"))),
    (b"MODSEQ 620162338", ModSeqKey(620162338)),
    (b"MODSEQ 0", ModSeqKey(0)),
    (
        b'MODSEQ "/flags/\\\\draft" all 620162338',
        ModSeqKey(620162338, "/flags/\\draft", "all"),
    ),
    (b"(SEEN)", FlagKey("\\Seen")),
    (b"(SEEN FLAGGED)", And((FlagKey("\\Seen"), FlagKey("\\Flagged")))),
    (
        b"OR (FROM a TO b) NOT (SEEN 1:3)",
        Or(
            And((HeaderKey("from", "a"), HeaderKey("to", "b"))),
            Not(And((FlagKey("\\Seen"), SeqKey(SequenceSet.parse("1:3"))))),
        ),
    ),
    (
        b"FLAGGED SINCE 1-Feb-1994 NOT FROM Smith",
        And(
            (
                FlagKey("\\Flagged"),
                DateKey("INTERNAL", "SINCE", D),
                Not(HeaderKey("from", "Smith")),
            )
        ),
    ),
]


@pytest.mark.parametrize(("data", "key"), KEYS)
def test_search_keys(data: bytes, key: SearchKey) -> None:
    assert search(data, literals=(b"hello",)) == key


BAD_PROGRAMS = [
    b"",
    b"BOGUS",
    b"FROM",
    b"SEEN  FLAGGED",
    b"(SEEN",
    b"()",
    b"NOT",
    b"OR SEEN",
    b"BEFORE 32-Jan-2000",
    b"LARGER x",
    b"LARGER 99999999999999999999",
    b"OLDER 0",
    b"UID",
    b"UID 0",
    b"KEYWORD \\Seen",
    b'MODSEQ "/foo" all 1',
    b'MODSEQ "/flags/x" nope 1',
    b"MODSEQ x",
    b"SEEN)",
]


@pytest.mark.parametrize("data", BAD_PROGRAMS)
def test_bad_programs(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        search(data)


def test_charsets() -> None:
    assert search(b"SUBJECT {4}\r\n", "latin-1", (b"caf\xe9",)) == HeaderKey("subject", "café")
    assert search(b'SUBJECT "caf\xc3\xa9"') == HeaderKey("subject", "café")
    with pytest.raises(ImapPeerError):
        search(b"SUBJECT {4}\r\n", None, (b"caf\xe9",))  # not UTF-8
    with pytest.raises(ImapPeerError):
        search(b"SUBJECT {2}\r\n", "ascii", (b"\xe9x",))
    assert lookup_charset("UTF-8") == "utf-8"
    assert lookup_charset("us-ascii") == "ascii"
    assert lookup_charset("ISO-8859-1") == "iso8859-1"
    for bogus in ("base64", "rot13", "idna", "x-unknown", "utf-7"):
        with pytest.raises(ImapPeerError) as exc:
            lookup_charset(bogus)
        assert exc.value.status == "NO" and exc.value.code is not None
        assert exc.value.code.startswith("BADCHARSET")


def test_not_chains_are_bounded() -> None:
    assert search(b"NOT " * 100 + b"SEEN") is not None
    with pytest.raises(ImapPeerError):
        search(b"NOT " * 101 + b"SEEN")
    with pytest.raises(ImapPeerError):
        search(b"OR SEEN " * 101 + b"SEEN")
    # thousands of nested NOTs must not reach Python's recursion limit
    with pytest.raises(ImapPeerError):
        search(b"NOT " * 5000 + b"SEEN")


def test_parentheses_are_bounded() -> None:
    assert search(b"(" * 16 + b"SEEN" + b")" * 16) == FlagKey("\\Seen")
    with pytest.raises(ImapPeerError):
        search(b"(" * 17 + b"SEEN" + b")" * 17)


def test_search_strings_are_bounded_in_total() -> None:
    """Each message is compared with every string: their total size is capped (issue 9)."""
    big = b"x" * 30_000
    key = search(b"TEXT {30000}\r\n BODY {30000}\r\n", literals=(big, big))
    assert key == And((TextKey("TEXT", big.decode()), TextKey("BODY", big.decode())))
    with pytest.raises(ImapPeerError) as exc:
        search(b"TEXT {30000}\r\n BODY {30000}\r\n SUBJECT {30000}\r\n", literals=(big, big, big))
    assert exc.value.code == "LIMIT"


def test_item_count_is_bounded() -> None:
    p = Parser(b" ".join([b"SEEN"] * 20), max_items=19)
    with pytest.raises(ImapPeerError):
        parse_search_program(p)


@pytest.mark.parametrize(("data", "key"), KEYS)
def test_search_keys_through_receiver(data: bytes, key: SearchKey) -> None:
    wire = b"a1 UID SEARCH " + data.replace(b"{5}\r\n", b"{5}\r\nhello") + b"\r\n"
    events = [
        e
        for e in drive_both(wire, state=State.SELECTED)
        if not isinstance(e, (ContinuationRequest, ConnectionClosed))
    ]
    assert events == [Search("a1", True, key)]
