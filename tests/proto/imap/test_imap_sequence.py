"""Sequence sets: parsing, resolution without expansion, compact serialization."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import STAR, RangeSet, SequenceSet, compact


@pytest.mark.parametrize(
    ("text", "ranges", "saved"),
    [
        ("1", ((1, 1),), False),
        ("1:*", ((1, STAR),), False),
        ("*", ((STAR, STAR),), False),
        ("*:4", ((STAR, 4),), False),
        ("1:*,3,5:7,$", ((1, STAR), (3, 3), (5, 7)), True),
        ("$", (), True),
        ("4294967295", ((4294967295, 4294967295),), False),
        ("7:5", ((7, 5),), False),
    ],
)
def test_parse(text: str, ranges: tuple[tuple[int, int], ...], saved: bool) -> None:
    s = SequenceSet.parse(text)
    assert s.ranges == ranges
    assert s.saved is saved


@pytest.mark.parametrize(
    "text", ["", "0", "1:0", "4294967296", "1,", ",1", "1::2", "a", "1 2", "1:*:3", "-1", "1.5"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ImapPeerError):
        SequenceSet.parse(text)


def test_serialize_round_trip() -> None:
    for text in ["1:*", "$,1,3:5", "*", "2:4,7"]:
        assert str(SequenceSet.parse(text)) == text


def test_resolve_star_and_reversed() -> None:
    s = SequenceSet.parse("5:*")
    assert s.resolve(3).ranges == ((3, 5),)  # RFC 9051 9: "5:*" with 3 messages is 3:5
    assert s.resolve(10).ranges == ((5, 10),)
    assert SequenceSet.parse("*").resolve(0).ranges == ()
    assert SequenceSet.parse("1:*").resolve(0).ranges == ((1, 1),)
    assert SequenceSet.parse("4:2,3,10:12,13").resolve(100).ranges == ((2, 4), (10, 13))


def test_resolve_saved() -> None:
    s = SequenceSet.parse("1,$")
    assert s.resolve(10).ranges == ((1, 1),)
    assert s.resolve(10, RangeSet([(5, 6)])).ranges == ((1, 1), (5, 6))
    assert SequenceSet.parse("$").resolve(10, None).ranges == ()


def test_max_explicit_and_star() -> None:
    s = SequenceSet.parse("3,7:*")
    assert s.max_explicit() == 7
    assert s.uses_star
    assert not SequenceSet.parse("3").uses_star


def test_huge_range_is_not_expanded() -> None:
    rs = SequenceSet.parse("1:4294967295").resolve(4294967295)
    start = time.perf_counter()
    assert 4294967295 in rs
    assert 0 not in rs
    assert len(rs) == 4294967295
    uids = list(range(1, 200_000, 3))
    assert rs.select(uids) == uids
    assert time.perf_counter() - start < 1.0


def test_membership_and_select() -> None:
    rs = RangeSet.from_pairs([(10, 20), (1, 3), (4, 5), (30, 30)])
    assert rs.ranges == ((1, 5), (10, 20), (30, 30))
    assert [n for n in (0, 1, 5, 6, 10, 20, 21, 30, 31) if n in rs] == [1, 5, 10, 20, 30]
    assert "x" not in rs
    assert rs.select([2, 6, 7, 15, 25, 30, 40]) == [2, 15, 30]
    assert rs.positions([2, 6, 7, 15, 25, 30, 40]) == [0, 3, 5]
    assert rs.min == 1 and rs.max == 30
    assert list(RangeSet.from_numbers([3, 1, 2])) == [1, 2, 3]
    assert not RangeSet()
    assert RangeSet().min is None
    assert rs == RangeSet.from_pairs([(1, 5), (10, 20), (30, 30)])
    assert hash(rs) == hash(RangeSet.from_pairs([(1, 5), (10, 20), (30, 30)]))


@pytest.mark.parametrize(
    ("numbers", "wire"),
    [
        ([], b""),
        ([1], b"1"),
        ([1, 2, 3, 5, 7, 8], b"1:3,5,7:8"),
        ([304, 319, 320], b"304,319:320"),
        ([5, 4, 3], b"5,4,3"),  # order kept (COPYUID pairs by position)
    ],
)
def test_compact(numbers: list[int], wire: bytes) -> None:
    assert compact(numbers) == wire


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), max_size=60))
def test_compact_parses_back(numbers: list[int]) -> None:
    numbers = sorted(set(numbers))
    wire = compact(numbers)
    if numbers:
        assert list(SequenceSet.parse(wire).resolve(200)) == numbers
        assert RangeSet.from_numbers(numbers).to_bytes() == wire


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=10),
    st.integers(0, 70),
)
def test_resolve_matches_naive(pairs: list[tuple[int, int]], largest: int) -> None:
    text = ",".join(f"{a}:{b}" for a, b in pairs)
    rs = SequenceSet.parse(text).resolve(largest)
    naive = {n for a, b in pairs for n in range(min(a, b), max(a, b) + 1)}
    assert set(rs) == naive
    assert all((n in rs) == (n in naive) for n in range(62))
