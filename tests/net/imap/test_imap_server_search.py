"""SEARCH on every key (RFC 9051 6.4.4, RFC 5032, RFC 7162), CHARSET, ESEARCH return
options (RFC 4731), SEARCHRES (RFC 5182), SORT (RFC 5256, RFC 5957) and THREAD."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imap_raw import RawImap

from support.server import PASSWORD, Server

MESSAGES = [
    # (flags, internal date, headers, body)
    ("(\\Seen)", "01-Jan-2020 10:00:00 +0000",
     "From: Alice Smith <alice@example.org>\r\nTo: bob@example.test\r\nCc: carol@example.org\r\n"
     "Subject: Quarterly report\r\nDate: Wed, 01 Jan 2020 09:00:00 +0000\r\n"
     "Message-ID: <r1@example.org>\r\nX-Tracking: abc123",
     "The numbers look good this quarter.\r\n"),
    ("(\\Flagged \\Answered)", "15-Feb-2021 12:00:00 +0000",
     "From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.de>\r\nTo: bob@example.test\r\n"
     "Bcc: secret@example.org\r\nSubject: Re: Quarterly report\r\n"
     "Date: Mon, 15 Feb 2021 11:00:00 +0000\r\nMessage-ID: <r2@example.de>\r\n"
     "In-Reply-To: <r1@example.org>\r\nReferences: <r1@example.org>",
     "Gr\u00fc\u00dfe aus K\u00f6ln, see attachment\r\n" + "x" * 3000 + "\r\n"),
    ("(\\Deleted $Todo)", "20-Mar-2022 08:00:00 +0000",
     "From: zed@example.net\r\nTo: Anna <anna@example.test>\r\nSubject: Lunch?\r\n"
     "Date: Sun, 20 Mar 2022 07:00:00 +0000\r\nMessage-ID: <l1@example.net>",
     "Pizza at noon?\r\n"),
    ("(\\Draft)", "21-Mar-2022 08:00:00 +0000",
     "From: bob@example.test\r\nTo: zed@example.net\r\nSubject: Re: Lunch?\r\n"
     "Date: Mon, 21 Mar 2022 07:00:00 +0000\r\nMessage-ID: <l2@example.test>\r\n"
     "In-Reply-To: <l1@example.net>\r\nReferences: <l1@example.net>",
     "Sure.\r\n"),
]


def fill(c: RawImap) -> RawImap:
    for flags, date, headers, body in MESSAGES:
        data = (headers + "\r\n\r\n" + body).encode("utf-8")
        c.send(f'a APPEND INBOX {flags} "{date}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
        _, done = c.until_tagged("a")
        assert done.startswith(b"a OK"), done
    c.ok("SELECT INBOX")
    return c


@pytest.fixture
def box(user: str, raw) -> RawImap:
    return fill(raw(user))


@pytest.fixture(scope="module")
def shared_box(server: Server) -> Iterator[RawImap]:
    """One filled mailbox for the read-only key table (a user per case would be slow)."""
    server.add_user("searcher@example.test")
    c = RawImap(server.ports["imaps"], context=server.client_context())
    c.login("searcher@example.test", PASSWORD)
    yield fill(c)
    c.close()


def search(c: RawImap, criteria: str | bytes) -> list[int]:
    untagged = c.ok(b"SEARCH " + (criteria.encode() if isinstance(criteria, str) else criteria))
    line = [u for u in untagged if u.startswith(b"* SEARCH")][0]
    return [int(x) for x in line.split()[2:] if x.isdigit()]


@pytest.mark.parametrize(("criteria", "expected"), [
    ("ALL", [1, 2, 3, 4]),
    ("SEEN", [1]), ("UNSEEN", [2, 3, 4]),
    ("FLAGGED", [2]), ("UNFLAGGED", [1, 3, 4]),
    ("ANSWERED", [2]), ("UNANSWERED", [1, 3, 4]),
    ("DELETED", [3]), ("UNDELETED", [1, 2, 4]),
    ("DRAFT", [4]), ("UNDRAFT", [1, 2, 3]),
    ("RECENT", [1, 2, 3, 4]), ("OLD", []), ("NEW", [2, 3, 4]),
    ("KEYWORD $Todo", [3]), ("UNKEYWORD $todo", [1, 2, 4]),
    ("FROM alice", [1]), ("FROM ALICE@EXAMPLE", [1]), ('FROM "Jürgen"', [2]),
    ("TO anna", [3]), ("CC carol", [1]), ("BCC secret", [2]),
    ("SUBJECT lunch", [3, 4]), ('SUBJECT "re: quarterly"', [2]),
    ("HEADER X-Tracking abc", [1]), ('HEADER X-Tracking ""', [1]), ("HEADER Message-ID l2", [4]),
    ("BODY pizza", [3]), ("BODY quarterly", []), ("TEXT quarterly", [1, 2]),
    ('BODY "grüße"', [2]), ("TEXT zed@example", [3, 4]),
    ("BEFORE 1-Jan-2021", [1]), ("ON 20-Mar-2022", [3]), ("SINCE 20-Mar-2022", [3, 4]),
    ("SENTBEFORE 2-Jan-2020", [1]), ("SENTON 15-Feb-2021", [2]), ("SENTSINCE 21-Mar-2022", [4]),
    ("LARGER 1000", [2]), ("SMALLER 1000", [1, 3, 4]),
    ("1:2", [1, 2]), ("2,4", [2, 4]), ("*", [4]), ("UID 3:*", [3, 4]),
    ("NOT SEEN", [2, 3, 4]), ("OR FLAGGED DRAFT", [2, 4]), ("(SEEN) (FROM alice)", [1]),
    ("OR (FROM zed) (TO zed) UNDELETED", [4]), ("NOT (OR SEEN DELETED)", [2, 4]),
    ("OLDER 86400", [1, 2, 3, 4]), ("YOUNGER 86400", []),
    ("MODSEQ 1", [1, 2, 3, 4]),
])
def test_search_keys(shared_box: RawImap, criteria: str, expected: list[int]) -> None:
    assert search(shared_box, criteria) == expected


def test_search_charset_and_uid_search(box: RawImap) -> None:
    assert search(box, 'CHARSET UTF-8 BODY "köln"') == [2]
    assert search(box, b"CHARSET ISO-8859-1 BODY \"k\xf6ln\"") == [2]
    _, done = box.cmd("SEARCH CHARSET X-UNKNOWN BODY x")
    assert b"NO [BADCHARSET" in done
    assert box.ok("UID SEARCH FLAGGED") == [b"* SEARCH 2\r\n"]
    _, done = box.cmd("SEARCH FROBNICATE")
    assert b"BAD" in done


def test_esearch_and_searchres(box: RawImap) -> None:
    untagged = box.ok("SEARCH RETURN (MIN MAX COUNT) UNSEEN")
    assert untagged == [b'* ESEARCH (TAG "t%d") MIN 2 MAX 4 COUNT 3\r\n' % box.n]
    untagged = box.ok("UID SEARCH RETURN () UNDELETED")
    assert untagged == [b'* ESEARCH (TAG "t%d") UID ALL 1:2,4\r\n' % box.n]
    untagged = box.ok("SEARCH RETURN (COUNT) KEYWORD $nothing")
    assert untagged == [b'* ESEARCH (TAG "t%d") COUNT 0\r\n' % box.n]
    # SEARCHRES: save, then use $ in FETCH and SEARCH
    assert box.ok("SEARCH RETURN (SAVE) OR FLAGGED DRAFT") == []
    assert box.ok("FETCH $ (UID)") == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert search(box, "$ UNDRAFT") == [2]
    box.ok("SEARCH RETURN (SAVE MIN) ALL")
    assert box.ok("UID FETCH $ (UID)") == [b"* 1 FETCH (UID 1)\r\n"]


def test_imap4rev2_answers_esearch(box: RawImap) -> None:
    box.ok("ENABLE IMAP4rev2")
    untagged = box.ok("SEARCH SEEN")
    assert untagged == [b'* ESEARCH (TAG "t%d") ALL 1\r\n' % box.n]


def test_sort(box: RawImap) -> None:
    def sort(criteria: str) -> list[int]:
        line = box.ok(f"SORT ({criteria}) UTF-8 ALL")[0]
        assert line.startswith(b"* SORT")
        return [int(x) for x in line.split()[2:]]

    assert sort("ARRIVAL") == [1, 2, 3, 4]
    assert sort("REVERSE ARRIVAL") == [4, 3, 2, 1]
    assert sort("SIZE") [-1] == 2
    assert sort("SUBJECT") == [3, 4, 1, 2]  # "lunch?" < "quarterly report"; ties by number
    assert sort("SUBJECT REVERSE DATE") == [4, 3, 2, 1]
    assert sort("FROM") == [1, 4, 2, 3]  # alice, bob, jurgen, zed (the mailbox part)
    assert sort("DISPLAYFROM") == [1, 4, 2, 3]  # Alice Smith, bob@, Jürgen, zed@
    assert sort("TO") == [3, 1, 2, 4]
    assert sort("DATE") == [1, 2, 3, 4]
    line = box.ok("UID SORT (REVERSE SIZE) UTF-8 UNDELETED")[0]
    assert line.split()[2] == b"2"
    _, done = box.cmd("SORT (BOGUS) UTF-8 ALL")
    assert b"BAD" in done


def test_thread(box: RawImap) -> None:
    assert box.ok("THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (1 2)(3 4)\r\n"]
    # threads in the order of their first message's date (RFC 5256)
    assert box.ok("THREAD ORDEREDSUBJECT UTF-8 ALL") == [b"* THREAD (1 2)(3 4)\r\n"]
    assert box.ok("UID THREAD REFERENCES UTF-8 UNDELETED") == [b"* THREAD (1 2)(4)\r\n"]


ENCODED = [
    # From, Subject (raw header values)
    ("=?iso-8859-1?q?J=FCrgen_M=FCller?= <jm@example.de>", "=?utf-8?b?R3LDvMOfZQ==?= aus Berlin"),
    ("=?utf-8?q?=C3=89lodie?= <elodie@example.fr>", "=?utf-8?q?Stra=C3=9Fe?= =?utf-8?q?_gesperrt?="),
    ("\"STRASSE Team\" <team@Example.ORG>", "Re: Lunch?"),
    ("Zoë <zoe@example.net>", "=?utf-8?q?=E2=82=AC_invoice?="),  # raw UTF-8 (RFC 6532)
]


@pytest.fixture
def encoded_box(user: str, raw) -> RawImap:
    c = raw(user)
    for from_, subject in ENCODED:
        data = f"From: {from_}\r\nSubject: {subject}\r\nTo: {user}\r\n\r\nhi\r\n".encode()
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
        _, done = c.until_tagged("a")
        assert done.startswith(b"a OK"), done
    c.ok("SELECT INBOX")
    return c


@pytest.mark.parametrize(("criteria", "expected"), [
    ('FROM "jürgen"', [1]), ('FROM "JÜRGEN MÜLLER"', [1]), ("FROM jm@EXAMPLE.de", [1]),
    ('FROM "élodie"', [2]), ('FROM "ÉLODIE"', [2]), ('FROM "zoë"', [4]), ('FROM "ZOË"', [4]),
    ("FROM strasse", [3]), ('FROM "straße"', [3]),  # full case folding: ß = ss
    ('SUBJECT "grüße"', [1]), ('SUBJECT "GRÜSSE AUS"', [1]),
    ('SUBJECT "straße gesperrt"', [2]),  # encoded words joined across the split (RFC 2047 6.2)
    ('SUBJECT "€ invoice"', [4]), ("SUBJECT lunch", [3]), ('SUBJECT ""', [1, 2, 3, 4]),
    ('CC ""', []), ("TO nobody", []), ('TO "@EXAMPLE.test"', [1, 2, 3, 4]),
    ('OR FROM "jürgen" SUBJECT lunch', [1, 3]), ('NOT FROM "jürgen"', [2, 3, 4]),
    ('FROM example SUBJECT "SS"', [1, 2]), ("UID 2:3 FROM example", [2, 3]),
    ('2:* NOT (OR FROM zoe SUBJECT lunch)', [2]),
])
def test_search_envelope_decoded_and_case_insensitive(
    encoded_box: RawImap, criteria: str, expected: list[int]
) -> None:
    assert search(encoded_box, b"CHARSET UTF-8 " + criteria.encode("utf-8")) == expected


def test_search_envelope_literal_in_other_charset_and_uid_results(encoded_box: RawImap) -> None:
    needle = "MÜLLER".encode("iso-8859-1")
    c = encoded_box
    c.send(b"s1 UID SEARCH CHARSET ISO-8859-1 FROM {%d+}\r\n" % len(needle) + needle + b"\r\n")
    untagged, done = c.until_tagged("s1")
    assert done.startswith(b"s1 OK") and untagged == [b"* SEARCH 1\r\n"]


def test_search_skips_expunged_pending_and_follows_copies(user: str, raw) -> None:
    a = raw(user)
    for i in range(4):
        data = f"From: Sender{i} <s{i}@example.org>\r\nSubject: note {i}\r\n\r\nx\r\n".encode()
        a.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
        a.until_tagged("a")
    a.ok("SELECT INBOX")
    b = raw(user)
    b.ok("SELECT INBOX")
    b.ok("STORE 2 +FLAGS (\\Deleted)")
    b.ok("EXPUNGE")
    # a has not been told yet (SEARCH may not report expunges): message 2 stays in its
    # sequence map, but an expunged message never matches
    untagged = a.ok("SEARCH FROM example")
    assert untagged == [b"* SEARCH 1 3 4\r\n"]
    assert search(a, "OR FROM sender1 UNSEEN") == [1, 3, 4]
    a.ok("NOOP")  # now the EXPUNGE is delivered and numbers shift
    assert search(a, "FROM sender3") == [3]
    a.ok("UID COPY 4 Archive")
    a.ok("SELECT Archive")
    assert a.ok("UID SEARCH FROM sender3 SUBJECT note") == [b"* SEARCH 1\r\n"]
