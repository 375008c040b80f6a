"""SEARCH/SORT/THREAD helpers: decoded headers, body text, dates, base subject, keys."""

from __future__ import annotations

import time
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from postroom.message import base_subject, casemap, header_values, scan, sent_date, text_parts
from postroom.message.keys import msg_ids, parse_date


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def test_header_values_decoded_unfolded_in_order() -> None:
    data = crlf(
        "Subject: =?utf-8?Q?Gr=C3=BC=C3=9Fe?= aus\n =?iso-8859-1?Q?K=F6ln?=\n"
        "X-Tag: one\nx-tag:  two  \nTo: \"=?utf-8?B?SsO2cmc=?=\" <j@x>\n\nbody\nX-Tag: body\n"
    )
    s = scan(data)
    assert header_values(data, s, "subject") == ["Grüße aus Köln"]
    assert header_values(data, s, "X-TAG") == ["one", "two"]
    assert header_values(data, s, b"x-tag") == ["one", "two"]
    assert header_values(data, s, "to") == ['"Jörg" <j@x>']
    assert header_values(data, s, "missing") == []
    assert header_values(data, s, "") == []
    # the header block alone is enough
    assert header_values(data[: s.root.body_start], s, "x-tag") == ["one", "two"]


def test_header_values_eight_bit() -> None:
    data = "Subject: Grüße\r\n\r\n".encode("latin-1")
    assert header_values(data, scan(data), "subject") == ["Grüße"]


def test_text_parts() -> None:
    msg = EmailMessage()
    msg["Subject"] = "t"
    msg.set_content("Grüße aus Köln\n", charset="iso-8859-1", cte="quoted-printable")
    msg.add_alternative("<p>\u4e2d\u6587</p>\n", subtype="html", charset="utf-8", cte="base64")
    msg.add_attachment(b"\x00binary", maintype="application", subtype="octet-stream",
                       filename="b.bin")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner text\n")
    msg.add_attachment(inner)
    data = msg.as_bytes(policy=SMTP)
    texts = list(text_parts(data, scan(data)))
    # (the base64 part carries the LF the email package encoded)
    assert texts == ["Grüße aus Köln\r\n", "<p>\u4e2d\u6587</p>\n", "inner text\r\n"]


def test_text_parts_unknown_encoding_and_charset() -> None:
    data = crlf(
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=x-nonsense\n"
        "Content-Transfer-Encoding: x-weird\n\nplain ünicode\n"
    )
    assert list(text_parts(data, scan(data))) == ["plain ünicode\r\n"]


def test_sent_date() -> None:
    data = crlf("Date: Sat, 24 Mar 2017 23:00:00 +0200\n\nx")
    s = scan(data)
    when = sent_date(s)
    assert when == datetime(2017, 3, 24, 21, 0, tzinfo=UTC)
    assert when is not None and when.utcoffset() == timedelta(hours=2)
    assert when.date().isoformat() == "2017-03-24"
    assert s.sent_date == (int(when.timestamp()), 120)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"24 Mar 17 23:00 -0500",
         datetime(2017, 3, 24, 23, 0, tzinfo=timezone(-timedelta(hours=5)))),
        (b"Sat, 24 Mar 2017 23:00:00 GMT", datetime(2017, 3, 24, 23, 0, tzinfo=UTC)),
        (b"Sat, 24 Mar 2017 23:00:00", datetime(2017, 3, 24, 23, 0, tzinfo=UTC)),
        (b"garbage", None),
        (b"", None),
        (b"Sat, 31 Feb 2017 23:00:00 +0000", None),
        (b"Sat, 24 Mar 2017 23:00:00 +9999", None),
    ],
)
def test_parse_date(raw: bytes, expected: datetime | None) -> None:
    parsed = parse_date(raw)
    if expected is None:
        assert parsed is None
        return
    offset = expected.utcoffset()
    assert offset is not None
    assert parsed == (int(expected.timestamp()), int(offset.total_seconds()) // 60)


def test_missing_date() -> None:
    assert sent_date(scan(b"Subject: x\r\n\r\n")) is None


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Hello", "Hello"),
        ("Re: Hello", "Hello"),
        ("RE: re: Fwd: FW: hello", "hello"),
        ("Re: [list] Re: hello", "hello"),
        ("[list] hello", "hello"),
        ("[list]", "[list]"),
        ("[a][b] [c] x", "x"),
        ("Re[2]: hello", "hello"),
        ("Re : hello", "hello"),
        ("hello (fwd)", "hello"),
        ("hello (fwd) (FWD)  ", "hello"),
        ("[fwd: hello]", "hello"),
        ("[Fwd: Re: [list] hello (fwd)]", "hello"),
        ("  many   spaces\tand\ttabs  ", "many spaces and tabs"),
        ("", ""),
        ("Re:", ""),
        ("Rex: not a leader", "Rex: not a leader"),
    ],
)
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


