"""FETCH and UID FETCH (RFC 9051 6.4.5, RFC 3516 BINARY, RFC 7162 CONDSTORE/QRESYNC,
RFC 9394 PARTIAL: the ``(PARTIAL a:b)`` modifier keeps those positions of the set, counted
after CHANGEDSINCE when both are given).

Cost model, because clients run ``FETCH 1:* (FLAGS UID)`` on huge mailboxes at every
connect: message metadata comes from one store read (``list_messages`` for big ranges,
``get_messages`` for small ones), and each response is built in one pass with flag lists
cached per distinct flag set. Only when an item needs them are parse summaries
(ENVELOPE, BODYSTRUCTURE, section offsets) and message bytes (sections) read, in chunks
of at most ``CHUNK_MESSAGES`` messages and about ``CHUNK_BYTES`` octets, so memory stays
bounded however large the range; output is flushed to the socket as it grows.

\\Seen (RFC 9051 6.4.5): a non-PEEK body fetch sets it on every targeted message that
lacks it with *one* store write before the responses are built; those responses then
carry the new FLAGS (and MODSEQ under CONDSTORE). Read-only (EXAMINE) views never write.

A message expunged by someone else after the client last heard of it is simply skipped
and the command ends with ``NO [EXPUNGEISSUED]`` (RFC 9051 7.1); its EXPUNGE comes when
the client next runs a command that allows it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence, Set as AbstractSet
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from postroom.deliver import summarize
from postroom.message import MessageSummary, SummaryError
from postroom.message.model import HeadSummary, header_summary
from postroom.net import budget
from postroom.net.imap import jobs
from postroom.proto.imap import responses
from postroom.proto.imap.bodystructure import body_bytes, bodystructure_bytes, envelope_bytes
from postroom.proto.imap.commands import Fetch
from postroom.proto.imap.fetch import (
    BINARY,
    BINARY_SIZE,
    BODY,
    BODY_SECTION,
    BODYSTRUCTURE,
    ENVELOPE,
    FLAGS,
    INTERNALDATE,
    MODSEQ,
    RFC822,
    RFC822_HEADER,
    RFC822_SIZE,
    RFC822_TEXT,
    UID,
    FetchAtt,
    any_sets_seen,
)
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.prerender import Prerendered, prerendered
from postroom.proto.imap.search import partial_items
from postroom.proto.imap.sections import SectionSpec, UnknownCTE, apply_partial, decode_part, extract
from postroom.store.api import FLAG_SEEN, FlagChange, MessageContent, MessageMeta

from postroom.net.imap.selected import Known

if TYPE_CHECKING:
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

CHUNK_MESSAGES = 256
FEW_MESSAGES = 4  # at most this many: _fetch_few, one read (inline in the SQLite store)
CHUNK_BYTES = 8 * 1024 * 1024
FULL_LIST_AT = 512  # above this many targets one list_messages beats get_messages
_NEEDS_SUMMARY = frozenset(
    {ENVELOPE, BODY, BODYSTRUCTURE, BODY_SECTION, BINARY, BINARY_SIZE, RFC822_HEADER, RFC822_TEXT}
)
_NEEDS_DATA = frozenset({BODY_SECTION, BINARY, BINARY_SIZE, RFC822, RFC822_HEADER, RFC822_TEXT})
_FROM_VIEW = frozenset({FLAGS, UID})
# Never change for a UID: cached beside the rendered items (see _Plan.memory_keys).
_STATIC = frozenset({RFC822_SIZE, INTERNALDATE})
_STRUCTURE = frozenset({ENVELOPE, BODYSTRUCTURE, BODY})
_PRERENDERED = frozenset({ENVELOPE, BODYSTRUCTURE})  # stored at delivery (prerender)
MAX_CACHED_ITEM = 8 * 1024  # larger rendered items are not kept in the StructureCache  # what the selected view answers by itself
_HEADER = SectionSpec(text="HEADER")
_TEXT = SectionSpec(text="TEXT")
TEXT_EXPUNGED = "Some of the requested messages no longer exist"
_NO_UIDS: frozenset[int] = frozenset()
_UTC = datetime.UTC


async def load_metas(s: ImapSession, view: SelectedMailbox, uids: Sequence[int]) -> list[MessageMeta]:
    """Metadata of ``uids`` (ascending) that still exist, in UID order: one store read."""
    if not uids:
        return []
    if len(uids) > FULL_LIST_AT:
        wanted = set(uids)
        return [m for m in await s.store.list_messages(view.mailbox_id) if m.uid in wanted]
    return await s.store.get_messages(view.mailbox_id, uids)


async def load_summaries(s: ImapSession, metas: Sequence[MessageMeta],
                         datas: dict[int, bytes] | None = None, *,
                         head_only: bool = False, prerendered_ok: bool = False,
                         ) -> dict[int, MessageSummary]:
    """Parsed summaries by blob id; unreadable ones are re-scanned from the message."""
    raw = await s.store.read_summaries([m.blob_id for m in metas])
    return await parse_summaries(s, raw, datas, head_only=head_only,
                                 prerendered_ok=prerendered_ok)


async def parse_summaries(s: ImapSession, raw: dict[int, bytes],
                          datas: dict[int, bytes] | None = None, *,
                          partial: bool = False, head_only: bool = False,
                          prerendered_ok: bool = False) -> dict[int, MessageSummary]:
    """Parse stored summaries; an unreadable one is re-scanned from the message, read
    again in full when ``datas`` holds only header blocks (``partial``). ``head_only``: every
    attribute that uses the summary is a top-level header or text section (``_top_level``),
    so only the top-level offsets are decoded (``header_summary``). ``prerendered_ok``: every
    attribute that uses the summary is ENVELOPE or BODYSTRUCTURE, so the items rendered at
    delivery (``proto.imap.prerender``) stand in for the summary where they are stored."""
    out: dict[int, MessageSummary] = {}
    for blob_id, value in raw.items():
        await budget.tick()  # a chunk may hold hundreds of summaries (net/budget.py)
        if head_only and (head := header_summary(value)) is not None:
            # Top-level sections only (see fetch): the offsets stand in for the summary.
            out[blob_id] = cast(MessageSummary, head)
            continue
        if prerendered_ok and (items := prerendered(value)) is not None:
            out[blob_id] = cast(MessageSummary, items)  # see _Renderer._structure
            continue
        try:
            out[blob_id] = MessageSummary.from_bytes(value)
        except SummaryError:
            data = datas.get(blob_id) if datas is not None and not partial else None
            if data is None:
                data = (await s.store.read_blobs([blob_id])).get(blob_id)
                if data is not None and datas is not None and partial:
                    datas[blob_id] = data  # the whole message now: nothing is cut
            if data is not None:
                out[blob_id] = MessageSummary.from_bytes(summarize(data))
    return out


def _split_huge(raw: dict[int, bytes], head_only: bool,
                prerendered_ok: bool = False) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(summaries to parse here, huge ones): a summary of ``jobs.HUGE_SUMMARY`` octets (a
    message with ~500 parts or more) takes milliseconds to decode and render, so its items
    are rendered in a worker process. Top-level-only items never decode the tree, nor do
    ENVELOPE and BODYSTRUCTURE of a summary stored with them rendered (``prerendered_ok``:
    a copy)."""
    if head_only or not any(len(v) >= jobs.HUGE_SUMMARY for v in raw.values()):
        return raw, {}
    huge = {b: v for b, v in raw.items()
            if len(v) >= jobs.HUGE_SUMMARY and header_summary(v) is not None
            and not (prerendered_ok and prerendered(v) is not None)}
    if not huge:
        return raw, {}
    return {b: v for b, v in raw.items() if b not in huge}, huge


