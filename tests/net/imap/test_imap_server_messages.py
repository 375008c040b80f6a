"""Messages: SELECT/EXAMINE responses, APPEND (flags, date, sync and LITERAL+ literals,
MULTIAPPEND, APPENDUID, TRYCREATE), FETCH attributes, STORE, COPY/MOVE with COPYUID,
EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT, \\Seen on body fetches, keywords."""

from __future__ import annotations

import imaplib
import re
import time

import pytest
from imap_util import deliver, fetch_items, flags_of, simple

from support.server import Server


def test_select_and_examine_responses(server: Server, user: str, raw) -> None:
    deliver(server, user, simple("one"))
    deliver(server, user, simple("two"))
    c = raw(user)
    untagged, done = c.cmd("SELECT INBOX")
    text = b"".join(untagged)
    assert b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)" in text
    assert b"[PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)]" in text
    assert b"* 2 EXISTS\r\n" in text and b"* 2 RECENT\r\n" in text
    assert b"[UNSEEN 1]" in text and b"[UIDNEXT 3]" in text
    validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text).group(1)
    assert re.search(rb"\[HIGHESTMODSEQ \d+\]", text)
    assert done.startswith(b"t2 OK [READ-WRITE]")
    # \Recent went to the first session; a second one sees none.
    c2 = raw(user)
    text2 = b"".join(c2.ok("EXAMINE INBOX"))
    assert b"* 0 RECENT\r\n" in text2 and b"[PERMANENTFLAGS ()]" in text2
    assert re.search(rb"\[UIDVALIDITY (\d+)\]", text2).group(1) == validity
    _, done = c2.cmd("STORE 1 +FLAGS (\\Seen)")
    assert b" NO " in done  # read-only
    _, done = c2.cmd("SELECT Nonexistent")
    assert b"NO [NONEXISTENT]" in done
    _, done = c2.cmd("FETCH 1 FLAGS")  # the failed SELECT closed the mailbox
    assert b"BAD" in done
    # IMAP4rev2: no RECENT, no UNSEEN, a LIST response instead
    c3 = raw(user)
    c3.ok("ENABLE IMAP4rev2")
    text3 = b"".join(c3.ok("SELECT INBOX"))
    assert b"RECENT" not in text3 and b"UNSEEN" not in text3
    assert b'* LIST () "/" "INBOX"' in text3


def test_uidvalidity_stable_across_restart(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imaps",)).start()
    try:
        srv.add_user("r@example.test")
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context())
        m.login("r@example.test", "correct horse battery")
        m.append("INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")
        m.select("INBOX")
        before = m.response("UIDVALIDITY")[1]
        m.logout()
        srv.stop()
        srv.start()
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context())
        m.login("r@example.test", "correct horse battery")
        m.select("INBOX")
        assert m.response("UIDVALIDITY")[1] == before
        m.append("INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")
        assert m.uid("SEARCH", "ALL")[1] == [b"1 2"]  # UIDs go on, never reused
        m.logout()
    finally:
        srv.stop()


