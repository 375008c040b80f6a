"""SEARCH / UID SEARCH (RFC 9051 6.4.4, ESEARCH RFC 4731, SEARCHRES RFC 5182, CONDSTORE
RFC 7162 3.1.5, WITHIN RFC 5032), SORT (RFC 5256, RFC 5957) and THREAD (RFC 5256).

FROM, TO, CC, BCC and SUBJECT are evaluated by the store, in one read for every such
key of the tree (``Store.search_envelope``: SQL over the case-folded envelope texts
stored at delivery), and become sets of UIDs. A tree made only of those, flag, keyword,
sequence and UID keys is then answered from the session's view with whole-mailbox bit
masks (:mod:`.search_mask`), without reading the message list at all.

Other trees are evaluated message by message, reading only what the keys need, at four
levels: flags, sizes, dates, UIDs and modseqs come from the one metadata read (META);
SENT* and every SORT/THREAD key from the stored parse summaries through their light view
(LIGHT, :mod:`.light`: no message bytes, no MIME tree); other HEADER keys from the
message's header block (HEADER); BODY and TEXT from the whole message and its MIME tree
(FULL). Bytes are read in bounded chunks. The key tree is compiled once into nested
closures, sequence sets resolved once, so the per-message cost is a few calls.

Matching is case-insensitive substring search on decoded text (RFC 9051 6.4.4: FROM,
TO, CC, BCC and SUBJECT match the envelope fields, RFC 2047 words decoded; HEADER the
named fields; BODY and TEXT the text parts with transfer encoding and charset undone).
Dates compare without time or zone; INTERNALDATE is kept in UTC and shown as
``+0000``, so its date is the UTC date; a missing or broken Date: header falls back to
INTERNALDATE (as RFC 5256 2.2 does for SORT).

Answers: ``* SEARCH`` for IMAP4rev1 without RETURN; ``* ESEARCH`` with RETURN options or
always once IMAP4rev2 is enabled (RFC 9051 7.3.4: no RETURN means ALL). ``SAVE`` keeps
the result, as UIDs, for ``$`` (RFC 5182); alone it sends no ESEARCH response.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postroom.message import MessageSummary
from postroom.message.encoded import decode_words
from postroom.net import budget
from postroom.net.imap import contexts, jobs, search_mask
from postroom.net.imap.fetch import chunks, load_metas, load_summaries, parse_summaries
from postroom.net.imap.light import Light, light
from postroom.net.imap.search_mask import EnvelopeMatches, envelope_matches, is_envelope_key
from postroom.net.imap.thread import Item, is_reply_or_forward, thread_response
from postroom.proto.imap import responses
from postroom.proto.imap.commands import CancelUpdate, Search, Sort, Thread
from postroom.proto.imap.grammar import RECENT
from postroom.proto.imap.search import (
    AgeKey,
    AllKey,
    And,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    Not,
    Or,
    SearchKey,
    SeqKey,
    SizeKey,
    TextKey,
    partial_items,
)
from postroom.proto.imap.sequence import RangeSet, compact
from postroom.store.api import SYSTEM_FLAGS, MessageMeta

if TYPE_CHECKING:
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

META, LIGHT, HEADER, FULL = 0, 1, 2, 3
_UTC = datetime.UTC


@dataclass(slots=True)
class Candidate:
    """One message under evaluation; the other fields only when the keys need them."""

    seq: int
    meta: MessageMeta  # or a Known from the view: only uid, flags and keywords are read then
    light: Light | None = None
    data: bytes | None = None
    summary: MessageSummary | None = None
    _header_text: str | None = None
    _body_text: str | None = None
    hits: jobs.Hits | None = None  # a big message, already searched in a worker process

    def header_text(self) -> str:
        if self._header_text is None:
            assert self.data is not None and self.light is not None
            light = self.light
            self._header_text = jobs.header_text(self.data, light.header_start, light.header_end)
        return self._header_text

    def body_text(self) -> str:
        if self._body_text is None:
            assert self.data is not None and self.summary is not None
            self._body_text = jobs.body_text(self.data, self.summary)
        return self._body_text

    def in_header(self, needle: str) -> bool:
        return needle in self.hits[0] if self.hits is not None else needle in self.header_text()

    def in_body(self, needle: str) -> bool:
        return needle in self.hits[1] if self.hits is not None else needle in self.body_text()

    def field_matches(self, field: str, needle: str) -> bool:
        if self.hits is not None:
            return (field, needle) in self.hits[2]
        assert self.data is not None and self.light is not None
        light = self.light
        return jobs.field_matches(self.data, light.header_start, light.header_end, field, needle)


Predicate = Callable[[Candidate], bool]


# An ``only`` list this short is light work: it takes no heavy slot before it starts.
SMALL_ONLY = 64


def need(key: SearchKey) -> int:
    """What evaluating ``key`` needs: META, LIGHT, HEADER or FULL."""
    if isinstance(key, TextKey):
        return FULL
    if isinstance(key, HeaderKey):
        return META if is_envelope_key(key) else HEADER  # envelope keys: see envelope_matches
    if isinstance(key, DateKey) and key.field == "SENT":
        return LIGHT
    if isinstance(key, Not):
        return need(key.key)
    if isinstance(key, Or):
        return max(need(key.left), need(key.right))
    if isinstance(key, And):
        return max((need(k) for k in key.keys), default=META)
    return META


def uses_modseq(key: SearchKey) -> bool:
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, Not):
        return uses_modseq(key.key)
    if isinstance(key, Or):
        return uses_modseq(key.left) or uses_modseq(key.right)
    if isinstance(key, And):
        return any(uses_modseq(k) for k in key.keys)
    return False


def _internal_date(m: MessageMeta) -> datetime.date:
    return datetime.datetime.fromtimestamp(m.internaldate, _UTC).date()


class Compiler:
    """Turns a key tree into a predicate, resolving sequence sets against the view."""

    def __init__(self, view: SelectedMailbox, now: float, matches: EnvelopeMatches) -> None:
        self.view = view
        self.now = now
        self.matches = matches

    def compile(self, key: SearchKey) -> Predicate:  # noqa: C901 - one case per key type
        if isinstance(key, AllKey):
            return lambda c: True
        if isinstance(key, And):
            parts = [self.compile(k) for k in key.keys]
            return lambda c: all(p(c) for p in parts)
        if isinstance(key, Or):
            left, right = self.compile(key.left), self.compile(key.right)
            return lambda c: left(c) or right(c)
        if isinstance(key, Not):
            inner = self.compile(key.key)
            return lambda c: not inner(c)
        if isinstance(key, FlagKey):
            return self._flag(key)
        if isinstance(key, SeqKey):
            view = self.view
            if key.uid:
                uids = key.seqset.resolve(view.last_uid, view.saved)
                return lambda c: c.meta.uid in uids
            saved = None
            if key.seqset.saved and view.saved:
                saved = RangeSet.from_numbers(i + 1 for i in view.saved.positions(view.uids))
            seqs = key.seqset.resolve(len(view), saved)
            return lambda c: c.seq in seqs
        if isinstance(key, SizeKey):
            n = key.size
            if key.op == "LARGER":
                return lambda c: c.meta.size > n
            return lambda c: c.meta.size < n
        if isinstance(key, AgeKey):
            limit = self.now - key.seconds  # RFC 5032: relative to the internal date
            if key.op == "OLDER":
                return lambda c: c.meta.internaldate < limit
            return lambda c: c.meta.internaldate >= limit
        if isinstance(key, ModSeqKey):
            modseq = key.modseq
            return lambda c: c.meta.modseq >= modseq
        if isinstance(key, DateKey):
            return self._date(key)
        if isinstance(key, HeaderKey):
            return self._header(key)
        if isinstance(key, TextKey):
            needle = key.value.casefold()
            if key.where == "BODY":
                return lambda c: c.in_body(needle)
            return lambda c: c.in_header(needle) or c.in_body(needle)
        raise TypeError(f"unknown search key {key!r}")

    def _flag(self, key: FlagKey) -> Predicate:
        present = key.present
        if key.flag == RECENT:
            view = self.view
            return lambda c: view.is_recent(c.meta.uid) == present
        bit = SYSTEM_FLAGS.get(key.flag.lower())
        if bit is not None:
            return lambda c: bool(c.meta.flags & bit) == present
        word = key.flag.lower()
        return lambda c: any(k.lower() == word for k in c.meta.keywords) == present

    def _date(self, key: DateKey) -> Predicate:
        day = key.date

        def when(c: Candidate) -> datetime.date:
            if key.field == "SENT" and c.light is not None and c.light.sent_date is not None:
                seconds, minutes = c.light.sent_date
                zone = datetime.timezone(datetime.timedelta(minutes=minutes))
                try:
                    return datetime.datetime.fromtimestamp(seconds, zone).date()
                except (OverflowError, OSError, ValueError):
                    pass
            return _internal_date(c.meta)

        if key.op == "BEFORE":
            return lambda c: when(c) < day
        if key.op == "ON":
            return lambda c: when(c) == day
        return lambda c: when(c) >= day

    def _header(self, key: HeaderKey) -> Predicate:
        name = key.field
        needle = key.value.casefold()
        if is_envelope_key(key):
            # RFC 9051 6.4.4: FROM/TO/CC/BCC/SUBJECT match the envelope structure's field;
            # the store evaluated them already (envelope_matches).
            uids = frozenset(self.matches[(name, key.value)])
            return lambda c: c.meta.uid in uids
        # An empty needle asks whether the field exists (jobs.field_matches).
        return lambda c: c.field_matches(name, needle)


async def load_lights(s: ImapSession, view: SelectedMailbox, uids: Sequence[int],
                      metas: dict[int, MessageMeta] | None = None) -> dict[int, Light]:
    """Light summary views by UID: from the shared cache, else read (and cached).

    ``metas`` gives the blob ids when the caller has them; otherwise they are read for
    the cache misses only.
    """
    cache = s.lights
    validity = view.uidvalidity
    out: dict[int, Light] = {}
    wanted: list[int] = []
    for uid in uids:
        found = cache.get(validity, uid)
        if found is None:
            wanted.append(uid)
        else:
            out[uid] = found
    if not wanted:
        return out
    if metas is not None:
        missing = [metas[u] for u in wanted if u in metas]
    else:
        missing = await s.store.get_messages(view.mailbox_id, wanted)
    raw = await s.store.read_summaries([m.blob_id for m in missing])
    slow: list[MessageMeta] = []
    for m in missing:
        await budget.tick()
        value = raw.get(m.blob_id)
        if value is None:
            continue  # expunged meanwhile
        parsed = await _light(s, value)
        if parsed is None:
            slow.append(m)
        else:
            out[m.uid] = parsed
            cache.put(validity, m.uid, parsed)
    if slow:
        summaries = await load_summaries(s, slow)
        for m in slow:
            summary = summaries.get(m.blob_id)
            if summary is not None:
                out[m.uid] = parsed = Light.from_summary(summary)
                cache.put(validity, m.uid, parsed)
    return out


async def _light(s: ImapSession, raw: bytes) -> Light | None:
    """:func:`light` of a stored summary; a huge one is decoded in a worker process."""
    if len(raw) >= jobs.HUGE_SUMMARY:
        return await s.services.offload(jobs.light_of, raw)
    return light(raw)


def needs_meta(key: SearchKey) -> bool:
    """Does ``key`` look at what only the store's metadata has (size, dates, modseq)?"""
    if isinstance(key, (SizeKey, AgeKey, ModSeqKey, DateKey)):
        return True  # (SENT* falls back to INTERNALDATE)
    if isinstance(key, Not):
        return needs_meta(key.key)
    if isinstance(key, Or):
        return needs_meta(key.left) or needs_meta(key.right)
    if isinstance(key, And):
        return any(needs_meta(k) for k in key.keys)
    return False


