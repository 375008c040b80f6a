"""Re-encoding binary parts on APPEND (RFC 3516 4.4): the content survives exactly, the
stored message carries no NUL, and text parts are left alone."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.deliver import normalize
from postroom.message import scan
from postroom.message.binary import encode_binary_parts
from postroom.proto.imap.sections import SectionSpec, decode_part, extract


def _binary(content: bytes, cte: bytes = b"binary") -> bytes:
    return (b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + content)


def _stored(data: bytes) -> bytes:
    return normalize(encode_binary_parts(data) or data)


def test_binary_part_becomes_base64_and_decodes_back() -> None:
    content = b"\x00-\xe4\n\r\n\n"
    stored = _stored(_binary(content))
    assert b"\x00" not in stored
    assert b"Content-Transfer-Encoding: base64\r\n" in stored
    assert b"Content-Transfer-Encoding: binary" not in stored
    summary = scan(stored)
    assert summary.root.encoding == "base64"
    assert decode_part(stored, summary, (1,)) == content


def test_text_and_clean_binary_parts_are_untouched() -> None:
    assert encode_binary_parts(b"Subject: hi\r\n\r\nplain text\r\n") is None
    assert encode_binary_parts(_binary(b"only\r\nCRLF lines\r\n")) is None
    assert encode_binary_parts(_binary(b"\xe4 8bit\nbare LF", b"8bit")) is None


def test_nul_in_an_8bit_part_is_encoded_with_crlf_line_ends() -> None:
    data = b"Subject: x\nFrom: y\n\nab\x00c\nd\n"  # not MIME: MIME-Version is added
    stored = _stored(data)
    summary = scan(stored)
    assert b"MIME-Version: 1.0\r\n" in stored and summary.root.encoding == "base64"
    assert decode_part(stored, summary, (1,)) == b"ab\x00c\r\nd\r\n"
    assert stored.startswith(b"Subject: x\r\nFrom: y\r\n")


def test_only_the_binary_part_of_a_multipart_changes() -> None:
    data = (
        b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nplain text\r\n"
        b"--XX\r\nContent-Type: application/x-raw\r\ncontent-transfer-encoding:\r\n binary\r\n\r\n"
        b"\x00\x01\x02\r\n\x03"
        b"\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nContent-Type: application/x-raw\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n\r\x00\r\n"
        b"--XX--\r\n"
    )
    stored = _stored(data)
    summary = scan(stored)
    assert extract(stored, summary, SectionSpec((1,))) == b"plain text"
    assert decode_part(stored, summary, (2,)) == b"\x00\x01\x02\r\n\x03"
    assert decode_part(stored, summary, (3, 1)) == b"\r\x00"
    assert b"\x00" not in stored and stored.count(b"Content-Transfer-Encoding: base64") == 2


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"binary", b"8bit", b"7bit"]))
def test_round_trip_and_no_nul(content: bytes, cte: bytes) -> None:
    stored = _stored(_binary(content, cte))
    assert b"\x00" not in stored
    summary = scan(stored)
    decoded = decode_part(stored, summary, (1,))
    if cte == b"binary":
        assert decoded == content
    elif b"\x00" in content:
        # line-based encodings: line ends are line ends, canonically CRLF
        assert decoded == re.sub(rb"\r\n|\n|\r", b"\r\n", content)
