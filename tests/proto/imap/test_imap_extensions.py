"""The extension commands (ACL, QUOTA, METADATA, URLAUTH, NOTIFY, CATENATE, contexts) as
byte tables through the receiver (whole and byte at a time), IMAP URLs, and the
responses of these extensions."""

from __future__ import annotations

import datetime

import pytest
from imap_driver import Refused, drive_both

from postroom.proto.imap import commands as c
from postroom.proto.imap import responses, responses_ext
from postroom.proto.imap.commands import State
from postroom.proto.imap.fetch import UID, FetchAtt
from postroom.proto.imap.receiver import ConnectionClosed, ContinuationRequest
from postroom.proto.imap.search import AllKey, FlagKey
from postroom.proto.imap.sections import SectionSpec
from postroom.proto.imap.url import UrlError, parse_url

AU = State.AUTHENTICATED
SE = State.SELECTED


def one(data: bytes, state: State = SE) -> object:
    events = [e for e in drive_both(data, state=state)
              if not isinstance(e, (ContinuationRequest, ConnectionClosed))]
    assert len(events) == 1, events
    return events[0]


TABLE: list[tuple[State, bytes, object]] = [
    (AU, b"a SETACL INBOX fred lrs\r\n", c.SetAcl("a", "INBOX", "fred", "", "lrs")),
    (AU, b"a SETACL INBOX fred +cd\r\n", c.SetAcl("a", "INBOX", "fred", "+", "cd")),
    (AU, b'a SETACL INBOX "fred" ""\r\n', c.SetAcl("a", "INBOX", "fred", "", "")),
    (AU, b"a SETACL Work anyone -w\r\n", c.SetAcl("a", "Work", "anyone", "-", "w")),
    (AU, b"a DELETEACL INBOX fred\r\n", c.DeleteAcl("a", "INBOX", "fred")),
    (AU, b"a GETACL inbox\r\n", c.GetAcl("a", "INBOX")),
    (AU, b"a LISTRIGHTS INBOX fred\r\n", c.ListRights("a", "INBOX", "fred")),
    (SE, b"a MYRIGHTS Shared/bob@x/INBOX\r\n", c.MyRights("a", "Shared/bob@x/INBOX")),
    (AU, b'a SETQUOTA "" (STORAGE 512 MESSAGE 10)\r\n',
     c.SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 10)))),
    (AU, b"a SETQUOTA x ()\r\n", c.SetQuota("a", "x", ())),
    (AU, b'a GETMETADATA "" /shared/comment\r\n', c.GetMetadata("a", "", ("/shared/comment",))),
    (AU, b"a GETMETADATA (MAXSIZE 1024 DEPTH infinity) INBOX (/Private/A /shared/b)\r\n",
     c.GetMetadata("a", "INBOX", ("/private/a", "/shared/b"), 1024, -1)),
    (AU, b"a GETMETADATA (DEPTH 1) INBOX /private/vendor/x/y\r\n",
     c.GetMetadata("a", "INBOX", ("/private/vendor/x/y",), None, 1)),
    (AU, b'a SETMETADATA INBOX (/private/comment "x" /shared/comment NIL /private/comment "y")\r\n',
     c.SetMetadata("a", "INBOX", (("/private/comment", b"y"), ("/shared/comment", None)))),
    (AU, b"a SETMETADATA INBOX (/private/b ~{2}\r\n\x00\x01)\r\n",
     c.SetMetadata("a", "INBOX", (("/private/b", b"\x00\x01"),))),
    (AU, b'a GENURLAUTH "imap://u@h/INBOX/;uid=1;urlauth=authuser" internal\r\n',
     c.GenUrlAuth("a", (("imap://u@h/INBOX/;uid=1;urlauth=authuser", "INTERNAL"),))),
    (AU, b"a RESETKEY\r\n", c.ResetKey("a")),
    (AU, b"a RESETKEY Drafts INTERNAL\r\n", c.ResetKey("a", "Drafts", ("INTERNAL",))),
    (AU, b'a URLFETCH "u1" ("u2" BINARY BODYPARTSTRUCTURE)\r\n',
     c.UrlFetch("a", (("u1", ()), ("u2", ("BINARY", "BODYPARTSTRUCTURE"))))),
    (AU, b"a NOTIFY NONE\r\n", c.Notify("a", None)),
    (AU, b"a NOTIFY SET STATUS (personal (MessageNew messageexpunge)) (mailboxes (INBOX Work) NONE)\r\n",
     c.Notify("a", (c.EventGroup("PERSONAL", (), frozenset({"MessageNew", "MessageExpunge"})),
                    c.EventGroup("MAILBOXES", ("INBOX", "Work"), frozenset())), True)),
    (AU, b"a NOTIFY SET (selected (MessageNew (UID) FlagChange)) (subtree Lists (MailboxName))\r\n",
     c.Notify("a", (c.EventGroup("SELECTED", (), frozenset({"MessageNew", "FlagChange"}), (FetchAtt(UID),)),
                    c.EventGroup("SUBTREE", ("Lists",), frozenset({"MailboxName"}))))),
    (SE, b'a CANCELUPDATE "x1" "x2"\r\n', c.CancelUpdate("a", ("x1", "x2"))),
    (SE, b"a SEARCH RETURN (PARTIAL 4:2 UPDATE) SEEN\r\n",
     c.Search("a", False, FlagKey("\\Seen"), None, frozenset({"PARTIAL", "UPDATE"}), (2, 4))),
    (SE, b"a UID SEARCH RETURN (PARTIAL -1:-10) ALL\r\n",
     c.Search("a", True, AllKey(), None, frozenset({"PARTIAL"}), (-1, -10))),
    (SE, b"a SORT RETURN (MIN COUNT) (DATE) UTF-8 ALL\r\n",
     c.Sort("a", False, (("DATE", False),), "utf-8", AllKey(), frozenset({"MIN", "COUNT"}))),
    (AU, b'a APPEND Drafts (\\Seen) CATENATE (URL "/Drafts/;UID=1" TEXT {3}\r\nabc)\r\n',
     c.Append("a", "Drafts", (c.AppendMessage(b"", ("\\Seen",), parts=(("URL", b"/Drafts/;UID=1"),
                                                                         ("TEXT", b"abc"))),))),
    (AU, b'a APPEND INBOX CATENATE (TEXT ~{1}\r\nx) {2}\r\nab\r\n',
     c.Append("a", "INBOX", (c.AppendMessage(b"", parts=(("TEXT", b"x"),)), c.AppendMessage(b"ab")))),
]