def test_append_flags_date_and_appenduid(user: str, connect) -> None:
    m = connect(user)
    date = imaplib.Time2Internaldate(time.mktime((2020, 3, 4, 5, 6, 7, 0, 0, -1)))
    typ, data = m.append("Drafts", "(\\Draft $Label1)", date, b"Subject: draft\n\nbare LF body\n")
    assert typ == "OK"
    validity, uid = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0]).groups()
    m.select("Drafts")
    _, data = m.uid("FETCH", uid, "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    text = fetch_items(data)[1]
    assert flags_of(text) == {"\\Draft", "$Label1", "\\Recent"}
    assert imaplib.Internaldate2tuple(text)[:6] == time.localtime(
        time.mktime((2020, 3, 4, 5, 6, 7, 0, 0, -1)))[:6]
    body = data[0][1]
    assert body == b"Subject: draft\r\n\r\nbare LF body\r\n"  # normalised to CRLF
    assert b"RFC822.SIZE %d" % len(body) in text
    assert b"$Label1" in m.response("FLAGS")[1][0]  # from SELECT's FLAGS
    typ, data = m.append("NoSuchBox", None, None, b"Subject: x\r\n\r\ny\r\n")
    assert typ == "NO" and b"[TRYCREATE]" in data[0]


def test_append_sync_literal_literal_plus_and_multiappend(user: str, raw) -> None:
    c = raw(user)
    msg = b"Subject: sync\r\n\r\nbody\r\n"
    c.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(msg))
    assert c.line().startswith(b"+ ")
    c.send(msg + b"\r\n")
    _, done = c.until_tagged("a")
    assert re.match(rb"a OK \[APPENDUID \d+ 1\]", done)
    plus = b"Subject: plus\r\n\r\nbody\r\n"
    c.send(b"b APPEND INBOX {%d+}\r\n" % len(plus) + plus + b" {%d+}\r\n" % len(plus) + plus + b"\r\n")
    _, done = c.until_tagged("b")
    assert re.match(rb"b OK \[APPENDUID \d+ 2:3\]", done)  # MULTIAPPEND, RFC 3502
    # literal8 (RFC 3516) with a NUL octet
    binary = b"Subject: bin\r\n\r\nnul\x00here\r\n"
    c.send(b"c APPEND INBOX ~{%d+}\r\n" % len(binary) + binary + b"\r\n")
    _, done = c.until_tagged("c")
    assert done.startswith(b"c OK")
    c.ok("SELECT INBOX")
    untagged = c.ok("FETCH 1:* (UID FLAGS)")
    assert len(untagged) == 4 and b"\\Seen" in untagged[0]
    # an empty message is refused, the session goes on
    _, done = c.cmd(b"APPEND INBOX {0+}\r\n")
    assert b" NO " in done
    assert c.ok("NOOP") == []


def test_fetch_attributes(server: Server, user: str, connect) -> None:
    message = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nCc: c@example.org\r\n"
        b"Subject: Fetch me\r\nDate: Tue, 02 Jan 2024 10:00:00 +0100\r\n"
        b"Message-ID: <fetch@example.org>\r\n\r\nline one\r\nline two\r\n"
    )
    deliver(server, user, message)
    stored = server.messages(user)[0]
    m = connect(user)
    m.select("INBOX")
    _, data = m.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE)")
    text = data[0]
    assert b"UID 1 " in text and b"RFC822.SIZE %d" % len(stored) in text
    assert b'ENVELOPE ("Tue, 02 Jan 2024 10:00:00 +0100" "Fetch me" (("Alice" NIL "alice" "example.org"))' in text
    assert b'"<fetch@example.org>")' in text
    assert b'BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2)' in text
    assert b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2 NIL NIL NIL NIL)' in text
    assert re.search(rb'INTERNALDATE "\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d \+0000"', text)
    _, data = m.fetch("1", "(RFC822.HEADER RFC822.TEXT BODY.PEEK[HEADER.FIELDS (Subject To)] "
                           "BODY.PEEK[HEADER.FIELDS.NOT (Received Return-Path)] BODY.PEEK[TEXT]<5.6> "
                           "BODY.PEEK[1] BINARY.PEEK[1] BINARY.SIZE[1])")
    items = dict(_literal_items(data))
    header_end = stored.index(b"\r\n\r\n") + 4
    assert items[b"RFC822.HEADER"] == stored[:header_end]
    assert items[b"RFC822.TEXT"] == stored[header_end:]
    assert items[b"BODY[HEADER.FIELDS (Subject To)]"] == b"To: bob@example.test\r\nSubject: Fetch me\r\n\r\n"
    assert b"Received" not in items[b"BODY[HEADER.FIELDS.NOT (Received Return-Path)]"]
    assert items[b"BODY[TEXT]<5>"] == b"one\r\nl"
    assert items[b"BODY[1]"] == b"line one\r\nline two\r\n"
    assert items[b"BINARY[1]"] == b"line one\r\nline two\r\n"
    assert b"BINARY.SIZE[1] 20" in b"".join(x for x in data if isinstance(x, bytes)) + b"".join(
        x[0] for x in data if isinstance(x, tuple))
    # RFC822.TEXT (not PEEK) set \Seen; FLAGS came back in the same response
    _, data = m.fetch("1", "(FLAGS)")
    assert "\\Seen" in flags_of(data[0])
    _, data = m.fetch("1", "(RFC822)")
    assert data[0][1] == stored
    _, data = m.fetch("1", "(BODY.PEEK[]<0.10>)")
    assert data[0][1] == stored[:10]
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.fetch("5", "FLAGS")  # beyond the last message
    assert m.fetch("1", "FAST")[0] == "OK" and m.fetch("1", "ALL")[0] == "OK"
    assert m.fetch("1", "FULL")[0] == "OK"


