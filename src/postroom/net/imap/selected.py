"""The selected mailbox of one session: its sequence map and how changes reach the client.

Theory of operation
-------------------
A session that selects a mailbox keeps a *view* of it: the UIDs in sequence order
(``uids``, an ``array('I')``: 4 octets per message, so 10,000 messages cost 40 KB rather
than the 360 KB of a list of ints), the system flags beside them (``flags``, one octet per
message) with the few keywords in a dict, the modseq the view is in sync with, and the
\\Recent UIDs it claimed (RFC 3501 only). The flags make the commands clients run all the
time cheap: ``FETCH 1:* (FLAGS UID)``, flag-only SEARCH and EXPUNGE need no store read.
Changes are detected by modseq, never by comparing flags.

Other writers (sessions, SMTP delivery, POP3) change the mailbox at any time. The store
publishes a :class:`~postroom.store.api.MailboxChange` after each commit; the session's
listener only sets :attr:`SelectedMailbox.dirty` (and wakes IDLE). When the session may
talk, it asks ``store.changes_since(mailbox, view.modseq)`` and :meth:`apply` turns the
answer into untagged responses against the view:

* UIDs that vanished become *pending* expunges. They stay in the map (sequence numbers
  must not move under the client's feet) until a command that may report them runs
  (RFC 9051 7.5.1: never during FETCH, STORE, SEARCH or other commands that use sequence
  numbers); then ``* n EXPUNGE`` (or ``* VANISHED`` with QRESYNC, RFC 7162 3.2.10) is sent
  and they leave the map.
* UIDs above the last one in the map are new messages: appended, then ``* n EXISTS``
  (and ``* n RECENT`` for IMAP4rev1 clients).
* Other changed UIDs in the map get ``* n FETCH (UID u FLAGS (...))``, with MODSEQ once
  CONDSTORE is on, unless the session itself already reported that very modseq (its own
  STORE or the \\Seen of a FETCH: :attr:`reported`).
* A keyword never seen in this mailbox before makes a new ``* FLAGS`` response first
  (RFC 9051 7.3.5).

Everything here is pure (no I/O), so it is unit-tested with hand-made ``Changes``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from postroom.proto.imap import responses
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import STAR, RangeSet, SequenceSet
from postroom.store.api import ALL_RIGHTS, FLAG_NAMES, Changes, MessageMeta

if TYPE_CHECKING:
    from postroom.net.imap.contexts import Context

SYSTEM_FLAG_NAMES = tuple(name for _, name in FLAG_NAMES)
# The view remembers which UIDs each generation changed, up to this many UIDs in all, so
# that search contexts re-test only those (net/imap/contexts.py); older changes are
# forgotten and a context that missed them is evaluated again in full.
CHANGELOG_UIDS = 4096
UNKNOWN_MODSEQ = 1 << 63
TEXT_BAD_SEQUENCE = "Invalid message sequence number"


def uid_array(uids: Iterable[int] = ()) -> array[int]:
    return array("I", uids)


class Known:
    """A message as the view knows it (duck-types the MessageMeta fields SEARCH uses)."""

    __slots__ = ("flags", "keywords", "uid")

    def __init__(self, uid: int, flags: int, keywords: tuple[str, ...]) -> None:
        self.uid = uid
        self.flags = flags
        self.keywords = keywords


class SelectedMailbox:
    """One session's view of its selected mailbox (see the module docstring)."""

    __slots__ = (
        "mailbox_id", "name", "readonly", "uidvalidity", "uids", "modseq", "dirty",
        "pending", "reported", "keywords", "recent", "saved", "listener", "uidnext",
        "flags", "kw", "notified", "rights", "contexts", "generation", "shared_read",
        "changelog", "changelog_floor", "_changelog_size",
    )

    def __init__(
        self,
        mailbox_id: int,
        name: str,
        *,
        readonly: bool,
        uidvalidity: int,
        uidnext: int,
        modseq: int,
        uids: Iterable[int],
        keywords: Iterable[str] = (),
        recent: tuple[int, int] | None = None,
    ) -> None:
        self.mailbox_id = mailbox_id
        self.name = name
        self.readonly = readonly
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.modseq = modseq
        self.uids = uid_array(uids)
        self.flags = bytearray(len(self.uids))  # FLAG_* bits per message, like ``uids``
        self.kw: dict[int, tuple[str, ...]] = {}  # uid -> keywords, only where there are some
        self.dirty = False
        # The highest modseq a change notification announced (UNKNOWN_MODSEQ when one did
        # not say): a notification of what the view already holds needs no re-read.
        self.notified = 0
        # Expunged in the store, not yet reported to the client (still in ``uids``).
        self.pending: set[int] = set()
        # uid -> modseq this session already reported in a FETCH of its own.
        self.reported: dict[int, int] = {}
        self.keywords: set[str] = set(keywords)
        # \Recent UIDs claimed by this session, as inclusive ranges (RFC 3501 2.3.2).
        self.recent: list[tuple[int, int]] = [recent] if recent else []
        self.saved: RangeSet | None = None  # SEARCHRES "$" as UIDs (RFC 5182)
        self.listener: object = None
        # ACL rights of the session here (RFC 4314), read once at SELECT; owners have all.
        self.rights = ALL_RIGHTS
        # RFC 5267 search contexts with UPDATE (see .contexts), by the searching tag.
        self.contexts: dict[str, Context] = {}
        # Bumped whenever the messages or their flags change in the view: contexts
        # re-evaluate when it moved.
        self.generation = 0
        # (generation, UIDs it changed: flags, arrival or expunge), oldest first; the
        # changes of generations up to ``changelog_floor`` are forgotten (changed_since).
        self.changelog: list[tuple[int, tuple[int, ...]]] = []
        self.changelog_floor = 0
        self._changelog_size = 0
        # While contexts are refreshed: the whole mailbox's metadata read for the first
        # one, as (generation, metas), reused by the others at the same generation.
        self.shared_read: tuple[int, list[MessageMeta]] | None = None

    def set_messages(self, metas: Sequence[MessageMeta]) -> None:
        """Fill the view from ``list_messages`` (UID order)."""
        self.uids = uid_array(m.uid for m in metas)
        self.flags = bytearray(m.flags & 0xFF for m in metas)
        self.kw = {m.uid: m.keywords for m in metas if m.keywords}

    def _changed(self, uids: tuple[int, ...]) -> None:
        """A new generation, which changed ``uids`` (kept in the bounded changelog)."""
        self.generation += 1
        if not self.contexts:  # nobody asks: keep nothing (the common case)
            self.changelog_floor = self.generation
            if self.changelog:
                self.changelog.clear()
                self._changelog_size = 0
            return
        self.changelog.append((self.generation, uids))
        self._changelog_size += len(uids)
        while self._changelog_size > CHANGELOG_UIDS:
            generation, dropped = self.changelog.pop(0)
            self._changelog_size -= len(dropped)
            self.changelog_floor = generation

    def changed_since(self, generation: int) -> set[int] | None:
        """The UIDs changed after ``generation`` (new, flags, expunged), or None when the
        changelog no longer goes back that far."""
        if generation < self.changelog_floor:
            return None
        out: set[int] = set()
        for g, uids in reversed(self.changelog):
            if g <= generation:
                break
            out.update(uids)
        return out

    def update_flags(self, metas: Iterable[MessageMeta]) -> None:
        """Record the current flags of messages already in the view."""
        metas = list(metas)
        self._changed(tuple(m.uid for m in metas))
        uids = self.uids
        for m in metas:
            i = bisect_left(uids, m.uid)
            if i < len(uids) and uids[i] == m.uid:
                self.flags[i] = m.flags & 0xFF
                if m.keywords:
                    self.kw[m.uid] = m.keywords
                else:
                    self.kw.pop(m.uid, None)

    def known(self, i: int) -> Known:
        """What the view knows about the message at index ``i``."""
        uid = self.uids[i]
        return Known(uid, self.flags[i], self.kw.get(uid, ()) if self.kw else ())

    # -- lookups -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uids)

    @property
    def last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        """1-based sequence number of ``uid``, None when it is not in the view."""
        i = bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def is_recent(self, uid: int) -> bool:
        for lo, hi in self.recent:  # usually one range: no generator
            if lo <= uid <= hi:
                return True
        return False

    def recent_count(self) -> int:
        """Messages in the view that are \\Recent: two bisections per claimed range, not a
        test per message (this runs after every new message for IMAP4rev1 sessions)."""
        if not self.recent:
            return 0
        uids = self.uids
        ranges = RangeSet.from_pairs((lo, hi) for lo, hi in self.recent if lo <= hi)
        return sum(bisect_right(uids, hi) - bisect_left(uids, lo) for lo, hi in ranges.ranges)

    def flag_names(self, meta: MessageMeta | Known, rev1: bool) -> list[str]:
        names = [name for bit, name in FLAG_NAMES if meta.flags & bit]
        names.extend(meta.keywords)
        if rev1 and self.recent and self.is_recent(meta.uid):
            names.append("\\Recent")
        return names

    def flags_response(self) -> bytes:
        return responses.flags(SYSTEM_FLAG_NAMES + tuple(sorted(self.keywords)))

    def announce(self, metas: Iterable[MessageMeta | Known]) -> bytes | None:
        """The ``* FLAGS`` response to send *before* any FETCH that shows these messages'
        flags, when one of their keywords is new to the client (RFC 9051 7.3.5, RFC 3501
        7.2.6); None when the client knows them all.

        Messages read from the store (STORE results, FETCH of more than flags, QRESYNC)
        can carry keywords another session set a moment ago, which the view has not
        heard of yet: the client must see them in FLAGS first.
        """
        known = self.keywords
        fresh = {k for m in metas if m.keywords for k in m.keywords if k not in known}
        if not fresh:
            return None
        known |= fresh
        return self.flags_response()

    # -- sequence sets -----------------------------------------------------------------
    def positions(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """0-based indexes into :attr:`uids` of the messages ``seqset`` names.

        Sequence numbers past the end (and "*" in an empty mailbox) are a tagged BAD
        (RFC 9051 9 seq-number); UIDs that do not exist are simply not there.
        """
        uids = self.uids
        ranges = seqset.ranges
        if len(ranges) == 1 and not seqset.saved:
            first, last = ranges[0]
            if first == last and first != STAR:  # one number: a client opening a message
                if uid:
                    i = bisect_left(uids, first)
                    return [i] if i < len(uids) and uids[i] == first else []
                if first > len(uids):
                    raise ImapPeerError(TEXT_BAD_SEQUENCE)
                return [first - 1]
        if uid:
            saved = self.saved if seqset.saved else None
            return seqset.resolve(self.last_uid, saved or RangeSet()).positions(uids)
        count = len(uids)
        if seqset.max_explicit() > count or (seqset.uses_star and count == 0):
            raise ImapPeerError(TEXT_BAD_SEQUENCE)
        saved_seqs = None
        if seqset.saved and self.saved:
            saved_seqs = RangeSet.from_numbers(i + 1 for i in self.saved.positions(uids))
        out: list[int] = []
        for lo, hi in seqset.resolve(count, saved_seqs).ranges:
            out.extend(range(lo - 1, min(hi, count)))
        return out

    def uids_at(self, positions: Sequence[int]) -> list[int]:
        uids = self.uids
        return [uids[i] for i in positions]

    # -- applying changes ----------------------------------------------------------------
    def note_reported(self, metas: Iterable[MessageMeta]) -> None:
        for m in metas:
            self.reported[m.uid] = m.modseq

    def notify(self, modseq: int) -> None:
        """A change was committed (``modseq`` 0: unknown, e.g. a delivery)."""
        self.dirty = True
        self.notified = max(self.notified, modseq or UNKNOWN_MODSEQ)

    def needs_read(self) -> bool:
        """Must ``changes_since`` be asked? Not when every notified change is one the
        session made itself and already applied (see :meth:`own_write`)."""
        return self.dirty and self.notified > self.modseq

    def own_write(self, changed: Sequence[MessageMeta]) -> None:
        """The session's own flag write is applied: if it took the very next modseq,
        nobody else wrote in between and the view is in sync up to it."""
        if changed and changed[0].modseq == self.modseq + 1:
            self.modseq = changed[0].modseq

    def remove(self, uids: Iterable[int], *, qresync: bool) -> list[bytes]:
        """Drop ``uids`` from the view now; the EXPUNGE/VANISHED responses to send."""
        gone = set(uids)
        if not gone:
            return []
        old = self.uids
        out: list[bytes] = []
        if self.contexts:
            # RFC 5267 4.3.4: REMOVEFROM with the old numbers, before the EXPUNGEs.
            from postroom.net.imap.contexts import before_expunge

            out.extend(before_expunge(self, gone))
        self._changed(tuple(gone))
        if qresync:
            present = [u for u in old if u in gone]
            if present:
                out.append(responses.vanished(present))
        else:
            # Highest sequence number first: each response is valid when it is read.
            for i in range(len(old) - 1, -1, -1):
                if old[i] in gone:
                    out.append(responses.expunge(i + 1))
        keep = [i for i, u in enumerate(old) if u not in gone]
        self.uids = uid_array(old[i] for i in keep)
        flags = self.flags
        self.flags = bytearray(flags[i] for i in keep)
        self.pending -= gone
        for u in gone:
            self.reported.pop(u, None)
            self.kw.pop(u, None)
        if self.saved:
            # RFC 5182 2.1: expunged messages leave the saved result. It only ever holds
            # UIDs that matched a search, so iterating it is bounded by the mailbox size.
            self.saved = RangeSet.from_numbers(u for u in self.saved if u not in gone)
        return out

    def apply(
        self,
        changes: Changes,
        *,
        expunge: bool,
        rev1: bool,
        condstore: bool,
        qresync: bool,
        recent_from: int | None = None,
    ) -> list[bytes]:
        """Untagged responses that bring the client up to ``changes``; updates the view.

        ``expunge``: the running command may report expunges. ``recent_from``: the
        session just claimed \\Recent for UIDs from this one (``store.claim_recent``).
        """
        out: list[bytes] = []
        last = self.last_uid
        for uid in changes.vanished:
            if uid <= last and self.seq_of(uid) is not None:
                self.pending.add(uid)
        if expunge and self.pending:
            out.extend(self.remove(tuple(self.pending), qresync=qresync))
        new: list[MessageMeta] = []
        updates: list[MessageMeta] = []
        for m in changes.changed:
            if m.uid > last:
                new.append(m)
            elif self.reported.get(m.uid) != m.modseq and m.uid not in self.pending:
                updates.append(m)
        self.update_flags(m for m in changes.changed if m.uid <= last)
        if (line := self.announce(changes.changed)) is not None:
            out.append(line)
        if new:
            self._changed(tuple(m.uid for m in new))
            if recent_from is not None and rev1:
                self.recent.append((recent_from, new[-1].uid))
            self.uids.extend(m.uid for m in new)
            self.flags.extend(m.flags & 0xFF for m in new)
            self.kw.update((m.uid, m.keywords) for m in new if m.keywords)
            out.append(responses.exists(len(self.uids)))
            if rev1:
                out.append(responses.recent(self.recent_count()))
        for m in updates:
            seq = self.seq_of(m.uid)
            if seq is not None:
                out.append(self.fetch_flags(seq, m, rev1=rev1, condstore=condstore))
        self.uidnext = max(self.uidnext, changes.uidnext)
        self.modseq = max(self.modseq, changes.highestmodseq)
        self.reported.clear()
        return out

    def fetch_flags(self, seq: int, m: MessageMeta, *, rev1: bool, condstore: bool) -> bytes:
        """``* n FETCH (UID u FLAGS (...) [MODSEQ (m)])``: an unsolicited flag update."""
        flags = " ".join(self.flag_names(m, rev1)).encode("utf-8")
        tail = b" MODSEQ (%d)" % m.modseq if condstore else b""
        return b"* %d FETCH (UID %d FLAGS (%s)%s)\r\n" % (seq, m.uid, flags, tail)
