"""ESORT, CONTEXT=SEARCH/SORT and PARTIAL (RFC 5267, RFC 9394) over a socket, exact bytes:
the ESEARCH answers of SORT, partial ranges (also negative ones), and the ADDTO/REMOVEFROM
updates that follow changes made by this session and by others."""

from __future__ import annotations

import time

from imap_util import deliver, rest, simple

from support.server import Server



def fill(server: Server, user: str, subjects: list[str]) -> None:
    for s in subjects:
        deliver(server, user, simple(s))


def test_esort_and_partial(server: Server, user: str, raw) -> None:
    fill(server, user, ["d", "b", "e", "a", "c"])
    c = raw(user)
    caps = b"".join(c.ok("CAPABILITY"))
    for cap in (b" ESORT ", b" CONTEXT=SEARCH ", b" CONTEXT=SORT "):
        assert cap in caps
    c.ok("SELECT INBOX")
    tag = c.tag()
    c.send(f"{tag} SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL\r\n".encode())
    untagged, done = c.until_tagged(tag)
    # in sort order a, b, c, d, e = messages 4, 2, 5, 1, 3: MIN/MAX are first and last
    assert untagged == [b'* ESEARCH (TAG "%s") MIN 4 MAX 3 COUNT 5 ALL 4,2,5,1,3\r\n' % tag.encode()]
    tag = c.tag()
    c.send(f"{tag} UID SORT RETURN () (REVERSE SUBJECT) UTF-8 ALL\r\n".encode())
    untagged, _ = c.until_tagged(tag)
    assert untagged == [b'* ESEARCH (TAG "%s") UID ALL 3,1,5,2,4\r\n' % tag.encode()]
    tag = c.tag()
    c.send(f"{tag} SORT RETURN (PARTIAL 2:3) (SUBJECT) UTF-8 ALL\r\n".encode())
    untagged, _ = c.until_tagged(tag)
    assert untagged == [b'* ESEARCH (TAG "%s") PARTIAL (2:3 2,5)\r\n' % tag.encode()]
    # SEARCH PARTIAL: positions in mailbox order, negative ones from the end
    for spec, answer in (("1:2", b"1:2 1:2"), ("4:9", b"4:9 4:5"), ("-1:-2", b"-1:-2 4:5"),
                         ("-5:-9", b"-5:-9 1"), ("9:10", b"9:10 NIL")):
        tag = c.tag()
        c.send(f"{tag} SEARCH RETURN (PARTIAL {spec}) ALL\r\n".encode())
        untagged, _ = c.until_tagged(tag)
        assert untagged == [b'* ESEARCH (TAG "%s") PARTIAL (%s)\r\n' % (tag.encode(), answer)], spec
    for bad in ("PARTIAL 1", "PARTIAL 0:3", "PARTIAL 1:*", "PARTIAL -1:2", "PARTIAL 1:2 ALL"):
        _, done = c.cmd(f"SEARCH RETURN ({bad}) ALL")
        assert rest(done).startswith(b"BAD "), bad


def test_update_contexts_follow_changes(server: Server, user: str, raw) -> None:
    fill(server, user, ["m1", "m2", "m3"])
    c = raw(user)
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    untagged, done = c.cmd("UID SEARCH RETURN (UPDATE ALL) FLAGGED")
    tag = done.split(b" ")[0]
    assert untagged == [b'* ESEARCH (TAG "%s") UID ALL 1\r\n' % tag]
    # our own STORE: ADDTO after the FETCH (RFC 5465 5.1 order), REMOVEFROM likewise
    untagged = c.ok("STORE 2:3 +FLAGS (\\Flagged)")
    assert untagged[-1] == b'* ESEARCH (TAG "%s") UID ADDTO (0 2:3)\r\n' % tag
    untagged = c.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
    assert untagged == [b'* ESEARCH (TAG "%s") UID REMOVEFROM (0 1)\r\n' % tag]
    # reusing the tag of a live context is BAD (RFC 5267 4.3)
    c.send(tag + b" SEARCH RETURN (UPDATE) ALL\r\n")
    _, done = c.until_tagged(tag.decode())
    assert rest(done) == b"BAD Tag reuse\r\n"
    # a sorted context: positions in sort order
    untagged, done = c.cmd("SORT RETURN (UPDATE) (REVERSE SUBJECT) UTF-8 UNSEEN")
    sort_tag = done.split(b" ")[0]
    assert untagged == [b'* ESEARCH (TAG "%s")\r\n' % sort_tag]
    # another session's changes: a delivery (ADDTO after EXISTS) and an expunge
    # (REMOVEFROM with the old numbers, before the EXPUNGE)
    other = raw(user)
    other.ok("SELECT INBOX")
    deliver(server, user, simple("m4"))
    time.sleep(0.2)
    untagged = c.ok("NOOP")
    assert untagged == [b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n",
                        b'* ESEARCH (TAG "%s") ADDTO (1 4)\r\n' % sort_tag]
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    untagged = c.ok("NOOP")
    assert untagged == [
        b'* ESEARCH (TAG "%s") UID REMOVEFROM (0 2)\r\n' % tag,
        b'* ESEARCH (TAG "%s") REMOVEFROM (3 2)\r\n' % sort_tag,
        b"* 2 EXPUNGE\r\n",
    ]
    # CANCELUPDATE stops the updates (unknown tags are fine)
    c.ok(f'CANCELUPDATE "{tag.decode()}" "nope"')
    other.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    untagged = c.ok("NOOP")
    assert not any(b"ESEARCH" in u and tag in u for u in untagged)
    # the context ends with the selection
    c.ok("UNSELECT")
    c.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert not any(b"ESEARCH" in u for u in c.ok("NOOP"))


