"""COPY, MOVE (RFC 6851) and EXPUNGE (APPEND lives in ``append``).

COPY shares the stored message bytes (the store only adds references). MOVE is one store
transaction; the client then hears ``* OK [COPYUID ...]`` followed by the EXPUNGE (or
VANISHED) responses of the moved messages, as RFC 6851 4.3 asks. A destination that does
not exist is ``NO [TRYCREATE]`` so clients know to CREATE it (RFC 9051 6.3.12).

Rights (RFC 4314 4): the destination needs "i"; the copies keep only the flags the user
may set there ("s", "t", "w"); MOVE also needs "t" and "e" on the source (it deletes and
expunges there, RFC 6851 3.3); EXPUNGE needs "e". A destination over quota refuses with
``NO [OVERQUOTA]`` (RFC 9208 4.3; a MOVE between two mailboxes of one user never does).

EXPUNGE (and UID EXPUNGE, RFC 4315 2.1) removes the \\Deleted messages the client knows
about (found in the view's flags, confirmed by one read of just those), reports them, and
also reports expunges of other sessions that were pending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Copy, Expunge, Move
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import RangeSet
from postroom.store.api import FLAG_DELETED, OverQuota

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession


async def copy(s: ImapSession, cmd: Copy) -> bytes:
    return await _transfer(s, cmd, move=False)


async def move(s: ImapSession, cmd: Move) -> bytes:
    return await _transfer(s, cmd, move=True)


async def _transfer(s: ImapSession, cmd: Copy | Move, *, move: bool) -> bytes:
    """COPY and MOVE: the same steps, except that MOVE needs a writable mailbox and reports
    COPYUID untagged before the expunges (RFC 6851 4.3)."""
    view = s.selected
    assert view is not None
    if move and view.readonly:
        raise ImapPeerError("The mailbox is read-only", status="NO", code=responses.READ_ONLY,
                            tag=cmd.tag)
    if move and not all(r in view.rights for r in "te"):
        raise ImapPeerError(access.TEXT_NOPERM, status="NO", code=responses.NOPERM, tag=cmd.tag)
    positions = view.positions(cmd.seqset, cmd.uid)
    ref = await access.require(s, cmd.mailbox, "i", cmd.tag, code=responses.TRYCREATE)
    dst, validity = ref.mailbox.id, ref.mailbox.uidvalidity
    mask, keywords = access.flag_mask(ref.rights)
    uids = view.uids_at(positions)
    name = ("UID " if cmd.uid else "") + ("MOVE" if move else "COPY")
    if not uids:
        return responses.ok(cmd.tag, f"{name} completed (no messages)")
    transfer = s.store.move_messages if move else s.store.copy_messages
    try:
        pairs = await transfer(view.mailbox_id, uids, dst, flag_mask=mask, keywords=keywords)
    except OverQuota:
        raise ImapPeerError("Quota exceeded", status="NO", code=responses.OVERQUOTA,
                            tag=cmd.tag) from None
    if not pairs:
        return responses.no(cmd.tag, "The messages no longer exist", responses.EXPUNGEISSUED)
    code = responses.code_copyuid(validity, [a for a, _ in pairs], [b for _, b in pairs])
    if not move:
        return responses.ok(cmd.tag, f"{name} completed", code)
    s.write(responses.untagged("OK", "Moved", code))  # RFC 6851 4.3: before the expunges
    for line in view.remove([a for a, _ in pairs], qresync=s.qresync):
        s.write(line)
    return responses.ok(cmd.tag, f"{name} completed")


async def expunge(s: ImapSession, cmd: Expunge) -> bytes:
    view = s.selected
    assert view is not None
    if view.readonly:
        raise ImapPeerError("The mailbox is read-only", status="NO", code=responses.READ_ONLY,
                            tag=cmd.tag)
    if "e" not in view.rights:
        raise ImapPeerError(access.TEXT_NOPERM, status="NO", code=responses.NOPERM, tag=cmd.tag)
    await s.sync(expunge=True)  # current flags; other sessions' expunges reported first
    only: RangeSet | None = None
    if cmd.uids is not None:
        only = cmd.uids.resolve(view.last_uid, view.saved)
    marked = [
        uid for uid, flags in zip(view.uids, view.flags, strict=True)
        if flags & FLAG_DELETED and (only is None or uid in only)
    ]
    gone: list[int] = []
    if marked:
        # Re-read just those: a flag cleared by another session a moment ago still counts.
        fresh = await s.store.get_messages(view.mailbox_id, marked)
        doomed = [m.uid for m in fresh if m.flags & FLAG_DELETED]
        if doomed:
            gone = await s.store.expunge(view.mailbox_id, doomed)
    for line in view.remove([*gone, *view.pending], qresync=s.qresync):
        s.write(line)
    return responses.ok(cmd.tag, ("UID EXPUNGE" if cmd.uid else "EXPUNGE") + " completed")


HANDLERS = {Copy: copy, Move: move, Expunge: expunge}
