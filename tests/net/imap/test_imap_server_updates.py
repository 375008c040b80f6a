"""Changes reaching other sessions: IDLE woken by SMTP delivery, two sessions seeing each
other's flag changes and expunges, no EXPUNGE during FETCH/STORE/SEARCH by sequence
number, QRESYNC resynchronisation, CONDSTORE (UNCHANGEDSINCE, CHANGEDSINCE, MODSEQ),
changes made through POP3."""

from __future__ import annotations

import poplib
import re
import time

from imap_raw import RawImap
from imap_util import deliver, simple

from support.server import PASSWORD, Server


def _wait_for(c: RawImap, pattern: bytes, timeout: float) -> tuple[bytes, float]:
    started = time.monotonic()
    c.sock.settimeout(timeout)
    while True:
        line = c.response()
        if re.search(pattern, line):
            return line, time.monotonic() - started
        assert time.monotonic() - started < timeout, line


def test_idle_woken_by_smtp_delivery_within_a_second(server: Server, user: str, raw) -> None:
    deliver(server, user, simple("first"))
    c = raw(user)
    c.ok("SELECT INBOX")
    c.send(b"i1 IDLE\r\n")
    assert c.line().startswith(b"+ ")
    for n in (2, 3):
        started = time.monotonic()
        deliver(server, user, simple(f"during idle {n}"))
        line, _ = _wait_for(c, rb"^\* \d+ EXISTS", 5)
        assert line == b"* %d EXISTS\r\n" % n
        assert time.monotonic() - started < 1.0
    c.send(b"DONE\r\n")
    _, done = c.until_tagged("i1")
    assert done.startswith(b"i1 OK")
    untagged = c.ok("FETCH 3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"during idle 3" in untagged[0]


def test_idle_reports_flag_changes_and_expunges_of_another_session(server: Server, user: str, raw) -> None:
    for i in range(3):
        deliver(server, user, simple(f"m{i}"))
    watcher = raw(user)
    watcher.ok("SELECT INBOX")
    watcher.send(b"i IDLE\r\n")
    assert watcher.line().startswith(b"+ ")
    actor = raw(user)
    actor.ok("SELECT INBOX")
    actor.ok("STORE 2 +FLAGS (\\Flagged)")
    line, _ = _wait_for(watcher, rb"FETCH", 5)
    # the watcher selected first: \Recent is its own (RFC 3501 2.3.2)
    assert line == b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n"
    actor.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    actor.ok("EXPUNGE")
    line, _ = _wait_for(watcher, rb"EXPUNGE", 5)
    assert line == b"* 1 EXPUNGE\r\n"
    watcher.send(b"DONE\r\n")
    untagged, done = watcher.until_tagged("i")
    assert done.startswith(b"i OK")
    assert watcher.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)\r\n", b"* 2 FETCH (UID 3)\r\n"]


def test_two_sessions_see_changes_on_noop(server: Server, user: str, raw) -> None:
    for i in range(3):
        deliver(server, user, simple(f"m{i}"))
    a = raw(user)
    b = raw(user)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    a.ok("STORE 3 +FLAGS.SILENT (\\Seen $Work)")
    untagged = b.ok("NOOP")
    assert untagged[0].startswith(b"* FLAGS (") and b"$Work" in untagged[0]
    assert untagged[1] == b"* 3 FETCH (UID 3 FLAGS (\\Seen $Work))\r\n"
    assert b.ok("NOOP") == []  # reported once
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    deliver(server, user, simple("new"))
    untagged = a.ok("NOOP")
    assert untagged[0] == b"* 1 EXPUNGE\r\n"
    assert b"* 3 EXISTS\r\n" in untagged


def test_no_expunge_during_fetch_store_search_by_sequence_number(server: Server, user: str, raw) -> None:
    for i in range(4):
        deliver(server, user, simple(f"m{i}"))
    a = raw(user)
    b = raw(user)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    # a still numbers 4 messages; FETCH by number must not report the expunge.
    # What the session knows (flags, UIDs) is still served for the expunged message ...
    untagged, done = a.cmd("FETCH 1:4 (UID)")
    assert untagged == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 2)\r\n",
                        b"* 3 FETCH (UID 3)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert b" OK " in done
    # ... what needs the store is not: NO [EXPUNGEISSUED] (RFC 9051 7.1)
    untagged, done = a.cmd("FETCH 1:4 (UID RFC822.SIZE)")
    assert not any(b"EXPUNGE" in u for u in untagged)
    assert [u.split(b" RFC822")[0] for u in untagged] == [
        b"* 1 FETCH (UID 1", b"* 3 FETCH (UID 3", b"* 4 FETCH (UID 4"]
    assert b"NO [EXPUNGEISSUED]" in done
    untagged = a.ok("SEARCH ALL")
    assert untagged == [b"* SEARCH 1 3 4\r\n"]  # message 2 is gone but numbers stand
    untagged = a.ok("STORE 4 +FLAGS (\\Seen)")
    assert not any(b"EXPUNGE" in u for u in untagged)
    # a UID command may report it
    untagged = a.ok("UID FETCH 1:* (FLAGS)")
    assert untagged[0] == b"* 2 EXPUNGE\r\n"
    assert a.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 3)\r\n",
                                        b"* 3 FETCH (UID 4)\r\n"]


