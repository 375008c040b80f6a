"""ACL (RFC 4314) and shared mailboxes over a socket: the ACL commands with exact responses,
the Shared/<owner>/ namespace in LIST and NAMESPACE, rights enforced on every command,
and imaplib's ACL calls as a real client."""

from __future__ import annotations

import imaplib
import itertools

import pytest
from imap_util import deliver, rest, simple

from support.server import Server

_n = itertools.count(1)


@pytest.fixture
def pair(server: Server) -> tuple[str, str]:
    """An owner and another user."""
    i = next(_n)
    owner, other = f"own{i}@example.test", f"oth{i}@example.test"
    server.add_user(owner)
    server.add_user(other)
    return owner, other



def q(name: str) -> bytes:
    return b'"' + name.encode() + b'"'


def test_acl_commands_exact_responses(pair: tuple[str, str], raw) -> None:
    owner, other = pair
    c = raw(owner)
    caps = b"".join(c.ok("CAPABILITY"))
    assert b" ACL " in caps and b" RIGHTS=texk " in caps
    assert c.ok("MYRIGHTS INBOX") == [b'* MYRIGHTS "INBOX" lrswipkxteacd\r\n']
    assert c.ok("GETACL INBOX") == [b'* ACL "INBOX" ' + owner.encode() + b" lrswipkxteacd\r\n"]
    c.ok(f"SETACL INBOX {other} lrs")
    c.ok("SETACL INBOX anyone +l")
    assert c.ok("GETACL INBOX") == [
        b'* ACL "INBOX" ' + owner.encode() + b" lrswipkxteacd anyone l " + other.encode() + b" lrs\r\n"]
    c.ok(f"SETACL INBOX {other} +d")  # obsolete "d" = x t e (RFC 4314 2.1.1), shown with "d"
    c.ok(f"SETACL INBOX {other} -s")
    assert c.ok("GETACL INBOX")[0].endswith(b" " + other.encode() + b" lrxted\r\n")
    assert c.ok(f"LISTRIGHTS INBOX {other}") == [
        b'* LISTRIGHTS "INBOX" ' + other.encode() + b' "" l r s w i p k x t e a c d\r\n']
    assert c.ok(f"LISTRIGHTS INBOX {owner}") == [
        b'* LISTRIGHTS "INBOX" ' + owner.encode() + b" lrswipkxteacd\r\n"]
    c.ok(f"DELETEACL INBOX {other}")
    assert c.ok("GETACL INBOX")[0].endswith(b" anyone l\r\n")
    # refusals: unknown rights are BAD (RFC 4314 3.1), the rest NO
    for command, answer in (
        (f"SETACL INBOX {other} lrQ", b"BAD Uppercase rights are not allowed\r\n"),
        (f"SETACL INBOX {other} lrz", b"BAD The 'z' right is not supported\r\n"),
        (f"SETACL INBOX {owner} lr", b"NO [CANNOT] The owner always has every right\r\n"),
        ("SETACL INBOX nobody@example.test lr", b"NO [NONEXISTENT] No such user\r\n"),
        (f"SETACL INBOX -{other} w", b"NO [CANNOT] Negative rights are not supported\r\n"),
        ("GETACL Nonexistent", b"NO [NONEXISTENT] No such mailbox\r\n"),
    ):
        _, done = c.cmd(command)
        assert rest(done) == answer, command
    c.ok("DELETEACL INBOX anyone")  # the module's server is shared by the next tests


