"""Every command: wire bytes → typed command, through the receiver, whole and bytewise."""

from __future__ import annotations

import datetime

import pytest
from imap_driver import Refused, drive_both

from postroom.proto.imap import commands as c
from postroom.proto.imap.commands import State, StoreMode
from postroom.proto.imap.fetch import BODY_SECTION, FetchAtt, Section
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.receiver import ConnectionClosed, ContinuationRequest
from postroom.proto.imap.search import AllKey, DateKey, FlagKey, HeaderKey, SeqKey
from postroom.proto.imap.sequence import SequenceSet

NA = State.NOT_AUTHENTICATED
AU = State.AUTHENTICATED
SE = State.SELECTED
UTC = datetime.UTC


def one(data: bytes, state: State = SE, utf8: bool = False) -> object:
    """The single command (or refusal) ``data`` produces."""
    events = [
        e
        for e in drive_both(data, state=state, utf8=utf8)
        if not isinstance(e, (ContinuationRequest, ConnectionClosed))
    ]
    assert len(events) == 1, events
    return events[0]


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


TABLE: list[tuple[State, bytes, object]] = [
    # --- any state / not authenticated ---
    (NA, b"a1 CAPABILITY\r\n", c.Capability("a1")),
    (SE, b"a1 capability\r\n", c.Capability("a1")),
    (NA, b"a1 NOOP\r\n", c.Noop("a1")),
    (AU, b"a1 LOGOUT\r\n", c.Logout("a1")),
    (NA, b"a1 STARTTLS\r\n", c.StartTls("a1")),
    (NA, b"a1 AUTHENTICATE plain\r\n", c.Authenticate("a1", "PLAIN", None)),
    (NA, b"a1 AUTHENTICATE PLAIN =\r\n", c.Authenticate("a1", "PLAIN", b"")),
    (
        NA,
        b"a1 AUTHENTICATE PLAIN AGJvYgBwdw==\r\n",
        c.Authenticate("a1", "PLAIN", b"\x00bob\x00pw"),
    ),
    (NA, b"a1 LOGIN bob secret\r\n", c.Login("a1", "bob", b"secret")),
    (NA, b'a1 LOGIN "bob@example.org" "p\\"w d"\r\n', c.Login("a1", "bob@example.org", b'p"w d')),
    (NA, b"a1 LOGIN {3}\r\nbob {4}\r\np w\xff\r\n", c.Login("a1", "bob", b"p w\xff")),
    (NA, b"a1 LOGIN {3+}\r\nbob {2+}\r\npw\r\n", c.Login("a1", "bob", b"pw")),
    (NA, b"a1 ID NIL\r\n", c.Id("a1", None)),
    (NA, b"a1 ID ()\r\n", c.Id("a1", ())),
    (
        AU,
        b'a1 ID ("name" "Thunderbird" "version" NIL)\r\n',
        c.Id("a1", (("name", "Thunderbird"), ("version", None))),
    ),
    # --- authenticated ---
    (AU, b"a1 ENABLE CONDSTORE utf8=accept\r\n", c.Enable("a1", ("CONDSTORE", "UTF8=ACCEPT"))),
    (AU, b"a1 SELECT inbox\r\n", c.Select("a1", "INBOX")),
    (SE, b"a1 EXAMINE Archive/2020\r\n", c.Select("a1", "Archive/2020", readonly=True)),
    (AU, b"a1 SELECT INBOX (CONDSTORE)\r\n", c.Select("a1", "INBOX", condstore=True)),
    (
        AU,
        b"a1 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
        c.Select(
            "a1",
            "INBOX",
            qresync=c.QResync(67890007, 20050715194045000, seq("41,43:211,214:541")),
        ),
    ),
    (
        AU,
        b"a1 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500 25000,37500)))\r\n",
        c.Select(
            "a1",
            "INBOX",
            qresync=c.QResync(
                67890007, 90060115194045000, seq("1:29997"), (seq("5000,7500"), seq("25000,37500"))
            ),
        ),
    ),
    (AU, b"a1 SELECT INBOX (QRESYNC (1 2))\r\n", c.Select("a1", "INBOX", qresync=c.QResync(1, 2))),
    (AU, b"a1 CREATE Projects\r\n", c.Create("a1", "Projects")),
    (AU, b"a1 CREATE Projects/\r\n", c.Create("a1", "Projects")),
    (AU, b"a1 CREATE inbox/sub\r\n", c.Create("a1", "INBOX/sub")),
    (
        AU,
        b"a1 CREATE Sent (USE (\\sent \\Archive))\r\n",
        c.Create("a1", "Sent", ("\\Sent", "\\Archive")),
    ),
    (AU, b"a1 DELETE foo\r\n", c.Delete("a1", "foo")),
    (AU, b"a1 RENAME foo bar/baz\r\n", c.Rename("a1", "foo", "bar/baz")),
    (AU, b"a1 SUBSCRIBE foo\r\n", c.Subscribe("a1", "foo")),
    (AU, b"a1 UNSUBSCRIBE foo\r\n", c.Unsubscribe("a1", "foo")),
    (AU, b'a1 LIST "" *\r\n', c.List("a1", "", ("*",))),
    (AU, b'a1 LIST "" ""\r\n', c.List("a1", "", ("",))),
    (AU, b"a1 LIST ~/Mail/ %\r\n", c.List("a1", "~/Mail/", ("%",))),
    (
        AU,
        b'a1 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts/%")\r\n',
        c.List(
            "a1",
            "",
            ("INBOX", "Drafts/%"),
            frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
            extended=True,
        ),
    ),
    (
        AU,
        b'a1 LIST "" % RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n',
        c.List(
            "a1",
            "",
            ("%",),
            return_options=frozenset({"CHILDREN", "SPECIAL-USE", "STATUS"}),
            status_items=("MESSAGES", "UNSEEN"),
            extended=True,
        ),
    ),
    (AU, b'a1 LIST () "" % RETURN ()\r\n', c.List("a1", "", ("%",), extended=True)),
    (AU, b'a1 LSUB "" *\r\n', c.Lsub("a1", "", "*")),
    (AU, b"a1 NAMESPACE\r\n", c.Namespace("a1")),
    (
        AU,
        b"a1 STATUS blurdybloop (UIDNEXT MESSAGES messages HIGHESTMODSEQ APPENDLIMIT SIZE)\r\n",
        c.Status(
            "a1", "blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ", "APPENDLIMIT", "SIZE")
        ),
    ),
    (
        AU,
        b"a1 APPEND saved-messages (\\Seen) {5}\r\nhello\r\n",
        c.Append("a1", "saved-messages", (c.AppendMessage(b"hello", ("\\Seen",)),)),
    ),
    (
        AU,
        b'a1 APPEND INBOX "05-Jan-2020 10:00:00 +0000" {2+}\r\nhi\r\n',
        c.Append(
            "a1",
            "INBOX",
            (c.AppendMessage(b"hi", (), datetime.datetime(2020, 1, 5, 10, tzinfo=UTC)),),
        ),
    ),
    (
        AU,
        b"a1 APPEND INBOX {1}\r\na (\\Draft) ~{3}\r\nb\x00c UTF8 (~{2}\r\n\xc3\xa9)\r\n",
        c.Append(
            "a1",
            "INBOX",
            (
                c.AppendMessage(b"a"),
                c.AppendMessage(b"b\x00c", ("\\Draft",), binary=True),
                c.AppendMessage(b"\xc3\xa9", binary=True, utf8=True),
            ),
        ),
    ),
    (AU, b"a1 APPEND {5}\r\nINBOX {0}\r\n\r\n", c.Append("a1", "INBOX", (c.AppendMessage(b""),))),
    (AU, b"a1 IDLE\r\n", c.Idle("a1")),
    (AU, b"a1 COMPRESS deflate\r\n", c.Compress("a1", "DEFLATE")),
    (AU, b'a1 GETQUOTA ""\r\n', c.GetQuota("a1", "")),
    (AU, b"a1 GETQUOTAROOT INBOX\r\n", c.GetQuotaRoot("a1", "INBOX")),
    # --- selected ---
    (SE, b"a1 CHECK\r\n", c.Check("a1")),
    (SE, b"a1 CLOSE\r\n", c.Close("a1")),
    (SE, b"a1 UNSELECT\r\n", c.Unselect("a1")),
    (SE, b"a1 EXPUNGE\r\n", c.Expunge("a1", False)),
    (SE, b"a1 UID EXPUNGE 3000:3002\r\n", c.Expunge("a1", True, seq("3000:3002"))),
    (SE, b"a1 SEARCH ALL\r\n", c.Search("a1", False, AllKey())),
    (SE, b"a1 UID SEARCH UNSEEN\r\n", c.Search("a1", True, FlagKey("\\Seen", False))),
    (
        SE,
        b"a1 SEARCH RETURN () CHARSET utf-8 FROM {6}\r\nBj\xc3\xb6rn\r\n",
        c.Search("a1", False, HeaderKey("from", "Björn"), "utf-8", frozenset()),
    ),
    (
        SE,
        b"a1 SEARCH RETURN (MIN MAX COUNT SAVE) 1:*\r\n",
        c.Search("a1", False, SeqKey(seq("1:*")), None, frozenset({"MIN", "MAX", "COUNT", "SAVE"})),
    ),
    (
        SE,
        b"a1 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n",
        c.Fetch(
            "a1",
            False,
            seq("2:4"),
            (
                FetchAtt("FLAGS"),
                FetchAtt(BODY_SECTION, Section((), "HEADER.FIELDS", ("DATE", "FROM"))),
            ),
        ),
    ),
    (
        SE,
        b"a1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
        c.Fetch("a1", True, seq("1:*"), (FetchAtt("FLAGS"),), 12345, True),
    ),
    (
        SE,
        b"a1 FETCH 1 fast\r\n",
        c.Fetch(
            "a1",
            False,
            seq("1"),
            (FetchAtt("FLAGS"), FetchAtt("INTERNALDATE"), FetchAtt("RFC822.SIZE")),
        ),
    ),
    (
        SE,
        b"a1 STORE 2:4 +FLAGS (\\Deleted)\r\n",
        c.Store("a1", False, seq("2:4"), StoreMode.ADD, ("\\Deleted",)),
    ),
    (
        SE,
        b"a1 UID STORE 7 -flags.silent \\Seen $Junk\r\n",
        c.Store("a1", True, seq("7"), StoreMode.REMOVE, ("\\Seen", "$Junk"), silent=True),
    ),
    (
        SE,
        b"a1 STORE 1:* (UNCHANGEDSINCE 320162338) FLAGS ()\r\n",
        c.Store("a1", False, seq("1:*"), StoreMode.REPLACE, (), unchanged_since=320162338),
    ),
    (SE, b"a1 COPY 2:4 MEETING\r\n", c.Copy("a1", False, seq("2:4"), "MEETING")),
    (SE, b"a1 UID COPY $ Trash\r\n", c.Copy("a1", True, seq("$"), "Trash")),
    (SE, b"a1 MOVE 1 Trash\r\n", c.Move("a1", False, seq("1"), "Trash")),
    (SE, b"a1 UID MOVE 1:* Trash\r\n", c.Move("a1", True, seq("1:*"), "Trash")),
    (
        SE,
        b"a1 SORT (DATE REVERSE SUBJECT) UTF-8 SINCE 1-Feb-1994\r\n",
        c.Sort(
            "a1",
            False,
            (("DATE", False), ("SUBJECT", True)),
            "utf-8",
            DateKey("INTERNAL", "SINCE", datetime.date(1994, 2, 1)),
        ),
    ),
    (
        SE,
        b"a1 UID SORT (REVERSE ARRIVAL displayfrom) us-ascii ALL\r\n",
        c.Sort("a1", True, (("ARRIVAL", True), ("DISPLAYFROM", False)), "ascii", AllKey()),
    ),
    (
        SE,
        b"a1 THREAD ORDEREDSUBJECT UTF-8 ALL\r\n",
        c.Thread("a1", False, "ORDEREDSUBJECT", "utf-8", AllKey()),
    ),
    (
        SE,
        b'a1 UID THREAD references "UTF-8" SUBJECT x\r\n',
        c.Thread("a1", True, "REFERENCES", "utf-8", HeaderKey("subject", "x")),
    ),
]


