"""METADATA (RFC 5464) over a socket with exact responses: mailbox and server entries,
private versus shared, DEPTH and MAXSIZE, the size and count limits, rights on shared
mailboxes; and the same commands through imaplib."""

from __future__ import annotations

import imaplib

from imap_util import rest

from support.server import Server

for _name in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))



def test_get_and_set_mailbox_and_server_entries(user: str, raw) -> None:
    c = raw(user)
    assert b" METADATA " in b"".join(c.ok("CAPABILITY"))
    c.ok('SETMETADATA INBOX (/private/comment "My comment" /shared/comment "Ours")')
    assert c.ok("GETMETADATA INBOX /private/comment") == [
        b'* METADATA "INBOX" (/private/comment "My comment")\r\n']
    assert c.ok("GETMETADATA INBOX (/shared/comment /private/comment /shared/none)") == [
        b'* METADATA "INBOX" (/shared/comment "Ours" /private/comment "My comment" /shared/none NIL)\r\n']
    # entry names are case-insensitive; values may be literals, with CRLF inside
    c.ok(b"SETMETADATA INBOX (/PRIVATE/Vendor/example/Note {12+}\r\nline1\r\nline2)")
    assert c.ok("GETMETADATA INBOX /private/vendor/example/note") == [
        b'* METADATA "INBOX" (/private/vendor/example/note {12}\r\nline1\r\nline2)\r\n']
    # DEPTH 1 and infinity
    c.ok('SETMETADATA INBOX (/private/a/b "1" /private/a/b/c "2" /private/a/b/c/d "3")')
    assert c.ok("GETMETADATA (DEPTH 1) INBOX /private/a/b") == [
        b'* METADATA "INBOX" (/private/a/b "1" /private/a/b/c "2")\r\n']
    assert c.ok("GETMETADATA (DEPTH infinity) INBOX /private/a") == [
        b'* METADATA "INBOX" (/private/a NIL /private/a/b "1" /private/a/b/c "2" /private/a/b/c/d "3")\r\n']
    # MAXSIZE: longer values are left out and the longest is reported
    untagged, done = c.cmd("GETMETADATA (MAXSIZE 5) INBOX (/private/comment /shared/comment)")
    assert untagged == [b'* METADATA "INBOX" (/shared/comment "Ours")\r\n']
    assert rest(done) == b"OK [METADATA LONGENTRIES 10] GETMETADATA completed\r\n"
    # NIL removes
    c.ok("SETMETADATA INBOX (/shared/comment NIL)")
    assert c.ok("GETMETADATA INBOX /shared/comment") == [b'* METADATA "INBOX" (/shared/comment NIL)\r\n']
    # server entries: private ones for anybody, shared ones only for the administrator
    c.ok('SETMETADATA "" (/private/vendor/example/theme "dark")')
    assert c.ok('GETMETADATA "" /private/vendor/example/theme') == [
        b'* METADATA "" (/private/vendor/example/theme "dark")\r\n']
    _, done = c.cmd('SETMETADATA "" (/shared/comment "x")')
    assert rest(done) == b"NO [NOPERM] Server entries under /shared are set by the administrator\r\n"
    # entries follow a rename and leave with a deleted mailbox
    c.ok("CREATE Notes")
    c.ok('SETMETADATA Notes (/shared/comment "n")')
    c.ok("RENAME Notes Notes2")
    assert c.ok("GETMETADATA Notes2 /shared/comment") == [b'* METADATA "Notes2" (/shared/comment "n")\r\n']
    c.ok("DELETE Notes2")
    c.ok("CREATE Notes2")
    assert c.ok("GETMETADATA Notes2 /shared/comment") == [b'* METADATA "Notes2" (/shared/comment NIL)\r\n']


def test_syntax_and_limits(server: Server, user: str, raw) -> None:
    c = raw(user)
    for command in ("GETMETADATA INBOX /other/x", "GETMETADATA INBOX /private/a*",
                    "GETMETADATA INBOX /private//a", "GETMETADATA INBOX /private/a/",
                    "GETMETADATA INBOX /private/vendor/x", "GETMETADATA (DEPTH 2) INBOX /private/a",
                    "SETMETADATA INBOX /private/a", "SETMETADATA INBOX ()"):
        _, done = c.cmd(command)
        assert rest(done).startswith(b"BAD "), command
    _, done = c.cmd("GETMETADATA Nonexistent /private/a")
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"
    big = b"x" * (16 * 1024 + 1)  # limits.metadata_size defaults to 16K
    _, done = c.cmd(b"SETMETADATA INBOX (/private/big {%d+}\r\n%s)" % (len(big), big))
    assert rest(done) == b"NO [METADATA MAXSIZE 16384] Value too large\r\n"
    # a value with NUL travels as literal8 both ways
    tag = c.tag()
    c.send(b"%s SETMETADATA INBOX (/private/bin ~{3+}\r\na\x00b)\r\n" % tag.encode())
    _, done = c.until_tagged(tag)
    assert rest(done) == b"OK SETMETADATA completed\r\n"
    assert c.ok("GETMETADATA INBOX /private/bin") == [b'* METADATA "INBOX" (/private/bin ~{3}\r\na\x00b)\r\n']
    # TOOMANY: a SETMETADATA that would pass the limit changes nothing (RFC 5464 4.3)
    entries = " ".join(f'/private/n{i} "v"' for i in range(199))
    _, done = c.cmd(f"SETMETADATA Drafts ({entries})")
    assert rest(done) == b"OK SETMETADATA completed\r\n"
    _, done = c.cmd('SETMETADATA Drafts (/private/n199 "v" /private/n200 "v")')
    assert rest(done) == b"NO [METADATA TOOMANY] Too many entries\r\n"
    assert c.ok("GETMETADATA Drafts /private/n199") == [b'* METADATA "Drafts" (/private/n199 NIL)\r\n']
    c.ok('SETMETADATA Drafts (/private/n0 "replacing is fine")')


