"""SELECT and EXAMINE (with CONDSTORE and QRESYNC), CLOSE and UNSELECT.

SELECT builds the session's view (:class:`~.selected.SelectedMailbox`) from one store
read, ``mailbox_snapshot``: the mailbox row with its UIDs, flags and keywords as compact
columns (no object per message), so selecting a 10,000-message mailbox costs about a
millisecond. The change listener is subscribed *before* that read, under the mailbox id
remembered from an earlier SELECT (``ImapHandler.mailbox_ids``, else one lookup by
name), so a delivery that commits in between marks the view dirty and is reported right
after the tagged OK instead of being lost. Should the id turn out stale (the mailbox was
deleted and re-created, or renamed), the listener moves to the right id and the view is
marked dirty, so anything committed after the snapshot is still caught by modseq.

IMAP4rev1 sessions that open the mailbox read-write claim the \\Recent messages in the
same call (RFC 3501 2.3.2; the claim is cheap and not durable, see ``Store.claim_recent``).
EXAMINE never claims, but reports (and flags) as \\Recent the messages nobody has claimed
yet, so an EXAMINE then a SELECT both see them, as RFC 3501 asks of the first session to
be notified of a message. IMAP4rev2 has no \\Recent.

QRESYNC (RFC 7162 3.2.5): with a matching UIDVALIDITY the client gets ``* VANISHED
(EARLIER)`` for the UIDs expunged since its modseq (within its known UIDs) and a FETCH
(UID FLAGS MODSEQ) for every message changed since then, both from one
``changes_since`` read. The store keeps every expunged UID with its modseq, so the
optional sequence match data is never needed and is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.net.imap.selected import SYSTEM_FLAG_NAMES, SelectedMailbox
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Close, Select, Unselect
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import compact
from postroom.store.api import ALL_RIGHTS, FLAG_DELETED, FLAG_NAMES, FLAG_SEEN, MailboxSnapshot

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

PERMANENT_FLAGS = SYSTEM_FLAG_NAMES + ("\\*",)  # keywords may be created (RFC 9051 7.1)
# flags.translate(_SEEN_BYTES) holds 1 for each seen message, 0 for each unseen one.
_SEEN_BYTES = bytes(1 if b & FLAG_SEEN else 0 for b in range(256))
MAX_REMEMBERED_IDS = 100_000  # ImapHandler.mailbox_ids entries before it starts over


def permanent_flags(rights: str) -> tuple[str, ...]:
    """RFC 4314 5.1.1: PERMANENTFLAGS shows only the flags the user's rights allow."""
    if rights == ALL_RIGHTS:
        return PERMANENT_FLAGS
    mask, keywords = access.flag_mask(rights)
    names = tuple(n for bit, n in FLAG_NAMES if bit & mask)
    return names + ("\\*",) if keywords else names


def _no_such_mailbox(tag: str) -> ImapPeerError:
    return ImapPeerError("No such mailbox", status="NO", code=responses.NONEXISTENT, tag=tag)


async def _open(s: ImapSession, name: str, readonly: bool, tag: str) -> tuple[SelectedMailbox, MailboxSnapshot]:
    """Subscribe, then read the snapshot (see the module docstring for the order)."""
    store = s.store
    user = s.user
    assert user is not None
    owner_id, rights, shown = user.id, ALL_RIGHTS, name
    if access.is_shared(name):
        # Another user's mailbox (RFC 4314): "r" is needed; the rights are read once,
        # here, and kept for the selection (RFC 4314 5.1.1 allows that).
        ref = await access.require(s, name, "r", tag)
        owner_id, rights, name, shown = ref.owner_id, ref.rights, ref.mailbox.name, ref.name
        readonly = readonly or access.read_only(rights)
    ids = s.mailbox_ids
    key = (owner_id, name)
    guess = ids.get(key)
    if guess is None:
        found = await store.get_mailbox(owner_id, name)
        if found is None:
            raise _no_such_mailbox(tag)
        guess = found.id
    view = SelectedMailbox(guess, shown, readonly=readonly, uidvalidity=0, uidnext=1, modseq=0, uids=())
    view.rights = rights
    s.select(view)
    try:
        snap = await store.mailbox_snapshot(owner_id, name, claim_recent=s.rev1 and not readonly)
    except BaseException:
        s.unselect()
        raise
    if snap is None:
        s.unselect()
        ids.pop(key, None)
        raise _no_such_mailbox(tag)
    if snap.id != guess:
        # Stale id: listen to the right mailbox and re-check by modseq after the command.
        s.unselect()
        view.mailbox_id = snap.id
        s.select(view)
        view.notify(0)
    if len(ids) >= MAX_REMEMBERED_IDS:
        ids.clear()
    ids[key] = snap.id
    return view, snap


