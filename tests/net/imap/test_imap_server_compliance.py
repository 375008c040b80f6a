"""Byte-exact regressions for what Dovecot's compliance suite (imaptest) found (issue 13):
BINARY literal8 APPEND with NUL, quoted-printable decoding for BINARY, invalid modified
UTF-7 names, the implicit CONDSTORE enable and ESEARCH MIN/MAX MODSEQ, LIST RECURSIVEMATCH
CHILDINFO, \\Recent under EXAMINE, SORT on group syntax, THREAD loops, and the order of
``* FLAGS`` and FETCH FLAGS across sessions (with a concurrency test).

imaptest does not run in CI, so each of its findings is repeated here with the exact
bytes on a socket and the exact answer the RFCs require.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time

from imap_raw import RawImap

from support.server import Server


def _append(c: RawImap, mailbox: str, message: bytes, *, binary: bool = False,
            extra: str = "") -> bytes:
    """APPEND with a non-synchronising literal (LITERAL+), or a literal8 (RFC 3516)."""
    tag = c.tag()
    marker = b"~{%d+}" if binary else b"{%d+}"
    c.send(f"{tag} APPEND {mailbox}{extra} ".encode() + marker % len(message) + b"\r\n"
           + message + b"\r\n")
    untagged, done = c.until_tagged(tag)
    assert done.startswith(tag.encode() + b" OK"), (untagged, done)
    return done


# -- 1. BINARY: APPEND of a literal8 with NUL (RFC 3516 4.4) -----------------------------

BINARY_MESSAGE = (
    b"From: user@domain.org\r\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
    b"Mime-Version: 1.0\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"\x00-\xe4\n\r\n\n"
)
BINARY_CONTENT = b"\x00-\xe4\n\r\n\n"  # 7 octets, bare LFs included


def test_append_literal8_with_nul_is_reencoded_and_binary_fetch_returns_it(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    _append(c, "INBOX", BINARY_MESSAGE, binary=True)
    c.ok("SELECT INBOX")
    encoded = base64.b64encode(BINARY_CONTENT) + b"\r\n"
    # A non-binary FETCH never carries NUL: the part was re-encoded as base64 on APPEND,
    # which RFC 3516 4.4 allows as long as the content does not change.
    assert c.ok("FETCH 1 (BODY.PEEK[1])") == [
        b"* 1 FETCH (BODY[1] {%d}\r\n%s)\r\n" % (len(encoded), encoded)
    ]
    body = c.ok("FETCH 1 (BODY.PEEK[])")[0]
    assert b"\x00" not in body and b"Content-Transfer-Encoding: base64\r\n" in body
    # BINARY undoes the encoding: the 7 original octets, NUL and bare LFs as sent.
    assert c.ok("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])") == [
        b"* 1 FETCH (BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n" + BINARY_CONTENT + b")\r\n"
    ]
    structure = c.ok("FETCH 1 (BODYSTRUCTURE)")[0]
    assert b'("application" "octet-stream" NIL NIL NIL "base64" 14 ' in structure


def test_append_binary_part_inside_multipart_keeps_the_rest(server: Server, user: str, raw) -> None:
    message = (
        b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nplain text\r\n"
        b"--XX\r\nContent-Type: application/x-raw\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"\x00\x01\x02\r\n\x03"
        b"\r\n--XX--\r\n"
    )
    c = raw(user)
    _append(c, "INBOX", message, binary=True)
    c.ok("SELECT INBOX")
    assert c.ok("FETCH 1 (BODY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2])") == [
        b"* 1 FETCH (BODY[1] {10}\r\nplain text BINARY.SIZE[2] 6 "
        b"BINARY[2] ~{6}\r\n\x00\x01\x02\r\n\x03)\r\n"
    ]
    assert b"\x00" not in c.ok("FETCH 1 (BODY.PEEK[])")[0]


# -- 2. BINARY of quoted-printable (RFC 2045 6.7) ------------------------------------------

QP_MESSAGE = (
    b"From: user@domain.org\r\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
    b"Mime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="foo\r\n bar"\r\n'
    b"\r\n"
    b"Root MIME prologue\r\n"
    b"\r\n"
    b"--foo bar\r\n"
    b"Content-Type: text/x-myown; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\n"
    b"foo =\r\n=62\r\nfoo  \r\nbar=\r\n\r\nfoo_bar\r\n"
    b"\r\n"
    b"--foo bar--\r\n"
    b"Root MIME epilogue\r\n"
)
QP_DECODED = (
    b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo b\r\nfoo\r\nbar\r\nfoo_bar\r\n"
)


def test_binary_of_quoted_printable_drops_trailing_space_and_soft_breaks(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    _append(c, "INBOX", QP_MESSAGE)
    c.ok("SELECT INBOX")
    assert len(QP_DECODED) == 65
    assert c.ok("FETCH 1 (BINARY.SIZE[1])") == [b"* 1 FETCH (BINARY.SIZE[1] 65)\r\n"]
    assert c.ok("FETCH 1 (BINARY.PEEK[1])") == [
        b"* 1 FETCH (BINARY[1] {65}\r\n" + QP_DECODED + b")\r\n"
    ]
    assert c.ok("FETCH 1 (BINARY.PEEK[1]<0.10>)") == [
        b"* 1 FETCH (BINARY[1]<0> {10}\r\nhello\r\nbar)\r\n"
    ]
    assert c.ok("FETCH 1 (BINARY.PEEK[1]<40.100>)") == [
        b"* 1 FETCH (BINARY[1]<40> {25}\r\n" + QP_DECODED[40:] + b")\r\n"
    ]


# -- 3. invalid modified UTF-7 names: NO, not BAD ----------------------------------------

BAD_UTF7 = "!#$&'+,-.0123456789:;<=>?@^_`|[}"


def test_select_of_invalid_modified_utf7_is_no(server: Server, user: str, raw) -> None:
    c = raw(user)
    text = b"Mailbox name has an unterminated or invalid '&' sequence"
    for command in ("SELECT", "EXAMINE", "DELETE", "SUBSCRIBE"):
        _, done = c.cmd(f"{command} {BAD_UTF7}")
        assert done == done.split()[0] + b" NO [NONEXISTENT] " + text + b"\r\n"
    _, done = c.cmd(f"STATUS {BAD_UTF7} (MESSAGES)")
    assert done.split(b" ", 3)[1:3] == [b"NO", b"[NONEXISTENT]"]
    _, done = c.cmd(f"CREATE {BAD_UTF7}")
    assert done.split(b" ", 3)[1:3] == [b"NO", b"[CANNOT]"]
    # the same octets as a LIST pattern are fine (nothing matches)
    assert c.ok(f'LIST "" {BAD_UTF7}%*') == []
    assert c.ok('LIST "" ~foo') == []
    _, done = c.cmd("SELECT ~foo")
    assert done.split(b" ", 3)[1:3] == [b"NO", b"[NONEXISTENT]"]


# -- 4. CONDSTORE enabled by use; ESEARCH MIN/MAX MODSEQ (RFC 7162 3.1, 3.1.5) --------------

def test_first_condstore_command_sends_highestmodseq(server: Server, user: str, raw) -> None:
    c = raw(user)
    for i in range(2):
        _append(c, "INBOX", b"Subject: m%d\r\n\r\nbody\r\n" % i)
    untagged = c.ok("SELECT INBOX")
    highest = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", b"".join(untagged)).group(1)
    untagged = c.ok("FETCH 1 (MODSEQ)")
    assert untagged[0] == b"* OK [HIGHESTMODSEQ %s] Highest\r\n" % highest
    assert re.fullmatch(rb"\* 1 FETCH \(MODSEQ \(\d+\)\)\r\n", untagged[1])
    assert len(untagged) == 2
    # once enabled, not again
    assert [u for u in c.ok("FETCH 2 (MODSEQ)") if b"HIGHESTMODSEQ" in u] == []
    # a MODSEQ search key enables it too (new session)
    d = raw(user)
    d.ok("SELECT INBOX")
    untagged = d.ok("SEARCH MODSEQ 1")
    assert untagged[0].startswith(b"* OK [HIGHESTMODSEQ ")
    # so does STORE UNCHANGEDSINCE
    e = raw(user)
    e.ok("SELECT INBOX")
    untagged = e.ok("STORE 1 (UNCHANGEDSINCE 1000000) +FLAGS (\\Draft)")
    assert untagged[0].startswith(b"* OK [HIGHESTMODSEQ ")


def test_esearch_min_max_report_the_modseq_of_the_returned_messages(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    for i in range(4):
        _append(c, "INBOX", b"Subject: m%d\r\n\r\nbody\r\n" % i)
    c.ok("SELECT INBOX (CONDSTORE)")
    modseq = {}
    for n in (1, 3, 2, 4):  # stored out of order: message 3 gets a lower modseq than 2
        line = c.ok(f"STORE {n} +FLAGS (\\Seen)")[0]
        modseq[n] = int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))
    assert modseq[1] < modseq[3] < modseq[2] < modseq[4]

    def esearch(ret: str, seqs: str, since: int = 1) -> bytes:
        untagged, done = c.cmd(f'SEARCH RETURN ({ret}) {seqs} MODSEQ "/flags/\\\\seen" all {since}')
        assert done.split(b" ")[1] == b"OK"
        assert len(untagged) == 1
        return re.sub(rb'^\* ESEARCH \(TAG "t\d+"\)', b"", untagged[0])

    assert esearch("MIN", "1:3") == b" MIN 1 MODSEQ %d\r\n" % modseq[1]
    assert esearch("MAX", "1:3") == b" MAX 3 MODSEQ %d\r\n" % modseq[3]
    assert esearch("", "1:3") == b" ALL 1:3 MODSEQ %d\r\n" % modseq[2]
    assert esearch("MIN MAX", "2:3") == b" MIN 2 MAX 3 MODSEQ %d\r\n" % modseq[2]
    assert esearch("MIN COUNT", "1:3") == b" MIN 1 COUNT 3 MODSEQ %d\r\n" % modseq[2]
    assert esearch("ALL", "2:3", modseq[3]) == b" ALL 2:3 MODSEQ %d\r\n" % modseq[2]
    assert esearch("ALL", "2:3", modseq[2]) == b" ALL 2 MODSEQ %d\r\n" % modseq[2]
    assert esearch("ALL", "2:3", modseq[4]) == b"\r\n"


# -- 5. LIST (SUBSCRIBED RECURSIVEMATCH): CHILDINFO (RFC 5258 3.5) ---------------------------

def test_recursivematch_childinfo_only_for_parents_of_unlisted_children(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    c.ok("CREATE a/b/c")
    c.ok("CREATE a/d/e")
    c.ok("SUBSCRIBE a/b/c")
    c.ok("SUBSCRIBE a/d/e")
    c.ok("SUBSCRIBE a/d")
    # a/b/c is listed itself: a/b is not listed because of it
    assert c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" (a/b a/b/c)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "a/b/c"\r\n'
    ]
    # a/b matches, a/b/c does not: a/b stands for it
    assert c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" a/b') == [
        b'* LIST (\\HasChildren) "/" "a/b" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    ]
    top = c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" %')  # INBOX etc. are subscribed too
    assert [line for line in top if b'"/" "a' in line] == [
        b'* LIST (\\HasChildren) "/" "a" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    ]
    # a/d is subscribed itself and has a subscribed child: both facts are reported
    assert c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" a/%') == [
        b'* LIST (\\HasChildren) "/" "a/b" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" "a/d" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
    ]
    # "*" reaches every subscribed name itself: no stand-ins
    assert c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" a/*') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "a/b/c"\r\n',
        b'* LIST (\\HasChildren \\Subscribed) "/" "a/d" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "a/d/e"\r\n',
    ]


# -- 6. \Recent under EXAMINE (RFC 3501 2.3.2) ------------------------------------------------

def test_examine_reports_recent_without_claiming_it(server: Server, user: str, raw) -> None:
    c = raw(user)
    c.ok("CREATE box")
    _append(c, "box", b"Subject: one\r\n\r\nx\r\n")
    _append(c, "box", b"Subject: two\r\n\r\ny\r\n")
    untagged = c.ok("EXAMINE box")
    assert b"* 2 EXISTS\r\n" in untagged and b"* 2 RECENT\r\n" in untagged
    assert c.ok("FETCH 1:2 (FLAGS)") == [
        b"* 1 FETCH (FLAGS (\\Recent))\r\n", b"* 2 FETCH (FLAGS (\\Recent))\r\n"
    ]
    assert c.ok("SEARCH RECENT") == [b"* SEARCH 1 2\r\n"]
    c.ok("CLOSE")
    assert c.ok("STATUS box (MESSAGES RECENT)") == [b'* STATUS "box" (MESSAGES 2 RECENT 2)\r\n']
    # a second read-only session sees them as well: EXAMINE claims nothing
    d = raw(user)
    assert b"* 2 RECENT\r\n" in d.ok("EXAMINE box")
    untagged = c.ok("SELECT box")
    assert b"* 2 RECENT\r\n" in untagged
    c.ok("CLOSE")
    assert c.ok("STATUS box (RECENT)") == [b'* STATUS "box" (RECENT 0)\r\n']
    assert b"* 0 RECENT\r\n" in raw(user).ok("EXAMINE box")
    # a message arriving while a read-only session watches is \Recent there too, until a
    # read-write session claims it
    e = raw(user)
    e.ok("EXAMINE box")
    _append(c, "box", b"Subject: three\r\n\r\nz\r\n")
    untagged = e.ok("NOOP")
    assert untagged == [b"* 3 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert e.ok("FETCH 3 (FLAGS)") == [b"* 3 FETCH (FLAGS (\\Recent))\r\n"]


# -- 7. SORT CC / DISPLAYTO with group syntax (RFC 5256 2.3, RFC 5957) -------------------------

def test_sort_cc_and_displayto_use_the_group_name(server: Server, user: str, raw) -> None:
    c = raw(user)
    c.ok("CREATE cc")
    for hour, cc in enumerate((b"user2@domain2.org (foo bar)", b"user2: blah@domain1.org;",
                               b"user1@domain1.org")):
        _append(c, "cc", b"From: x@y.org\r\nCc: " + cc + b"\r\n\r\nbody\r\n",
                extra=f' "22-Feb-2008 0{hour}:06:23 +0000"')
    c.ok("SELECT cc")
    assert c.ok("SORT (CC) US-ASCII ALL") == [b"* SORT 3 1 2\r\n"]
    assert c.ok("SORT (REVERSE CC) US-ASCII ALL") == [b"* SORT 1 2 3\r\n"]
    assert c.ok("SORT (CC REVERSE ARRIVAL) US-ASCII ALL") == [b"* SORT 3 2 1\r\n"]
    c.ok("CREATE to")
    for to in (b"foo bar <a@b.c>", b"b@c.d", b"d", b"=?iso-8859-1?q?foo_aar?= <e@f.g>",
               b"=?iso-8859-1?q?foo_car?= <f@g.h>", b"a: xx@xx.org, yy@yy.org;",
               b"z: aa@aa.org, bb@bb.org;", b"empty:;"):
        _append(c, "to", b"From: x@y.org\r\nTo: " + to + b"\r\n\r\nbody\r\n")
    c.ok("SELECT to")
    assert c.ok("SORT (DISPLAYTO) US-ASCII ALL") == [b"* SORT 6 2 3 8 4 1 5 7\r\n"]
    assert c.ok("SORT (REVERSE DISPLAYTO) US-ASCII ALL") == [b"* SORT 7 5 1 4 8 3 2 6\r\n"]
    assert c.ok("SORT (TO) US-ASCII ALL") == [b"* SORT 1 6 2 3 4 8 5 7\r\n"]


# -- 8. THREAD REFERENCES with a loop (RFC 5256 4, steps 1.A and 1.B) ---------------------------

def test_thread_references_breaks_loops(server: Server, user: str, raw) -> None:
    c = raw(user)
    c.ok("CREATE loop")
    for message in (
        b"Message-ID: <a@b>\r\nDate: Fri, 22 Feb 2008 17:06:23 +0000\r\n\r\nbody\r\n",
        b"Message-Id: <b@b>\r\nReferences: <a@b> <c@b>\r\n"
        b"Date: Fri, 22 Feb 2008 15:06:23 +0000\r\n\r\nbody\r\n",
        b"Message-Id: <c@b>\r\nReferences: <b@b>\r\n"
        b"Date: Fri, 22 Feb 2008 16:06:25 +0000\r\n\r\nbody\r\n",
    ):
        _append(c, "loop", message)
    c.ok("SELECT loop")
    # 1.B: message 3's parent would be 2, a loop; its earlier parent (1, from message 2's
    # References) is broken all the same, so 3 becomes a root above 2.
    assert c.ok("THREAD REFERENCES US-ASCII ALL") == [b"* THREAD (3 2)(1)\r\n"]
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    assert c.ok("THREAD REFERENCES US-ASCII ALL") == [b"* THREAD (2 1)\r\n"]


# -- 9. a new keyword in * FLAGS before any FETCH shows it (RFC 3501 7.2.6) --------------------

_FLAGS = re.compile(rb"^\* FLAGS \(([^)]*)\)")
_FETCH_FLAGS = re.compile(rb"^\* \d+ FETCH \(.*?FLAGS \(([^)]*)\)")


class FlagTracker:
    """The flags a client has been told about, checked against every FETCH FLAGS."""

    def __init__(self, lines: list[bytes]) -> None:
        self.known: set[bytes] = set()
        self.violations: list[bytes] = []
        self.see(lines)

    def see(self, lines: list[bytes]) -> None:
        for line in lines:
            m = _FLAGS.match(line)
            if m is not None:
                self.known = set(m.group(1).split())
                continue
            m = _FETCH_FLAGS.match(line)
            if m is not None:
                for flag in m.group(1).split():
                    if not flag.startswith(b"\\") and flag not in self.known:
                        self.violations.append(line)


def test_flags_response_precedes_fetch_of_a_keyword_set_by_another_session(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    _append(c, "INBOX", b"Subject: one\r\n\r\nx\r\n")
    _append(c, "INBOX", b"Subject: two\r\n\r\ny\r\n")
    a, b = raw(user), raw(user)
    a.ok("SELECT INBOX")
    tracker = FlagTracker(b.ok("SELECT INBOX"))
    a.ok("STORE 1 +FLAGS.SILENT ($Label1)")
    # A FETCH that reads the store (not only the view) sees $Label1 first ...
    untagged = b.ok("FETCH 1 (FLAGS BODY.PEEK[TEXT])")
    tracker.see(untagged)
    assert tracker.violations == []
    assert _FLAGS.match(untagged[0]) and b"$Label1" in untagged[0]
    assert untagged[1].startswith(b"* 1 FETCH (FLAGS ($Label1) BODY[TEXT] ")
    # ... and so does a STORE whose result carries another session's new keyword.
    a.ok("STORE 2 +FLAGS.SILENT ($Label2)")
    untagged = b.ok("STORE 2 +FLAGS (\\Seen)")
    tracker.see(untagged)
    assert tracker.violations == []
    assert b"$Label2" in untagged[0] and untagged[0].startswith(b"* FLAGS (")
    assert untagged[1] == b"* 2 FETCH (FLAGS (\\Seen $Label2))\r\n"
    # UID FETCH of a body with a keyword set since the last command
    a.ok("STORE 1 +FLAGS.SILENT ($Label3)")
    untagged = b.ok("UID FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    tracker.see(untagged)
    assert tracker.violations == []


def test_flags_before_fetch_under_concurrent_keyword_changes(server: Server, user: str, raw) -> None:
    """Several sessions set fresh keywords on the same messages while they fetch and
    store: no session may see a keyword in a FETCH before a ``* FLAGS`` naming it."""
    c = raw(user)
    for i in range(5):
        _append(c, "INBOX", b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
    clients = [raw(user) for _ in range(6)]
    trackers = [FlagTracker(k.ok("SELECT INBOX")) for k in clients]
    errors: list[BaseException] = []
    deadline = time.monotonic() + 8.0

    def work(n: int) -> None:
        rng = random.Random(n)
        k, tracker = clients[n], trackers[n]
        try:
            for i in range(60):
                if time.monotonic() > deadline:
                    break
                msg = rng.randint(1, 5)
                choice = rng.random()
                if choice < 0.4:
                    cmd = f"STORE {msg} +FLAGS ($Label{n}x{i})"
                elif choice < 0.6:
                    cmd = f"STORE {msg} -FLAGS ($Label{rng.randint(0, 5)}x{rng.randint(0, i)})"
                elif choice < 0.8:
                    cmd = f"FETCH {msg}:* (FLAGS RFC822.SIZE)"
                else:
                    cmd = "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
                untagged, done = k.cmd(cmd)
                assert done.split(b" ")[1] == b"OK", done
                tracker.see(untagged)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert [v for t in trackers for v in t.violations] == []


# -- found by imaptest's stress mode beyond the nine above ------------------------------------

def test_condstore_fetch_responses_carry_uid(server: Server, user: str, raw) -> None:
    """RFC 7162 3.1: once CONDSTORE is on, every untagged FETCH caused by STORE or by a
    FETCH that sets \\Seen carries UID and MODSEQ (imaptest qresync: "FETCH didn't
    return UID while QRESYNC was enabled")."""
    c = raw(user)
    for i in range(2):
        _append(c, "INBOX", b"Subject: m%d\r\n\r\nbody\r\n" % i)
    c.ok("ENABLE QRESYNC")
    c.ok("SELECT INBOX")
    line = c.ok("STORE 2 +FLAGS (\\Flagged)")[0]
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \(\d+\)\)\r\n",
                        line)
    line = c.ok("STORE 2 +FLAGS.SILENT (\\Answered)")[0]
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 MODSEQ \(\d+\)\)\r\n", line)
    line = c.ok("FETCH 1 (BODY[TEXT])")[0]
    assert re.fullmatch(
        rb"\* 1 FETCH \(UID 1 BODY\[TEXT\] \{6\}\r\nbody\r\n FLAGS \(\\Seen \\Recent\) "
        rb"MODSEQ \(\d+\)\)\r\n",
        line)
    # a FETCH that changes nothing stays as asked
    assert c.ok("FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"]