@pytest.mark.parametrize(("state", "data", "expected"), TABLE)
def test_command_table(state: State, data: bytes, expected: object) -> None:
    assert one(data, state) == expected


def test_uid_names_and_state_table() -> None:
    fetch = one(b"a UID FETCH 1 UID\r\n")
    assert isinstance(fetch, c.Fetch) and fetch.name == "UID FETCH"
    assert c.Select("a", "x", readonly=True).name == "EXAMINE"
    assert c.allowed_in("UID FETCH", SE)
    assert not c.allowed_in("UID FETCH", AU)
    assert not c.allowed_in("LOGIN", AU)
    assert not c.allowed_in("NOOP", State.LOGOUT)
    assert not c.allowed_in("XYZZY", SE)
    with pytest.raises(ImapPeerError) as exc:
        c.check_state(c.Login("t", "u", b"p"), AU)
    assert exc.value.response == b"t BAD Command not valid in this state\r\n"
    c.check_state(c.Login("t", "u", b"p"), NA)


def test_fetch_sets_seen() -> None:
    assert one(b"a FETCH 1 BODY[]\r\n").sets_seen  # type: ignore[attr-defined]
    assert one(b"a FETCH 1 RFC822\r\n").sets_seen  # type: ignore[attr-defined]
    assert not one(b"a FETCH 1 (BODY.PEEK[] FLAGS RFC822.HEADER)\r\n").sets_seen  # type: ignore[attr-defined]


