"""mbox reading (admin/mbox.py): message boundaries, From quoting, flags, dates, keys."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from postroom.admin.mbox import find_mbox_files, from_line_date, index_mbox, parse_message
from postroom.store.api import FLAG_ANSWERED, FLAG_DELETED, FLAG_DRAFT, FLAG_FLAGGED, FLAG_SEEN


def messages_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[e.start : e.end] for e in index_mbox(path)]


def test_boundaries_and_quoting(tmp_path: Path) -> None:
    mbox = tmp_path / "mbox"
    mbox.write_bytes(
        b"From alice@example.org Fri Jul  8 12:08:34 2011\n"
        b"Subject: one\n\n"
        b"body\n"
        b">From the quoted line\n"
        b">>From twice quoted\n"
        b"From not after an empty line: stays\n"
        b"\n"
        b"From this line after an empty line has no date: stays\n"
        b"\n"
        b"From bob@example.org Sat Jul  9 12:08:34 2011 +0200\n"
        b"Subject: two\n\n"
        b"last\n"
    )
    one, two = messages_of(mbox)
    assert one.endswith(b"has no date: stays\n")  # the separator line is not kept
    assert two == b"Subject: two\n\nlast\n"  # no empty line at the end of the file either
    data, flags, keywords, _, pseudo = parse_message(one)
    assert b"\nFrom the quoted line\n>From twice quoted\n" in data  # mboxrd: one ">" less
    assert flags == 0 and keywords == () and not pseudo
    entries = index_mbox(mbox)
    assert entries[0].internaldate == 1310126914  # 2011-07-08 12:08:34 UTC
    assert entries[1].internaldate == 1310126914 + 86400 - 7200


def test_flags_keywords_and_dropped_headers() -> None:
    raw = (b"Status: RO\nX-Status: AFTD\nX-Keywords: $Label1, project-x  $Label1\n"
           b"X-UID: 17\nContent-Length: 5\nSubject: s\nDate: Tue, 3 Jun 2008 11:05:30 +0100\n\nbody\n")
    data, flags, keywords, date, pseudo = parse_message(raw)
    assert data == b"Subject: s\nDate: Tue, 3 Jun 2008 11:05:30 +0100\n\nbody\n"
    assert flags == FLAG_SEEN | FLAG_ANSWERED | FLAG_FLAGGED | FLAG_DRAFT | FLAG_DELETED
    assert keywords == ("$Label1", "project-x")
    assert date == 1212487530
    only_old = parse_message(b"Status: O\nSubject: new\n\nx\n")
    assert only_old[1] == 0  # "O" only says the reader saw the folder: not \Seen
    # Header-like lines in the body are left alone.
    assert parse_message(b"Subject: a\n\nStatus: RO\n")[0:2] == (b"Subject: a\n\nStatus: RO\n", 0)


def test_uw_imap_pseudo_message() -> None:
    raw = (b"Date: 01 Jan 2020 00:00:00 +0000\nFrom: Mail System Internal Data <MAILER-DAEMON@x>\n"
           b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: 1234 0000000002\n\n"
           b"This text is part of the internal format of your mail folder.\n")
    assert parse_message(raw)[4]
    assert not parse_message(b"X-IMAP: 1\nSubject: real\n\nx\n")[4]


def test_from_line_dates() -> None:
    assert from_line_date(b"From - Mon Jan  1 00:00:00 2001\n") == 978307200
    assert from_line_date(b"From x@y Mon Jan 1 00:00 2001\n") == 978307200  # no seconds
    assert from_line_date(b"From x@y Mon Jan  1 00:00:00 -0500 2001\n") == 978307200 + 5 * 3600
    assert from_line_date(b"From x@y Feb 30 00:00:00 2001\n") is None  # no such day
    assert from_line_date(b"From here on it is different\n") is None


def test_keys_stable_when_the_file_grows(tmp_path: Path) -> None:
    mbox = tmp_path / "inbox"
    first = b"From a@b Mon Jan  1 00:00:00 2001\nSubject: x\n\nsame\n"
    mbox.write_bytes(first + b"\n" + first)  # two identical messages, no trailing blank
    keys = [e.key for e in index_mbox(mbox)]
    assert len(keys) == 2 and keys[0] != keys[1] and keys[0].split(":")[0] == keys[1].split(":")[0]
    with mbox.open("ab") as f:
        f.write(b"\nFrom c@d Mon Jan  1 00:00:00 2001\nSubject: y\n\nnew\n\n")
    grown = [e.key for e in index_mbox(mbox)]
    assert grown[:2] == keys and len(grown) == 3


def test_crlf_mbox_and_long_lines(tmp_path: Path) -> None:
    mbox = tmp_path / "m"
    long = b"x" * 3_000_000
    mbox.write_bytes(b"From a@b Mon Jan  1 00:00:00 2001\r\nSubject: x\r\n\r\n" + long
                     + b"\r\n\r\nFrom a@b Mon Jan  1 00:00:00 2001\r\nSubject: y\r\n\r\nz\r\n")
    one, two = messages_of(mbox)
    assert one == b"Subject: x\r\n\r\n" + long + b"\r\n" and two == b"Subject: y\r\n\r\nz\r\n"


def test_not_an_mbox(tmp_path: Path) -> None:
    import pytest

    from postroom.admin.importer import ImportFailed

    p = tmp_path / "x"
    p.write_bytes(b"Subject: not an mbox\n\n")
    with pytest.raises(ImportFailed, match="not an mbox"):
        index_mbox(p)
    p.write_bytes(b"")
    assert index_mbox(p) == []


def test_find_mbox_files(tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    (mail / "Lists.sbd").mkdir(parents=True)
    for rel in ("Inbox", "Sent", "Lists.sbd/python", "Archive.mbox"):
        (mail / rel).write_bytes(b"From a@b Mon Jan  1 00:00:00 2001\n\nx\n")
    (mail / "Inbox.msf").write_bytes(b"// mork index")  # Thunderbird's summaries: not mbox
    (mail / ".hidden").write_bytes(b"From a@b Mon Jan  1 00:00:00 2001\n\nx\n")
    found = {levels for levels, _ in find_mbox_files(mail)}
    assert found == {("Inbox",), ("Sent",), ("Lists", "python"), ("Archive",)}


LINES = st.lists(
    st.one_of(
        st.sampled_from(["From x", ">From y", ">>From z", "", "From a@b Mon Jan  1 00:00:00 2001",
                         "Status: RO", "plain text"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    ),
    max_size=12,
)


@given(st.lists(LINES, min_size=1, max_size=5))
def test_mboxrd_roundtrip(bodies: list[list[str]]) -> None:
    """Whatever the bodies hold, writing mboxrd and reading it back gives them unchanged."""
    import tempfile

    out = b""
    originals = []
    for i, lines in enumerate(bodies):
        body = "".join(line + "\n" for line in lines).encode()
        msg = f"Subject: m{i}\n\n".encode() + body
        originals.append(msg)
        quoted = re.sub(rb"(?m)^(>*From )", rb">\1", msg)
        out += b"From sender@example.org Mon Jan  1 00:00:00 2001\n" + quoted + b"\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mbox"
        path.write_bytes(out)
        got = [parse_message(raw)[0] for raw in messages_of(path)]
    assert got == originals
