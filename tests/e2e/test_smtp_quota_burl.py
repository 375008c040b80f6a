"""SMTP and quotas (552 5.2.2 at RCPT and at end of data, a DSN for partial failures) and
BURL on submission (RFC 4468) with a URLAUTH URL from IMAP, driven by smtplib and imaplib."""

from __future__ import annotations

import imaplib
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import PASSWORD, Server

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
# imaplib knows only the commands of RFC 3501 and a few more; teach it URLAUTH's.
for _name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))
BIG = b"Subject: big\r\nFrom: carol@example.test\r\n\r\n" + b"y" * 2000 + b"\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("quota"), roles=("mx", "submission", "imaps")).start()
    for u in (ALICE, BOB, CAROL):
        srv.add_user(u)
    try:
        yield srv
    finally:
        srv.stop()


def quota(server: Server, user: str, storage: int | None) -> None:
    server.admin(lambda admin, store: admin.user_quota_set(user, storage, None))


def mx(server: Server) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=15)
    s.ehlo("client.example")
    return s


def submission(server: Server, user: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15)
    s.starttls(context=server.client_context())
    s.ehlo("client.example")
    s.login(user, PASSWORD)
    return s


def imap(server: Server, user: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.client_context())
    m.login(user, PASSWORD)
    return m


def test_full_mailbox_refused_at_rcpt_and_by_declared_size(server: Server) -> None:
    quota(server, ALICE, 0)
    s = mx(server)
    s.mail("carol@example.test")
    assert s.rcpt(ALICE) == (552, b"5.2.2 Mailbox full: the recipient's quota is exceeded")
    s.rset()
    quota(server, ALICE, 1000)
    s.mail("carol@example.test", ["SIZE=5000"])  # RFC 1870: it cannot fit, say so now
    assert s.rcpt(ALICE)[0] == 552
    s.rset()
    s.mail("carol@example.test", ["SIZE=500"])
    assert s.rcpt(ALICE)[0] == 250
    s.quit()
    quota(server, ALICE, None)


def test_message_that_does_not_fit_is_refused_at_end_of_data(server: Server) -> None:
    quota(server, BOB, 1000)
    before = len(server.messages(BOB))
    s = mx(server)
    s.mail("carol@example.test")
    assert s.rcpt(BOB)[0] == 250  # not full yet: the size is unknown
    code, text = s.data(BIG)
    assert (code, text) == (552, b"5.2.2 Mailbox full: the recipient's quota is exceeded")
    s.quit()
    assert len(server.messages(BOB)) == before
    quota(server, BOB, None)


def test_partial_failure_is_accepted_and_bounced(server: Server) -> None:
    quota(server, ALICE, 1500)
    s = mx(server)
    s.mail("carol@example.test")
    assert s.rcpt(ALICE)[0] == 250 and s.rcpt(BOB)[0] == 250
    code, text = s.data(BIG)
    assert code == 250, text
    s.quit()
    assert any(b"y" * 2000 in m for m in server.messages(BOB))
    assert not any(b"y" * 2000 in m for m in server.messages(ALICE))
    dsn = [m for m in server.messages(CAROL) if b"multipart/report" in m]
    assert len(dsn) == 1
    assert b"Final-Recipient: rfc822;alice@example.test" in dsn[0]
    assert b"Status: 5.2.2" in dsn[0] and b"Action: failed" in dsn[0]
    quota(server, ALICE, None)