def test_utf8_mode_names() -> None:
    assert one('a SELECT "Entwürfe"\r\n'.encode(), AU, utf8=True) == c.Select("a", "Entwürfe")
    assert one(b"a SELECT R&D\r\n", AU, utf8=True) == c.Select("a", "R&D")
    assert one(b"a SELECT Entw&APw-rfe\r\n", AU) == c.Select("a", "Entwürfe")


def test_login_password_not_in_repr() -> None:
    login = one(b"a LOGIN bob hunter2\r\n", NA)
    assert "hunter2" not in repr(login)
    auth = one(b"a AUTHENTICATE PLAIN AGJvYgBodW50ZXIy\r\n", NA)
    assert "AGJv" not in repr(auth) and "hunter2" not in repr(auth)


ERRORS: list[tuple[State, bytes, bytes]] = [
    # tags and command names
    (SE, b"\r\n", b""),  # empty lines are ignored
    (SE, b"* NOOP\r\n", b"* BAD Missing or invalid tag\r\n"),
    (SE, b"+ NOOP\r\n", b"* BAD Missing or invalid tag\r\n"),
    (SE, b" NOOP\r\n", b"* BAD Missing or invalid tag\r\n"),
    (SE, b"a(b NOOP\r\n", b"* BAD Missing or invalid tag\r\n"),
    (SE, b"\x00\r\n", b"* BAD Missing or invalid tag\r\n"),
    (SE, b"a1\r\n", b"a1 BAD Missing command\r\n"),
    (SE, b"a1 \r\n", b"a1 BAD Missing command\r\n"),
    (SE, b"a1 XYZZY\r\n", b"a1 BAD Unknown command\r\n"),
    (SE, b"a1 UID\r\n", b"a1 BAD Unknown command\r\n"),
    (SE, b"a1 UID LOGIN x y\r\n", b"a1 BAD Unknown command\r\n"),
    (SE, b"a1  NOOP\r\n", b"a1 BAD Missing command\r\n"),
    (SE, b"a1 NOOP extra\r\n", b"a1 BAD Unexpected characters at the end of the command\r\n"),
    (SE, b"a1 NOOP \r\n", b"a1 BAD Unexpected characters at the end of the command\r\n"),
    # state
    (NA, b"a1 SELECT INBOX\r\n", b"a1 BAD Command not valid in this state\r\n"),
    (AU, b"a1 FETCH 1 FLAGS\r\n", b"a1 BAD Command not valid in this state\r\n"),
    (SE, b"a1 LOGIN a b\r\n", b"a1 BAD Command not valid in this state\r\n"),
    (State.LOGOUT, b"a1 NOOP\r\n", b"a1 BAD Command not valid in this state\r\n"),
    # argument syntax
    (NA, b"a1 LOGIN bob\r\n", b"a1 BAD Expected a single space\r\n"),
    (NA, b"a1 LOGIN bob  pw\r\n", b"a1 BAD Expected a string\r\n"),
    (NA, b"a1 LOGIN \xff pw\r\n", b"a1 BAD Expected a string\r\n"),
    (NA, b'a1 LOGIN "\xff" pw\r\n', b"a1 BAD Invalid UTF-8 in user name\r\n"),
    (NA, b"a1 AUTHENTICATE PLAIN AGJvYg\r\n", b"a1 BAD Invalid base64\r\n"),
    (AU, b"a1 SELECT\r\n", b"a1 BAD Expected a single space\r\n"),
    # a well-formed astring that names no possible mailbox: NO, not BAD (imaptest "atoms")
    (AU, b'a1 SELECT ""\r\n', b"a1 NO [NONEXISTENT] Mailbox name is empty\r\n"),
    (
        AU,
        b"a1 SELECT R&D\r\n",
        b"a1 NO [NONEXISTENT] Mailbox name has an unterminated or invalid '&' sequence\r\n",
    ),
    (AU, b"a1 CREATE R&D\r\n",
     b"a1 NO [CANNOT] Mailbox name has an unterminated or invalid '&' sequence\r\n"),
    (AU, b"a1 RENAME R&D x\r\n",
     b"a1 NO [NONEXISTENT] Mailbox name has an unterminated or invalid '&' sequence\r\n"),
    (AU, b"a1 SELECT INBOX (FOO)\r\n", b"a1 BAD Unknown SELECT parameter\r\n"),
    (AU, b"a1 SELECT INBOX ()\r\n", b"a1 BAD Empty list\r\n"),
    (AU, b"a1 CREATE a//b\r\n", b"a1 NO [CANNOT] Mailbox name has an empty hierarchy level\r\n"),
    (AU, b"a1 CREATE ../x\r\n", b"a1 NO [CANNOT] Mailbox name has a '.' or '..' level\r\n"),
    (AU, b'a1 CREATE "a*"\r\n', b"a1 NO [CANNOT] Mailbox name contains a wildcard character\r\n"),
    (
        AU,
        b"a1 CREATE x (USE (\\Bogus))\r\n",
        b"a1 NO [USEATTR] Unsupported special-use attribute\r\n",
    ),
    (AU, b"a1 RENAME a /b\r\n", b"a1 NO [CANNOT] Mailbox name has an empty hierarchy level\r\n"),
    (AU, b'a1 LIST (BOGUS) "" *\r\n', b"a1 BAD Unknown LIST selection option\r\n"),
    (
        AU,
        b'a1 LIST (RECURSIVEMATCH) "" *\r\n',
        b"a1 BAD RECURSIVEMATCH needs another selection option\r\n",
    ),
    (AU, b'a1 LIST "" * RETURN (BOGUS)\r\n', b"a1 BAD Unknown LIST return option\r\n"),
    (AU, b'a1 LIST "" * (x)\r\n', b"a1 BAD Expected RETURN\r\n"),
    (AU, b"a1 STATUS INBOX ()\r\n", b"a1 BAD Empty list\r\n"),
    (AU, b"a1 STATUS INBOX (BOGUS)\r\n", b"a1 BAD Unknown STATUS item\r\n"),
    (AU, b"a1 APPEND INBOX hello\r\n", b"a1 BAD Expected the message as a literal\r\n"),
    (
        AU,
        b"a1 APPEND INBOX (\\Recent) {1}\r\nx\r\n",
        b"a1 BAD \\Recent cannot be set by a client\r\n",
    ),
    (AU, b"a1 COMPRESS GZIP\r\n", b"a1 BAD Unknown compression mechanism\r\n"),
    (AU, b"a1 ENABLE\r\n", b"a1 BAD ENABLE needs a capability\r\n"),
    (AU, b'a1 ID ("a")\r\n', b"a1 BAD Expected a single space\r\n"),
    (AU, b"a1 ID (" + b'"k" "v" ' * 30 + b'"k" "v")\r\n', b"a1 BAD Too many ID fields\r\n"),
    (AU, b'a1 ID ("' + b"k" * 31 + b'" "v")\r\n', b"a1 BAD ID field or value too long\r\n"),
    (AU, b'a1 ID ("k" "' + b"v" * 1025 + b'")\r\n', b"a1 BAD ID field or value too long\r\n"),
    (SE, b"a1 FETCH 0 FLAGS\r\n", b"a1 BAD Invalid sequence set\r\n"),
    (SE, b"a1 FETCH 1 ()\r\n", b"a1 BAD Empty list\r\n"),
    (SE, b"a1 FETCH 1 BOGUS\r\n", b"a1 BAD Unknown FETCH attribute\r\n"),
    (
        SE,
        b"a1 FETCH 1 (FLAGS) (VANISHED)\r\n",
        b"a1 BAD VANISHED needs UID FETCH and CHANGEDSINCE\r\n",
    ),
    (
        SE,
        b"a1 UID FETCH 1 (FLAGS) (VANISHED)\r\n",
        b"a1 BAD VANISHED needs UID FETCH and CHANGEDSINCE\r\n",
    ),
    (SE, b"a1 STORE 1 FLAGS\r\n", b"a1 BAD Expected a single space\r\n"),
    (SE, b"a1 STORE 1 XFLAGS (\\Seen)\r\n", b"a1 BAD Expected FLAGS, +FLAGS or -FLAGS\r\n"),
    (SE, b"a1 STORE 1 +FLAGS (\\Bogus)\r\n", b"a1 BAD Invalid system flag\r\n"),
    (SE, b"a1 STORE 1 (FOO 1) FLAGS ()\r\n", b"a1 BAD Unknown STORE modifier\r\n"),
    (SE, b"a1 COPY 1\r\n", b"a1 BAD Expected a single space\r\n"),
    (SE, b"a1 SEARCH\r\n", b"a1 BAD Expected a single space\r\n"),
    (SE, b"a1 SEARCH BOGUS\r\n", b"a1 BAD Unknown search key\r\n"),
    (SE, b"a1 SEARCH RETURN (BOGUS) ALL\r\n", b"a1 BAD Unknown SEARCH RETURN option\r\n"),
    (
        SE,
        b"a1 SEARCH CHARSET KOI-9 ALL\r\n",
        b"a1 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n",
    ),
    (SE, b"a1 SORT () UTF-8 ALL\r\n", b"a1 BAD Empty list\r\n"),
    (SE, b"a1 SORT (BOGUS) UTF-8 ALL\r\n", b"a1 BAD Unknown sort key\r\n"),
    (
        SE,
        b"a1 SORT (DATE) ALL\r\n",  # "ALL" is taken as the (mandatory) charset
        b"a1 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n",
    ),
    (SE, b"a1 THREAD FOO UTF-8 ALL\r\n", b"a1 BAD Unknown threading algorithm\r\n"),
    (SE, b"a1 UID EXPUNGE\r\n", b"a1 BAD Expected a single space\r\n"),
]


@pytest.mark.parametrize(("state", "data", "response"), ERRORS)
def test_errors(state: State, data: bytes, response: bytes) -> None:
    events = drive_both(data, state=state)
    refusals = [e for e in events if isinstance(e, Refused)]
    if not response:
        assert events == [ConnectionClosed()]
        return
    assert refusals == [Refused(response)]


def test_errors_do_not_desynchronise() -> None:
    data = b"a1 XYZZY\r\nb1 NOOP junk\r\n* x\r\nc1 NOOP\r\n"
    events = drive_both(data)
    assert events[-2:] == [c.Noop("c1"), ConnectionClosed()]
    assert len([e for e in events if isinstance(e, Refused)]) == 3