def _needles(key: SearchKey, out: tuple[set[str], set[str], set[tuple[str, str]]]) -> None:
    """Collect what :func:`jobs.text_hits` must look for: (header-text needles, body-text
    needles, (field, needle) pairs), all case-folded."""
    for k in search_mask.leaf_keys(key):
        if isinstance(k, TextKey):
            needle = k.value.casefold()
            out[1].add(needle)
            if k.where != "BODY":
                out[0].add(needle)
        elif isinstance(k, HeaderKey) and not is_envelope_key(k):
            out[2].add((k.field, k.value.casefold()))


async def evaluate(s: ImapSession, view: SelectedMailbox, key: SearchKey,
                   lights: bool = False, only: Sequence[int] | None = None) -> list[Candidate]:
    """The messages of the view matching ``key``, in sequence order, message by message.

    ``lights``: keep each match's light summary view (SORT and THREAD need them).
    ``only``: test just these UIDs (ascending), not the whole mailbox (search contexts
    re-test the messages that changed: net/imap/contexts.py).
    The loop yields to other sessions every few milliseconds (``budget.tick``); a message
    of ``jobs.BIG_MESSAGE`` octets or more, with a huge summary or a ``jobs.BIG_HEADER``
    header is searched in a worker process (one decode of a 50 MB text part, or a walk
    over 100,000 header fields, would hold the event loop for long).
    """
    if only is None or len(only) > SMALL_ONLY:
        await budget.heavy()  # whole-mailbox reads and a loop per message: two at a time
    level = max(need(key), LIGHT if lights else META)
    matches = await envelope_matches(s, view, key)
    predicate = Compiler(view, time.time(), matches).compile(key)
    needles: tuple[set[str], set[str], set[tuple[str, str]]] = (set(), set(), set())
    if level >= HEADER:
        _needles(key, needles)
    wanted = (tuple(sorted(needles[0])), tuple(sorted(needles[1])), tuple(sorted(needles[2])))
    last = view.last_uid
    metas = await load_metas(s, view, view.uids_at(range(len(view))) if only is None else only)
    seq_of = view.seq_of
    pending = view.pending
    found: list[Candidate] = []
    for start, end in chunks(metas, level >= HEADER):
        part = metas[start:end]
        datas: dict[int, bytes] = {}
        views: dict[int, Light] = {}
        sums: dict[int, MessageSummary] = {}
        raw: dict[int, bytes] = {}
        big: set[int] = set()
        if level >= HEADER:
            datas = await s.store.read_blobs([m.blob_id for m in part])
        if level == FULL:
            raw = await s.store.read_summaries([m.blob_id for m in part])
            for blob_id, value in raw.items():
                if len(value) >= jobs.HUGE_SUMMARY \
                        or len(datas.get(blob_id, b"")) >= jobs.BIG_MESSAGE:
                    quick = await _light(s, value)  # the top level only: no MIME tree here
                    if quick is not None:
                        big.add(blob_id)
                        views[blob_id] = quick
            sums = await parse_summaries(
                s, {b: v for b, v in raw.items() if b not in big}, datas)
            for m in part:
                if m.blob_id in sums:
                    views[m.blob_id] = Light.from_summary(sums[m.blob_id])
            views = {m.uid: views[m.blob_id] for m in part if m.blob_id in views}
        elif level >= LIGHT:
            views = await load_lights(s, view, [m.uid for m in part], {m.uid: m for m in part})
        for m in part:
            await budget.tick()
            seq = seq_of(m.uid) if m.uid <= last and m.uid not in pending else None
            if seq is None:
                continue
            data = datas.get(m.blob_id)
            c = Candidate(seq, m, views.get(m.uid), data, sums.get(m.blob_id))
            if level >= LIGHT and c.light is None or level >= HEADER and c.data is None:
                continue  # expunged between the reads
            span = (c.light.header_start, c.light.header_end) if c.light is not None else None
            if data is not None and span is not None and (
                    m.blob_id in big or span[1] - span[0] >= jobs.BIG_HEADER):
                c.hits = await s.services.offload(
                    jobs.text_hits, data, raw.get(m.blob_id) or b"", span, *wanted)
            if predicate(c):
                # keep no message bytes or MIME trees of matches around
                c.data = c.summary = None
                c._body_text = c._header_text = None
                c.hits = None
                found.append(c)
    return found