def test_shared_namespace_listing_and_read_only_select(server: Server, pair: tuple[str, str], raw) -> None:
    owner, other = pair
    deliver(server, owner, simple("shared one"))
    o = raw(owner)
    o.ok("CREATE Projects/Alpha")
    o.ok(f"SETACL INBOX {other} lr")
    o.ok(f"SETACL Projects/Alpha {other} lrswi")
    o.ok("SETACL Archive anyone r")  # readable but not listable
    c = raw(other)
    shared = f"Shared/{owner}"
    got = c.ok(f'LIST "" "{shared}*"')
    assert got == [
        b'* LIST (\\Noselect \\HasChildren) "/" ' + q(shared) + b"\r\n",
        b'* LIST (\\HasNoChildren) "/" ' + q(f"{shared}/INBOX") + b"\r\n",
        b'* LIST (\\HasNoChildren) "/" ' + q(f"{shared}/Projects/Alpha") + b"\r\n",
    ]
    assert b'* LIST (\\Noselect \\HasChildren) "/" "Shared"\r\n' in c.ok('LIST "" %')
    assert c.ok(f'MYRIGHTS "{shared}/INBOX"') == [b"* MYRIGHTS " + q(f"{shared}/INBOX") + b" lr\r\n"]
    # rights without "l": usable by name, invisible in LIST, and errors do not leak
    assert c.ok(f'STATUS "{shared}/Archive" (MESSAGES)') == [
        b"* STATUS " + q(f"{shared}/Archive") + b" (MESSAGES 0)\r\n"]
    _, done = c.cmd(f'GETACL "{shared}/Archive"')
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"
    _, done = c.cmd(f'SELECT "{shared}/Sent"')
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"
    # SELECT with "lr": READ-ONLY, no permanent flags, \Seen is never set by FETCH
    untagged, done = c.cmd(f'SELECT "{shared}/INBOX"')
    assert rest(done) == b"OK [READ-ONLY] SELECT completed\r\n"
    assert b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n" in untagged
    # (\Recent: a read-only view shows the messages no session has claimed yet without
    # claiming them, as EXAMINE does; the owner's next SELECT still gets them, RFC 3501 2.3.2)
    fetched = c.ok("FETCH 1 (FLAGS BODY[])")
    assert b"FLAGS (\\Recent)" in fetched[0] and b"shared one" in fetched[0]
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"]
    _, done = c.cmd("STORE 1 +FLAGS (\\Seen)")
    assert rest(done) == b"NO [READ-ONLY] The mailbox is read-only\r\n"
    # the owner's new mail reaches the other user's session
    deliver(server, owner, simple("second"))
    assert b"* 2 EXISTS\r\n" in c.ok("NOOP")
    # with "lrswi": read-write, PERMANENTFLAGS as the rights allow
    untagged, done = c.cmd(f'SELECT "{shared}/Projects/Alpha"')
    assert rest(done) == b"OK [READ-WRITE] SELECT completed\r\n"
    assert (b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Draft \\*)] Flags permitted\r\n"
            in untagged)