def test_store_names_every_keyword_and_treats_expunged_messages_as_ghosts(
    server: Server, user: str, raw
) -> None:
    c = raw(user)
    for i in range(3):
        _append(c, "INBOX", b"Subject: m%d\r\n\r\nbody\r\n" % i)
    a, b = raw(user), raw(user)
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    # STORE -FLAGS of a keyword nobody has still puts it in FLAGS (imaptest own_flags:
    # "STORE didn't create keyword")
    untagged = a.ok("STORE 1 -FLAGS ($Never)")
    assert untagged[0].startswith(b"* FLAGS (") and b"$Never" in untagged[0]
    # a message b expunged is still message 3 for a until a is told: STORE treats it as a
    # ghost and reports its flags like any other's (imaptest own_flags: "STORE didn't
    # return FETCH FLAGS"), then the EXPUNGE comes
    b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    assert a.ok("STORE 2:3 +FLAGS (\\Flagged)") == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\n", b"* 3 FETCH (FLAGS (\\Flagged \\Recent))\r\n"
    ]
    assert a.ok("FETCH 3 (FLAGS)") == [b"* 3 FETCH (FLAGS (\\Flagged \\Recent))\r\n"]
    assert a.ok("NOOP") == [b"* 3 EXPUNGE\r\n"]
    # UID STORE ignores what is gone (RFC 9051 6.4.9)
    assert a.ok("UID STORE 3 +FLAGS (\\Flagged)") == []
    # under CONDSTORE the ghost's FETCH has UID and a MODSEQ too
    d = raw(user)
    d.ok("SELECT INBOX (CONDSTORE)")
    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    untagged = d.ok("STORE 1:2 +FLAGS (\\Answered)")
    assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)\r\n", untagged[0])
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Answered \\Flagged\) MODSEQ \(\d+\)\)\r\n",
                        untagged[1])


def test_store_of_no_flags_changes_nothing_and_succeeds(server: Server, user: str, raw) -> None:
    """STORE with an empty flag list asks for no change: OK with the current flags, not
    NO [NOPERM] (found by imaptest's stress mode after the ACL rights check joined STORE)."""
    c = raw(user)
    _append(c, "INBOX", b"Subject: m\r\n\r\nbody\r\n")
    c.ok("SELECT INBOX")
    c.ok("STORE 1 FLAGS.SILENT (\\Flagged)")
    for command in ("STORE 1 +FLAGS ()", "STORE 1 -FLAGS ()"):
        assert c.ok(command) == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n"], command
    assert c.ok("UID STORE 1 -FLAGS.SILENT ()") == []
