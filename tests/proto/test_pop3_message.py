"""POP3 message wire form: sizes equal the octets RETR delivers, byte-stuffing, TOP."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.pop3 import byte_stuff, normalize, retr_body, top_body, top_part, wire_size


def client_unstuff(wire: bytes) -> bytes:
    """What a POP3 client does with a multi-line response body (RFC 1939 section 3)."""
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    out = []
    for line in lines[:-1]:
        assert line != b".", "a lone '.' line would end the response early"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in out)


@pytest.mark.parametrize(
    ("stored", "wire"),
    [
        (b"", b""),
        (b"a\r\n", b"a\r\n"),
        (b"a", b"a\r\n"),  # last line without line ending gets CRLF
        (b"a\nb\n", b"a\r\nb\r\n"),  # bare LF becomes CRLF
        (b"a\r\nb", b"a\r\nb\r\n"),
        (b"a\r", b"a\r\r\n"),  # a lone CR is content; the line still ends with CRLF
        (b"\n", b"\r\n"),
        (b"x\r\n\ny", b"x\r\n\r\ny\r\n"),
    ],
)
def test_normalize_and_size(stored: bytes, wire: bytes) -> None:
    assert normalize(stored) == wire
    assert wire_size(stored) == len(wire)


@pytest.mark.parametrize(
    ("normalized", "stuffed"),
    [
        (b".\r\n", b"..\r\n"),
        (b".a\r\n.\r\nb.\r\n..\r\n", b"..a\r\n..\r\nb.\r\n...\r\n"),
        (b"a\r\n", b"a\r\n"),
        (b"", b""),
    ],
)
def test_byte_stuff(normalized: bytes, stuffed: bytes) -> None:
    assert byte_stuff(normalized) == stuffed


def test_retr_body_size_excludes_stuffing() -> None:
    size, wire = retr_body(b"Subject: x\r\n\r\n.\r\n..hidden\r\nend")
    assert wire == b"Subject: x\r\n\r\n..\r\n...hidden\r\nend\r\n.\r\n"
    assert size == len(b"Subject: x\r\n\r\n.\r\n..hidden\r\nend\r\n") == 32


def test_retr_empty_message() -> None:
    assert retr_body(b"") == (0, b".\r\n")


MESSAGE = b"From: a\r\nSubject: b\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n"


@pytest.mark.parametrize(
    ("lines", "part"),
    [
        (0, b"From: a\r\nSubject: b\r\n\r\n"),
        (1, b"From: a\r\nSubject: b\r\n\r\nline 1\r\n"),
        (2, b"From: a\r\nSubject: b\r\n\r\nline 1\r\n.line 2\r\n"),
        (3, MESSAGE),
        (4, MESSAGE),
        (9_999_999_999, MESSAGE),
    ],
)
def test_top_part(lines: int, part: bytes) -> None:
    assert top_part(MESSAGE, lines) == part


def test_top_edge_cases() -> None:
    headers_only = b"From: a\r\nSubject: b\r\n"
    assert top_part(headers_only, 0) == headers_only
    assert top_part(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"  # empty header
    assert top_part(b"", 5) == b""
    assert top_body(MESSAGE, 2) == b"From: a\r\nSubject: b\r\n\r\nline 1\r\n..line 2\r\n.\r\n"
    assert top_body(b"From: a\n\nbody", 5) == b"From: a\r\n\r\nbody\r\n.\r\n"


message_bytes = st.lists(
    st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b" ", b"\xff"]),
    max_size=60,
).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=300, deadline=None)
@given(message_bytes)
def test_size_equals_octets_client_receives(stored: bytes) -> None:
    """LIST/STAT size == octets the client has after un-stuffing a RETR (RFC 1939 11)."""
    size, wire = retr_body(stored)
    assert size == wire_size(stored)
    received = client_unstuff(wire)
    assert len(received) == size
    assert received == normalize(stored)


@settings(max_examples=200, deadline=None)
@given(message_bytes, st.integers(min_value=0, max_value=30))
def test_top_is_a_prefix_made_of_whole_lines(stored: bytes, lines: int) -> None:
    normalized = normalize(stored)
    part = top_part(normalized, lines)
    assert normalized.startswith(part)
    assert part == b"" or part.endswith(b"\r\n")
    assert client_unstuff(top_body(stored, lines)) == part


@settings(max_examples=200, deadline=None)
@given(message_bytes, st.integers(min_value=0, max_value=30))
def test_crlf_shortcut_gives_the_same_bytes(stored: bytes, lines: int) -> None:
    """``crlf=True`` (the shell vouches for CRLF) skips normalising, nothing else."""
    normalized = normalize(stored)
    assert retr_body(normalized, crlf=True) == retr_body(stored)
    assert top_body(normalized, lines, crlf=True) == top_body(stored, lines)


def test_byte_stuff_without_dot_lines_is_the_same_object() -> None:
    plain = b"Subject: x\r\n\r\nno dot . at a line start\r\n"
    assert byte_stuff(plain) is plain
    assert byte_stuff(b".x\r\n") == b"..x\r\n"