async def matching_positions(s: ImapSession, view: SelectedMailbox,
                             key: SearchKey) -> tuple[list[int], int | None]:
    """0-based view positions of the messages matching ``key``, and the highest modseq
    among them when ``key`` uses MODSEQ (RFC 7162 3.1.5), else None."""
    if search_mask.maskable(key):
        matches = await envelope_matches(s, view, key)
        return await search_mask.evaluate(view, key, matches), None
    found = await evaluate(s, view, key)
    highest = max((c.meta.modseq for c in found), default=None) if uses_modseq(key) else None
    return [c.seq - 1 for c in found], highest


async def search(s: ImapSession, cmd: Search) -> bytes:
    view = s.selected
    assert view is not None
    if cmd.returns and "UPDATE" in cmd.returns:
        contexts.check_tag(view, cmd.tag)
    modseq_used = uses_modseq(cmd.key)
    if modseq_used:
        s.enable_condstore()  # RFC 7162 3.1: the first CONDSTORE command enables it
    if not cmd.uid:
        await s.sync(expunge=False)  # current flags (UID SEARCH was synced before)
    positions, highest = await matching_positions(s, view, cmd.key)
    view_uids = view.uids
    uids = [view_uids[i] for i in positions]
    numbers = uids if cmd.uid else [i + 1 for i in positions]
    returns = cmd.returns
    if returns is None and s.rev2:
        returns = frozenset({"ALL"})  # RFC 9051 6.4.4: IMAP4rev2 always answers ESEARCH
    if returns is None:
        s.write(responses.search(numbers, modseq=highest))
        return responses.ok(cmd.tag, ("UID SEARCH" if cmd.uid else "SEARCH") + " completed")
    # RFC 5267 4: CONTEXT is a hint and UPDATE asks for notifications; neither returns data.
    options = returns - _NO_DATA if returns != frozenset() else frozenset({"ALL"})
    if (highest is not None and uids and options and options <= {"MIN", "MAX"}
            and cmd.partial is None):
        # RFC 7162 3.1.5 with RFC 4731: with only MIN and/or MAX, MODSEQ is the highest
        # mod-sequence of the messages returned, not of every match.
        picked_minmax = {uids[0] if "MIN" in options else uids[-1],
                         uids[-1] if "MAX" in options else uids[0]}
        metas = await s.store.get_messages(view.mailbox_id, sorted(picked_minmax))
        if metas:
            highest = max(m.modseq for m in metas)
    if "SAVE" in returns:
        # RFC 5182 2.4: with only MIN and/or MAX the saved result is those messages;
        # RFC 9394 3.2: with PARTIAL (and no COUNT), the partial result and MIN/MAX.
        picked: set[int] | list[int] = uids
        if options and uids and (options <= {"MIN", "MAX"} or
                                 cmd.partial is not None and "COUNT" not in options):
            picked = set(partial_items(uids, cmd.partial)) if cmd.partial is not None else set()
            picked |= {uids[0]} if "MIN" in options else set()
            picked |= {uids[-1]} if "MAX" in options else set()
        view.saved = RangeSet.from_numbers(picked)
        if not options and cmd.partial is None:
            _context(s, view, cmd, None, uids)
            return responses.ok(cmd.tag, "SEARCH completed, result saved")
    s.write(responses.esearch(
        cmd.tag, uid=cmd.uid,
        minimum=min(numbers) if numbers and "MIN" in options else None,
        maximum=max(numbers) if numbers and "MAX" in options else None,
        count=len(numbers) if "COUNT" in options else None,
        all_=RangeSet.from_numbers(numbers) if numbers and "ALL" in options else None,
        modseq=highest,
        partial=_partial(numbers, cmd.partial, ordered=False),
    ))
    _context(s, view, cmd, None, uids)
    return responses.ok(cmd.tag, ("UID SEARCH" if cmd.uid else "SEARCH") + " completed")