async def select(s: ImapSession, cmd: Select) -> bytes:
    if s.selected is not None:
        # RFC 9051 6.3.2: the current mailbox is closed first (no expunge), even if this
        # SELECT fails; RFC 7162 3.2.11 / RFC 9051 7.1: say so with [CLOSED].
        s.unselect()
        s.write(responses.untagged("OK", "Previous mailbox is now closed", responses.CLOSED))
    if cmd.qresync is not None and not s.qresync:
        raise ImapPeerError("QRESYNC must be enabled first", tag=cmd.tag)
    if cmd.condstore:
        s.condstore = True  # RFC 7162 3.1.8: SELECT (CONDSTORE) enables CONDSTORE
    view, snap = await _open(s, cmd.mailbox, cmd.readonly, cmd.tag)
    readonly = view.readonly
    if not access.is_shared(view.name):
        view.name = snap.name  # canonical spelling; a shared name is canonical already
    view.uidvalidity = snap.uidvalidity
    view.uidnext = snap.uidnext
    view.modseq = snap.highestmodseq
    view.uids = snap.uids
    view.flags = bytearray(snap.flags)
    view.kw = snap.keywords
    view.keywords = set().union(*snap.keywords.values()) if snap.keywords else set()
    if s.rev1 and snap.recent_from < snap.uidnext:
        # Claimed by this SELECT, or (EXAMINE) not claimed by anyone yet: \Recent for
        # this session either way, but EXAMINE leaves them to the next session.
        view.recent = [(snap.recent_from, snap.uidnext - 1)]

    w = s.write
    w(view.flags_response())
    if readonly:
        w(responses.untagged("OK", "No permanent flags permitted", responses.code_permanentflags(())))
    else:
        w(responses.untagged("OK", "Flags permitted", responses.code_permanentflags(
            permanent_flags(view.rights))))
    w(responses.exists(len(view.uids)))
    if s.rev1:
        w(responses.recent(view.recent_count()))
        first_unseen = snap.flags.translate(_SEEN_BYTES).find(0) + 1
        if first_unseen:
            w(responses.untagged("OK", "First unseen", responses.code_unseen(first_unseen)))
    w(responses.untagged("OK", "UIDs valid", responses.code_uidvalidity(snap.uidvalidity)))
    w(responses.untagged("OK", "Predicted next UID", responses.code_uidnext(snap.uidnext)))
    # RFC 7162 3.1.2.1: sent with every SELECT by a server that keeps mod-sequences.
    w(responses.untagged("OK", "Highest", responses.code_highestmodseq(snap.highestmodseq)))
    if s.rev2:
        # RFC 9051 6.3.2: the mailbox's canonical name in a LIST response.
        w(responses.list_response(view.name, (), utf8=s.utf8))
    q = cmd.qresync
    if q is not None and q.uidvalidity == snap.uidvalidity:
        changes = await s.store.changes_since(snap.id, q.modseq)
        last = view.last_uid
        # A UID the snapshot still holds was expunged after it: the next update of the
        # view reports that one, in order.
        seq_of = view.seq_of
        vanished = [u for u in changes.vanished if seq_of(u) is None]
        if q.known_uids is not None and vanished:
            known = q.known_uids.resolve(max(vanished[-1], last))
            vanished = [u for u in vanished if u in known]
        if vanished:
            w(responses.vanished(compact(vanished), earlier=True))
        if (line := view.announce(changes.changed)) is not None:
            w(line)  # keywords set after the snapshot: FLAGS before the FETCH shows them
        for m in changes.changed:
            seq = view.seq_of(m.uid) if m.uid <= last else None
            if seq is not None:
                w(view.fetch_flags(seq, m, rev1=s.rev1, condstore=True))
    code = responses.READ_ONLY if readonly else responses.READ_WRITE
    return responses.ok(cmd.tag, ("EXAMINE" if cmd.readonly else "SELECT") + " completed", code)


async def close(s: ImapSession, cmd: Close) -> bytes:
    # RFC 9051 6.4.1: expunge \Deleted messages silently (unless read-only), then close.
    view = s.selected
    assert view is not None
    s.unselect()
    # RFC 4314 4: without "e" CLOSE just closes (and still answers OK).
    if not view.readonly and view.uids and "e" in view.rights:
        metas = await s.store.list_messages(view.mailbox_id)
        last = view.last_uid
        doomed = [m.uid for m in metas if m.flags & FLAG_DELETED and m.uid <= last]
        if doomed:
            await s.store.expunge(view.mailbox_id, doomed)
    return responses.ok(cmd.tag, "CLOSE completed")


async def unselect(s: ImapSession, cmd: Unselect) -> bytes:
    s.unselect()  # RFC 3691: like CLOSE without the expunge
    return responses.ok(cmd.tag, "UNSELECT completed")


HANDLERS = {Select: select, Close: close, Unselect: unselect}
