"""URLAUTH (RFC 4467) over a socket: GENURLAUTH, URLFETCH and RESETKEY with exact
responses, the access identifiers (authuser, user+, submit+, anonymous), expiry, and URLs
of one user fetched by another."""

from __future__ import annotations

import re

from imap_util import rest

from support.server import Server



def genurl(c, rump: str) -> str:
    untagged, done = c.cmd(f'GENURLAUTH "{rump}" INTERNAL')
    assert rest(done) == b"OK GENURLAUTH completed\r\n", done
    (line,) = untagged
    m = re.fullmatch(rb'\* GENURLAUTH "(.+)"\r\n', line)
    assert m is not None, line
    url = m.group(1).decode()
    assert re.fullmatch(re.escape(rump) + r":internal:[0-9a-f]{64}", url)
    return url


def test_genurlauth_urlfetch_resetkey(server: Server, raw) -> None:
    alice, bob = "ua@example.test", "ub@example.test"
    server.add_user(alice)
    server.add_user(bob)
    a = raw(alice)
    assert b" URLAUTH " in b"".join(a.ok("CAPABILITY"))
    msg = b"Subject: shared by url\r\n\r\nthe body\r\n"
    a.ok(b"APPEND Drafts {%d+}\r\n%s" % (len(msg), msg))
    base = "imap://ua@example.test/Drafts/;uid=1"
    for_bob = genurl(a, base + ";urlauth=user+ub@example.test")
    any_user = genurl(a, base + "/;section=TEXT;urlauth=authuser")
    expired = genurl(a, base + ";expire=2001-01-01T00:00:00Z;urlauth=authuser")
    submit = genurl(a, base + ";urlauth=submit+ua@example.test")
    b = raw(bob)
    # bob may use "user+ub" and "authuser" URLs; expired and "submit+" ones are NIL
    got = b.ok(f'URLFETCH "{for_bob}" "{any_user}" "{expired}" "{submit}"')[0]
    assert got == (b'* URLFETCH "%s" {%d}\r\n%s "%s" {10}\r\nthe body\r\n "%s" NIL "%s" NIL\r\n'
                   % (for_bob.encode(), len(msg), msg, any_user.encode(), expired.encode(),
                      submit.encode()))
    # the same URL for alice herself is "user+ub": not hers to use
    assert a.ok(f'URLFETCH "{for_bob}"') == [b'* URLFETCH "%s" NIL\r\n' % for_bob.encode()]
    # a tampered verifier, or one for another URL, is NIL
    tampered = for_bob[:-1] + ("0" if for_bob[-1] != "0" else "1")
    assert b.ok(f'URLFETCH "{tampered}"') == [b'* URLFETCH "%s" NIL\r\n' % tampered.encode()]
    # RESETKEY of the mailbox invalidates every URL of it
    a.ok("RESETKEY Drafts")
    assert b.ok(f'URLFETCH "{any_user}"') == [b'* URLFETCH "%s" NIL\r\n' % any_user.encode()]
    fresh = genurl(a, base + ";urlauth=authuser")
    assert fresh.rsplit(":", 1)[1] != any_user.rsplit(":", 1)[1]
    a.ok("RESETKEY")
    assert b.ok(f'URLFETCH "{fresh}"') == [b'* URLFETCH "%s" NIL\r\n' % fresh.encode()]


def test_genurlauth_refusals(server: Server, raw) -> None:
    alice, bob = "uc@example.test", "ud@example.test"
    server.add_user(alice)
    server.add_user(bob)
    a = raw(alice)
    for command, answer in (
        ('GENURLAUTH "imap://uc@example.test/INBOX/;uid=1;urlauth=authuser" XSHA1',
         b"NO Unsupported URLAUTH mechanism\r\n"),
        ('GENURLAUTH "imap://uc@example.test/INBOX/;uid=1" INTERNAL',
         b"NO The URL needs ;URLAUTH=<access> and no verifier\r\n"),
        ('GENURLAUTH "imap://ud@example.test/INBOX/;uid=1;urlauth=authuser" INTERNAL',
         b"NO Only URLs of your own mailboxes can be authorized\r\n"),
        ('GENURLAUTH "imap://uc@example.test/Nope/;uid=1;urlauth=authuser" INTERNAL',
         b"NO [NONEXISTENT] No such mailbox\r\n"),
        ('GENURLAUTH "/INBOX/;uid=1;urlauth=authuser" INTERNAL', b"NO Invalid URL\r\n"),
        ("RESETKEY Nope", b"NO [NONEXISTENT] No such mailbox\r\n"),
        ("RESETKEY INBOX XSHA1", b"NO Unsupported URLAUTH mechanism\r\n"),
        ('URLFETCH ("imap://x/INBOX/;uid=1;urlauth=authuser:internal:00" BINARY)',
         b"BAD URLFETCH parameters (URLAUTH=BINARY) are not supported\r\n"),
        ("GENURLAUTH", b"BAD GENURLAUTH needs a URL\r\n"),
    ):
        _, done = a.cmd(command)
        assert rest(done) == answer, command
    assert a.ok('URLFETCH "not a url" "imap://uc@example.test/INBOX/;uid=1"') == [
        b'* URLFETCH "not a url" NIL "imap://uc@example.test/INBOX/;uid=1" NIL\r\n']