@pytest.mark.parametrize(("state", "data", "expected"), TABLE)
def test_parse(state: State, data: bytes, expected: object) -> None:
    assert one(data, state) == expected


@pytest.mark.parametrize(("data", "answer"), [
    (b"a SETACL INBOX fred lrQ\r\n", b"a BAD Uppercase rights are not allowed\r\n"),
    (b"a SETACL INBOX fred l7\r\n", b"a BAD The '7' right is not supported\r\n"),
    (b'a SETACL INBOX "" l\r\n', b"a BAD Invalid identifier\r\n"),
    (b'a GETMETADATA INBOX "/private/a%"\r\n', b"a BAD Invalid entry name\r\n"),
    (b"a GETMETADATA INBOX /comment\r\n", b"a BAD Invalid entry name\r\n"),
    (b"a GETMETADATA (DEPTH 3) INBOX /private/a\r\n", b"a BAD DEPTH must be 0, 1 or infinity\r\n"),
    (b"a GETMETADATA (COLOR 3) INBOX /private/a\r\n", b"a BAD Unknown GETMETADATA option\r\n"),
    (b"a SETMETADATA INBOX ()\r\n", b"a BAD Empty list\r\n"),
    (b"a URLFETCH\r\n", b"a BAD URLFETCH needs a URL\r\n"),
    (b'a URLFETCH ("u" SHINY)\r\n', b"a BAD Unknown URLFETCH parameter\r\n"),
    (b"a NOTIFY SET (inboxes (MessageNew) extra)\r\n", b"a BAD Expected ')'\r\n"),
    (b"a NOTIFY SET (everything (MessageNew))\r\n", b"a BAD Unknown NOTIFY mailbox filter\r\n"),
    (b"a CANCELUPDATE x\r\n", b"a BAD Invalid quoted string\r\n"),
    (b"a SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL\r\n", b"a BAD PARTIAL given twice\r\n"),
    (b"a SEARCH RETURN (ALL PARTIAL 1:2) ALL\r\n", b"a BAD PARTIAL and ALL cannot be combined\r\n"),
    (b"a APPEND INBOX CATENATE (FILE x)\r\n", b"a BAD Expected TEXT or URL\r\n"),
    (b"a APPEND INBOX CATENATE ()\r\n", b"a BAD Empty list\r\n"),
    (b"a GETACL INBOX ~{1}\r\n", b"a BAD literal8 is only allowed in APPEND and SETMETADATA\r\n"),
])
def test_refused(data: bytes, answer: bytes) -> None:
    assert one(data) == Refused(answer)


