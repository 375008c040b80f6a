"""Response serialization: status lines, codes, untagged data, FETCH."""

from __future__ import annotations

import datetime

import pytest

from postroom.proto.imap import responses as r
from postroom.proto.imap import wire
from postroom.proto.imap.grammar import ImapUsageError
from postroom.proto.imap.sequence import RangeSet


def test_status_lines() -> None:
    assert r.ok("a1", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert r.no("a1", "No such mailbox", r.TRYCREATE) == b"a1 NO [TRYCREATE] No such mailbox\r\n"
    assert r.bad(b"a1", "Syntax") == b"a1 BAD Syntax\r\n"
    assert r.tagged("a1", r.OK, "done", r.READ_WRITE) == b"a1 OK [READ-WRITE] done\r\n"
    assert r.untagged(r.OK, "hi", r.code_uidvalidity(3857529045)) == (
        b"* OK [UIDVALIDITY 3857529045] hi\r\n"
    )
    assert r.bye() == b"* BYE Logging out\r\n"
    assert r.bye("Idle for too long", r.UNAVAILABLE) == b"* BYE [UNAVAILABLE] Idle for too long\r\n"
    assert r.greeting("postroom ready", r.code_capability(["IMAP4rev1", "IMAP4rev2"])) == (
        b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2] postroom ready\r\n"
    )
    assert r.preauth("welcome") == b"* PREAUTH welcome\r\n"


def test_text_is_sanitized() -> None:
    assert r.ok("a", "two\r\nlines\x00") == b"a OK two  lines \r\n"
    assert r.no("a", "x", "BAD]CODE\r\n") == b"a NO [BAD CODE  ] x\r\n"
    with pytest.raises(ImapUsageError):
        r.ok("a", "")


CODES = [
    (
        r.code_permanentflags(["\\Deleted", "\\Seen", "\\*"]),
        "PERMANENTFLAGS (\\Deleted \\Seen \\*)",
    ),
    (r.code_uidnext(4392), "UIDNEXT 4392"),
    (r.code_unseen(12), "UNSEEN 12"),
    (r.code_highestmodseq(715194045007), "HIGHESTMODSEQ 715194045007"),
    (r.code_appenduid(38505, [3955]), "APPENDUID 38505 3955"),
    (r.code_appenduid(38505, [3955, 3956, 3958]), "APPENDUID 38505 3955:3956,3958"),
    (
        r.code_copyuid(38505, [304, 319, 320], [3956, 3957, 3958]),
        "COPYUID 38505 304,319:320 3956:3958",
    ),
    (r.code_modified(RangeSet([(7, 7), (9, 9)])), "MODIFIED 7,9"),
    (r.code_modified([7, 8, 9]), "MODIFIED 7:9"),
    (r.code_badcharset(["UTF-8"]), "BADCHARSET (UTF-8)"),
    (r.code_badcharset(), "BADCHARSET"),
    (r.code_appendlimit(1000), "APPENDLIMIT 1000"),
]


@pytest.mark.parametrize(("code", "text"), CODES)
def test_codes(code: str, text: str) -> None:
    assert code == text


def test_simple_codes_spelled_right() -> None:
    assert (r.READ_ONLY, r.READ_WRITE, r.UNKNOWN_CTE) == ("READ-ONLY", "READ-WRITE", "UNKNOWN-CTE")
    for name in (
        "ALERT",
        "PARSE",
        "TRYCREATE",
        "NOMODSEQ",
        "CLOSED",
        "NONEXISTENT",
        "ALREADYEXISTS",
        "AUTHENTICATIONFAILED",
        "AUTHORIZATIONFAILED",
        "CANNOT",
        "LIMIT",
        "OVERQUOTA",
        "SERVERBUG",
        "UNAVAILABLE",
        "INUSE",
        "TOOBIG",
        "EXPUNGEISSUED",
        "CONTACTADMIN",
        "PRIVACYREQUIRED",
        "EXPIRED",
        "NOPERM",
        "CLIENTBUG",
        "CORRUPTION",
        "HASCHILDREN",
        "COMPRESSIONACTIVE",
        "UIDNOTSTICKY",
        "NOTSAVED",
        "USEATTR",
    ):
        assert getattr(r, name) == name


def test_continuations() -> None:
    assert r.continuation() == b"+ Ready for literal data\r\n"
    assert r.continuation("idling") == b"+ idling\r\n"
    assert r.continuation_data(b"") == b"+ \r\n"
    assert r.continuation_data(b"r=abc") == b"+ cj1hYmM=\r\n"


