"""QUOTA (RFC 9208), atomic MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469) over a socket,
with exact responses, plus imaplib's quota calls as a real client."""

from __future__ import annotations

import re

from imap_util import deliver, rest, simple

from support.server import Server

MSG = b"Subject: q\r\n\r\n" + b"x" * 1000 + b"\r\n"  # 1016 octets



def set_quota(server: Server, user: str, storage: int | None, messages: int | None = None) -> None:
    server.admin(lambda admin, store: admin.user_quota_set(user, storage, messages))


def append(c, mailbox: str, data: bytes, flags: str = "") -> tuple[list[bytes], bytes]:
    tag = c.tag()
    c.send(b"%s APPEND %s %s{%d+}\r\n%s\r\n" % (tag.encode(), mailbox.encode(),
                                               flags.encode(), len(data), data))
    return c.until_tagged(tag)


def test_capabilities_and_quota_responses(server: Server, user: str, raw) -> None:
    c = raw(user)
    caps = b"".join(c.ok("CAPABILITY"))
    for cap in (b" QUOTA ", b" QUOTA=RES-STORAGE ", b" QUOTA=RES-MESSAGE "):
        assert cap in caps
    assert b"QUOTASET" not in caps
    # no limits yet: the root exists with an empty list (RFC 9208 4.2.1)
    assert c.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX" ""\r\n', b'* QUOTA "" ()\r\n']
    set_quota(server, user, 10 * 1024, 5)
    append(c, "INBOX", MSG)
    assert c.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 1 10 MESSAGE 1 5)\r\n']
    # a mailbox that does not exist still has the root it would have (RFC 9208 4.1.2)
    assert c.ok("GETQUOTAROOT Later") == [b'* QUOTAROOT "Later" ""\r\n',
                                          b'* QUOTA "" (STORAGE 1 10 MESSAGE 1 5)\r\n']
    _, done = c.cmd('GETQUOTA "#user/nobody"')
    assert rest(done) == b"NO [NONEXISTENT] No such quota root\r\n"
    # SETQUOTA is the administrator's (no QUOTASET)
    _, done = c.cmd('SETQUOTA "" (STORAGE 100)')
    assert rest(done) == b"NO [NOPERM] Quotas are set by the administrator (postroom user quota)\r\n"
    _, done = c.cmd('SETQUOTA "" (STORAGE x)')
    assert rest(done) == b"BAD Expected a number\r\n"


