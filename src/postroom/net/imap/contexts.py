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

Re-evaluating costs what the search costs (flag-only programs are bit masks over the
view); a session may keep :data:`MAX_CONTEXTS` of them, beyond that the command is
answered without updates and ``* NO [NOUPDATE "tag"]`` (RFC 5267 4.3.1).

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
from postroom.proto.imap.search import And, Not, Or, SearchKey, SeqKey
from postroom.proto.imap.sequence import RangeSet, SequenceSet

if TYPE_CHECKING:
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

MAX_CONTEXTS = 10
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
    search.sort_candidates(found, criteria)
    return [c.meta.uid for c in found]


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
        new = await evaluate(s, view, ctx.key, ctx.criteria)
        ctx.generation = view.generation
        keep = set(new)
        removes = _removals(view, ctx, {u for u in ctx.result if u not in keep})
        adds = _additions(view, ctx, new)
        ctx.result = new
        if removes or adds:
            s.write(esearch_updates(ctx.tag, uid=ctx.uid, adds=adds, removes=removes))