_NO_DATA = frozenset({"SAVE", "UPDATE", "CONTEXT", "PARTIAL"})


def _partial(numbers: Sequence[int], partial: tuple[int, int] | None, *,
             ordered: bool) -> tuple[bytes, bytes | None] | None:
    if partial is None:
        return None
    picked = partial_items(numbers, partial)
    if not picked:
        return b"%d:%d" % partial, None
    # SEARCH results are a set (mailbox order); SORT keeps its order (RFC 5267 3.2).
    text = compact(picked) if ordered else RangeSet.from_numbers(picked).to_bytes()
    return b"%d:%d" % partial, text


def _context(s: ImapSession, view: SelectedMailbox, cmd: Search | Sort,
             criteria: tuple[tuple[str, bool], ...] | None, uids: list[int]) -> None:
    if cmd.returns and "UPDATE" in cmd.returns:
        contexts.register(s, view, cmd.tag, cmd.uid, cmd.key, criteria, uids)


# -- SORT (RFC 5256 3, RFC 5957) -------------------------------------------------------

def sort_key(name: str) -> Callable[[Candidate], object]:
    if name == "ARRIVAL":
        return lambda c: c.meta.internaldate
    if name == "SIZE":
        return lambda c: c.meta.size
    if name == "DATE":
        # RFC 5256: the sent date as an instant; INTERNALDATE when it cannot be determined.
        return lambda c: c.light.sent_date[0] if c.light and c.light.sent_date \
            else c.meta.internaldate
    attribute = {
        "CC": "sort_cc", "FROM": "sort_from", "TO": "sort_to", "SUBJECT": "base_subject",
        "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to",
    }[name]
    # Base subjects are stored in i;unicode-casemap form already: compare as stored
    # (Python compares code points, which orders like the UTF-8 octets RFC 5256 wants).
    return lambda c: getattr(c.light, attribute) if c.light else ""


