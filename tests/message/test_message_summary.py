"""Summary serialisation: exact round trip, compactness, versioning, corrupt rows."""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from postroom.message import MessageSummary, Part, SummaryError, SummaryVersionError, scan
from postroom.message.model import Envelope


def fixtures() -> list[bytes]:
    plain = EmailMessage()
    plain["From"] = "=?utf-8?Q?J=C3=B6rg?= <j@example.com>"
    plain["To"] = "a@example.com, \"B, b\" <b@example.com>, grp: c@x;"
    plain["Subject"] = "Grüße"
    plain["Date"] = "Tue, 03 Sep 2024 10:11:12 +0200"
    plain["Message-ID"] = "<m1@example.com>"
    plain["References"] = "<r1@x> <r2@x>"
    plain.set_content("hello\n")
    mixed = EmailMessage()
    mixed["Subject"] = "mixed"
    mixed.set_content("text")
    mixed.add_alternative("<p>html</p>", subtype="html")
    mixed.add_attachment(b"\x00" * 300, maintype="application", subtype="octet-stream",
                         filename="€uro.bin")
    mixed.add_attachment(plain)
    return [
        plain.as_bytes(policy=SMTP),
        mixed.as_bytes(policy=SMTP),
        b"",
        b"junk \xff\xfe\x00 without header end",
        "Subject: 8-bit Grüße\r\nFrom: Jörg <j@x>\r\n\r\nx".encode("latin-1"),
        (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Language: en, de\r\nContent-Location: http://x\r\nContent-MD5: abc\r\n"
         b"Content-Description: d\r\nContent-ID: <i>\r\n"
         b"Content-Disposition: inline; filename*=utf-8''%E2%82%AC\r\n\r\nx"),
    ]


@pytest.mark.parametrize("data", fixtures())
def test_round_trip_exact(data: bytes) -> None:
    summary = scan(data)
    raw = summary.to_bytes()
    assert raw.isascii()
    again = MessageSummary.from_bytes(raw)
    assert again == summary
    assert again.to_bytes() == raw
    assert MessageSummary.from_bytes(raw.decode("ascii")) == summary


def test_compact() -> None:
    data = fixtures()[0]
    raw = scan(data).to_bytes()
    assert len(raw) < 600, raw
    simple = scan(b"Subject: x\r\n\r\nbody\r\n").to_bytes()
    assert len(simple) < 80, simple


def test_version_mismatch() -> None:
    row = json.loads(scan(b"Subject: x\r\n\r\n").to_bytes())
    row[0] = MessageSummary.VERSION + 1
    with pytest.raises(SummaryVersionError):
        MessageSummary.from_bytes(json.dumps(row).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"not json", b"{}", b"[]", b'["1"]', b"[1]", b"[1, 5]", b"[1, 5, 7]",
        b'[1, 5, [0, 0, 0]]', b'[1, 5, [0, 0, 0, 0, 0, "text/plain", 7]]',
        b'[1, 5, [0, 0, 0, 0, 0, "textplain"]]', b'[1, "5", [0, 0, 0, 0]]',
        b'[1, 5, [0, 0, 0, 0], null, 7]', b'[1, 5, [0, 0, 0, 0, 0, "a/b", {"c": [1]}]]',
        b'[1, 5, [0, 0, 0, 0, 0, "a/b", {"v": [1]}]]',
        b"[1, 5, [0, 0, 0, 0], null, \"\", \"\", \"\", \"\", \"\", \"\", null, null, [], 9]",
        b'[1, 5, [0, 0, 0, 0], null, "", "", "", "", "", "", null, null, "refs"]',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_corrupt_rows_raise_summary_error(raw: bytes) -> None:
    with pytest.raises(SummaryError):
        MessageSummary.from_bytes(raw)


def test_hand_built_summary_round_trip() -> None:
    part = Part(
        header_start=0, header_end=10, body_start=12, body_end=20, lines=3,
        type="application", subtype="x-thing", multipart=False,
        params=(("name*", b"utf-8''%E2%82%AC"),), encoding="base64",
        content_id=b"", description=b"\xff", md5=b"m", disposition="attachment",
        disposition_params=(("size", b"8"),), language=(), location=b"",
        envelope=Envelope(subject=b"", from_=()),
    )
    summary = MessageSummary(root=part, size=20, sent_date=(-5, -90), base_subject="\u00e9",
                             message_id="", references=("a", ""))
    assert MessageSummary.from_bytes(summary.to_bytes()) == summary


def test_header_summary_reads_only_the_head() -> None:
    from postroom.message import scan
    from postroom.message.model import header_block_end, header_summary

    data = b"Subject: s\r\nX-A: 1\r\n\r\n--body--\r\n"
    full = scan(data)
    raw = full.to_bytes()
    head = header_summary(raw)
    assert head is not None and head.size == full.size == len(data)
    r, f = head.root, full.root
    assert (r.header_start, r.header_end, r.body_start, r.body_end) == \
        (f.header_start, f.header_end, f.body_start, f.body_end)
    assert head.resized(f.body_start).size == f.body_start
    assert header_block_end(raw) == f.body_start
    assert header_summary(b"[999,1,[0,0,0,") is None  # another format version
    assert header_summary(b"junk") is None


def test_root_envelope_is_the_root_of_the_full_decode() -> None:
    """root_envelope() reads only the top level (issue 9: a 10,000-part summary decoded
    whole for the search texts of every APPEND); it must agree with from_bytes()."""
    from postroom.message import envelope_search_texts, search_texts_of
    from postroom.message.model import root_envelope
    from support import hostile
    from support.mailgen import mailbox

    for data in mailbox(60, "u@example.test", seed=4) + [hostile.many_parts("u@example.test", 2000),
                                                         b"no header at all\r\n"]:
        raw = scan(data).to_bytes()
        assert root_envelope(raw) == MessageSummary.from_bytes(raw).root.envelope
        assert search_texts_of(raw, data) == envelope_search_texts(scan(data))
    with pytest.raises(SummaryError):
        root_envelope(b"[999]")


def test_compact_json_is_json_dumps_compact_ascii() -> None:
    import json

    from postroom.message.model import compact_json

    for value in ([1, 'a"b\\c\u00e9\u2028\x00', None, True, [2.5, -0.0, 10**30], {"k": [1]}],
                  "x", [], [[[]]], ["\x7f\xff"]):
        assert compact_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=True)