def test_cancelupdate_needs_selected_state() -> None:
    assert one(b'a CANCELUPDATE "x"\r\n', AU) == Refused(b"a BAD Command not valid in this state\r\n")


URL_TABLE = [
    ("/INBOX/;uid=3/;section=header", dict(mailbox="INBOX", uid=3, section=SectionSpec(text="HEADER"))),
    ("/A%20b;UIDVALIDITY=7/;UID=2/;SECTION=1.2.MIME/;PARTIAL=10.5",
     dict(mailbox="A b", uidvalidity=7, uid=2, section=SectionSpec((1, 2), "MIME"), partial=(10, 5))),
    ("/Caf%C3%A9/;UID=1/;PARTIAL=4", dict(mailbox="Café", partial=(4, None))),
    ("imap://bob@Example.ORG/Drafts/;uid=9;urlauth=submit+bob%40example.org",
     dict(user="bob", host="example.org", access="submit+bob@example.org",
          rump="imap://bob@Example.ORG/Drafts/;uid=9;urlauth=submit+bob%40example.org")),
    ("imap://a@h/INBOX/;UID=1;EXPIRE=2030-01-02T03:04:05Z;URLAUTH=authuser:INTERNAL:" + "ab" * 32,
     dict(access="authuser", mechanism="INTERNAL", token="ab" * 32,
          expire=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC))),
]


@pytest.mark.parametrize(("text", "fields"), URL_TABLE)
def test_url_parse(text: str, fields: dict[str, object]) -> None:
    url = parse_url(text, relative=True)
    for name, value in fields.items():
        assert getattr(url, name) == value, name


@pytest.mark.parametrize("text", [
    "", "INBOX/;UID=1", "//h/INBOX/;UID=1", "/INBOX", "/INBOX/;UID=0", "/INBOX/;UID=x",
    "/INBOX/;UID=1/;SECTION=9.x", "/INBOX/;UID=1/;PARTIAL=1.0", "/%ZZ/;UID=1", "/%FF/;UID=1",
    "/INBOX/;UID=1/;BOGUS=1", "/INBOX/;UID=1:internal:" + "00" * 16,
    "imap://a@h/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00;URLAUTH=authuser",
    "imap://a@h/INBOX/;UID=1;URLAUTH=everyone", "/IN BOX/;UID=1", "x" * 9000,
])
def test_url_refused(text: str) -> None:
    with pytest.raises(UrlError):
        parse_url(text, relative=True)


def test_absolute_only_unless_relative() -> None:
    with pytest.raises(UrlError):
        parse_url("/INBOX/;UID=1")


def test_responses() -> None:
    assert responses_ext.acl("INBOX", [("fred", "lrs"), ("a b", "")]) == b'* ACL "INBOX" fred lrs "a b" ""\r\n'
    assert responses_ext.listrights("INBOX", "fred", "", ["l", "r"]) == b'* LISTRIGHTS "INBOX" fred "" l r\r\n'
    assert responses_ext.myrights("Work", "lr") == b'* MYRIGHTS "Work" lr\r\n'
    assert responses_ext.metadata_values("", [("/shared/a", b"x y"), ("/shared/b", None)]) == \
        b'* METADATA "" (/shared/a "x y" /shared/b NIL)\r\n'
    assert responses_ext.metadata_values("INBOX", [("/private/a", b"\x00")]) == \
        b'* METADATA "INBOX" (/private/a ~{1}\r\n\x00)\r\n'
    assert responses_ext.metadata_names("INBOX", ["/private/a", "/shared/b"]) == \
        b'* METADATA "INBOX" /private/a /shared/b\r\n'
    assert responses_ext.esearch_updates("t1", uid=True, adds=[(0, [1, 2, 3, 7])], removes=[(2, [5])]) == \
        b'* ESEARCH (TAG "t1") UID REMOVEFROM (2 5) ADDTO (0 1:3,7)\r\n'
    assert responses.esearch("t", partial=(b"1:5", None)) == b'* ESEARCH (TAG "t") PARTIAL (1:5 NIL)\r\n'
    assert responses_ext.code_badurl("/x]y") == "BADURL /x%5Dy"
    assert responses.quota("", [("STORAGE", 1, 10)]) == b'* QUOTA "" (STORAGE 1 10)\r\n'
