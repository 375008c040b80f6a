"""COPY, MOVE (RFC 6851), APPEND (MULTIAPPEND RFC 3502, UIDPLUS RFC 4315) and EXPUNGE.

COPY shares the stored message bytes (the store only adds references). MOVE is one store
transaction; the client then hears ``* OK [COPYUID ...]`` followed by the EXPUNGE (or
VANISHED) responses of the moved messages, as RFC 6851 4.3 asks. A destination that does
not exist is ``NO [TRYCREATE]`` so clients know to CREATE it (RFC 9051 6.3.12).

APPEND normalises line endings the way delivery does (``deliver.normalize``: CRLF
throughout and a final CRLF, the invariant POP3 sizes rely on), after re-encoding as base64
the parts of a literal8 (or NUL-carrying) message that are not text (RFC 3516 4.4,
:mod:`postroom.message.binary`), and computes the parse summary once
(``deliver.summarize``, on a worker thread for big messages). Every message of a
MULTIAPPEND is checked and prepared before the first one is stored, so a bad message in
the middle does not leave half of them behind.

EXPUNGE (and UID EXPUNGE, RFC 4315 2.1) removes the \\Deleted messages the client knows
about (found in the view's flags, confirmed by one read of just those), reports them, and
also reports expunges of other sessions that were pending.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from postroom import deliver
from postroom.message.binary import encode_binary_parts
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Append, Copy, Expunge, Move
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import RangeSet
from postroom.store.api import FLAG_DELETED, MAX_KEYWORD_LENGTH, names_to_flags

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

SUMMARIZE_IN_THREAD = 256 * 1024
TEXT_TRYCREATE = "No such mailbox"


async def _destination(s: ImapSession, name: str, tag: str) -> tuple[int, int]:
    """(mailbox id, uidvalidity) of a COPY/MOVE/APPEND target, or NO [TRYCREATE]."""
    assert s.user is not None
    mailbox = await s.store.get_mailbox(s.user.id, name)
    if mailbox is None:
        raise ImapPeerError(TEXT_TRYCREATE, status="NO", code=responses.TRYCREATE, tag=tag)
    return mailbox.id, mailbox.uidvalidity


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
    positions = view.positions(cmd.seqset, cmd.uid)
    dst, validity = await _destination(s, cmd.mailbox, cmd.tag)
    uids = view.uids_at(positions)
    name = ("UID " if cmd.uid else "") + ("MOVE" if move else "COPY")
    if not uids:
        return responses.ok(cmd.tag, f"{name} completed (no messages)")
    transfer = s.store.move_messages if move else s.store.copy_messages
    pairs = await transfer(view.mailbox_id, uids, dst)
    if not pairs:
        return responses.no(cmd.tag, "The messages no longer exist", responses.EXPUNGEISSUED)
    code = responses.code_copyuid(validity, [a for a, _ in pairs], [b for _, b in pairs])
    if not move:
        return responses.ok(cmd.tag, f"{name} completed", code)
    s.write(responses.untagged("OK", "Moved", code))  # RFC 6851 4.3: before the expunges
    for line in view.remove([a for a, _ in pairs], qresync=s.qresync):
        s.write(line)
    return responses.ok(cmd.tag, f"{name} completed")


async def append(s: ImapSession, cmd: Append) -> bytes:
    dst, _ = await _destination(s, cmd.mailbox, cmd.tag)
    limit = s.settings.limits.message_size
    loop = asyncio.get_running_loop()
    prepared = []
    for message in cmd.messages:
        data = message.data
        if not data:
            raise ImapPeerError("Empty messages cannot be stored", status="NO", tag=cmd.tag)
        if len(data) > limit:
            raise ImapPeerError("Message too large", status="NO", code=responses.TOOBIG, tag=cmd.tag)
        bits, keywords = names_to_flags(message.flags)
        if any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
            raise ImapPeerError("Keyword too long", status="NO", code=responses.LIMIT, tag=cmd.tag)
        when = None
        if message.internal_date is not None:
            when = int(message.internal_date.timestamp())
        if message.binary or b"\x00" in data:
            # RFC 3516 4.4: parts that cannot be stored as text become base64 (see
            # message.binary); BINARY[] fetches give the client its octets back.
            data = encode_binary_parts(data) or data
            if len(data) > limit:
                raise ImapPeerError("Message too large once its binary parts are encoded",
                                    status="NO", code=responses.TOOBIG, tag=cmd.tag)
        data = deliver.normalize(data)
        if len(data) > SUMMARIZE_IN_THREAD:
            summary = await loop.run_in_executor(None, deliver.summarize, data)
        else:
            summary = deliver.summarize(data)
        prepared.append((data, summary, bits, keywords, when))
    validity = 0
    uids: list[int] = []
    for data, summary, bits, keywords, when in prepared:
        validity, uid = await s.store.append(dst, data, summary, bits, keywords, when)
        uids.append(uid)
    # RFC 4315 3: APPENDUID uidvalidity uid-set (several for MULTIAPPEND, RFC 3502).
    return responses.ok(cmd.tag, "APPEND completed", responses.code_appenduid(validity, uids))


async def expunge(s: ImapSession, cmd: Expunge) -> bytes:
    view = s.selected
    assert view is not None
    if view.readonly:
        raise ImapPeerError("The mailbox is read-only", status="NO", code=responses.READ_ONLY,
                            tag=cmd.tag)
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


HANDLERS = {Copy: copy, Move: move, Append: append, Expunge: expunge}
