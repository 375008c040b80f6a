"""NOTIFY (RFC 5465) over a socket: the STATUS of NOTIFY SET STATUS, and events that arrive
while the client sends nothing at all: STATUS for other mailboxes, EXISTS and the asked-for
FETCH in the selected one, LIST for mailbox names and subscriptions, METADATA names. The
raw client here is the Python client that reads them (no command in progress)."""

from __future__ import annotations

from imap_util import deliver, rest, simple

from support.server import Server



def unsolicited(c, n: int) -> list[bytes]:
    """The next ``n`` responses, read without sending anything (10 s timeout each)."""
    return [c.response() for _ in range(n)]


def nothing_more(c) -> None:
    """No response arrives within a short while."""
    c.sock.settimeout(0.5)
    try:
        assert c.closed() is False and c.buf == b""
    finally:
        c.sock.settimeout(10)


def test_status_events_between_commands(server: Server, user: str, raw) -> None:
    c = raw(user)
    assert b" NOTIFY " in b"".join(c.ok("CAPABILITY"))
    untagged = c.ok("NOTIFY SET STATUS (personal (MessageNew MessageExpunge))")
    names = [b"Archive", b"Drafts", b"INBOX", b"Junk", b"Sent", b"Trash"]
    assert len(untagged) == 6
    for line, name in zip(untagged, names, strict=True):
        assert line.startswith(b'* STATUS "%s" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY ' % name)
    deliver(server, user, simple("hello"))
    assert unsolicited(c, 1) == [b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2)\r\n']
    other = raw(user)
    other.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    assert unsolicited(c, 1) == [b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 2)\r\n']
    # our own APPEND to another mailbox is not announced back (RFC 5465 5)
    c.ok(b"APPEND Drafts {13+}\r\nSubject: d\r\n\r\n")
    nothing_more(c)
    # a flag change alone changes neither MESSAGES nor UIDNEXT: nothing to say
    c.ok("NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))")
    other.ok(b"APPEND INBOX (\\Seen) {13+}\r\nSubject: x\r\n\r\n")
    assert unsolicited(c, 1) == [b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 3 UNSEEN 0)\r\n']
    other.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    assert unsolicited(c, 1) == [b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 3 UNSEEN 1)\r\n']
    c.ok("NOTIFY NONE")
    deliver(server, user, simple("quiet"))
    nothing_more(c)


def test_selected_mailbox_events_with_fetch_attributes(server: Server, user: str, raw) -> None:
    c = raw(user)
    c.ok("SELECT INBOX")
    c.ok("NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)]) MessageExpunge))")
    deliver(server, user, simple("pushed"))
    got = unsolicited(c, 3)
    assert got[0] == b"* 1 EXISTS\r\n" and got[1] == b"* 1 RECENT\r\n"
    assert got[2] == b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (Subject)] {19}\r\nSubject: pushed\r\n\r\n)\r\n"
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"]  # no \Seen was set
    other = raw(user)
    other.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    # SELECTED: at once, no command needed. When the session syncs between the STORE and
    # the EXPUNGE, the flag change comes first, as at any sync; when both are done before
    # it looks (a busy machine), only the expunge is left to report.
    first = unsolicited(c, 1)[0]
    if first.startswith(b"* 1 FETCH"):
        assert first == b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n"
        first = unsolicited(c, 1)[0]
    assert first == b"* 1 EXPUNGE\r\n"
    nothing_more(c)


def test_mailbox_name_subscription_and_metadata_events(server: Server, user: str, raw) -> None:
    c = raw(user)
    c.ok("NOTIFY SET (personal (MailboxName SubscriptionChange MailboxMetadataChange))")
    other = raw(user)
    other.ok("CREATE Projects")
    assert unsolicited(c, 1) == [b'* LIST (\\HasNoChildren) "/" "Projects"\r\n']
    other.ok("RENAME Projects Work")
    assert unsolicited(c, 1) == [b'* LIST (\\HasNoChildren) "/" "Work" ("OLDNAME" ("Projects"))\r\n']
    other.ok("SUBSCRIBE Work")
    assert unsolicited(c, 1) == [b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work"\r\n']
    other.ok('SETMETADATA Work (/private/comment "c")')
    assert unsolicited(c, 1) == [b'* METADATA "Work" /private/comment\r\n']
    other.ok("UNSUBSCRIBE Work")
    assert unsolicited(c, 1) == [b'* LIST (\\HasNoChildren) "/" "Work"\r\n']
    other.ok("DELETE Work")
    assert unsolicited(c, 1) == [b'* LIST (\\NonExistent) "/" "Work"\r\n']
    c.ok("CREATE Mine")  # our own: no event
    nothing_more(c)


def test_notify_syntax(user: str, raw) -> None:
    c = raw(user)
    for command, answer in (
        ("NOTIFY SET (personal (MessageNew Bogus))",
         b"NO [BADEVENT (MessageNew MessageExpunge FlagChange AnnotationChange MailboxName "
         b"SubscriptionChange MailboxMetadataChange ServerMetadataChange)] Unsupported event\r\n"),
        ("NOTIFY SET (selected (MailboxName))", b"BAD Only message events apply to SELECTED\r\n"),
        ("NOTIFY SET (selected (MessageNew)) (selected-delayed (MessageNew))",
         b"BAD Only one of SELECTED and SELECTED-DELAYED\r\n"),
        ("NOTIFY SET (personal (MessageNew (UID)))",
         b"BAD MessageNew attributes are only allowed with SELECTED\r\n"),
        ("NOTIFY GO", b"BAD Expected SET or NONE\r\n"),
    ):
        _, done = c.cmd(command)
        assert rest(done) == answer, command
    assert c.ok("NOTIFY SET (mailboxes (INBOX Nonexistent) NONE) (subtree Sent (MessageNew))") == []