def test_casemap() -> None:
    assert casemap("Hello") == "HELLO"
    assert casemap("straße") == casemap("STRAßE") == "STRAßE"  # simple mappings only
    assert casemap("\u01c6") == unicodedata.normalize("NFKD", "\u01c5")  # titlecase, not upper
    assert casemap("\u00e9") == casemap("E\u0301".lower())


def test_sort_and_thread_keys() -> None:
    data = crlf(
        "From: =?utf-8?Q?J=C3=B6rg?= <Joerg@Example.com>\n"
        "To: undisclosed:;, Zed <zed@x>\nCc: cc@x\n"
        "Subject: Re: [list] =?utf-8?Q?=C3=BCber?= (fwd)\n"
        "Message-ID: <id1@x>\nIn-Reply-To: <parent@x> (John's message)\n"
        "References: <root@x>\n <parent@x>  <bad id@x>\n\nx"
    )
    s = scan(data)
    assert s.base_subject == casemap("über")
    assert s.sort_from == "JOERG"
    # the first address structure is the group start, named "undisclosed" (RFC 5256 with
    # RFC 3501 7.4.2; RFC 5957 falls back to the same)
    assert s.sort_to == "UNDISCLOSED"
    assert s.sort_cc == "CC"
    assert s.display_from == casemap("Jörg")
    assert s.display_to == "UNDISCLOSED"
    assert s.message_id == "id1@x"
    assert s.in_reply_to == "parent@x"
    assert s.references == ("root@x", "parent@x", "badid@x")


def test_display_key_falls_back_to_address() -> None:
    s = scan(b"From: someone@example.com\r\n\r\n")
    assert s.display_from == "SOMEONE@EXAMPLE.COM"
    assert scan(b"\r\n").display_from == ""


def test_group_syntax_sorts_by_the_group_name() -> None:
    s = scan(b"To: team: a@x.org, b@y.org;\r\nCc: user2: blah@domain1.org;\r\n\r\n")
    assert (s.sort_to, s.display_to, s.sort_cc) == ("TEAM", "TEAM", "USER2")
    s = scan(b"To: empty:;\r\nCc: \"Quoted Team\" : z@x.org;\r\n\r\n")
    assert (s.sort_to, s.display_to, s.sort_cc) == ("EMPTY", "EMPTY", "QUOTED TEAM")
    s = scan(b"To: d\r\n\r\n")  # no domain: not a group
    assert (s.sort_to, s.display_to) == ("D", "D")


def test_msg_ids() -> None:
    assert msg_ids(b"<a@b> <c@d>") == ["a@b", "c@d"]
    assert msg_ids(b"bare@id") == ["bare@id"]
    assert msg_ids(b"no id here") == []
    assert msg_ids(b"<>") == []
    assert len(msg_ids(b"<x@y>" * 5000)) == 1000


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Re: " * 50_000 + "x", "x"),
        ("[a]" * 30_000 + "x", "x"),
        ("[a] " * 30_000, "[a]"),
        ("[a]" * 30_000 + "re:x", "x"),
        ("[fwd: " * 20_000 + "x" + "]" * 20_000, "x"),
        (" (fwd)" * 30_000, ""),
    ],
)
def test_base_subject_stays_linear(subject: str, base: str) -> None:
    started = time.perf_counter()
    assert base_subject(subject) == base
    assert time.perf_counter() - started < 1.0