def test_too_many_contexts_noupdate(user: str, raw) -> None:
    c = raw(user)
    c.ok("SELECT INBOX")
    for _ in range(10):
        c.ok("SEARCH RETURN (UPDATE) ALL")
    untagged, done = c.cmd("SEARCH RETURN (UPDATE COUNT) ALL")
    tag = done.split(b" ")[0]
    assert untagged == [b'* ESEARCH (TAG "%s") COUNT 0\r\n' % tag,
                        b'* NO [NOUPDATE "%s"] Too many contexts\r\n' % tag]
    assert rest(done) == b"OK SEARCH completed\r\n"


def test_fetch_partial_modifier(server: Server, user: str, raw) -> None:
    """RFC 9394 3.3: (PARTIAL a:b) on FETCH answers only the messages at those positions
    of the set (negative: from the end), after CHANGEDSINCE when both are given."""
    fill(server, user, [f"m{i}" for i in range(1, 8)])
    c = raw(user)
    assert b" PARTIAL " in b"".join(c.ok("CAPABILITY"))
    c.ok("SELECT INBOX (CONDSTORE)")
    c.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")  # UIDs 1 2 4 5 6 7 are messages 1 to 6
    # from the view (FLAGS, UID): the last two by UID
    assert c.ok("UID FETCH 1:* (FLAGS) (PARTIAL -1:-2)") == [
        b"* 5 FETCH (UID 6 FLAGS (\\Recent))\r\n",
        b"* 6 FETCH (UID 7 FLAGS (\\Recent))\r\n",
    ]
    # through the store: the 2nd and 3rd of the set, then a range beyond its end
    head = b"Subject: m%d\r\n\r\n"
    assert c.ok("UID FETCH 2:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)]) (PARTIAL 2:3)") == [
        b"* %d FETCH (UID %d BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n%s)\r\n"
        % (seq, uid, len(head % uid), head % uid) for seq, uid in ((3, 4), (4, 5))
    ]
    assert c.ok("UID FETCH 1:* (FLAGS) (PARTIAL 7:9)") == []
    assert c.ok("FETCH 2:5 (UID RFC822.SIZE) (PARTIAL -1:-1)")[0].startswith(
        b"* 5 FETCH (UID 6 RFC822.SIZE ")
    # with CHANGEDSINCE the range counts the changed messages only (one STORE: one modseq)
    untagged = c.ok("STATUS INBOX (HIGHESTMODSEQ)")
    since = int(untagged[0].rsplit(b" ", 1)[1].rstrip(b")\r\n"))
    c.ok("STORE 1,2,4 +FLAGS.SILENT (\\Flagged)")
    assert c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {since} PARTIAL -1:-1)") == [
        b"* 4 FETCH (UID 5 FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % (since + 1)
    ]
    for bad in ("(PARTIAL 0:1)", "(PARTIAL 1:2 PARTIAL 3:4)", "(PARTIAL -1:2)", "(PARTIAL)"):
        _, done = c.cmd(f"UID FETCH 1:* (FLAGS) {bad}")
        assert rest(done).startswith(b"BAD "), bad
