"""The shared ENVELOPE/BODYSTRUCTURE cache (net/imap/structure_cache.py) is bounded by the
octets it holds and drops the least recently used entries first."""

from __future__ import annotations

from postroom.net.imap.structure_cache import ENTRY_OVERHEAD, StructureCache


def test_bounded_by_octets_lru() -> None:
    c = StructureCache(capacity=100 + 3 * ENTRY_OVERHEAD)
    c.put((1, 1, "ENVELOPE", False), b"a" * 40)
    c.put((1, 2, "ENVELOPE", False), b"b" * 40)
    assert c.get((1, 1, "ENVELOPE", False)) == b"a" * 40  # now the most recent
    c.put((1, 3, "ENVELOPE", False), b"c" * 40)  # over 100: drops uid 2
    assert c.get((1, 2, "ENVELOPE", False)) is None
    assert c.get((1, 1, "ENVELOPE", False)) and c.get((1, 3, "ENVELOPE", False))
    assert c.get((1, 1, "ENVELOPE", True)) is None  # rev2 renders apart
    c.put((1, 4, "BODY", False), b"x" * (101 + 3 * ENTRY_OVERHEAD))  # larger than all: not kept
    assert c.get((1, 4, "BODY", False)) is None and len(c) == 2
    c.put((1, 1, "ENVELOPE", False), b"z" * 10)  # replacing frees the old size
    c.put((1, 5, "BODY", False), b"y" * 50)
    assert len(c) == 3 and c.hits >= 3


def test_many_small_entries_count_their_overhead() -> None:
    c = StructureCache(capacity=100 * ENTRY_OVERHEAD)
    for uid in range(1000):
        c.put((1, uid, "RFC822.SIZE", False), b"RFC822.SIZE 1234")
    assert len(c) < 100
