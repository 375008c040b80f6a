"""SELECT and EXAMINE (with CONDSTORE and QRESYNC), CLOSE and UNSELECT.

SELECT builds the session's view (:class:`~.selected.SelectedMailbox`) from one read of
the mailbox row and one of its message list. The change listener is subscribed *before*
those reads, so a delivery that commits in between marks the view dirty and is reported
right after the tagged OK instead of being lost. IMAP4rev1 sessions that open the mailbox
read-write claim the \\Recent messages (``store.claim_recent``, RFC 3501 2.3.2);
IMAP4rev2 has no \\Recent and EXAMINE never claims.

QRESYNC (RFC 7162 3.2.5): with a matching UIDVALIDITY the client gets ``* VANISHED
(EARLIER)`` for the UIDs expunged since its modseq (within its known UIDs) and a FETCH
(UID FLAGS MODSEQ) for every message changed since then. The store keeps every expunged
UID with its modseq, so the optional sequence match data is never needed and is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap.selected import SYSTEM_FLAG_NAMES, SelectedMailbox
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Close, Select, Unselect
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import compact
from postroom.store.api import FLAG_DELETED, FLAG_SEEN

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

PERMANENT_FLAGS = SYSTEM_FLAG_NAMES + ("\\*",)  # keywords may be created (RFC 9051 7.1)


async def select(s: ImapSession, cmd: Select) -> bytes:
    store = s.store
    user = s.user
    assert user is not None
    if s.selected is not None:
        # RFC 9051 6.3.2: the current mailbox is closed first (no expunge), even if this
        # SELECT fails; RFC 7162 3.2.11 / RFC 9051 7.1: say so with [CLOSED].
        s.unselect()
        s.write(responses.untagged("OK", "Previous mailbox is now closed", responses.CLOSED))
    if cmd.qresync is not None and not s.qresync:
        raise ImapPeerError("QRESYNC must be enabled first", tag=cmd.tag)
    if cmd.condstore:
        s.condstore = True  # RFC 7162 3.1.8: SELECT (CONDSTORE) enables CONDSTORE
    found = await store.get_mailbox(user.id, cmd.mailbox)
    if found is None:
        raise ImapPeerError("No such mailbox", status="NO", code=responses.NONEXISTENT, tag=cmd.tag)
    readonly = cmd.readonly
    view = SelectedMailbox(
        found.id, found.name, readonly=readonly, uidvalidity=found.uidvalidity,
        uidnext=found.uidnext, modseq=found.highestmodseq, uids=(),
    )
    s.select(view)
    recent_from = None
    if s.rev1 and not readonly:
        recent_from = await store.claim_recent(found.id)
    mailbox = await store.get_mailbox_by_id(found.id)
    if mailbox is None:
        s.unselect()
        raise ImapPeerError("No such mailbox", status="NO", code=responses.NONEXISTENT, tag=cmd.tag)
    metas = await store.list_messages(mailbox.id)
    view.set_messages(metas)
    view.modseq = mailbox.highestmodseq
    view.uidnext = mailbox.uidnext
    view.uidvalidity = mailbox.uidvalidity
    keywords: set[str] = set()
    first_unseen = 0
    for i, m in enumerate(metas):
        if m.keywords:
            keywords.update(m.keywords)
        if not first_unseen and not m.flags & FLAG_SEEN:
            first_unseen = i + 1
    view.keywords = keywords
    if recent_from is not None and recent_from < mailbox.uidnext:
        view.recent = [(recent_from, mailbox.uidnext - 1)]

    w = s.write
    w(view.flags_response())
    if readonly:
        w(responses.untagged("OK", "No permanent flags permitted", responses.code_permanentflags(())))
    else:
        w(responses.untagged("OK", "Flags permitted", responses.code_permanentflags(PERMANENT_FLAGS)))
    w(responses.exists(len(metas)))
    if s.rev1:
        w(responses.recent(view.recent_count()))
        if first_unseen:
            w(responses.untagged("OK", "First unseen", responses.code_unseen(first_unseen)))
    w(responses.untagged("OK", "UIDs valid", responses.code_uidvalidity(mailbox.uidvalidity)))
    w(responses.untagged("OK", "Predicted next UID", responses.code_uidnext(mailbox.uidnext)))
    # RFC 7162 3.1.2.1: sent with every SELECT by a server that keeps mod-sequences.
    w(responses.untagged("OK", "Highest", responses.code_highestmodseq(mailbox.highestmodseq)))
    if s.rev2:
        # RFC 9051 6.3.2: the mailbox's canonical name in a LIST response.
        w(responses.list_response(mailbox.name, (), utf8=s.utf8))
    q = cmd.qresync
    if q is not None and q.uidvalidity == mailbox.uidvalidity:
        vanished = await store.vanished_since(mailbox.id, q.modseq)
        if q.known_uids is not None and vanished:
            known = q.known_uids.resolve(max(vanished[-1], view.last_uid))
            vanished = [u for u in vanished if u in known]
        if vanished:
            w(responses.vanished(compact(vanished), earlier=True))
        for i, m in enumerate(metas):
            if m.modseq > q.modseq:
                w(view.fetch_flags(i + 1, m, rev1=s.rev1, condstore=True))
    code = responses.READ_ONLY if readonly else responses.READ_WRITE
    return responses.ok(cmd.tag, ("EXAMINE" if readonly else "SELECT") + " completed", code)


async def close(s: ImapSession, cmd: Close) -> bytes:
    # RFC 9051 6.4.1: expunge \Deleted messages silently (unless read-only), then close.
    view = s.selected
    assert view is not None
    s.unselect()
    if not view.readonly and view.uids:
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