def test_envelope_search_texts_decoded_and_folded() -> None:
    from postroom.message import ENVELOPE_SEARCH_FIELDS, envelope_search_texts, search_texts_of
    from postroom.deliver import summarize

    data = crlf(
        "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Jurgen@Example.DE>\n"
        "To: Team: a@x.org, \"B. Smith\" <B@Y.org>;, straße@ÜBER.example\n"
        "Subject: =?iso-8859-1?q?Gr=FC=DFe?= =?utf-8?b?YXVz?= K\u00f6ln\n"
        "Bcc: undisclosed-recipients:;\n"
        "\nbody\n"
    )
    texts = dict(zip(ENVELOPE_SEARCH_FIELDS, envelope_search_texts(scan(data)), strict=True))
    assert texts["from"] == "jürgen müller <jurgen@example.de>"
    assert texts["to"] == "team:, a@x.org, b. smith <b@y.org>, strasse@über.example"
    assert texts["cc"] is None  # absent: even an empty needle must not match it
    assert texts["bcc"] == "undisclosed-recipients:"
    assert texts["subject"] == "grüsseaus köln"  # adjacent encoded words join (RFC 2047 6.2)
    # folded, so a case-insensitive match is a plain substring test of a folded needle
    assert "STRASSE@Über".casefold() in texts["to"]
    assert "GRÜSSE".casefold() in texts["subject"]
    # from the stored summary, and from the bytes when the summary is unusable
    assert search_texts_of(summarize(data), data) == envelope_search_texts(scan(data))
    assert search_texts_of(b"[99]", data) == envelope_search_texts(scan(data))
    assert search_texts_of(b"", data) == envelope_search_texts(scan(data))
    assert envelope_search_texts(scan(b"no header\r\n")) == (None, None, None, None, None)


def test_parse_date_usual_form_equals_the_stdlib_parser() -> None:
    """The usual date form is read by a regex; every such value gives what the stdlib
    parser gives (email.utils.parsedate_tz, as for every other form)."""
    import email.utils
    import random

    def stdlib(raw: bytes) -> tuple[int, int] | None:
        parsed = email.utils.parsedate_tz(raw.decode("ascii"))
        if parsed is None:
            return None
        offset = parsed[9] or 0
        try:
            moment = datetime(*parsed[:6], tzinfo=timezone(timedelta(seconds=offset)))
        except (ValueError, OverflowError):
            return None
        return int(moment.timestamp()), offset // 60

    rng = random.Random(14)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    for _ in range(3000):
        lead = rng.choice(["", " ", "\t"]) + rng.choice(["", "Mon, ", "Sat,", "Thu,  "])
        zero = rng.choice(["", "0"]) if rng.random() < 0.2 else ""
        day = rng.choice([0, 1, 7, 28, 29, 30, 31, 32, 99])
        year = rng.choice([1969, 1970, 2000, 2026, 2100, 9999])
        hms = (rng.choice([0, 6, 23, 24, 99]), rng.choice([0, 59, 60]), rng.choice([0, 58, 60]))
        zone = (rng.choice("+-"), rng.choice([0, 5, 13, 23, 24, 99]), rng.choice([0, 30, 59, 60, 99]))
        tail = rng.choice(["", " (UTC)", " (Pacific Standard Time)"]) + rng.choice(["", " ", "\r\n"])
        raw = (f"{lead}{zero}{day} {rng.choice(months)} {year:04d} "
               f"{hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d} {zone[0]}{zone[1]:02d}{zone[2]:02d}{tail}")
        assert parse_date(raw.encode()) == stdlib(raw.encode()), raw
