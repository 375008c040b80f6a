"""Dot-terminated DATA decoding: end marker across reads, unstuffing, size cap, smuggling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.smtp.dotstuff import DotDecoder, has_bare_line_ending, line_feeds, stuff, unstuff


def decode(data: bytes, max_size: int = 0, step: int | None = None) -> tuple[bytes | None, int]:
    """Feed ``data`` in pieces of ``step`` (None: whole); return (message, bytes consumed)."""
    dec = DotDecoder(max_size)
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    consumed = 0
    for piece in pieces:
        used = dec.feed(piece)
        if used is not None:
            return dec.message(), consumed + used
        consumed += len(piece)
    raise AssertionError("end marker not found")


CASES = [
    # (raw DATA bytes, unstuffed message)
    (b".\r\n", b""),
    (b"hello\r\n.\r\n", b"hello\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"..leading\r\n.\r\n", b".leading\r\n"),
    (b"a\r\n..b\r\n...c\r\n.\r\n", b"a\r\n.b\r\n..c\r\n"),
    (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),  # RFC 5321 4.5.2: unstuffed even if not doubled
    (b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\r\n"),  # long lines are kept intact
    (b"\r\n.\r\n", b"\r\n"),
]


@pytest.mark.parametrize(("raw", "message"), CASES)
@pytest.mark.parametrize("step", [None, 1, 2, 3, 4, 5, 7])
def test_decode(raw: bytes, message: bytes, step: int | None) -> None:
    assert decode(raw + b"NEXT", step=step) == (message, len(raw))


@pytest.mark.parametrize(
    "fake",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n..\r\n"],
)
@pytest.mark.parametrize("step", [None, 1, 3])
def test_smuggling_sequences_never_end_data(fake: bytes, step: int | None) -> None:
    raw = b"From: a\r\n\r\nbody" + fake + b"MAIL FROM:<evil@x>\r\n" + b"tail\r\n.\r\n"
    message, used = decode(raw + b"QUIT\r\n", step=step)
    assert used == len(raw)
    assert message is not None
    assert b"MAIL FROM:<evil@x>" in message
    assert has_bare_line_ending(message)


def test_data_starting_with_fake_marker() -> None:
    dec = DotDecoder()
    assert dec.feed(b".\n") is None  # "." LF as the first line is content, not the end
    assert dec.feed(b"x\r\n.\r\n") == 6
    message = dec.message()
    assert message == b"\nx\r\n"  # first-line dot removed; the bare LF stays visible
    assert has_bare_line_ending(message)


def test_no_end_without_crlf_dot_crlf() -> None:
    dec = DotDecoder()
    assert dec.feed(b".\n.\n\r.\r\n.\n") is None


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"", False),
        (b"a\r\n", False),
        (b"a\n", True),
        (b"a\r", True),
        (b"a\r\r\n", True),
        (b"a\r\n\n", True),
        (b"a\n\r", True),
        (b"\r\n\r\n", False),
    ],
)
def test_has_bare_line_ending(data: bytes, bare: bool) -> None:
    assert has_bare_line_ending(data) is bare


def _bare_by_octet(data: bytes) -> bool:
    """The definition, one octet at a time."""
    for i, c in enumerate(data):
        if c == 0x0D and data[i + 1 : i + 2] != b"\n":
            return True
        if c == 0x0A and (i == 0 or data[i - 1] != 0x0D):
            return True
    return False


@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"x", b"y" * 40]), max_size=40))
def test_has_bare_line_ending_agrees_with_the_definition(pieces: list[bytes]) -> None:
    # Pieces of 40 octets make lines long enough for the look-ahead search, single
    # octets short enough for the counts: both ways are checked against the definition.
    data = b"".join(pieces)
    assert has_bare_line_ending(data) is _bare_by_octet(data)
    assert has_bare_line_ending(bytearray(data)) is _bare_by_octet(data)
    # The count handed on with a clean message is its number of line ends.
    assert line_feeds(data) == (None if _bare_by_octet(data) else data.count(b"\n"))


@pytest.mark.parametrize("line", [b"", b"a" * 5, b"a" * 78])
@pytest.mark.parametrize(("fault", "bare"), [(b"", False), (b"\r", True), (b"\n", True), (b"\n\r", True)])
def test_has_bare_line_ending_in_long_messages(line: bytes, fault: bytes, bare: bool) -> None:
    lines = [line + b"\r\n"] * 2000
    for at in (0, 1000, 1999):
        faulty = lines[:at] + [line + fault + b"\r\n"] + lines[at:]
        assert has_bare_line_ending(b"".join(faulty)) is bare
    assert has_bare_line_ending(b"".join(lines) + fault) is bare
    assert line_feeds(b"".join(lines) + fault) == (None if bare else 2000)


@pytest.mark.parametrize("step", [None, 1, 10, 333])
def test_size_limit_exact(step: int | None) -> None:
    body = b"y" * 98 + b"\r\n"  # 100 octets
    assert decode(body + b".\r\n", max_size=100, step=step)[0] == body
    assert decode(b"y" + body + b".\r\n", max_size=100, step=step)[0] is None


@pytest.mark.parametrize("step", [None, 1, 2, 3, 5, 64])
def test_size_limit_ignores_stuffing_dots(step: int | None) -> None:
    # 30 lines "..\r\n" = 120 raw octets but 90 after unstuffing.
    raw = b"..\r\n" * 30
    message, _ = decode(raw + b".\r\n", max_size=90, step=step)
    assert message == b".\r\n" * 30
    message, _ = decode(raw + b".\r\n", max_size=89, step=step)
    assert message is None


def test_overflow_keeps_memory_bounded_and_finds_end() -> None:
    dec = DotDecoder(max_size=50)
    for _ in range(1000):
        assert dec.feed(b"z" * 997 + b"\r\n.") is None
        assert len(dec._raw) <= 4
    assert dec.overflow
    # The marker split across two reads is still found after the overflow.
    assert dec.feed(b"xx\r\n.") is None
    assert dec.feed(b"\r\nMORE") == 2
    assert dec.message() is None


def test_decoder_misuse() -> None:
    dec = DotDecoder()
    with pytest.raises(RuntimeError):
        dec.message()
    dec.feed(b".\r\n")
    with pytest.raises(RuntimeError):
        dec.feed(b"x")
    with pytest.raises(ValueError):
        DotDecoder(-1)


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".a\r\n.\r\nb\r\n", b"..a\r\n..\r\nb\r\n.\r\n"),
    ],
)
def test_stuff(message: bytes, wire: bytes) -> None:
    assert stuff(message) == wire


_lines = st.lists(
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(_lines, st.integers(1, 50))
def test_stuff_then_decode_round_trip(lines: list[bytes], step: int) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(message)
    assert decode(wire + b"after", step=step) == (message, len(wire))
    assert unstuff(wire[: -len(b".\r\n")]) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
def test_split_points_do_not_matter(data: bytes, cuts: list[int]) -> None:
    data += b"\r\n.\r\n"
    whole = DotDecoder(max_size=100)
    used_whole = whole.feed(data)
    assert used_whole is not None
    pieces = []
    prev = 0
    for cut in sorted(c for c in cuts if c < len(data)):
        pieces.append(data[prev:cut])
        prev = cut
    pieces.append(data[prev:])
    split = DotDecoder(max_size=100)
    consumed = 0
    for piece in pieces:
        used = split.feed(piece)
        if used is not None:
            consumed += used
            break
        consumed += len(piece)
    assert consumed == used_whole
    assert split.message() == whole.message()
    assert split.overflow == whole.overflow


@pytest.mark.parametrize("dot_lines", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("step", [None, 1, 2, 3, 5, 64])
def test_many_dot_lines_and_none(dot_lines: int, step: int | None) -> None:
    """The decoder visits dot lines one by one up to a bound, then only looks for the end
    (and skips unstuffing when there was none): the result is the same either way."""
    lines = [b"line %d" % i for i in range(100)]
    lines[:dot_lines] = [b"." + b"x" * (i % 3) for i in range(dot_lines)]
    message = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(message)
    assert decode(wire + b"QUIT\r\n", step=step) == (message, len(wire))
    # and over the size limit, the end is still found with memory bounded
    assert decode(wire + b"QUIT\r\n", max_size=50, step=step) == (None, len(wire))