def test_rights_enforced_on_append_copy_store_expunge(server: Server, pair: tuple[str, str], raw) -> None:
    owner, other = pair
    o = raw(owner)
    o.ok("CREATE Box")
    box = f"Shared/{owner}/Box"
    o.ok(f"SETACL Box {other} lrw")
    c = raw(other)
    msg = b"Subject: s\r\n\r\nbody\r\n"
    _, done = c.cmd(b'APPEND "%s" {%d+}\r\n%s' % (box.encode(), len(msg), msg))
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    o.ok(f"SETACL Box {other} +i")
    # flags without the right are dropped silently (RFC 4314 4): no "s", no "t"
    _, done = c.cmd(b'APPEND "%s" (\\Seen \\Deleted \\Flagged $Work) {%d+}\r\n%s' % (box.encode(), len(msg), msg))
    assert rest(done).startswith(b"OK [APPENDUID ")
    c.ok(f'SELECT "{box}"')
    assert c.ok("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Flagged $Work \\Recent))\r\n"]
    # STORE: only what "w" allows changes; a STORE that can change nothing fails
    assert c.ok("STORE 1 FLAGS (\\Seen \\Answered)") == [b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n"]
    _, done = c.cmd("STORE 1 +FLAGS (\\Deleted)")
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    _, done = c.cmd("EXPUNGE")
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    _, done = c.cmd("MOVE 1 INBOX")
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    # COPY into one's own mailbox is fine ("r" on the source, all rights on the target)
    assert rest(c.cmd("COPY 1 INBOX")[1]).startswith(b"OK [COPYUID ")
    # CLOSE without "e" closes without expunging (RFC 4314 4) and says OK
    c.ok("CLOSE")
    # mailbox management: "k" on the parent for CREATE, "x" for DELETE and RENAME
    _, done = c.cmd(f'CREATE "{box}/Sub"')
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    o.ok(f"SETACL Box {other} +kx")
    c.ok(f'CREATE "{box}/Sub"')
    assert b'"Box/Sub"' in b"".join(o.ok('LIST "" "Box/*"'))
    c.ok(f'RENAME "{box}/Sub" "{box}/Renamed"')
    _, done = c.cmd(f'RENAME "{box}/Renamed" "Mine"')
    assert rest(done) == b"NO [CANNOT] Cannot rename to another user's mailboxes\r\n"
    c.ok(f'DELETE "{box}/Renamed"')
    _, done = c.cmd(f'DELETE "Shared/{owner}/INBOX"')
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"
    # "Shared" is reserved in the personal namespace
    _, done = c.cmd('CREATE "Shared/x"')
    assert rest(done).startswith(b"NO ")
    # revoking the rights makes the mailbox disappear
    o.ok(f"DELETEACL Box {other}")
    assert c.ok(f'LIST "" "Shared/{owner}/*"') == []
    _, done = c.cmd(f'SELECT "{box}"')
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"


def test_imaplib_acl_calls(pair: tuple[str, str], connect) -> None:
    owner, other = pair
    m = connect(owner)
    assert m.setacl("INBOX", other, "lrs") == ("OK", [b"SETACL completed"])
    typ, data = m.getacl("INBOX")
    assert typ == "OK" and data == [b'"INBOX" ' + owner.encode() + b" lrswipkxteacd " + other.encode() + b" lrs"]
    typ, data = m.myrights("INBOX")
    assert typ == "OK" and data == [b'"INBOX" lrswipkxteacd']
    imaplib.Commands.setdefault("LISTRIGHTS", ("AUTH", "SELECTED"))  # imaplib lacks it
    typ, data = m._simple_command("LISTRIGHTS", "INBOX", other)
    assert typ == "OK"
    assert m.untagged_responses["LISTRIGHTS"][0].startswith(b'"INBOX" ' + other.encode() + b' "" l r s')
    assert m.deleteacl("INBOX", other)[0] == "OK"
    n = connect(other)
    typ, data = n.namespace()
    assert data == [b'(("" "/")) (("Shared/" "/")) NIL']
    assert n.select(f'"Shared/{owner}/INBOX"')[0] == "NO"


def _shared_box(raw, owner: str, other: str, rights: str, count: int):  # type: ignore[no-untyped-def]
    """The owner's "Box" with ``count`` messages, shared with ``rights``: both sessions."""
    o = raw(owner)
    o.ok("CREATE Box")
    msg = b"Subject: s\r\n\r\nbody\r\n"
    for _ in range(count):
        o.cmd(b"APPEND Box {%d+}\r\n%s" % (len(msg), msg))
    o.ok(f"SETACL Box {other} {rights}")
    return o, raw(other)


def test_store_on_a_ghost_keeps_to_the_rights(server: Server, pair: tuple[str, str], raw) -> None:
    """A message the owner expunged that the other user has not heard of yet is a ghost
    for its STORE (RFC 2180 4.2.3), and the rights apply to it as to the others: with
    "lrs" only \\Seen changes; \\Flagged and the keyword stay as they were (RFC 4314 4)."""
    owner, other = pair
    o, c = _shared_box(raw, owner, other, "lrs", 2)
    c.ok(f'SELECT "Shared/{owner}/Box"')
    o.ok("SELECT Box")
    o.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    o.ok("EXPUNGE")
    assert c.ok("STORE 1:2 +FLAGS (\\Seen \\Flagged $Work)") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n",
        b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n",
    ]
    assert c.ok("NOOP") == [b"* 2 EXPUNGE\r\n"]


def test_fetch_sets_seen_only_with_the_s_right(server: Server, pair: tuple[str, str], raw) -> None:
    """The implicit \\Seen of a body FETCH needs "s" (RFC 4314 4), on the one-message
    path and on the general one alike; the mailbox is read-write ("w")."""
    owner, other = pair
    o, c = _shared_box(raw, owner, other, "lrw", 6)
    _, done = c.cmd(f'SELECT "Shared/{owner}/Box"')
    assert rest(done) == b"OK [READ-WRITE] SELECT completed\r\n"
    assert c.ok("FETCH 1 (BODY[TEXT])") == [b"* 1 FETCH (BODY[TEXT] {6}\r\nbody\r\n)\r\n"]
    assert len(c.ok("FETCH 1:6 (BODY[TEXT])")) == 6
    assert c.ok("FETCH 1:6 (FLAGS)") == [b"* %d FETCH (FLAGS (\\Recent))\r\n" % i for i in range(1, 7)]
    o.ok(f"SETACL Box {other} +s")
    c.ok(f'SELECT "Shared/{owner}/Box"')  # rights are read at SELECT (RFC 4314 5.1.1)
    assert c.ok("FETCH 1 (BODY[TEXT])") == [
        b"* 1 FETCH (BODY[TEXT] {6}\r\nbody\r\n FLAGS (\\Seen))\r\n"]  # (\Recent: claimed before)