def chunks(metas: Sequence[MessageMeta], with_data: bool) -> list[tuple[int, int]]:
    """(start, end) slices: at most CHUNK_MESSAGES messages, ~CHUNK_BYTES when reading bytes."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(metas)
    while i < n:
        j, size = i, 0
        while j < n and j - i < CHUNK_MESSAGES and (not with_data or size < CHUNK_BYTES):
            size += metas[j].size
            j += 1
        out.append((i, j))
        i = j
    return out


class _Plan:
    """What a FETCH attribute list needs, worked out once per distinct list (clients send
    the same few lists over and over): which reads, which cache keys."""

    __slots__ = ("cache_keys", "cacheable", "field_atts", "from_view", "head_only",
                 "header_only", "kinds", "memory_keys", "modseq", "need_data", "need_summary",
                 "prerendered_ok", "sets_seen", "summary_atts", "wanted")

    def __init__(self, atts: tuple[FetchAtt, ...]) -> None:
        self.kinds = frozenset(a.kind for a in atts)
        self.from_view = self.kinds <= _FROM_VIEW
        self.modseq = MODSEQ in self.kinds
        self.sets_seen = any_sets_seen(atts)
        self.need_data = any(a.kind in _NEEDS_DATA for a in atts)
        self.need_summary = any(a.kind in _NEEDS_SUMMARY and not _whole(a) for a in atts)
        self.header_only = self.need_data and all(
            _header_only(a) for a in atts if a.kind in _NEEDS_DATA)
        self.head_only = all(
            _top_level(a) for a in atts if a.kind in _NEEDS_SUMMARY and not _whole(a))
        self.prerendered_ok = all(
            a.kind in _PRERENDERED for a in atts if a.kind in _NEEDS_SUMMARY and not _whole(a))
        # The items a worker process renders for a message with a huge summary or header
        # (jobs.render_items), and whether header fields are picked (a huge header is).
        self.summary_atts = tuple(a for a in atts if a.kind in _NEEDS_SUMMARY and not _whole(a))
        self.field_atts = any(
            a.section is not None and a.section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")
            for a in self.summary_atts)
        # When every item that needs the message is one the shared cache keeps (ENVELOPE,
        # BODYSTRUCTURE, BODY, top-level header sections), cached messages need no read.
        heavy = [a for a in atts if a.kind in _NEEDS_SUMMARY or a.kind in _NEEDS_DATA]
        keys = {a: _cache_key(a) for a in heavy}
        self.cacheable = bool(heavy) and all(keys.values())
        self.cache_keys: dict[FetchAtt, str | None] = keys if self.cacheable else {}
        self.wanted = [k for k in keys.values() if k]
        # Everything asked is either known to the view (UID, FLAGS) or kept in the shared
        # cache (the items above, RFC822.SIZE, INTERNALDATE), and nothing needs the
        # store's current state (no implicit \Seen, no MODSEQ): a few messages whose items
        # are all cached need no read at all. None: not such a list.
        static = sorted(self.kinds & _STATIC)
        memory = not self.sets_seen and MODSEQ not in self.kinds and bool(static or heavy) \
            and (self.cacheable or not heavy) \
            and all(a.kind in _FROM_VIEW or a.kind in _STATIC or a in keys for a in atts)
        self.memory_keys: list[str] | None = self.wanted + static if memory else None


_PLANS: dict[tuple[FetchAtt, ...], _Plan] = {}
MAX_PLANS = 256


def _plan(atts: tuple[FetchAtt, ...]) -> _Plan:
    plan = _PLANS.get(atts)
    if plan is None:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[atts] = _Plan(atts)
    return plan


async def fetch(s: ImapSession, cmd: Fetch) -> bytes:
    view = s.selected
    assert view is not None
    atts = cmd.attributes
    plan = _plan(atts)
    if cmd.changed_since is None and plan.from_view:
        return await _fetch_from_view(s, view, cmd)
    store = s.store
    positions = view.positions(cmd.seqset, cmd.uid)
    if cmd.changed_since is not None or plan.modseq:
        s.enable_condstore()  # RFC 7162 3.1: the first CONDSTORE command enables it
    if cmd.vanished:
        if not s.qresync:
            raise ImapPeerError("VANISHED needs QRESYNC enabled", tag=cmd.tag)
        assert cmd.changed_since is not None
        # "*" reaches the highest UID ever assigned: expunged ones above the last
        # message count too.
        asked = cmd.seqset.resolve(max(view.last_uid, view.uidnext - 1), view.saved)
        gone = [u for u in await store.vanished_since(view.mailbox_id, cmd.changed_since)
                if u in asked]
        if gone:
            s.write(responses.vanished(gone, earlier=True))  # RFC 7162 3.2.6
    if cmd.partial is not None and cmd.changed_since is None:
        positions = list(partial_items(positions, cmd.partial))  # RFC 9394 3.3
    uids = view.uids_at(positions)
    if len(uids) <= FEW_MESSAGES and cmd.changed_since is None:
        return await _fetch_few(s, view, cmd, plan, uids)
    if len(uids) > CHUNK_MESSAGES:
        await budget.heavy()  # many messages: a heavy command from the start (net/budget.py)
    need_data, need_summary = plan.need_data, plan.need_summary
    header_only, head_only = plan.header_only, plan.head_only
    cache = s.structures if plan.cacheable else None
    wanted = plan.wanted
    validity, rev2 = view.uidvalidity, s.rev2
    # Few messages (the usual UID FETCH of one message, or headers of a page of them):
    # metadata, summaries and bytes in one read. Otherwise the metadata first, then the
    # bytes chunk by chunk, sized by the metadata, so memory stays bounded.
    pre: dict[int, MessageContent] | None = None
    if len(uids) <= CHUNK_MESSAGES and (not need_data or header_only or len(uids) == 1):
        contents = await store.read_messages(
            view.mailbox_id, uids, summary=need_summary, data=need_data, header_only=header_only
        )
        pre = {c.meta.uid: c for c in contents}
        metas = [c.meta for c in contents]
    else:
        metas = await load_metas(s, view, uids)
    missing = len(metas) < len(uids)
    if cmd.changed_since is not None:
        metas = [m for m in metas if m.modseq > cmd.changed_since]
        if cmd.partial is not None:
            # RFC 9394 3.3 with RFC 7162: the range counts the messages that changed.
            metas = list(partial_items(metas, cmd.partial))
    metas, seen_now = await _mark_seen(s, view, plan, metas)
    renderer = _Renderer(s, view, cmd, seen_now, plan)
    seqs = _seq_numbers(view, positions, metas)
    for start, end in chunks(metas, need_data):
        part = metas[start:end]
        datas: dict[int, bytes] = {}
        summaries: dict[int, MessageSummary] = {}
        huge: dict[int, bytes] = {}  # raw summaries too big to parse on the event loop
        raws: dict[int, bytes] = {}  # every raw summary read for this chunk
        frags: dict[int, dict[str, bytes]] = {}
        if cache is not None:
            # Taken now, before any await: other sessions may evict entries meanwhile.
            for m in part:
                found = {k: v for k in wanted
                         if (v := cache.get((validity, m.uid, k, rev2))) is not None}
                if len(found) == len(wanted):
                    frags[m.uid] = found
            if frags:
                part_to_parse = [m for m in part if m.uid not in frags]
            else:
                part_to_parse = part
        else:
            part_to_parse = part
        if pre is not None:
            for m in part:
                c = pre[m.uid]
                if c.data is not None:
                    datas[m.blob_id] = c.data
            if need_summary:
                raw = {m.blob_id: c.summary for m in part_to_parse
                       if (c := pre[m.uid]).summary is not None}
                raws = raw
                raw, huge = _split_huge(raw, head_only, plan.prerendered_ok)
                summaries = await parse_summaries(s, raw, datas, partial=header_only,
                                                  head_only=head_only,
                                                  prerendered_ok=plan.prerendered_ok)
        elif header_only:
            # Headers of many messages (a client's first sync of a big mailbox): read the
            # header blocks only, never the bodies.
            contents = await store.read_messages(
                view.mailbox_id, [m.uid for m in part_to_parse], summary=need_summary,
                data=True, header_only=True,
            ) if part_to_parse else []
            raw = {}
            for c in contents:
                if c.data is not None:
                    datas[c.meta.blob_id] = c.data
                if c.summary is not None:
                    raw[c.meta.blob_id] = c.summary
            if need_summary:
                raws = raw
                raw, huge = _split_huge(raw, head_only)
                summaries = await parse_summaries(s, raw, datas, partial=True, head_only=head_only)
        else:
            if need_data and part_to_parse:
                datas = await store.read_blobs([m.blob_id for m in part_to_parse])
            if need_summary and part_to_parse:
                raw = await store.read_summaries([m.blob_id for m in part_to_parse])
                raws = raw
                raw, huge = _split_huge(raw, head_only, plan.prerendered_ok)
                summaries = await parse_summaries(s, raw, datas, head_only=head_only,
                                                  prerendered_ok=plan.prerendered_ok)
        for k, m in enumerate(part, start):
            await budget.tick()  # yield to other sessions every few ms (net/budget.py)
            data = datas.get(m.blob_id)
            summary = summaries.get(m.blob_id)
            known = frags.get(m.uid)
            rendered = None
            if known is None and (huge or plan.field_atts) and (
                    raw_summary := _to_offload(plan, m, summary, data, huge, raws)) is not None:
                rendered = await _offloaded(s, cmd, plan, raw_summary, data)
            if known is None and rendered is None and (
                    (need_data and data is None) or (need_summary and summary is None)):
                missing = True
                continue
            s.write(renderer.render(seqs[k], m, summary, data, known, rendered))
        await s.maybe_flush()
    if missing:
        return responses.no(cmd.tag, TEXT_EXPUNGED, responses.EXPUNGEISSUED)
    return responses.ok(cmd.tag, ("UID FETCH" if cmd.uid else "FETCH") + " completed")


def _to_offload(plan: _Plan, m: MessageMeta, summary: MessageSummary | None,
                data: bytes | None, huge: dict[int, bytes], raws: dict[int, bytes]) -> bytes | None:
    """The raw summary of ``m`` when rendering its items here would hold the event loop
    (thousands of MIME parts: ``huge``; HEADER.FIELDS over thousands of header fields), so
    a worker process renders them (:func:`_offloaded`); None: rendered here as usual."""
    if m.blob_id in huge and (data is not None or not plan.need_data):
        return huge[m.blob_id]  # thousands of MIME parts
    if (plan.field_atts and summary is not None
            and summary.root.header_end - summary.root.header_start >= jobs.BIG_HEADER
            and (raw_summary := raws.get(m.blob_id)) is not None
            and header_summary(raw_summary) is not None):
        return raw_summary  # HEADER.FIELDS over thousands of header fields
    return None


async def _offloaded(s: ImapSession, cmd: Fetch, plan: _Plan, raw_summary: bytes,
                     data: bytes | None) -> dict[FetchAtt, bytes]:
    """The summary items of a message rendered in a worker process (see _to_offload)."""
    items = await s.services.offload(
        jobs.render_items, plan.summary_atts, raw_summary, data, s.rev2, cmd.tag)
    if items is None:
        raise ImapPeerError("Unknown Content-Transfer-Encoding", status="NO",
                            code=responses.UNKNOWN_CTE, tag=cmd.tag)
    return dict(zip(plan.summary_atts, items, strict=True))


async def _mark_seen(s: ImapSession, view: SelectedMailbox, plan: _Plan,
                     metas: list[MessageMeta]) -> tuple[list[MessageMeta], set[int]]:
    """The implicit \\Seen of a body fetch, in one store write (see the module docstring),
    and the ``* FLAGS`` any keyword new to the client needs before a FETCH shows it."""
    seen_now: set[int] = set()
    if plan.sets_seen and not view.readonly and "s" in view.rights:  # RFC 4314 4
        unseen = [m.uid for m in metas if not m.flags & FLAG_SEEN]
        if unseen:
            result = await s.store.store_flags(view.mailbox_id, unseen, FlagChange("add", FLAG_SEEN))
            if result.changed:
                changed = {m.uid: m for m in result.changed}
                metas = [changed.get(m.uid, m) for m in metas]
                view.note_reported(result.changed)
                view.update_flags(result.changed)
                view.own_write(result.changed)
                seen_now = set(changed)
    if (flags_line := view.announce(metas)) is not None:
        s.write(flags_line)  # a keyword new to the client: * FLAGS before the FETCH shows it
    return metas, seen_now


async def _fetch_few(s: ImapSession, view: SelectedMailbox, cmd: Fetch, plan: _Plan,
                     uids: list[int]) -> bytes:
    """A few messages (a client opening one: the most frequent FETCH there is).

    One store read, a point read on the loop's thread for small messages (see
    ``Store.read_messages``); when the shared cache holds every item of every message,
    only their metadata is read, never their summary or bytes.
    """
    if plan.memory_keys is not None:
        if not cmd.uid:
            await s.sync(expunge=False)  # current flags (UID FETCH was synced before)
        if (answer := _from_memory(s, view, cmd, plan, uids)) is not None:
            return answer
    cache = s.structures if plan.cacheable else None
    frags: dict[int, dict[str, bytes]] = {}
    if cache is not None:
        validity, rev2, wanted = view.uidvalidity, s.rev2, plan.wanted
        for uid in uids:
            found = {k: v for k in wanted if (v := cache.get((validity, uid, k, rev2))) is not None}
            if len(found) == len(wanted):
                frags[uid] = found
    need_data, need_summary = plan.need_data, plan.need_summary
    everything_cached = len(frags) == len(uids)
    contents = await s.store.read_messages(
        view.mailbox_id, uids, summary=need_summary and not everything_cached,
        data=need_data and not everything_cached, header_only=plan.header_only,
    )
    metas = [c.meta for c in contents]
    seen_now: AbstractSet[int]
    if plan.sets_seen and not view.readonly and "s" in view.rights:  # RFC 4314 4
        metas, seen_now = await _mark_seen(s, view, plan, metas)
    else:
        seen_now = _NO_UIDS
        if (flags_line := view.announce(metas)) is not None:
            s.write(flags_line)  # a keyword new to the client: * FLAGS first
    missing = len(metas) < len(uids)
    renderer = _Renderer(s, view, cmd, seen_now, plan)
    summaries: dict[int, MessageSummary] = {}
    huge: dict[int, bytes] = {}
    raws: dict[int, bytes] = {}
    if need_summary and not everything_cached:
        datas = {c.meta.blob_id: c.data for c in contents if c.data is not None}
        raws = {c.meta.blob_id: c.summary for c in contents
                if c.summary is not None and c.meta.uid not in frags}
        raw, huge = _split_huge(raws, plan.head_only, plan.prerendered_ok)
        summaries = await parse_summaries(s, raw, datas, partial=plan.header_only,
                                          head_only=plan.head_only,
                                          prerendered_ok=plan.prerendered_ok)
    seq_of = view.seq_of
    for m, c in zip(metas, contents, strict=True):
        known = frags.get(m.uid)
        summary = summaries.get(m.blob_id)
        seq = seq_of(m.uid)
        rendered = None
        if known is None and seq is not None and (huge or plan.field_atts) and (
                raw_summary := _to_offload(plan, m, summary, c.data, huge, raws)) is not None:
            # The same guard as the general path: no huge parse on the event loop.
            rendered = await _offloaded(s, cmd, plan, raw_summary, c.data)
        if seq is None or (known is None and rendered is None and (
                (need_data and c.data is None) or (need_summary and summary is None))):
            missing = True
            continue
        s.write(renderer.render(seq, m, summary, c.data, known, rendered))
    if missing:
        return responses.no(cmd.tag, TEXT_EXPUNGED, responses.EXPUNGEISSUED)
    return responses.ok(cmd.tag, ("UID FETCH" if cmd.uid else "FETCH") + " completed")


def _from_memory(s: ImapSession, view: SelectedMailbox, cmd: Fetch, plan: _Plan,
                 uids: list[int]) -> bytes | None:
    """Answer from the view and the shared cache alone when every item of every message
    is there (see ``_Plan.memory_keys``); None when something is missing. A message
    another session expunged that the client has not heard of yet still has its items
    cached: it is served like the view serves its flags (RFC 9051 7.5.1 lets it exist until
    the client is told); one already reported gone is not in the view at all."""
    cache = s.structures
    keys = plan.memory_keys
    assert keys is not None
    validity, rev2 = view.uidvalidity, s.rev2
    found: list[dict[str, bytes]] = []
    for uid in uids:
        items = {}
        for k in keys:
            value = cache.get((validity, uid, k, rev2))
            if value is None:
                return None
            items[k] = value
        found.append(items)
    renderer = _Renderer(s, view, cmd, _NO_UIDS, plan)
    seq_of, flags, kw = view.seq_of, view.flags, view.kw
    for uid, items in zip(uids, found, strict=True):
        seq = seq_of(uid)
        assert seq is not None
        probe = Known(uid, flags[seq - 1], kw.get(uid, ()) if kw else ())
        s.write(renderer.render(seq, cast(MessageMeta, probe), None, None, items))
    return responses.ok(cmd.tag, ("UID FETCH" if cmd.uid else "FETCH") + " completed")


async def _fetch_from_view(s: ImapSession, view: SelectedMailbox, cmd: Fetch) -> bytes:
    """FETCH (FLAGS UID) from the view's flags: no store read at all.

    The view is brought up to date first (only where expunges may not be reported do
    they stay pending; their last known flags are still served, as RFC 9051 allows).
    No budget ticks: about a microsecond per message (a client's resync must work even
    under a tiny ``limits.command_time``; tests/e2e/test_loop_lag.py), and the output is
    flushed every 2,048 messages.
    """
    if not cmd.uid:
        await s.sync(expunge=False)  # UID commands were synced before they started
    positions = view.positions(cmd.seqset, cmd.uid)
    if cmd.partial is not None:
        positions = list(partial_items(positions, cmd.partial))  # RFC 9394 3.3
    # The line, item by item, in the client's order (UID first for UID FETCH, RFC 9051
    # 6.4.8): one format string, filled per message with the flag text of that message's
    # flag set, worked out once per distinct set. This is every client's resync
    # ("FETCH 1:* (FLAGS)"): about 3 times cheaper than the general renderer per message.
    order = [a.kind for a in cmd.attributes]
    if cmd.uid and UID not in order:
        order.insert(0, UID)
    fmt = b"* %d FETCH (" + b" ".join(
        b"FLAGS (%s)" if k == FLAGS else b"UID %d" for k in order) + b")\r\n"
    shape = (FLAGS in order, order.index(FLAGS) if FLAGS in order else 0, len(order))
    lines: list[bytes] = []
    add = lines.append
    uids, flags, kw = view.uids, view.flags, view.kw
    # \Recent by range (usually one, or none at all): no call per message.
    ranges = view.recent if s.rev1 else []
    lo, hi = ranges[0] if len(ranges) == 1 else (1, 0)
    texts: dict[tuple[int, tuple[str, ...], bool], bytes] = {}
    probe = Known(0, 0, ())
    for n, i in enumerate(positions, 1):
        uid = uids[i]
        if not shape[0]:  # UID only
            line = fmt % ((i + 1,) + (uid,) * shape[2])
        else:
            keywords = kw.get(uid, ()) if kw else ()
            is_recent = lo <= uid <= hi if len(ranges) < 2 else view.is_recent(uid)
            key = (flags[i], keywords, is_recent)
            text = texts.get(key)
            if text is None:
                probe.uid, probe.flags, probe.keywords = uid, flags[i], keywords
                text = texts[key] = " ".join(view.flag_names(probe, s.rev1)).encode("utf-8")
            if shape[2] == 1:
                line = fmt % (i + 1, text)
            elif shape == (True, 0, 2):
                line = fmt % (i + 1, text, uid)
            elif shape == (True, 1, 2):
                line = fmt % (i + 1, uid, text)
            else:
                args: list[int | bytes] = [uid] * shape[2]
                args[shape[1]] = text
                line = fmt % (i + 1, *args)
        add(line)
        if not n % 2048:
            s.write(b"".join(lines))
            lines.clear()
            await s.maybe_flush()
    if lines:
        s.write(b"".join(lines))
    return responses.ok(cmd.tag, ("UID FETCH" if cmd.uid else "FETCH") + " completed")


_HEADER_TEXTS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def _header_only(att: FetchAtt) -> bool:
    """Does ``att`` read only the top-level header block (RFC822.HEADER, BODY[HEADER],
    BODY[HEADER.FIELDS (...)], BODY[HEADER.FIELDS.NOT (...)])?"""
    if att.kind == RFC822_HEADER:
        return True
    section = att.section
    return att.kind == BODY_SECTION and section is not None and not section.part \
        and section.text in _HEADER_TEXTS


_TOP_TEXTS = _HEADER_TEXTS | {"TEXT"}


def _cache_key(att: FetchAtt) -> str | None:
    """The StructureCache key of an item that depends on the message alone (ENVELOPE,
    BODYSTRUCTURE, BODY and top-level header sections), or None. Header sections are keyed
    by their exact request (field list and partial range), so equal requests share."""
    if att.kind in _STRUCTURE:
        return att.kind
    if _header_only(att):
        return f"{att.name.decode('latin-1')}|{att.partial}"
    return None


def _top_level(att: FetchAtt) -> bool:
    """Does ``att`` use only the top-level entity's offsets (RFC822.HEADER, RFC822.TEXT,
    BODY[HEADER], BODY[HEADER.FIELDS[.NOT] (...)], BODY[TEXT])? Then a summary holding just
    those (``header_summary``) serves it, without decoding the MIME tree."""
    if att.kind in (RFC822_HEADER, RFC822_TEXT):
        return True
    section = att.section
    return att.kind == BODY_SECTION and section is not None and not section.part \
        and section.text in _TOP_TEXTS


def _whole(att: FetchAtt) -> bool:
    """BODY[] / BODY[]<partial> / RFC822 need the bytes but not the structure."""
    return att.kind == BODY_SECTION and att.section is not None and not att.section.part \
        and att.section.text is None


def _seq_numbers(view: SelectedMailbox, positions: list[int], metas: list[MessageMeta]) -> list[int]:
    """Sequence number of each meta (both lists ascend by UID: a merge, no lookups)."""
    out: list[int] = []
    uids = view.uids
    p, n = 0, len(positions)
    for m in metas:
        while p < n and uids[positions[p]] < m.uid:
            p += 1
        out.append(positions[p] + 1 if p < n else 0)
    return out


class _Renderer:
    """Builds one ``* n FETCH (...)`` line per message for a fixed attribute list."""

    __slots__ = ("atts", "condstore", "flag_cache", "rev1", "rev2", "tag", "uid_first",
                 "view", "seen_now", "want_flags", "want_modseq", "changed_since", "structures",
                 "cache_keys", "want_uid", "memory")

    def __init__(self, s: ImapSession, view: SelectedMailbox, cmd: Fetch, seen_now: AbstractSet[int],
                 plan: _Plan):
        kinds = plan.kinds
        self.atts = cmd.attributes
        self.view = view
        self.tag = cmd.tag
        self.rev1 = s.rev1
        self.rev2 = s.rev2
        self.condstore = s.condstore
        self.seen_now = seen_now
        # RFC 9051 6.4.8: UID FETCH responses always carry the UID.
        self.uid_first = cmd.uid and UID not in kinds
        self.want_uid = UID not in kinds
        # \Seen set as a side effect is reported with the FLAGS item (RFC 9051 6.4.5).
        self.want_flags = FLAGS not in kinds
        # RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ in the response; under CONDSTORE
        # a flag change (the implicit \Seen) is reported with its new MODSEQ (3.1.4).
        self.want_modseq = MODSEQ not in kinds
        self.changed_since = cmd.changed_since is not None
        self.flag_cache: dict[tuple[int, tuple[str, ...], bool], bytes] = {}
        self.structures = s.structures
        self.cache_keys = plan.cache_keys  # empty: the cache is not used for this FETCH
        self.memory = plan.memory_keys is not None

    def flags(self, m: MessageMeta) -> bytes:
        recent = self.rev1 and bool(self.view.recent) and self.view.is_recent(m.uid)
        key = (m.flags, m.keywords, recent)
        cached = self.flag_cache.get(key)
        if cached is None:
            names = self.view.flag_names(m, self.rev1)
            cached = b"FLAGS (" + " ".join(names).encode("utf-8") + b")"
            self.flag_cache[key] = cached
        return cached

    @classmethod
    def for_items(cls, rev2: bool, tag: str) -> _Renderer:
        """A renderer for :meth:`item` alone, which needs only these two (worker
        processes render the items of messages with huge summaries: jobs.render_items)."""
        r = cls.__new__(cls)
        r.rev2, r.tag = rev2, tag
        return r

    def item(self, att: FetchAtt, summary: MessageSummary | None, data: bytes | None) -> bytes:
        return _flat(self._item(att, summary, data))

    def _item(self, att: FetchAtt, summary: MessageSummary | None, data: bytes | None) -> Item:
        if att.kind in _STRUCTURE:
            assert summary is not None
            return self._structure(att.kind, summary)
        assert data is not None
        return self._content(att, summary, data)

    def _structure(self, kind: str, summary: MessageSummary) -> bytes:
        if type(summary) is Prerendered:  # stored at delivery (see parse_summaries)
            items = cast(Prerendered, summary)
            if kind == ENVELOPE:
                return b"ENVELOPE " + items.envelope
            assert kind == BODYSTRUCTURE
            return b"BODYSTRUCTURE " + (items.bodystructure_rev2 if self.rev2 else items.bodystructure)
        if kind == ENVELOPE:
            return b"ENVELOPE " + envelope_bytes(summary)
        if kind == BODYSTRUCTURE:
            return b"BODYSTRUCTURE " + bodystructure_bytes(summary, True, rev2=self.rev2)
        return b"BODY " + body_bytes(summary, rev2=self.rev2)

    def render(self, seq: int, m: MessageMeta, summary: MessageSummary | None,
               data: bytes | None, known: dict[str, bytes] | None = None,
               rendered: dict[FetchAtt, bytes] | None = None) -> bytes:
        """One FETCH line; ``known``: cached ENVELOPE/BODYSTRUCTURE/BODY items by kind;
        ``rendered``: items a worker process rendered already (huge summaries)."""
        parts: list[Item] = []
        add = parts.append
        big = False
        seen_now = m.uid in self.seen_now
        # RFC 7162 3.1: under CONDSTORE a FETCH that sets \Seen reports UID and MODSEQ.
        if self.uid_first or (seen_now and self.condstore and self.want_uid):
            add(b"UID %d" % m.uid)
        for att in self.atts:
            kind = att.kind
            if rendered is not None and att in rendered:
                add(rendered[att])
            elif kind == FLAGS:
                add(self.flags(m))
            elif kind == UID:
                add(b"UID %d" % m.uid)
            elif kind == RFC822_SIZE or kind == INTERNALDATE:
                add(self._static(kind, m, known))
            elif kind == MODSEQ:
                add(b"MODSEQ (%d)" % m.modseq)
            elif (key := self.cache_keys.get(att)) is not None:
                value = known.get(key) if known is not None else None
                if value is None:
                    value = _flat(self._item(att, summary, data))
                    if len(value) <= MAX_CACHED_ITEM:
                        self.structures.put((self.view.uidvalidity, m.uid, key, self.rev2), value)
                add(value)
            elif kind in _STRUCTURE:
                assert summary is not None
                add(self._structure(kind, summary))
            else:
                assert data is not None
                item = self._content(att, summary, data)
                big = big or type(item) is tuple
                add(item)
        if seen_now and self.want_flags:
            add(self.flags(m))
        if self.want_modseq and (self.changed_since or (seen_now and self.condstore)):
            add(b"MODSEQ (%d)" % m.modseq)
        if not big:
            return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))  # type: ignore[arg-type]
        # one copy of the big payloads, into the line itself
        out = [b"* %d FETCH (" % seq]
        for i, part in enumerate(parts):
            if i:
                out.append(b" ")
            if type(part) is tuple:
                out.extend(part)
            else:
                out.append(part)  # type: ignore[arg-type]
        out.append(b")\r\n")
        return b"".join(out)

    def _static(self, kind: str, m: MessageMeta, known: dict[str, bytes] | None) -> bytes:
        """RFC822.SIZE or INTERNALDATE: from the cache when it had them (a FETCH answered
        from memory), else from the metadata, then kept for next time when the attribute
        list is one that can be answered from memory."""
        if known is not None and (value := known.get(kind)) is not None:
            return value
        if kind == RFC822_SIZE:
            value = b"RFC822.SIZE %d" % m.size
        else:
            when = datetime.datetime.fromtimestamp(m.internaldate, _UTC)
            value = b"INTERNALDATE " + responses.internaldate(when)
        if self.memory:
            self.structures.put((self.view.uidvalidity, m.uid, kind, self.rev2), value)
        return value

    def _content(self, att: FetchAtt, summary: MessageSummary | None, data: bytes) -> Item:
        kind = att.kind
        if kind == RFC822:
            return _literal(b"RFC822", data)
        if kind == BODY_SECTION and _whole(att):
            return _literal(att.name, apply_partial(data, att.partial))
        assert summary is not None
        if len(data) != summary.size:
            # Only the header block was read (_header_only): every offset these sections
            # use lies inside it, so describe the octets at hand.
            assert _header_only(att) and len(data) >= summary.root.body_start
            if isinstance(summary, HeadSummary):
                summary = cast(MessageSummary, summary.resized(len(data)))
            else:
                summary = replace(summary, size=len(data))
        if kind == RFC822_HEADER:
            return _literal(b"RFC822.HEADER", extract(data, summary, _HEADER))
        if kind == RFC822_TEXT:
            return _literal(b"RFC822.TEXT", extract(data, summary, _TEXT))
        section = att.section
        assert section is not None
        if kind == BODY_SECTION:
            spec = SectionSpec(section.part, section.text, section.fields, att.partial)
            return _literal(att.name, extract(data, summary, spec))
        decoded = decode_part(data, summary, section.part)
        if isinstance(decoded, UnknownCTE):
            # RFC 3516 4.3: the server cannot decode this part.
            raise ImapPeerError("Unknown Content-Transfer-Encoding", status="NO",
                                code=responses.UNKNOWN_CTE, tag=self.tag)
        if kind == BINARY_SIZE:
            return att.name + b" %d" % len(decoded)
        decoded = apply_partial(decoded, att.partial)
        if b"\x00" in decoded:
            return att.name + b" " + responses.literal8(decoded)  # RFC 3516 4.3
        return _literal(att.name, decoded)


# A FETCH item: its bytes, or (head, payload) for a big literal, which the response line
# then joins once with everything else instead of copying the payload at every step.
Item = bytes | tuple[bytes, bytes]
BIG_LITERAL = 4096


def _literal(name: bytes, value: bytes) -> Item:
    head = name + b" {%d}\r\n" % len(value)
    return (head, value) if len(value) >= BIG_LITERAL else head + value


def _flat(item: Item) -> bytes:
    return item if type(item) is bytes else b"".join(item)  # type: ignore[arg-type]


HANDLERS = {Fetch: fetch}
