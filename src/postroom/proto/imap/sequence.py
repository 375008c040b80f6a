"""Sequence sets (RFC 9051 9 ``sequence-set``, RFC 5182 "$") and compact UID sets.

A client writes ``1:*,3,5:7,$``. :class:`SequenceSet` keeps that as written ("*" and "$"
unresolved), because what "*" means depends on the mailbox at execution time. The command
handler resolves it with :meth:`SequenceSet.resolve` against the largest message number
or UID into a :class:`RangeSet`: sorted, merged, disjoint ``(low, high)`` ranges. Nothing
is ever expanded into a list of numbers: ``1:4294967295`` stays one range, membership is a
binary search, and :meth:`RangeSet.select` picks the existing UIDs of a mailbox in
O(ranges · log n + matches).

:func:`compact` is the serializer for sets the server sends (COPYUID, APPENDUID, VANISHED,
ESEARCH ALL, MODIFIED): runs of consecutive numbers become ``a:b``.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from postroom.proto.imap.grammar import MAX_NUMBER, ImapPeerError, Parser

# "*" in a written range: the largest number in use (RFC 9051 9 seq-number). nz-numbers
# are never 0, so 0 is free to stand for it.
STAR: Final = 0

# seq-number = nz-number / "*" ; seq-range = seq-number ":" seq-number
# sequence-set = (seq-number / seq-range) ["," sequence-set] ; sequence-set =/ "$"
_ELEMENT = rb"(?:\$|(?:\d+|\*)(?::(?:\d+|\*))?)"
_SET = re.compile(_ELEMENT + rb"(?:," + _ELEMENT + rb")*")

TEXT_INVALID_SET = "Invalid sequence set"


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence set as the client wrote it.

    ``ranges`` holds ``(first, last)`` pairs in the client's order, either end possibly
    :data:`STAR`; a single number ``n`` is ``(n, n)``. ``saved`` is True when "$" (the
    saved search result, RFC 5182) is part of the set.
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    @classmethod
    def parse(cls, text: bytes | str) -> SequenceSet:
        """Parse a whole sequence set; raises :class:`ImapPeerError` when invalid."""
        if isinstance(text, str):
            text = text.encode("ascii", "replace")
        p = Parser(text)
        result = parse_sequence_set(p)
        if not p.at_end():
            raise ImapPeerError(TEXT_INVALID_SET)
        return result

    @property
    def uses_star(self) -> bool:
        return any(a == STAR or b == STAR for a, b in self.ranges)

    def max_explicit(self) -> int:
        """The largest number written out (not "*"): for the "no such message" check.

        RFC 9051 9: a message sequence number beyond the number of messages is invalid
        (the shell answers BAD); UIDs beyond the largest are simply not there.
        """
        return max((max(a, b) for a, b in self.ranges), default=0)

    def resolve(self, largest: int, saved: RangeSet | None = None) -> RangeSet:
        """Concrete set: "*" becomes ``largest``; ``a:b`` and ``b:a`` mean the same.

        ``largest`` is the number of messages (sequence numbers) or the largest UID in
        the mailbox (UIDs). With an empty mailbox "*" matches nothing. ``saved`` is the
        current SEARCHRES result for "$" (RFC 5182 2.1: empty when nothing was saved).
        """
        pairs: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if a == STAR:
                a = largest
            if b == STAR:
                b = largest
            if a > b:
                a, b = b, a
            if b < 1:
                continue
            pairs.append((max(a, 1), b))
        if self.saved and saved is not None:
            pairs.extend(saved.ranges)
        return RangeSet.from_pairs(pairs)

    def to_bytes(self) -> bytes:
        parts = [b"$"] if self.saved else []
        for a, b in self.ranges:
            first = b"*" if a == STAR else b"%d" % a
            if a == b:
                parts.append(first)
            else:
                parts.append(first + b":" + (b"*" if b == STAR else b"%d" % b))
        return b",".join(parts)

    def __str__(self) -> str:
        return self.to_bytes().decode("ascii")


def parse_sequence_set(p: Parser, *, allow_saved: bool = True) -> SequenceSet:
    """``sequence-set`` at the parser's cursor (RFC 9051 9, RFC 5182 "$")."""
    m = p.match(_SET)
    if m is None:
        raise p.error(TEXT_INVALID_SET)
    text = m.group()
    if text.isdigit() and len(text) <= 10:  # one number (a client opening one message)
        n = int(text)
        if not 0 < n <= MAX_NUMBER:
            raise p.error(TEXT_INVALID_SET)
        return SequenceSet(((n, n),), False)
    ranges: list[tuple[int, int]] = []
    saved = False
    for element in text.split(b","):
        if element == b"$":
            if not allow_saved:
                raise p.error(TEXT_INVALID_SET)
            saved = True
            continue
        first, sep, last = element.partition(b":")
        a = _seq_number(p, first)
        ranges.append((a, _seq_number(p, last) if sep else a))
    return SequenceSet(tuple(ranges), saved)


def _seq_number(p: Parser, token: bytes) -> int:
    if token == b"*":
        return STAR
    if len(token) > 10 or not 0 < int(token) <= MAX_NUMBER:
        # seq-number = nz-number / "*" ; nz-number is 32-bit and non-zero
        raise p.error(TEXT_INVALID_SET)
    return int(token)


class RangeSet:
    """Sorted, merged, disjoint inclusive ranges of positive integers (immutable)."""

    __slots__ = ("_starts", "ranges")

    def __init__(self, ranges: Sequence[tuple[int, int]] = ()) -> None:
        """``ranges`` must already be sorted, disjoint and non-adjacent; see from_pairs."""
        self.ranges: tuple[tuple[int, int], ...] = tuple(ranges)
        self._starts = [a for a, _ in self.ranges]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]]) -> RangeSet:
        """Normalize arbitrary inclusive ``(low, high)`` pairs (low <= high)."""
        merged: list[tuple[int, int]] = []
        for a, b in sorted(pairs):
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return cls(merged)

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> RangeSet:
        return cls.from_pairs((n, n) for n in numbers)

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect_right(self._starts, n) - 1
        return i >= 0 and n <= self.ranges[i][1]

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __iter__(self) -> Iterator[int]:
        """Every member, ascending. Only for sets known to be small: see select()."""
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        return f"RangeSet({self.to_bytes().decode()!r})"

    def select(self, existing: Sequence[int]) -> list[int]:
        """The members of ``existing`` (sorted ascending, e.g. a mailbox's UIDs) in the set."""
        out: list[int] = []
        for a, b in self.ranges:
            lo = bisect_left(existing, a)
            hi = bisect_right(existing, b, lo)
            if lo < hi:
                out.extend(existing[lo:hi])
        return out

    def positions(self, existing: Sequence[int]) -> list[int]:
        """Like select(), but the 0-based indexes into ``existing`` (UID → seq - 1)."""
        out: list[int] = []
        for a, b in self.ranges:
            lo = bisect_left(existing, a)
            hi = bisect_right(existing, b, lo)
            out.extend(range(lo, hi))
        return out

    @property
    def min(self) -> int | None:
        return self.ranges[0][0] if self.ranges else None

    @property
    def max(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def to_bytes(self) -> bytes:
        return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in self.ranges)


def compact(numbers: Iterable[int]) -> bytes:
    """``1,2,3,5,7,8`` → ``1:3,5,7:8``, keeping the given order (COPYUID pairs by position).

    RFC 4315 3: the source and destination sets of COPYUID correspond element by element,
    so this never sorts; pass sorted numbers where order does not matter.
    """
    parts: list[bytes] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    if start >= 0:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)