def test_untagged_data() -> None:
    assert r.capability(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert r.flags(["\\Answered", "\\Seen", "$Forwarded"]) == (
        b"* FLAGS (\\Answered \\Seen $Forwarded)\r\n"
    )
    assert r.exists(23) == b"* 23 EXISTS\r\n"
    assert r.recent(5) == b"* 5 RECENT\r\n"
    assert r.expunge(3) == b"* 3 EXPUNGE\r\n"
    assert r.vanished([41, 43, 44, 45]) == b"* VANISHED 41,43:45\r\n"
    assert r.vanished(RangeSet([(1, 5)]), earlier=True) == b"* VANISHED (EARLIER) 1:5\r\n"
    assert r.enabled(["CONDSTORE", "QRESYNC"]) == b"* ENABLED CONDSTORE QRESYNC\r\n"
    assert r.enabled([]) == b"* ENABLED\r\n"
    assert r.search([2, 3, 6]) == b"* SEARCH 2 3 6\r\n"
    assert r.search([]) == b"* SEARCH\r\n"
    assert r.search([2, 10], modseq=917162500) == b"* SEARCH 2 10 (MODSEQ 917162500)\r\n"
    assert r.search([], modseq=5) == b"* SEARCH\r\n"
    assert r.sort([5, 3, 4]) == b"* SORT 5 3 4\r\n"


def test_list_responses() -> None:
    assert r.list_response("INBOX", ["\\HasNoChildren"]) == (
        b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
    )
    assert r.list_response("Entwürfe", ["\\Drafts"]) == b'* LIST (\\Drafts) "/" "Entw&APw-rfe"\r\n'
    assert r.list_response("Entwürfe", [], utf8=True) == '* LIST () "/" "Entwürfe"\r\n'.encode()
    assert r.list_response('a"b', []) == b'* LIST () "/" "a\\"b"\r\n'
    assert r.list_response("NIL", [], delimiter=None) == b'* LIST () NIL "NIL"\r\n'
    assert r.list_response("Foo", ["\\NonExistent"], childinfo=["SUBSCRIBED"]) == (
        b'* LIST (\\NonExistent) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert r.list_response("New", [], oldname="Old") == (
        b'* LIST () "/" "New" ("OLDNAME" ("Old"))\r\n'
    )
    assert r.lsub("INBOX", ["\\Noselect"]) == b'* LSUB (\\Noselect) "/" "INBOX"\r\n'


def test_list_utf8_name_with_line_break_becomes_literal() -> None:
    assert r.quoted_utf8(b"a\r\nb") == b"{4}\r\na\r\nb"


def test_status_response() -> None:
    assert r.status("blurdybloop", [("MESSAGES", 231), ("UIDNEXT", 44292)]) == (
        b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n'
    )


def test_esearch() -> None:
    assert r.esearch("A282", minimum=2, count=3) == b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    assert r.esearch("a", uid=True, all_=[1, 2, 3, 5], maximum=5) == (
        b'* ESEARCH (TAG "a") UID MAX 5 ALL 1:3,5\r\n'
    )
    assert r.esearch("a", count=0, all_=[]) == b'* ESEARCH (TAG "a") COUNT 0\r\n'
    assert r.esearch(None, modseq=7, count=1) == b"* ESEARCH COUNT 1 MODSEQ 7\r\n"


def test_namespace_id_quota() -> None:
    assert r.namespace([("", "/")]) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.namespace([("", "/")], [("Other/", "/")], None) == (
        b'* NAMESPACE (("" "/")) (("Other/" "/")) NIL\r\n'
    )
    assert r.id_response([("name", "postroom"), ("version", None)]) == (
        b'* ID ("name" "postroom" "version" NIL)\r\n'
    )
    assert r.id_response(None) == b"* ID NIL\r\n"
    assert r.quota("", [("STORAGE", 10, 512)]) == b'* QUOTA "" (STORAGE 10 512)\r\n'
    assert r.quotaroot("INBOX", [""]) == b'* QUOTAROOT "INBOX" ""\r\n'


def test_thread() -> None:
    threads = [[2], [3, 6, [4, 23], [44, 7, 96]]]
    assert r.thread(threads) == b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n"
    assert r.thread([[[1], [2]]]) == b"* THREAD ((1)(2))\r\n"
    assert r.thread([]) == b"* THREAD \r\n"


def test_internaldate() -> None:
    tz = datetime.timezone(-datetime.timedelta(hours=7))
    value = datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)
    assert r.internaldate(value) == b'"17-Jul-1996 02:44:25 -0700"'
    ist = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert r.internaldate(datetime.datetime(2020, 1, 5, tzinfo=ist)) == (
        b'"05-Jan-2020 00:00:00 +0530"'
    )
    assert r.internaldate(datetime.datetime(2020, 1, 5)) == b'"05-Jan-2020 00:00:00 +0000"'


def test_fetch() -> None:
    tz = datetime.timezone(-datetime.timedelta(hours=7))
    line = r.fetch(
        12,
        [
            ("FLAGS", ("\\Seen",)),
            ("UID", 4827313),
            ("INTERNALDATE", datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)),
            ("RFC822.SIZE", 44827),
            (b"MODSEQ", 624140003),
            ("BODY[]<0>", wire.literal(b"Hello")),
            ("BINARY[1]", r.literal8(b"a\x00b")),
            ("ENVELOPE", b'("date" NIL)'),
            ("X-NIL", None),
            ("X-STR", "hi"),
        ],
    )
    assert line == (
        b'* 12 FETCH (FLAGS (\\Seen) UID 4827313 INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
        b"RFC822.SIZE 44827 MODSEQ (624140003) BODY[]<0> {5}\r\nHello BINARY[1] ~{3}\r\na\x00b "
        b'ENVELOPE ("date" NIL) X-NIL NIL X-STR "hi")\r\n'
    )
    assert r.fetch(1, [("FLAGS", [])]) == b"* 1 FETCH (FLAGS ())\r\n"
    with pytest.raises(ImapUsageError):
        r.fetch(1, [("X", object())])  # type: ignore[list-item]
