"""FETCH BODY[section]<partial>, BINARY[section] and BINARY.SIZE from stored bytes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.message import scan
from postroom.proto.imap.sections import (
    SectionSpec,
    UnknownCTE,
    apply_partial,
    binary_size,
    decode_part,
    extract,
    find_part,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# The structure of the RFC 3501 6.4.5 / RFC 9051 6.4.5 part-numbering example.
TOP_HEADER = "From: a@example.com\nSubject: structure\nX-Folded: one\n two\nMIME-Version: 1.0\n" \
    "Content-Type: multipart/mixed; boundary=\"outer\"\n\n"
PART3_MESSAGE_HEADER = "From: c@example.com\nSubject: inner three\nMIME-Version: 1.0\n" \
    "Content-Type: multipart/mixed; boundary=\"three\"\n\n"
PART42_MESSAGE_HEADER = "From: d@example.com\nSubject: inner four two\nMIME-Version: 1.0\n" \
    "Content-Type: multipart/mixed; boundary=\"fourtwo\"\n\n"
PART3_TEXT = (
    "--three\nContent-Type: text/plain\n\nthree one\n"
    "--three\nContent-Type: application/octet-stream\n\nthree two\n"
    "--three--"
)
PART42_TEXT = (
    "--fourtwo\nContent-Type: text/plain\n\nfour two one\n"
    "--fourtwo\nContent-Type: multipart/alternative; boundary=\"alt\"\n\n"
    "--alt\nContent-Type: text/plain\n\nplain alt\n"
    "--alt\nContent-Type: text/richtext\n\nrich alt\n"
    "--alt--\n"
    "--fourtwo--"
)
PART4_BODY = (
    "--four\nContent-Type: image/gif\nContent-Transfer-Encoding: base64\n\nR0lGODlh\n"
    "--four\nContent-Type: message/rfc822\n\n" + PART42_MESSAGE_HEADER + PART42_TEXT + "\n"
    "--four--"
)
TOP_TEXT = (
    "preamble\n"
    "--outer\nContent-Type: text/plain\n\npart one\n"
    "--outer\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    "AAECAw==\n"
    "--outer\nContent-Type: message/rfc822\n\n" + PART3_MESSAGE_HEADER + PART3_TEXT + "\n"
    "--outer\nContent-Type: multipart/mixed; boundary=\"four\"\n\n" + PART4_BODY + "\n"
    "--outer--\nepilogue\n"
)
MESSAGE = crlf(TOP_HEADER + TOP_TEXT)
SUMMARY = scan(MESSAGE)


def fetch(section: str, partial: tuple[int, int] | None = None) -> bytes:
    """Parse a section spec the simple way the command parser will, and extract it."""
    numbers: list[int] = []
    rest = section
    while rest and rest[0].isdigit():
        head, _, rest = rest.partition(".")
        numbers.append(int(head))
    text: str | None = rest or None
    fields: tuple[str, ...] = ()
    if text and " " in text:
        text, _, names = text.partition(" ")
        fields = tuple(names.strip("()").split())
    return extract(MESSAGE, SUMMARY, SectionSpec(tuple(numbers), text, fields, partial))


RFC3501_EXAMPLE = [
    ("", TOP_HEADER + TOP_TEXT),
    ("HEADER", TOP_HEADER),
    ("TEXT", TOP_TEXT),
    ("1", "part one"),
    ("1.MIME", "Content-Type: text/plain\n\n"),
    ("2", "AAECAw=="),
    ("3", PART3_MESSAGE_HEADER + PART3_TEXT),
    ("3.HEADER", PART3_MESSAGE_HEADER),
    ("3.TEXT", PART3_TEXT),
    ("3.MIME", "Content-Type: message/rfc822\n\n"),
    ("3.1", "three one"),
    ("3.2", "three two"),
    ("3.2.MIME", "Content-Type: application/octet-stream\n\n"),
    ("4", PART4_BODY),
    ("4.1", "R0lGODlh"),
    ("4.1.MIME", "Content-Type: image/gif\nContent-Transfer-Encoding: base64\n\n"),
    ("4.2", PART42_MESSAGE_HEADER + PART42_TEXT),
    ("4.2.HEADER", PART42_MESSAGE_HEADER),
    ("4.2.TEXT", PART42_TEXT),
    ("4.2.1", "four two one"),
    # the line break after "--alt--" belongs to the "--fourtwo--" delimiter line
    ("4.2.2", ("--alt\nContent-Type: text/plain\n\nplain alt\n"
              "--alt\nContent-Type: text/richtext\n\nrich alt\n--alt--")),
    ("4.2.2.1", "plain alt"),
    ("4.2.2.2", "rich alt"),
    ("4.2.2.2.MIME", "Content-Type: text/richtext\n\n"),
]


@pytest.mark.parametrize(("section", "expected"), RFC3501_EXAMPLE)
def test_rfc3501_part_numbering(section: str, expected: str) -> None:
    assert fetch(section) == crlf(expected)


@pytest.mark.parametrize(
    "section",
    ["5", "0", "1.1", "2.1", "3.3", "4.3", "4.1.1", "4.2.3", "4.2.2.3", "1.HEADER", "1.TEXT",
     "4.HEADER", "4.1.HEADER.FIELDS (FROM)", "9.MIME", "3.1.1"],
)
def test_missing_parts_are_empty(section: str) -> None:
    assert fetch(section) == b""


def test_header_fields() -> None:
    assert fetch("HEADER.FIELDS (SUBJECT FROM)") == crlf(
        "From: a@example.com\nSubject: structure\n\n"
    )
    assert fetch("HEADER.FIELDS (x-folded mime-version)") == crlf(
        "X-Folded: one\n two\nMIME-Version: 1.0\n\n"
    )
    assert fetch("HEADER.FIELDS (NOT-THERE)") == b"\r\n"
    assert fetch("HEADER.FIELDS.NOT (Subject Content-Type X-Folded)") == crlf(
        "From: a@example.com\nMIME-Version: 1.0\n\n"
    )
    assert fetch("3.HEADER.FIELDS (SUBJECT)") == crlf("Subject: inner three\n\n")
    assert fetch("4.2.HEADER.FIELDS.NOT (FROM SUBJECT MIME-VERSION)") == crlf(
        "Content-Type: multipart/mixed; boundary=\"fourtwo\"\n\n"
    )


def test_header_fields_details() -> None:
    data = crlf(
        "Subject: one\nX-A: 1\nsubject : two\n\tfolded\nnot a field\nX-A:2\nSubjectX: no\n\nbody"
    )
    s = scan(data)

    def get(text: str, *names: str | bytes) -> bytes:
        return extract(data, s, SectionSpec((), text, names))

    assert get("HEADER.FIELDS", "Subject") == crlf("Subject: one\nsubject : two\n\tfolded\n\n")
    assert get("HEADER.FIELDS", b"x-a", "X-A") == crlf("X-A: 1\nX-A:2\n\n")
    assert get("HEADER.FIELDS.NOT", "subject", "x-a") == crlf("not a field\nSubjectX: no\n\n")
    assert get("HEADER.FIELDS") == b"\r\n"
    assert get("HEADER.FIELDS.NOT") == crlf(
        "Subject: one\nX-A: 1\nsubject : two\n\tfolded\nnot a field\nX-A:2\nSubjectX: no\n\n"
    )
    assert get("HEADER.FIELDS", "(evil)|.*") == b"\r\n"


def test_header_without_blank_line() -> None:
    data = b"Subject: a\r\nFrom: b@c"
    s = scan(data)
    assert extract(data, s, SectionSpec((), "HEADER")) == data
    assert extract(data, s, SectionSpec((), "TEXT")) == b""
    assert extract(data, s, SectionSpec((), "HEADER.FIELDS", ("from",))) == b"From: b@c\r\n\r\n"
    assert extract(data, s, SectionSpec((), "HEADER.FIELDS.NOT", ("subject",))) == (
        b"From: b@c\r\n\r\n"
    )


def test_non_multipart_message_part_one() -> None:
    data = crlf("Subject: s\nContent-Type: text/plain\n\nthe body\n")
    s = scan(data)
    assert extract(data, s, SectionSpec((1,))) == crlf("the body\n")
    assert extract(data, s, SectionSpec((1,), "MIME")) == crlf(
        "Subject: s\nContent-Type: text/plain\n\n"
    )
    assert extract(data, s, SectionSpec((2,))) == b""
    assert extract(data, s, SectionSpec((1, 1))) == b""


def test_top_level_message_rfc822() -> None:
    data = crlf("Content-Type: message/rfc822\n\nSubject: inner\n\ninner body\n")
    s = scan(data)
    assert extract(data, s, SectionSpec((1,))) == crlf("Subject: inner\n\ninner body\n")
    assert extract(data, s, SectionSpec((1,), "HEADER")) == crlf("Subject: inner\n\n")
    assert extract(data, s, SectionSpec((1,), "TEXT")) == crlf("inner body\n")
    assert extract(data, s, SectionSpec((1, 1))) == crlf("inner body\n")


def test_partial() -> None:
    assert fetch("1", (0, 4)) == b"part"
    assert fetch("1", (5, 100)) == b"one"
    assert fetch("1", (8, 10)) == b""
    assert fetch("1", (100, 10)) == b""
    assert fetch("1", (2, 0)) == b""
    assert fetch("", (0, 4)) == b"From"
    assert fetch("HEADER.FIELDS (SUBJECT)", (0, 7)) == b"Subject"
    assert fetch("HEADER.FIELDS (SUBJECT)", (20, 5)) == b"\r\n"
    assert apply_partial(b"abcdef", (1, 2)) == b"bc"
    assert apply_partial(b"abcdef", None) == b"abcdef"
    with pytest.raises(ValueError, match="non-negative"):
        fetch("1", (-1, 3))


def test_api_misuse_raises() -> None:
    with pytest.raises(ValueError, match="part number"):
        extract(MESSAGE, SUMMARY, SectionSpec((), "MIME"))
    with pytest.raises(ValueError, match="unknown section"):
        extract(MESSAGE, SUMMARY, SectionSpec((1,), "BODY"))
    with pytest.raises(ValueError, match="octets"):
        extract(MESSAGE + b"x", SUMMARY, SectionSpec())
    with pytest.raises(ValueError, match="octets"):
        decode_part(MESSAGE[:-1], SUMMARY, (1,))


def test_find_part() -> None:
    part = find_part(SUMMARY, (4, 2, 2, 1))
    assert part is not None and part.mime_type == "text/plain"
    assert find_part(SUMMARY, (4, 2)) is not None
    assert find_part(SUMMARY, (7,)) is None


# --- BINARY ----------------------------------------------------------------------------------


def test_decode_part() -> None:
    assert decode_part(MESSAGE, SUMMARY, (2,)) == b"\x00\x01\x02\x03"
    assert decode_part(MESSAGE, SUMMARY, (4, 1)) == base64.b64decode(b"R0lGODlh")
    assert decode_part(MESSAGE, SUMMARY, (1,)) == b"part one"
    assert decode_part(MESSAGE, SUMMARY, (4,)) == crlf(PART4_BODY)
    assert decode_part(MESSAGE, SUMMARY, (3,)) == crlf(PART3_MESSAGE_HEADER + PART3_TEXT)
    assert decode_part(MESSAGE, SUMMARY, (9,)) == b""
    assert decode_part(MESSAGE, SUMMARY, ()) == MESSAGE
    assert binary_size(MESSAGE, SUMMARY, (2,)) == 4
    assert binary_size(MESSAGE, SUMMARY, (9,)) == 0


def test_decode_part_encodings() -> None:
    data = crlf(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =\nlong line=3D\n"
        "--b\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n"
        "--b\nContent-Transfer-Encoding: 8bit\n\nraw \xe9\n"
        "--b--\n"
    )
    s = scan(data)
    assert decode_part(data, s, (1,)) == "café long line=".encode()
    assert decode_part(data, s, (2,)) == UnknownCTE("x-uuencode")
    assert binary_size(data, s, (2,)) == UnknownCTE("x-uuencode")
    assert decode_part(data, s, (3,)) == "raw \xe9".encode()


def test_decode_whole_non_multipart_message() -> None:
    data = crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n")
    s = scan(data)
    assert decode_part(data, s, ()) == crlf(
        "MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\n"
    ) + b"hello"
    assert decode_part(data, s, (1,)) == b"hello"
    assert binary_size(data, s, (1,)) == 5
    unknown = crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: x-foo\n\nzz\n")
    assert decode_part(unknown, scan(unknown), ()) == UnknownCTE("x-foo")


# --- robustness ----------------------------------------------------------------------------------

_specs = st.builds(
    SectionSpec,
    st.lists(st.integers(min_value=0, max_value=5), max_size=4).map(tuple),
    st.sampled_from([None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]),
    st.lists(st.sampled_from(["from", "SUBJECT", "content-type", "x", ""]), max_size=3)
    .map(tuple),
    st.one_of(st.none(), st.tuples(st.integers(0, 300), st.integers(0, 300))),
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), _specs)
def test_extract_never_fails_on_valid_specs(data: bytes, spec: SectionSpec) -> None:
    s = scan(data)
    if spec.text == "MIME" and not spec.part:
        with pytest.raises(ValueError, match="part number"):
            extract(data, s, spec)
        return
    out = extract(data, s, spec)
    if spec.partial is not None:
        assert len(out) <= spec.partial[1]
    if spec.text is None and spec.partial is None:
        assert out in data
    result = decode_part(data, s, spec.part)
    assert isinstance(result, (bytes, UnknownCTE))


@settings(max_examples=200, deadline=None)
@given(_specs)
def test_sections_of_the_example(spec: SectionSpec) -> None:
    if spec.text == "MIME" and not spec.part:
        return
    out = extract(MESSAGE, SUMMARY, spec)
    if spec.text not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        assert out in MESSAGE