def test_append_copy_over_quota_and_deleted_storage(server: Server, user: str, raw) -> None:
    set_quota(server, user, 3 * len(MSG))
    c = raw(user)
    for _ in range(2):
        _, done = append(c, "INBOX", MSG)
        assert b" OK [APPENDUID " in done
    # MULTIAPPEND of two messages does not fit: none of them is stored
    tag = c.tag()
    c.send(b"%s APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (tag.encode(), len(MSG), MSG, len(MSG), MSG))
    _, done = c.until_tagged(tag)
    assert done == tag.encode() + b" NO [OVERQUOTA] Quota exceeded\r\n"
    assert c.ok("STATUS INBOX (MESSAGES)") == [b'* STATUS "INBOX" (MESSAGES 2)\r\n']
    _, done = append(c, "INBOX", MSG)
    assert b" OK [APPENDUID " in done  # exactly at the limit
    _, done = append(c, "INBOX", b"Subject: one more\r\n\r\n.\r\n")
    assert done.endswith(b" NO [OVERQUOTA] Quota exceeded\r\n")
    c.ok("SELECT INBOX")
    _, done = c.cmd("COPY 1 Archive")
    assert rest(done) == b"NO [OVERQUOTA] Quota exceeded\r\n"
    c.ok("MOVE 1 Archive")  # within one user: usage does not change
    c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert c.ok("STATUS INBOX (DELETED DELETED-STORAGE)") == [
        b'* STATUS "INBOX" (DELETED 2 DELETED-STORAGE %d)\r\n' % (2 * len(MSG))]
    c.ok("EXPUNGE")
    _, done = append(c, "INBOX", MSG)
    assert b" OK [APPENDUID " in done  # room again after the expunge


def test_multiappend_is_atomic_on_any_failure(user: str, raw) -> None:
    c = raw(user)
    good = b"Subject: a\r\n\r\nA\r\n"
    tag = c.tag()
    # the third message is empty: nothing of the command may be stored
    c.send(b"%s APPEND Drafts {%d+}\r\n%s (\\Seen) {%d+}\r\n%s {0+}\r\n\r\n"
           % (tag.encode(), len(good), good, len(good), good))
    _, done = c.until_tagged(tag)
    assert done == tag.encode() + b" NO Empty messages cannot be stored\r\n"
    assert c.ok("STATUS Drafts (MESSAGES UIDNEXT)") == [b'* STATUS "Drafts" (MESSAGES 0 UIDNEXT 1)\r\n']
    tag = c.tag()
    c.send(b"%s APPEND Drafts {%d+}\r\n%s (\\Seen) {%d+}\r\n%s\r\n" % (tag.encode(), len(good), good, len(good), good))
    _, done = c.until_tagged(tag)
    assert re.fullmatch(rb"t\d+ OK \[APPENDUID \d+ 1:2\] APPEND completed\r\n", done)


def test_catenate_text_and_urls(user: str, raw) -> None:
    c = raw(user)
    original = (b"From: a@example.test\r\nSubject: draft\r\nContent-Type: multipart/mixed; "
                b"boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
                b"--b1\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--b1--\r\n")
    append(c, "Drafts", original)
    c.ok("SELECT Drafts")
    validity = re.search(rb"UIDVALIDITY (\d+)", b"".join(c.ok("STATUS Drafts (UIDVALIDITY)"))).group(1)
    url = b"/Drafts;UIDVALIDITY=%s/;UID=1" % validity
    tag = c.tag()
    c.send(b'%s APPEND Drafts (\\Draft) CATENATE (URL "%s/;SECTION=HEADER" TEXT {%d+}\r\n%s'
           b' URL "%s/;SECTION=1" TEXT {%d+}\r\n%s)\r\n'
           % (tag.encode(), url, len(b"--b1\r\n\r\n"), b"--b1\r\n\r\n", url, 10, b"\r\n--b1--\r\n"))
    _, done = c.until_tagged(tag)
    assert re.fullmatch(rb"t\d+ OK \[APPENDUID \d+ 2\] APPEND completed\r\n", done), done
    untagged = c.ok("UID FETCH 2 (FLAGS BODY.PEEK[])")
    body = (b"From: a@example.test\r\nSubject: draft\r\nContent-Type: multipart/mixed; boundary=b1\r\n"
            b"\r\n--b1\r\n\r\nfirst part\r\n--b1--\r\n")
    assert b"FLAGS (\\Draft \\Recent)" in untagged[-1] and b"BODY[] {%d}\r\n%s)" % (len(body), body) in untagged[-1]
    # a URL that does not resolve: NO [BADURL <the url>], nothing stored
    for bad in (b"/Drafts;UIDVALIDITY=1/;UID=1", b"/Drafts/;UID=99", b"/Drafts/;UID=1/;SECTION=7",
                b"/Nope/;UID=1", b"imap://other@example.test/INBOX/;UID=1"):
        tag = c.tag()
        c.send(b'%s APPEND Drafts CATENATE (TEXT {4+}\r\nX:\r\n URL "%s")\r\n' % (tag.encode(), bad))
        _, done = c.until_tagged(tag)
        assert done == tag.encode() + b" NO [BADURL " + bad + b"] Cannot read the URL\r\n"
    # the destination is checked first: TRYCREATE even with a bad URL (RFC 4469, Dovecot)
    _, done = c.cmd(b'APPEND Missing CATENATE (URL "/Drafts;UIDVALIDITY=1/;UID=1")')
    assert done.endswith(b" NO [TRYCREATE] No such mailbox\r\n")
    assert c.ok("STATUS Drafts (MESSAGES)") == [b'* STATUS "Drafts" (MESSAGES 2)\r\n']
    # a partial range and a URL of another message in a MULTIAPPEND
    tag = c.tag()
    c.send(b'%s APPEND Drafts CATENATE (URL "/Drafts/;UID=1/;PARTIAL=0.6") CATENATE (URL "/Drafts/;UID=2/;SECTION=HEADER.FIELDS%%20(Subject)" TEXT {2+}\r\nok)\r\n' % tag.encode())
    _, done = c.until_tagged(tag)
    assert re.fullmatch(rb"t\d+ OK \[APPENDUID \d+ 3:4\] APPEND completed\r\n", done), done
    got = c.ok("UID FETCH 3:4 BODY.PEEK[]")
    assert b"BODY[] {8}\r\nFrom: \r\n)" in got[0]  # CRLF added: every stored message ends with one
    assert b"BODY[] {22}\r\nSubject: draft\r\n\r\nok\r\n)" in got[1]


def test_imaplib_quota_commands(server: Server, user: str, connect) -> None:
    set_quota(server, user, 2 * 1024 * 1024, None)
    deliver(server, user, simple("over smtp"))
    m = connect(user)
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK"
    assert data == [[b'"INBOX" ""'], [b'"" (STORAGE 1 2048)']]
    typ, data = m.getquota('""')
    assert typ == "OK" and data == [b'"" (STORAGE 1 2048)']
    typ, data = m.setquota('""', "(STORAGE 1)")
    assert typ == "NO"