def test_header_sections_of_a_big_multipart_message(server: Server, user: str, connect) -> None:
    """Top-level header sections are served from the header block alone (the body is not
    read, the MIME tree not decoded); mixed with ENVELOPE or a part, the full path is used.
    Both must give the octets of the stored message."""
    inner = b"From: inner@example.org\r\nSubject: Inner\r\n\r\ninner body\r\n"
    message = (
        b"From: Big <big@example.org>\r\nTo: bob@example.test\r\nSubject: Big one\r\n"
        b"X-Folded: first\r\n second\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\n" + b"x" * 100 + b"\r\n" * 2000 + b"--b1\r\n"
        b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--b1--\r\n"
    )
    deliver(server, user, message)
    stored = server.messages(user)[0]
    head = stored[: stored.index(b"\r\n\r\n") + 4]
    m = connect(user)
    m.select("INBOX")
    _, data = m.fetch("1", "(RFC822.HEADER BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (X-Folded SUBJECT)] "
                           "BODY.PEEK[HEADER.FIELDS.NOT (Received Return-Path)])")
    items = dict(_literal_items(data))
    assert items[b"RFC822.HEADER"] == head and items[b"BODY[HEADER]"] == head
    assert items[b"BODY[HEADER.FIELDS (X-Folded SUBJECT)]"] == \
        b"Subject: Big one\r\nX-Folded: first\r\n second\r\n\r\n"
    not_fields = items[b"BODY[HEADER.FIELDS.NOT (Received Return-Path)]"]
    assert b"Received:" not in not_fields and not_fields.endswith(b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n')
    _, data = m.fetch("1", "(BODY.PEEK[TEXT]<0.20> BODY.PEEK[HEADER.FIELDS (TO)] RFC822.TEXT)")
    items = dict(_literal_items(data))
    assert items[b"BODY[TEXT]<0>"] == stored[len(head):len(head) + 20]
    assert items[b"RFC822.TEXT"] == stored[len(head):]
    assert items[b"BODY[HEADER.FIELDS (TO)]"] == b"To: bob@example.test\r\n\r\n"
    # The same sections next to attributes that need the whole tree.
    _, data = m.fetch("1", "(ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[2.HEADER])")
    items = dict(_literal_items(data))
    assert items[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: Big one\r\n\r\n"
    assert items[b"BODY[2.HEADER]"] == b"From: inner@example.org\r\nSubject: Inner\r\n\r\n"
    envelope = data[0][0] if isinstance(data[0], tuple) else data[0]
    assert b'"Big one" (("Big" NIL "big" "example.org"))' in envelope


def test_structure_is_the_same_from_the_shared_cache(server: Server, user: str, connect) -> None:
    """ENVELOPE/BODYSTRUCTURE/BODY are rendered once and then served from a cache shared by
    sessions: a second FETCH, from this or another session, rev1 or rev2, is identical to
    the first, and mixing cached and new messages keeps every line right."""
    inner = b"From: inner@example.org\r\nSubject: Inner\r\n\r\ninner body\r\n"
    for i in range(3):
        deliver(server, user, (
            b"From: A <a@example.org>\r\nTo: bob@example.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= %d\r\n"
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n--b\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" % i + inner + b"--b--\r\n"))
    query = "(UID ENVELOPE BODYSTRUCTURE BODY)"
    m = connect(user)
    m.select("INBOX")
    _, first_two = m.fetch("1:2", query)
    _, all_three = m.fetch("1:3", query)  # 1:2 cached, 3 rendered now
    _, again = m.fetch("1:3", query)
    assert all_three[:2] == first_two and again == all_three
    assert b"Subject" not in again[0] and b'"=?utf-8?q?Gr=C3=BC=C3=9Fe?= 0"' in again[0]
    assert b'("message" "rfc822"' in again[2]
    other = connect(user)
    other.select("INBOX")
    assert other.fetch("1:3", query)[1] == all_three
    # Header sections are cached by their exact request: a different partial range or
    # field list is a different item.
    q = "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[HEADER]<0.10> BODY.PEEK[HEADER]<0.20>)"
    _, h1 = m.fetch("1:3", q)
    _, h2 = other.fetch("1:3", q)
    assert h1 == h2
    items = _literal_items(h2[:4])
    assert items[0][1] == b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= 0\r\n\r\n"
    stored = server.messages(user)[0]
    assert items[1] == (b"BODY[HEADER]<0>", stored[:10])
    assert items[2] == (b"BODY[HEADER]<0>", stored[:20])
    _, p1 = m.fetch("2", "(BODY.PEEK[HEADER]<0.12>)")
    _, p2 = other.fetch("2", "(BODY.PEEK[HEADER]<0.14>)")
    assert _literal_items(p1)[0][1] == stored[:12] and _literal_items(p2)[0][1] == stored[:14]
    _, h3 = other.fetch("3", "(BODY.PEEK[HEADER.FIELDS (TO)])")
    assert _literal_items(h3)[0][1] == b"To: bob@example.test\r\n\r\n"
    rev2 = connect(user)
    rev2._simple_command("ENABLE", "IMAP4rev2")
    rev2.select("INBOX")
    _, v2 = rev2.fetch("1:3", "(UID ENVELOPE BODYSTRUCTURE)")
    _, v2_again = rev2.fetch("1:3", "(UID ENVELOPE BODYSTRUCTURE)")
    assert v2 == v2_again and all(b"ENVELOPE (" in line for line in v2)


def _literal_items(data: list) -> list[tuple[bytes, bytes]]:
    """(item name, literal) pairs from imaplib FETCH data with several literals."""
    out = []
    for entry in data:
        if isinstance(entry, tuple):
            head, literal = entry
            m = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) \{\d+\}$", head)
            assert m is not None, head
            out.append((m.group(1), literal))
    return out


def test_body_fetch_sets_seen_once_with_flags_in_response(server: Server, user: str, raw) -> None:
    for i in range(3):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    c.ok("SELECT INBOX")
    untagged = c.ok("FETCH 1:3 (BODY[TEXT])")
    assert len(untagged) == 3
    for line in untagged:
        assert b"BODY[TEXT] {" in line and b"FLAGS (\\Seen \\Recent)" in line
    assert c.ok("NOOP") == []  # our own flag change is not echoed
    untagged = c.ok("FETCH 1:3 (BODY[TEXT])")
    assert all(b"FLAGS" not in line for line in untagged)  # already seen: no change
    c2 = raw(user)
    c2.ok("EXAMINE INBOX")
    untagged = c2.ok("FETCH 1 (BODY[TEXT])")  # read-only: never sets \Seen
    assert b"FLAGS" not in untagged[0]


def test_store_flags_and_keywords(server: Server, user: str, raw, connect) -> None:
    deliver(server, user, simple("a"))
    deliver(server, user, simple("b"))
    c = raw(user)
    c.ok("SELECT INBOX")
    untagged = c.ok("STORE 1:2 +FLAGS (\\Flagged $Important)")
    assert untagged[0].startswith(b"* FLAGS (")  # a new keyword announces new FLAGS
    assert b"$Important" in untagged[0]
    assert untagged[1] == b"* 1 FETCH (FLAGS (\\Flagged $Important \\Recent))\r\n"
    assert c.ok("STORE 1 -FLAGS.SILENT ($Important)") == []
    untagged = c.ok("UID STORE 2 FLAGS (\\Answered)")
    assert untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent))\r\n"]
    _, done = c.cmd("STORE 1 +FLAGS (\\Recent)")
    assert b"BAD" in done
    _, done = c.cmd("STORE 1 +FLAGS (\\Bogus)")
    assert b"BAD" in done
    # keywords are persisted: a new session sees them
    m = connect(user)
    m.select("INBOX")
    _, data = m.fetch("1:2", "(FLAGS)")
    assert flags_of(data[0]) == {"\\Flagged"}
    assert flags_of(data[1]) == {"\\Answered"}
    m.store("1", "+FLAGS", "($Custom)")
    m2 = connect(user)
    m2.select("INBOX")
    assert b"$Custom" in m2.response("FLAGS")[1][0]


def test_copy_move_and_copyuid(server: Server, user: str, raw) -> None:
    for i in range(4):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    c.ok("CREATE Dest")
    c.ok("SELECT INBOX")
    _, done = c.cmd("COPY 1:2 Dest")
    m = re.search(rb"\[COPYUID (\d+) 1:2 1:2\]", done)
    assert m is not None, done
    _, done = c.cmd("UID COPY 4 Dest")
    assert re.search(rb"\[COPYUID \d+ 4 3\]", done)
    _, done = c.cmd("COPY 1 Nowhere")
    assert b"NO [TRYCREATE]" in done
    untagged = c.ok("MOVE 2:3 Dest")
    assert re.match(rb"\* OK \[COPYUID \d+ 2:3 4:5\]", untagged[0])
    assert untagged[1:] == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    untagged = c.ok("UID MOVE 4 Dest")
    assert re.match(rb"\* OK \[COPYUID \d+ 4 6\]", untagged[0])
    assert untagged[1:] == [b"* 2 EXPUNGE\r\n"]
    assert c.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 1)\r\n"]
    st = c.ok("STATUS Dest (MESSAGES UIDNEXT)")
    assert st == [b'* STATUS "Dest" (MESSAGES 6 UIDNEXT 7)\r\n']
    assert len(server.messages(user, "Dest")) == 6