def test_private_entries_are_per_user_and_rights_apply(server: Server, raw) -> None:
    owner, other = "mown@example.test", "moth@example.test"
    server.add_user(owner)
    server.add_user(other)
    o = raw(owner)
    o.ok('SETMETADATA INBOX (/private/comment "owner only" /shared/comment "for all")')
    box = f"Shared/{owner}/INBOX"
    c = raw(other)
    _, done = c.cmd(f'GETMETADATA "{box}" /shared/comment')
    assert rest(done) == b"NO [NONEXISTENT] No such mailbox\r\n"
    o.ok(f"SETACL INBOX {other} l")  # "l" alone is not enough (RFC 5464 3.3)
    _, done = c.cmd(f'GETMETADATA "{box}" /shared/comment')
    assert rest(done) == b"NO [NOPERM] Permission denied\r\n"
    o.ok(f"SETACL INBOX {other} lr")
    assert c.ok(f'GETMETADATA "{box}" (/shared/comment /private/comment)') == [
        b'* METADATA "' + box.encode() + b'" (/shared/comment "for all" /private/comment NIL)\r\n']
    c.ok(f'SETMETADATA "{box}" (/private/comment "mine")')
    assert o.ok("GETMETADATA INBOX /private/comment") == [
        b'* METADATA "INBOX" (/private/comment "owner only")\r\n']


def test_imaplib_metadata(user: str, connect) -> None:
    m = connect(user)
    typ, data = m._simple_command("SETMETADATA", "INBOX", '(/private/comment "via imaplib")')
    assert typ == "OK", data
    typ, data = m._simple_command("GETMETADATA", "INBOX", "/private/comment")
    assert typ == "OK"
    assert m.untagged_responses["METADATA"] == [b'"INBOX" (/private/comment "via imaplib")']


def test_per_user_bounds_across_mailboxes(tmp_path) -> None:
    """limits.metadata_entries_per_user / metadata_size_per_user: one user's entries in
    every mailbox and on the server count together (RFC 5464 4.3 replies), and a refused
    SETMETADATA changes nothing."""
    from imap_raw import RawImap

    from support.server import PASSWORD

    srv = Server(tmp_path, roles=("imap",), extra=(
        '[limits]\nauth_delay = "10ms"\nmetadata_entries_per_user = 12\n'
        'metadata_size_per_user = "2K"\n[imap]\nallow_plaintext_auth = true\n')).start()
    try:
        srv.add_user("meta@example.test")
        c = RawImap(srv.ports["imap"])
        c.login("meta@example.test", PASSWORD)
        for box in ("INBOX", "Drafts"):
            entries = " ".join(f'/private/{box.lower()}{i} "v"' for i in range(5))
            c.ok(f"SETMETADATA {box} ({entries})")
        c.ok('SETMETADATA "" (/private/s0 "v" /private/s1 "v")')  # 12: the bound
        _, done = c.cmd('SETMETADATA Drafts (/private/x "v")')
        assert rest(done) == b"NO [METADATA TOOMANY] Too many entries\r\n"
        assert c.ok("GETMETADATA Drafts /private/x") == [b'* METADATA "Drafts" (/private/x NIL)\r\n']
        c.ok('SETMETADATA "" (/private/s1 NIL)')  # removing makes room
        c.ok('SETMETADATA Drafts (/private/x "v")')
        # 2K of values in all: 12 one-octet values are used; a 2,040-octet one is too big
        value = b"y" * 2040
        _, done = c.cmd(b"SETMETADATA INBOX (/private/inbox0 {%d+}\r\n%s)" % (len(value), value))
        assert rest(done) == b"NO [METADATA MAXSIZE 2037] Too much metadata for this user\r\n"
        value = value[:2037]
        c.send(b"t1 SETMETADATA INBOX (/private/inbox0 {%d+}\r\n%s)\r\n" % (len(value), value))
        _, done = c.until_tagged("t1")
        assert rest(done) == b"OK SETMETADATA completed\r\n"
    finally:
        srv.stop()
