"""SEARCH over the selected view as whole-mailbox bit masks: no loop per message.

Theory of operation
-------------------
The keys clients send all the time (UNSEEN, FLAGGED, DELETED, UID ranges, FROM/SUBJECT,
and AND/OR/NOT of those) need nothing beyond what the session's view already holds (UIDs,
one octet of flags per message, the few keywords) plus, for FROM, TO, CC, BCC and
SUBJECT, one store read that evaluates them in SQL (``Store.search_envelope``, on texts
stored at delivery). Evaluating such a tree message by message costs a few Python calls
per message per key (milliseconds for a 10,000-message mailbox, on the event loop); here
each key becomes one *mask* over the whole view instead, built by C-level byte operations:

* A mask is a Python int holding one octet per message, 1 (match) or 0, message 0 in
  the most significant octet: ``int.from_bytes`` of a 0/1 byte string. AND, OR and NOT
  are then ``&``, ``|`` and ``^ ones``, each one C operation over the whole mailbox.
* A system flag key is ``view.flags.translate(table)``: a 256-entry table maps each
  flags octet to 1 when the bit is set.
* Sequence and UID sets fill slices of a bytearray (``bisect`` for UID ranges);
  keywords, \\Recent and envelope matches set the octets of the messages they name.
* The matching positions come back out with ``itertools.compress``.

Expunged messages still in the view (pending EXPUNGE) never match, as in the
message-by-message evaluator. Keys that need the message list, summaries or bytes
(sizes, dates, MODSEQ, HEADER of other fields, BODY, TEXT) make :func:`maskable`
false, and :mod:`.search` evaluates the tree message by message instead, taking the
envelope matches from :func:`envelope_matches` too.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import compress
from collections.abc import Iterator
from typing import TYPE_CHECKING

from postroom.net import budget
from postroom.proto.imap.grammar import RECENT
from postroom.proto.imap.search import (
    AllKey,
    And,
    FlagKey,
    HeaderKey,
    Not,
    Or,
    SearchKey,
    SeqKey,
)
from postroom.proto.imap.sequence import RangeSet
from postroom.store.api import SEARCH_FIELDS, SYSTEM_FLAGS

if TYPE_CHECKING:
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

EnvelopeMatches = dict[tuple[str, str], list[int]]
ENVELOPE_KEYS_PER_READ = 32

# _BIT_TABLES[bit] maps a flags octet to 1 when ``bit`` is set in it, else to 0.
_BIT_TABLES = {
    bit: bytes(1 if b & bit else 0 for b in range(256)) for bit in SYSTEM_FLAGS.values()
}


def is_envelope_key(key: SearchKey) -> bool:
    return isinstance(key, HeaderKey) and key.field in SEARCH_FIELDS


def leaf_keys(key: SearchKey) -> Iterator[SearchKey]:
    """Every key of the tree that is not NOT, OR or AND, in program order."""
    if isinstance(key, Not):
        yield from leaf_keys(key.key)
    elif isinstance(key, Or):
        yield from leaf_keys(key.left)
        yield from leaf_keys(key.right)
    elif isinstance(key, And):
        for k in key.keys:
            yield from leaf_keys(k)
    else:
        yield key


def envelope_keys(key: SearchKey) -> list[tuple[str, str]]:
    """Every distinct (field, value) of FROM/TO/CC/BCC/SUBJECT keys in the tree, in order
    (a dict: O(1) lookups; a list was O(n²) for thousands of keys)."""
    return list(dict.fromkeys(
        (k.field, k.value) for k in leaf_keys(key) if isinstance(k, HeaderKey) and is_envelope_key(k)
    ))


async def envelope_matches(s: ImapSession, view: SelectedMailbox, key: SearchKey) -> EnvelopeMatches:
    """The UIDs matching each envelope key of the tree: one store read for all of them."""
    pairs = envelope_keys(key)
    if not pairs:
        return {}
    # A search program may hold thousands of such keys: a bounded number per store read,
    # so that one command never keeps a reader thread for long and its budget is checked.
    found: list[list[int]] = []
    for i in range(0, len(pairs), ENVELOPE_KEYS_PER_READ):
        await budget.tick()
        found += await s.store.search_envelope(view.mailbox_id, pairs[i : i + ENVELOPE_KEYS_PER_READ])
    return dict(zip(pairs, found, strict=True))


def maskable(key: SearchKey) -> bool:
    """Can :func:`evaluate` answer ``key`` from the view and the envelope matches alone?"""
    if isinstance(key, (AllKey, FlagKey, SeqKey)):
        return True
    if isinstance(key, HeaderKey):
        return is_envelope_key(key)
    if isinstance(key, Not):
        return maskable(key.key)
    if isinstance(key, Or):
        return maskable(key.left) and maskable(key.right)
    if isinstance(key, And):
        return all(maskable(k) for k in key.keys)
    return False


class _Masks:
    """Builds the mask of each key for one view (see the module docstring)."""

    def __init__(self, view: SelectedMailbox, matches: EnvelopeMatches) -> None:
        self.view = view
        self.n = n = len(view.uids)
        self.ones = int.from_bytes(b"\x01" * n, "big")
        self.matches = matches

    def of_positions(self, positions: list[int]) -> int:
        marks = bytearray(self.n)
        for i in positions:
            marks[i] = 1
        return int.from_bytes(marks, "big")

    def of_uids(self, uids: list[int]) -> int:
        """The messages of the view among ``uids`` (ascending)."""
        view_uids = self.view.uids
        n = self.n
        marks = bytearray(n)
        lo = 0
        for uid in uids:
            lo = bisect_left(view_uids, uid, lo)
            if lo >= n:
                break
            if view_uids[lo] == uid:
                marks[lo] = 1
        return int.from_bytes(marks, "big")

    def of_uid_ranges(self, ranges: RangeSet) -> int:
        uids = self.view.uids
        marks = bytearray(self.n)
        for a, b in ranges.ranges:
            lo = bisect_left(uids, a)
            hi = bisect_right(uids, b, lo)
            marks[lo:hi] = b"\x01" * (hi - lo)
        return int.from_bytes(marks, "big")

    async def mask(self, key: SearchKey) -> int:  # noqa: C901 - one case per key type
        # Each key costs a few operations over the whole mailbox (tens of microseconds per
        # 10,000 messages); a search program may hold thousands: yield between them.
        await budget.tick()
        if isinstance(key, AllKey):
            return self.ones
        if isinstance(key, And):
            result = self.ones
            for k in key.keys:
                result &= await self.mask(k)
            return result
        if isinstance(key, Or):
            return await self.mask(key.left) | await self.mask(key.right)
        if isinstance(key, Not):
            return self.ones ^ await self.mask(key.key)
        if isinstance(key, FlagKey):
            found = self._flag(key)
            return found if key.present else self.ones ^ found
        if isinstance(key, SeqKey):
            return self._seq(key)
        if isinstance(key, HeaderKey):
            return self.of_uids(self.matches[(key.field, key.value)])
        raise TypeError(f"not a mask key: {key!r}")

    def _flag(self, key: FlagKey) -> int:
        """The messages that have the flag (``present`` is applied by the caller)."""
        view = self.view
        if key.flag == RECENT:
            claimed = [(lo, hi) for lo, hi in view.recent if lo <= hi]  # a later claim may be empty
            return self.of_uid_ranges(RangeSet.from_pairs(claimed)) if claimed else 0
        bit = SYSTEM_FLAGS.get(key.flag.lower())
        if bit is not None:
            return int.from_bytes(view.flags.translate(_BIT_TABLES[bit]), "big")
        word = key.flag.lower()
        uids = sorted(uid for uid, kws in view.kw.items() if any(k.lower() == word for k in kws))
        return self.of_uids(uids)

    def _seq(self, key: SeqKey) -> int:
        view = self.view
        if key.uid:
            return self.of_uid_ranges(key.seqset.resolve(view.last_uid, view.saved))
        saved = None
        if key.seqset.saved and view.saved:
            saved = RangeSet.from_numbers(i + 1 for i in view.saved.positions(view.uids))
        marks = bytearray(self.n)
        for a, b in key.seqset.resolve(self.n, saved).ranges:
            hi = min(b, self.n)
            if a - 1 < hi:
                marks[a - 1 : hi] = b"\x01" * (hi - a + 1)
        return int.from_bytes(marks, "big")


async def evaluate(view: SelectedMailbox, key: SearchKey, matches: EnvelopeMatches) -> list[int]:
    """0-based positions in the view of the messages matching a :func:`maskable` key."""
    masks = _Masks(view, matches)
    result = await masks.mask(key)
    if view.pending:
        result &= masks.ones ^ masks.of_uids(sorted(view.pending))
    if not result:
        return []
    return list(compress(range(masks.n), result.to_bytes(masks.n, "big")))