def test_expunge_uid_expunge_close_unselect(server: Server, user: str, raw) -> None:
    for i in range(5):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    c.ok("SELECT INBOX")
    c.ok("STORE 1,3,5 +FLAGS.SILENT (\\Deleted)")
    untagged = c.ok("UID EXPUNGE 1:3")  # only UIDs 1 and 3 (5 is not in the set)
    assert untagged == [b"* 3 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    untagged = c.ok("EXPUNGE")
    assert untagged == [b"* 3 EXPUNGE\r\n"]
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("UNSELECT")  # no expunge
    c.ok("SELECT INBOX")
    assert c.ok("SEARCH DELETED") == [b"* SEARCH 1\r\n"]
    c.ok("CLOSE")  # silent expunge
    _, done = c.cmd("FETCH 1 FLAGS")
    assert b"BAD" in done
    untagged = c.ok("SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in untagged
    c.ok("EXAMINE INBOX")
    _, done = c.cmd("EXPUNGE")
    assert b" NO " in done


def test_qresync_vanished_on_expunge_and_fetch(server: Server, user: str, raw) -> None:
    for i in range(3):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    assert c.ok("ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n"]
    text = b"".join(c.ok("SELECT INBOX"))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))
    c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert c.ok("EXPUNGE") == [b"* VANISHED 2\r\n"]
    untagged = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert untagged == [b"* VANISHED (EARLIER) 2\r\n"]
    untagged = c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
    assert len(untagged) == 2 and all(b"MODSEQ (" in u for u in untagged)