def sort_candidates(found: list[Candidate], criteria: Sequence[tuple[str, bool]]) -> None:
    # Ties keep sequence order (RFC 5256 3): stable sorts, least significant key first.
    for name, reverse in reversed(criteria):
        found.sort(key=sort_key(name), reverse=reverse)  # type: ignore[arg-type]


# Sort keys computed between two budget ticks (sorted_sliced).
_KEYS_PER_TICK = 256


async def sorted_sliced(found: list[Candidate],
                        criteria: Sequence[tuple[str, bool]]) -> list[Candidate]:
    """:func:`sort_candidates` for big lists, without one long step on the event loop.

    The key functions are Python code: over 12,000 messages one ``list.sort`` with them
    held the loop for 30-140 ms (``bench/loop_lag.py --trace``). Here the keys are
    computed first, in slices, and the sorts that remain order indices by those keys with
    a C-level key function (a few ms). Same stable, least-significant-first order."""
    order = list(range(len(found)))
    for name, reverse in reversed(criteria):
        key = sort_key(name)
        values: list[object] = []
        for start in range(0, len(found), _KEYS_PER_TICK):
            await budget.tick()
            values.extend(key(c) for c in found[start : start + _KEYS_PER_TICK])
        order.sort(key=values.__getitem__, reverse=reverse)  # type: ignore[arg-type]
        await budget.tick()
    return [found[i] for i in order]