def test_burl_submits_a_draft_by_reference(server: Server) -> None:
    draft = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: by ref\r\n\r\nfrom drafts\r\n"
    m = imap(server, BOB)
    typ, data = m.append("Drafts", "(\\Draft)", None, draft)
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    rump = f"imap://bob@example.test/Drafts/;uid={uid};urlauth=submit+bob@example.test"
    typ, data = m._simple_command("GENURLAUTH", f'"{rump}"', "INTERNAL")
    assert typ == "OK", data
    url = m.untagged_responses.pop("GENURLAUTH")[0].decode().strip('"')
    assert re.fullmatch(re.escape(rump) + r":internal:[0-9a-f]{64}", url)
    # URLFETCH of a submit+ URL from IMAP: NIL (it is the submission server's)
    typ, data = m._simple_command("URLFETCH", f'"{url}"')
    assert typ == "OK" and m.untagged_responses.pop("URLFETCH")[0].endswith(b" NIL")
    s = submission(server, BOB)
    assert "burl" in s.esmtp_features
    s.mail("bob@example.test")
    s.rcpt(ALICE)
    assert s.docmd("BURL", f"{url} LAST")[0] == 250
    s.quit()
    got = [x for x in server.messages(ALICE) if b"from drafts" in x]
    # the draft's octets, behind our trace fields and the Date/Message-ID submission adds
    assert len(got) == 1 and got[0].endswith(b"\r\n\r\nfrom drafts\r\n")
    assert draft.split(b"\r\n\r\n", 1)[0] + b"\r\n" in got[0]
    # BDAT then BURL LAST: the URL's octets follow the chunk
    s = submission(server, BOB)
    s.mail("bob@example.test")
    s.rcpt(ALICE)
    head = b"X-Prefix: yes\r\n"
    s.send(b"BDAT %d\r\n" % len(head) + head)
    assert s.getreply()[0] == 250
    assert s.docmd("BURL", url + " LAST")[0] == 250
    s.quit()
    assert any(x.startswith(b"Return-Path") and b"X-Prefix: yes\r\nFrom: bob@" in x
               for x in server.messages(ALICE))
    # RESETKEY invalidates it: 554 5.6.6 and the transaction is over
    m._simple_command("RESETKEY")
    s = submission(server, BOB)
    s.mail("bob@example.test")
    s.rcpt(ALICE)
    code, text = s.docmd("BURL", url + " LAST")
    assert (code, text) == (554, b"5.6.6 IMAP URL resolution failed")
    assert s.docmd("BURL", url + " LAST")[0] == 503  # no transaction any more
    s.quit()
    m.logout()


def test_burl_refuses_urls_for_someone_else(server: Server) -> None:
    m = imap(server, BOB)
    typ, data = m.append("Drafts", None, None, b"Subject: private\r\n\r\nno\r\n")
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    rump = f"imap://bob@example.test/Drafts/;uid={uid};urlauth=submit+carol@example.test"
    m._simple_command("GENURLAUTH", f'"{rump}"', "INTERNAL")
    url = m.untagged_responses.pop("GENURLAUTH")[0].decode().strip('"')
    m.logout()
    s = submission(server, BOB)  # bob is not carol's submission session
    s.mail("bob@example.test")
    s.rcpt(ALICE)
    assert s.docmd("BURL", url + " LAST") == (554, b"5.6.6 IMAP URL resolution failed")
    s.quit()
    s = submission(server, CAROL)
    s.mail("carol@example.test")
    s.rcpt(ALICE)
    assert s.docmd("BURL", url + " LAST")[0] == 250
    assert s.docmd("BURL", "not-a-url")[0] == 503  # after the transaction ended
    s.quit()
    s = mx(server)
    assert "burl" not in s.esmtp_features  # submission only
    s.quit()


def test_burl_syntax(server: Server, tmp_path: Path) -> None:
    s = submission(server, CAROL)
    assert s.docmd("BURL")[0] == 501
    assert s.docmd("BURL", "imap://x/INBOX/;uid=1 LAST")[0] == 503  # no transaction yet
    s.mail("carol@example.test")
    s.rcpt(BOB)
    assert s.docmd("BURL", "imap://x/INBOX/;uid=1 SOON")[0] == 501
    assert s.docmd("BURL", "imap://carol@example.test/INBOX/;uid=1 LAST")[0] == 554
    s.quit()