def test_recent_belongs_to_one_session_and_survives_a_restart(tmp_path) -> None:
    """RFC 3501 2.3.2: \\Recent goes to the first session that sees a message, whether it
    learns of it at SELECT or while selected; EXAMINE and STATUS never claim. The claim
    is kept in memory and written behind: a clean restart keeps it."""
    from imap_raw import RawImap
    from support.server import PASSWORD

    srv = Server(tmp_path, roles=("imaps", "mx")).start()
    try:
        user = "recent@example.test"
        srv.add_user(user)
        deliver(srv, user, simple("one"))
        deliver(srv, user, simple("two"))

        def session() -> RawImap:
            c = RawImap(srv.ports["imaps"], context=srv.client_context())
            c.login(user, PASSWORD)
            return c

        a, b, c = session(), session(), session()
        assert b"* 2 RECENT\r\n" in a.ok("SELECT INBOX")
        assert b"* 0 RECENT\r\n" in b.ok("SELECT INBOX")
        deliver(srv, user, simple("three"))
        got_a = a.ok("NOOP")
        assert b"* 3 EXISTS\r\n" in got_a and b"* 3 RECENT\r\n" in got_a  # 1, 2 and 3
        got_b = b.ok("NOOP")
        assert b"* 3 EXISTS\r\n" in got_b and b"* 0 RECENT\r\n" in got_b
        assert b"\\Recent" in a.ok("FETCH 3 FLAGS")[0]
        assert b"\\Recent" not in b.ok("FETCH 3 FLAGS")[0]
        assert c.ok("STATUS INBOX (RECENT MESSAGES)") == [
            b'* STATUS "INBOX" (RECENT 0 MESSAGES 3)\r\n']
        deliver(srv, user, simple("four"))
        assert c.ok("STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 1)\r\n']
        c.ok("EXAMINE INBOX")  # never claims (the count below shows it)
        for s in (a, b, c):
            s.close()
        srv.stop()
        srv.start()
        d = session()
        assert d.ok("STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 1)\r\n']
        got = d.ok("SELECT INBOX")
        assert b"* 4 EXISTS\r\n" in got and b"* 1 RECENT\r\n" in got
        flags = d.ok("FETCH 1:* (FLAGS)")
        assert [b"\\Recent" in line for line in flags] == [False, False, False, True]
        e = session()
        assert b"* 0 RECENT\r\n" in e.ok("SELECT INBOX")
    finally:
        srv.stop()


def test_fetch_answered_from_memory_is_current(server: Server, user: str, raw) -> None:
    """A repeated FETCH of items the shared cache keeps (header, size, date) is answered
    without a store read, with the same bytes, and with the flags the session knows now."""
    for i in range(3):
        deliver(server, user, simple(f"memory {i}"))
    c = raw(user)
    c.ok("SELECT INBOX")
    q = "UID FETCH 2 (UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"
    first = c.ok(q)
    assert c.ok(q) == first and first[0].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Recent) ")
    d = raw(user)
    d.ok("SELECT INBOX")
    d.ok("UID STORE 2 +FLAGS (\\Flagged $Memory)")
    third = c.ok(q)
    # the UID command first brings the view up to date (FLAGS, then the change) ...
    assert third[0].startswith(b"* FLAGS (") and b"$Memory" in third[0]
    assert third[1] == b"* 2 FETCH (UID 2 FLAGS (\\Flagged $Memory \\Recent))\r\n"
    # ... and the answer from memory shows the current flags, the rest unchanged
    assert third[2] == first[0].replace(b"FLAGS (\\Recent)", b"FLAGS (\\Flagged $Memory \\Recent)")
    d.ok("STORE 2 -FLAGS ($Memory)")
    fast = c.ok("FETCH 2 (FLAGS RFC822.SIZE)")
    assert fast[-1].startswith(b"* 2 FETCH (FLAGS (\\Flagged \\Recent) RFC822.SIZE ")
    assert c.ok("FETCH 2 (FLAGS RFC822.SIZE)") == [fast[-1]]


def test_flags_and_uid_of_many_messages_from_the_view(server: Server, user: str, raw) -> None:
    """FETCH of FLAGS and/or UID only (every client's resync) is built from the view with
    one format per attribute order; each order, keywords and \\Recent come out right."""
    for i in range(4):
        deliver(server, user, simple(f"view {i}"))
    a = raw(user)
    a.ok("SELECT INBOX")  # claims \Recent for messages 1-4
    a.ok("STORE 2 +FLAGS.SILENT (\\Seen $Work)")
    deliver(server, user, simple("view 5"))
    b = raw(user)
    b.ok("SELECT INBOX")  # \Recent only for message 5 here
    assert b.ok("FETCH 1:* (FLAGS)") == [
        b"* 1 FETCH (FLAGS ())\r\n", b"* 2 FETCH (FLAGS (\\Seen $Work))\r\n",
        b"* 3 FETCH (FLAGS ())\r\n", b"* 4 FETCH (FLAGS ())\r\n",
        b"* 5 FETCH (FLAGS (\\Recent))\r\n",
    ]
    assert b.ok("FETCH 2:3 (UID FLAGS)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen $Work))\r\n", b"* 3 FETCH (UID 3 FLAGS ())\r\n"]
    assert b.ok("FETCH 2 (FLAGS UID)") == [b"* 2 FETCH (FLAGS (\\Seen $Work) UID 2)\r\n"]
    assert b.ok("UID FETCH 4:* (FLAGS)") == [
        b"* 4 FETCH (UID 4 FLAGS ())\r\n", b"* 5 FETCH (UID 5 FLAGS (\\Recent))\r\n"]
    assert b.ok("FETCH 1,5 (UID)") == [b"* 1 FETCH (UID 1)\r\n", b"* 5 FETCH (UID 5)\r\n"]
    assert b.ok("UID FETCH 1 (UID)") == [b"* 1 FETCH (UID 1)\r\n"]
    c = raw(user)
    c.ok("ENABLE IMAP4rev2")
    c.ok("SELECT INBOX")
    assert c.ok("FETCH 5 (FLAGS)") == [b"* 5 FETCH (FLAGS ())\r\n"]  # no \Recent in rev2