def test_qresync_select_after_changes(server: Server, user: str, raw) -> None:
    for i in range(5):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    c.ok("ENABLE QRESYNC")
    text = b"".join(c.ok("SELECT INBOX"))
    validity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))
    c.close()
    # While the client is away: an expunge, a flag change, a new message.
    other = raw(user)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("UID EXPUNGE 2")
    other.ok("STORE 3 +FLAGS.SILENT (\\Answered)")  # message 3 is now UID 4
    deliver(server, user, simple("new"))
    back = raw(user)
    back.ok("ENABLE QRESYNC")
    untagged, done = back.cmd(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:5))")
    assert done.split()[1] == b"OK"
    assert b"* VANISHED (EARLIER) 2\r\n" in untagged
    fetches = [u for u in untagged if b"FETCH" in u]
    assert b"* 3 FETCH (UID 4 FLAGS (\\Answered) MODSEQ (" in b"".join(fetches)
    assert any(b"UID 6 " in f for f in fetches)  # the new message
    assert not any(b"UID 1 " in f or b"UID 3 " in f for f in fetches)  # unchanged
    # wrong UIDVALIDITY: a plain SELECT, no VANISHED
    untagged = back.ok(f"SELECT INBOX (QRESYNC ({validity + 1} {modseq}))")
    assert not any(b"VANISHED" in u for u in untagged)
    assert untagged[0] == b"* OK [CLOSED] Previous mailbox is now closed\r\n"
    # QRESYNC parameter without ENABLE is a BAD
    _, done = raw(user).cmd(f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
    assert b"BAD" in done


def test_condstore_unchangedsince_and_modseq(server: Server, user: str, raw) -> None:
    for i in range(3):
        deliver(server, user, simple(f"m{i}"))
    c = raw(user)
    text = b"".join(c.ok("SELECT INBOX (CONDSTORE)"))
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))
    untagged = c.ok("FETCH 1:3 (MODSEQ)")
    modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", u).group(1)) for u in untagged]
    assert max(modseqs) == highest
    untagged = c.ok(f"STORE 1 (UNCHANGEDSINCE {modseqs[0]}) +FLAGS (\\Seen)")
    new = int(re.search(rb"MODSEQ \((\d+)\)", untagged[0]).group(1))
    assert new > highest
    # second conditional store with the old modseq fails for message 1 only
    untagged, done = c.cmd(f"STORE 1:2 (UNCHANGEDSINCE {modseqs[1]}) +FLAGS.SILENT (\\Flagged)")
    assert re.match(rb"t\d+ OK \[MODIFIED 1\]", done), done
    # RFC 7162 3.1: under CONDSTORE every STORE-caused FETCH carries UID and MODSEQ
    assert len(untagged) == 1 and untagged[0].startswith(b"* 2 FETCH (UID 2 MODSEQ (")
    untagged = c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})")
    assert len(untagged) == 2 and all(b"MODSEQ" in u for u in untagged)
    assert c.ok(f"SEARCH MODSEQ {new}") == [b"* SEARCH 1 2 (MODSEQ %d)\r\n" % (new + 1)]
    st = c.ok("STATUS INBOX (HIGHESTMODSEQ)")
    assert st == [b'* STATUS "INBOX" (HIGHESTMODSEQ %d)\r\n' % (new + 1)]


def test_pop3_changes_reach_imap(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imaps", "pop3s", "mx")).start()
    try:
        srv.add_user("p@example.test")
        for i in range(2):
            deliver(srv, "p@example.test", simple(f"m{i}"))
        c = RawImap(srv.ports["imaps"], context=srv.client_context())
        c.login("p@example.test", PASSWORD)
        c.ok("SELECT INBOX")
        c.send(b"i IDLE\r\n")
        assert c.line().startswith(b"+ ")
        pop = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=srv.client_context())
        pop.user("p@example.test")
        pop.pass_(PASSWORD)
        pop.retr(2)
        pop.dele(1)
        pop.quit()
        lines = set()
        deadline = time.monotonic() + 5
        def done() -> bool:
            return b"* 1 EXPUNGE\r\n" in lines and any(b"FLAGS (\\Seen" in x for x in lines)

        while not done() and time.monotonic() < deadline:
            lines.add(c.response())
        assert b"* 1 EXPUNGE\r\n" in lines
        assert any(b"FLAGS (\\Seen" in line for line in lines)
        c.send(b"DONE\r\n")
        c.until_tagged("i")
    finally:
        srv.stop()


def test_append_to_selected_mailbox_reports_exists(user: str, raw) -> None:
    c = raw(user)
    c.ok("SELECT INBOX")
    msg = b"Subject: appended\r\n\r\nx\r\n"
    c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    untagged, done = c.until_tagged("a")
    assert done.startswith(b"a OK [APPENDUID ")
    assert untagged[:2] == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]


def test_selected_mailbox_deleted_by_another_session(user: str, raw) -> None:
    a = raw(user)
    a.ok("CREATE Doomed")
    a.ok("SELECT Doomed")
    b = raw(user)
    b.ok("DELETE Doomed")
    # With worker processes (server.workers) the change may reach a's process a moment
    # after b's OK: a's next commands see it, within a bound.
    for n in range(100):
        a.send(b"n%d NOOP\r\n" % n)
        line = a.line()
        if line.startswith(b"* BYE"):
            break
        assert line == b"n%d OK NOOP completed\r\n" % n, line
        time.sleep(0.02)
    assert line.startswith(b"* BYE")
    assert a.closed()
    # deleting the mailbox one has selected closes it first
    b.ok("CREATE Doomed2")
    b.ok("SELECT Doomed2")
    untagged = b.ok("DELETE Doomed2")
    assert untagged == [b"* OK [CLOSED] The selected mailbox is now closed\r\n"]
    _, done = b.cmd("FETCH 1 FLAGS")
    assert b"BAD" in done
