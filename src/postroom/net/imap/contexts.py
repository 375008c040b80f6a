"""Search contexts (RFC 5267 4): SEARCH/SORT RETURN (UPDATE), ADDTO/REMOVEFROM, CANCELUPDATE,
and the partial results of RFC 5267 4.4 / RFC 9394.

A searching command with the UPDATE return option leaves a :class:`Context` on the
selected mailbox's view: the search program (with its message numbers and "$" turned
into the UIDs they meant when the command ran, as RFC 5267 4.3 asks), the sort criteria
for SORT, and the result as UIDs in the requested order. Whenever the view changes (its
``generation`` moves: new messages, flag changes, expunges), the context is evaluated
again and the difference is sent:

* expunged members leave first, from :meth:`SelectedMailbox.remove` itself, so that the
  REMOVEFROM carries the message numbers that are still valid, right before the EXPUNGE
  responses (RFC 5267 4.3.4);
* everything else after the command's (or IDLE's, or NOTIFY's) own updates, so that an
  ADDTO of a new message follows its EXISTS (RFC 5267 4.3.3).

For SEARCH the context position is 0 and the sets are in mailbox order (RFC 5267 4.3.3
recommends it); for SORT every change carries its position in the sorted list. Sort keys
never depend on flags, so the order of the messages that stay never changes and a
removal pass followed by an insertion pass reproduces the new list exactly.

A session may keep :data:`MAX_CONTEXTS` of them, beyond that the command is answered
without updates and ``* NO [NOUPDATE "tag"]`` (RFC 5267 4.3.1).

**Incremental updates.** Whether a message matches a program depends on that message
alone (its flags, metadata and content; message numbers and "$" were frozen into UIDs),
except for the time-relative OLDER/YOUNGER (RFC 5032), and its sort keys never change.
So a refresh re-tests only the UIDs the view changed since the context was evaluated
(:meth:`SelectedMailbox.changed_since`: arrivals, flag changes, expunges): members that
no longer match leave, new matches are inserted where they belong. For SEARCH that is
UID order; for SORT a binary search over the current result, comparing by the sort
criteria, with the keys of the members it probes read level by level (about log2(n)
small store reads, whatever the number of new matches). A delivery then costs
O(new messages x log(mailbox)) per context instead of a whole-mailbox evaluation
(``bench/notify_contexts.py``). A full evaluation remains for what the changelog cannot
answer: OLDER/YOUNGER programs, changes the bounded changelog has forgotten, or more
changed messages than :data:`INCREMENTAL_MAX` (then the whole pass is as cheap).

The re-evaluation runs between commands (after a command's own budget has ended, in
IDLE, or woken by NOTIFY), so :func:`refresh` gives it a budget of its own: its loops
over messages then yield every slice and take a heavy slot like any command. Without
one, a single delivery into a mailbox of 10,000 messages with ten SORT contexts held the
event loop for the ten whole re-evaluations at once (``bench/notify_contexts.py``).
Past ``limits.command_time`` the contexts not yet refreshed end with ``* NO [NOUPDATE]``
(RFC 5267 4.3.1: the server may stop updating a context) rather than run on unbounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postroom.net import budget
from postroom.net.budget import BudgetExceeded
from postroom.proto.imap import responses
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.responses_ext import code_noupdate, esearch_updates
from postroom.proto.imap.search import AgeKey, And, Not, Or, SearchKey, SeqKey
from postroom.proto.imap.sequence import RangeSet, SequenceSet

if TYPE_CHECKING:
    from postroom.net.imap.search import Candidate
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

Criteria = tuple[tuple[str, bool], ...]

MAX_CONTEXTS = 10
# More changed messages than this (or than a quarter of the view) since a context was
# evaluated: evaluate it again in full rather than message by message.
INCREMENTAL_MAX = 2000
CAPABILITIES = ("ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT")  # RFC 5267 3.1, 4.1


@dataclass(slots=True)
class Context:
    tag: str
    uid: bool
    key: SearchKey
    criteria: tuple[tuple[str, bool], ...] | None  # None: SEARCH (mailbox order)
    result: list[int]  # UIDs, in the requested order
    generation: int


def _uid_key(uids: Sequence[int]) -> SeqKey:
    return SeqKey(SequenceSet(RangeSet.from_numbers(uids).ranges or ((0xFFFFFFFF, 0xFFFFFFFF),)), True)


def freeze(key: SearchKey, view: SelectedMailbox) -> SearchKey:
    """``key`` with message numbers and "$" replaced by the UIDs they name now."""
    if isinstance(key, SeqKey):
        if key.uid and not key.seqset.saved:
            return key
        if key.uid:
            uids = list(key.seqset.resolve(view.last_uid, view.saved or RangeSet()).select(view.uids))
        else:
            positions = view.positions(key.seqset, False)
            uids = view.uids_at(positions)
        return _uid_key(uids)
    if isinstance(key, Not):
        return Not(freeze(key.key, view))
    if isinstance(key, Or):
        return Or(freeze(key.left, view), freeze(key.right, view))
    if isinstance(key, And):
        return And(tuple(freeze(k, view) for k in key.keys))
    return key


def check_tag(view: SelectedMailbox | None, tag: str) -> None:
    """RFC 5267 4.3: reusing the tag of a live context is BAD."""
    if view is not None and tag in view.contexts:
        raise ImapPeerError("Tag reuse", tag=tag)


def register(s: ImapSession, view: SelectedMailbox, tag: str, uid: bool, key: SearchKey,
             criteria: tuple[tuple[str, bool], ...] | None, result: list[int]) -> None:
    """Keep a context for ``tag`` (or say NOUPDATE when there are too many)."""
    if len(view.contexts) >= MAX_CONTEXTS:
        s.write(responses.untagged("NO", "Too many contexts", code_noupdate(tag)))
        return
    view.contexts[tag] = Context(tag, uid, freeze(key, view), criteria, list(result), view.generation)


def cancel(view: SelectedMailbox, tags: Sequence[str]) -> None:
    for tag in tags:
        view.contexts.pop(tag, None)


def _numbers(view: SelectedMailbox, ctx: Context, uids: Sequence[int]) -> list[int]:
    if ctx.uid:
        return list(uids)
    out = []
    for u in uids:
        seq = view.seq_of(u)
        if seq is not None:
            out.append(seq)
    return out


def _removals(view: SelectedMailbox, ctx: Context, gone: set[int]) -> list[tuple[int, list[int]]]:
    """(position, numbers) pairs removing ``gone`` from ``ctx.result``; updates it."""
    if ctx.criteria is None:
        removed = sorted(u for u in ctx.result if u in gone)
        ctx.result = [u for u in ctx.result if u not in gone]
        return [(0, _numbers(view, ctx, removed))] if removed else []
    pairs: list[tuple[int, list[int]]] = []
    kept: list[int] = []
    for u in ctx.result:
        if u in gone:
            position = len(kept) + 1  # where it stands once the earlier ones are gone
            if pairs and pairs[-1][0] == position:
                pairs[-1][1].append(u)
            else:
                pairs.append((position, [u]))
        else:
            kept.append(u)
    ctx.result = kept
    return [(p, _numbers(view, ctx, us)) for p, us in pairs]


def _additions(view: SelectedMailbox, ctx: Context, new: list[int]) -> list[tuple[int, list[int]]]:
    current = set(ctx.result)
    if ctx.criteria is None:
        added = sorted(u for u in new if u not in current)
        return [(0, _numbers(view, ctx, added))] if added else []
    pairs: list[tuple[int, list[int]]] = []
    for i, u in enumerate(new):
        if u in current:
            continue
        if pairs and pairs[-1][0] + len(pairs[-1][1]) == i + 1:
            pairs[-1][1].append(u)
        else:
            pairs.append((i + 1, [u]))
    return [(p, _numbers(view, ctx, us)) for p, us in pairs]


def before_expunge(view: SelectedMailbox, gone: set[int]) -> list[bytes]:
    """REMOVEFROM of every context for messages about to leave the view."""
    out = []
    for ctx in view.contexts.values():
        removes = _removals(view, ctx, gone)
        if removes:
            out.append(esearch_updates(ctx.tag, uid=ctx.uid, removes=removes))
    return out


async def evaluate(s: ImapSession, view: SelectedMailbox, key: SearchKey,
                   criteria: tuple[tuple[str, bool], ...] | None) -> list[int]:
    """The UIDs matching ``key`` now, in mailbox or sort order."""
    from postroom.net.imap import search

    if criteria is None:
        positions, _ = await search.matching_positions(s, view, key)
        return view.uids_at(positions)
    found = await search.evaluate(s, view, key, lights=True)
    found = await search.sorted_sliced(found, criteria)
    return [c.meta.uid for c in found]


def per_message(key: SearchKey) -> bool:
    """Does whether a message matches ``key`` depend on that message alone (not on the
    clock: OLDER/YOUNGER)? Then a context can be updated message by message."""
    from postroom.net.imap.search_mask import leaf_keys

    return not any(isinstance(k, AgeKey) for k in leaf_keys(key))


def precedes(a: Candidate, b: Candidate, criteria: Criteria) -> bool:
    """Does ``a`` sort before ``b``? The order of ``search.sort_candidates``: the criteria
    in turn, each maybe reversed, then mailbox (UID) order (RFC 5256 3)."""
    from postroom.net.imap.search import sort_key

    for name, reverse in criteria:
        key = sort_key(name)
        ka, kb = key(a), key(b)
        if ka != kb:
            return kb < ka if reverse else ka < kb  # type: ignore[operator]
    return a.meta.uid < b.meta.uid


def merge(result: list[int], inserts: list[tuple[int, int]]) -> list[int]:
    """``result`` with each (position in ``result``, uid) of ``inserts`` placed before the
    member at that position; ``inserts`` in the order wanted among equal positions."""
    out: list[int] = []
    start = 0
    for pos, uid in inserts:
        out.extend(result[start:pos])
        out.append(uid)
        start = max(start, pos)
    out.extend(result[start:])
    return out


async def _candidates(s: ImapSession, view: SelectedMailbox,
                      uids: Sequence[int]) -> dict[int, Candidate]:
    """Candidates (metadata and light summary) of ``uids`` still in the view, by UID."""
    from postroom.net.imap.fetch import load_metas
    from postroom.net.imap.search import Candidate, load_lights

    metas = await load_metas(s, view, sorted(uids))
    lights = await load_lights(s, view, [m.uid for m in metas], {m.uid: m for m in metas})
    out = {}
    for m in metas:
        seq = view.seq_of(m.uid)
        if seq is not None:
            out[m.uid] = Candidate(seq, m, lights.get(m.uid))
    return out


async def _insert_sorted(s: ImapSession, view: SelectedMailbox, criteria: Criteria,
                         result: list[int], new: list[Candidate]) -> list[int]:
    """``result`` (in sort order) with ``new`` inserted where they belong: one binary
    search each, the members they probe read level by level."""
    from postroom.net.imap.search import sort_candidates

    sort_candidates(new, criteria)
    known: dict[int, Candidate] = {c.meta.uid: c for c in new}
    bounds = [[0, len(result)] for _ in new]
    while True:
        probes = [(i, (lo + hi) // 2) for i, (lo, hi) in enumerate(bounds) if lo < hi]
        if not probes:
            break
        await budget.tick()
        wanted = {result[mid] for _, mid in probes} - known.keys()
        if wanted:
            known.update(await _candidates(s, view, list(wanted)))
        for i, mid in probes:
            other = known.get(result[mid])
            # A member expunged meanwhile has no keys: its UID alone places it (it leaves
            # at the next refresh, with the REMOVEFROM of its expunge).
            if other is None:
                goes_before = new[i].meta.uid < result[mid]
            else:
                goes_before = precedes(new[i], other, criteria)
            if goes_before:
                bounds[i][1] = mid
            else:
                bounds[i][0] = mid + 1
    return merge(result, [(lo, c.meta.uid) for (lo, _), c in zip(bounds, new, strict=True)])


async def update(s: ImapSession, view: SelectedMailbox, ctx: Context) -> list[int]:
    """The context's result now: message by message when the view's changelog allows,
    else (or when that would not be cheaper) a full evaluation."""
    changed = view.changed_since(ctx.generation) if per_message(ctx.key) else None
    if changed is None or len(changed) > min(INCREMENTAL_MAX, max(64, len(view) // 4)):
        return await evaluate(s, view, ctx.key, ctx.criteria)
    from postroom.net.imap import search

    pending = view.pending
    live = sorted(u for u in changed if u not in pending and view.seq_of(u) is not None)
    found = await search.evaluate(s, view, ctx.key, lights=ctx.criteria is not None,
                                  only=live) if live else []
    matched = {c.meta.uid for c in found}
    leaving = changed - matched
    result = [u for u in ctx.result if u not in leaving and u not in pending]
    members = set(result)
    new = [c for c in found if c.meta.uid not in members]
    if not new:
        return result
    if ctx.criteria is None:  # mailbox order: UIDs ascending
        return sorted(result + [c.meta.uid for c in new])
    return await _insert_sorted(s, view, ctx.criteria, result, new)


async def refresh(s: ImapSession) -> None:
    """Send ADDTO/REMOVEFROM for every context whose view changed since it was evaluated."""
    view = s.selected
    if view is None or not view.contexts:
        return
    if budget.current() is not None:  # inside a command: its budget already slices
        await _refresh(s, view)
        return
    with budget.scope(s.settings.limits.command_time, s.auth.owner):
        try:
            await _refresh(s, view)
        except BudgetExceeded:
            for ctx in [c for c in view.contexts.values() if c.generation != view.generation]:
                del view.contexts[ctx.tag]
                s.write(responses.untagged("NO", "Context took too long to update",
                                           code_noupdate(ctx.tag)))


async def _refresh(s: ImapSession, view: SelectedMailbox) -> None:
    # Every context reads the whole mailbox's metadata: once per pass (fetch.load_metas).
    view.shared_read = (-1, [])
    try:
        await _refresh_each(s, view)
    finally:
        view.shared_read = None


async def _refresh_each(s: ImapSession, view: SelectedMailbox) -> None:
    for ctx in list(view.contexts.values()):
        await budget.tick()  # the sort and the difference of the previous one do not tick
        if ctx.generation == view.generation:
            continue
        generation = view.generation  # what the update below covers at least
        new = await update(s, view, ctx)
        ctx.generation = generation
        keep = set(new)
        removes = _removals(view, ctx, {u for u in ctx.result if u not in keep})
        adds = _additions(view, ctx, new)
        ctx.result = new
        if removes or adds:
            s.write(esearch_updates(ctx.tag, uid=ctx.uid, adds=adds, removes=removes))