async def sort(s: ImapSession, cmd: Sort) -> bytes:
    view = s.selected
    assert view is not None
    if cmd.returns and "UPDATE" in cmd.returns:
        contexts.check_tag(view, cmd.tag)
    found = await sorted_sliced(await evaluate(s, view, cmd.key, lights=True), cmd.criteria)
    numbers = [c.meta.uid if cmd.uid else c.seq for c in found]
    done = responses.ok(cmd.tag, ("UID SORT" if cmd.uid else "SORT") + " completed")
    if cmd.returns is None:
        s.write(responses.sort(numbers))
        return done
    # ESORT (RFC 5267 3.1): ESEARCH data in sort order; MIN/MAX are the first and last.
    options = cmd.returns - _NO_DATA if cmd.returns != frozenset() else frozenset({"ALL"})
    uids = [c.meta.uid for c in found]
    if "SAVE" in cmd.returns:
        view.saved = RangeSet.from_numbers(uids)
    s.write(responses.esearch(
        cmd.tag, uid=cmd.uid,
        minimum=numbers[0] if numbers and "MIN" in options else None,
        maximum=numbers[-1] if numbers and "MAX" in options else None,
        count=len(numbers) if "COUNT" in options else None,
        all_=compact(numbers) if numbers and "ALL" in options else None,
        partial=_partial(numbers, cmd.partial, ordered=True),
    ))
    _context(s, view, cmd, cmd.criteria, uids)
    return done


# -- THREAD (RFC 5256 4) ---------------------------------------------------------------

# Messages plus references above which THREAD runs in a worker process (a few ms inline).
THREAD_INLINE = 2000

def _item(c: Candidate, uid: bool) -> Item:
    view = c.light
    assert view is not None
    sent = view.sent_date[0] if view.sent_date else c.meta.internaldate
    return Item(
        number=c.meta.uid if uid else c.seq, seq=c.seq, date=sent,
        subject=view.base_subject, reply=is_reply_or_forward(decode_words(view.subject_raw())),
        message_id=view.message_id, references=view.references, in_reply_to=view.in_reply_to,
    )


async def thread(s: ImapSession, cmd: Thread) -> bytes:
    view = s.selected
    assert view is not None
    found = await evaluate(s, view, cmd.key, lights=True)
    items: list[Item] = []
    links = 0
    for c in found:
        await budget.tick()
        item = _item(c, cmd.uid)
        links += len(item.references)
        items.append(item)
    if len(items) + links > THREAD_INLINE:
        # Threading is one pass that cannot yield: a big mailbox, or hostile References
        # fields with thousands of ids, goes to a worker process.
        rows: list[jobs.ItemRow] = []
        for item in items:
            await budget.tick()
            rows.append(jobs.item_row(item))
        s.write(await s.services.offload(jobs.thread_rows, cmd.algorithm, rows))
    else:
        s.write(thread_response(cmd.algorithm, items))
    return responses.ok(cmd.tag, ("UID THREAD" if cmd.uid else "THREAD") + " completed")


async def cancelupdate(s: ImapSession, cmd: CancelUpdate) -> bytes:
    # RFC 5267 4.3.5: unknown tags are not an error.
    assert s.selected is not None
    contexts.cancel(s.selected, cmd.tags)
    return responses.ok(cmd.tag, "CANCELUPDATE completed")


HANDLERS = {Search: search, Sort: sort, Thread: thread, CancelUpdate: cancelupdate}
