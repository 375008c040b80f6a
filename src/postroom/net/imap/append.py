"""APPEND: MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), UIDPLUS (RFC 4315), ACL, QUOTA.

Every message of the command is prepared first (CATENATE parts assembled, the parts of a
literal8 or NUL-carrying message that are not text re-encoded as base64, RFC 3516 4.4 and
:mod:`postroom.message.binary`, line endings normalised the way delivery does them,
``deliver.prepare_append``; the parse summary
computed once, in a worker process for big or many-part messages, ``deliver.costly``, so
the event loop stays free), then all of them are stored in one store
transaction (``Store.append_many``): a MULTIAPPEND is atomic, either every message is
there or none (RFC 3502 6.3.11), and a quota is checked for the whole command at once
(``NO [OVERQUOTA]``, RFC 9208 4.3).

Order of refusals, as Dovecot answers them: a destination that does not exist is
``NO [TRYCREATE]`` before anything else (RFC 9051 6.3.12), then a missing "i" right
(RFC 4314 4), then the first URL that cannot be read (``NO [BADURL url]``, RFC 4469
4.1), then size (``NO [TOOBIG]``). Flags the user has no right to set are silently
dropped (RFC 4314 4: "\\Seen" needs "s", "\\Deleted" "t", the rest "w").

A whole command is bounded like its literals (``Limits.authenticated``: twice the
APPENDLIMIT for a MULTIAPPEND), counting the octets URLs bring in: 40 CATENATEs of one
big stored message are 40 short lines that would otherwise make the server read and
hold 40 copies. A message one command names in many URLs is read once
(:class:`imapurl.Reads`).

CATENATE URLs are read with the session's own access (relative ``/mailbox/;UID=n``
URLs and absolute ones of this user: any mailbox it may read, "r"), or as URLAUTH
URLs (RFC 4467) that this user may fetch. See :mod:`postroom.imapurl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom import deliver, imapurl
from postroom.net import budget
from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Append, AppendMessage
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.responses_ext import code_badurl
from postroom.proto.imap.url import UrlError, parse_url
from postroom.store.api import MAX_KEYWORD_LENGTH, NewMessage, OverQuota, names_to_flags

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

def _no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    return ImapPeerError(text, status="NO", code=code, tag=tag)


async def read_url(s: ImapSession, raw: bytes, reads: imapurl.Reads | None = None) -> bytes:
    """The octets of one CATENATE URL; :class:`imapurl.BadUrl` when it does not resolve."""
    user = s.user
    assert user is not None
    try:
        url = parse_url(raw.decode("ascii"), relative=True)
    except (UrlError, UnicodeDecodeError):
        raise imapurl.BadUrl("syntax") from None
    if url.authorized:
        mailbox = await imapurl.authorized(s.store, url, imapurl.Requester(user))
        return await imapurl.read_part(s.store, mailbox, url, reads)
    owner = await imapurl.url_owner(s.store, url, user)
    if owner is None or owner.id != user.id:
        raise imapurl.BadUrl("not this user's URL")
    ref = await access.resolve(s, url.mailbox)
    if ref is None or not ref.may("r"):
        raise imapurl.BadUrl("no readable mailbox")
    return await imapurl.read_part(s.store, ref.mailbox, url, reads)


async def _assemble(s: ImapSession, message: AppendMessage, tag: str, limit: int,
                    reads: imapurl.Reads) -> bytes:
    if message.parts is None:
        return message.data
    out: list[bytes] = []
    size = 0
    for kind, value in message.parts:
        await budget.tick()
        if kind == "URL":
            try:
                piece = await read_url(s, value, reads)
            except imapurl.BadUrl:
                raise _no(tag, "Cannot read the URL", code_badurl(value.decode("ascii", "replace"))) from None
        else:
            piece = value
        size += len(piece)
        if size > limit:
            raise _no(tag, "Message too large", responses.TOOBIG)
        out.append(piece)
    return b"".join(out)


async def append(s: ImapSession, cmd: Append) -> bytes:
    ref = await access.require(s, cmd.mailbox, "i", cmd.tag, code=responses.TRYCREATE)
    if not s.services.free_space.has_room(sum(len(m.data) for m in cmd.messages)):
        # The data folder's disk is nearly full (policy/disk.py): new mail waits, while
        # reading, flag changes and deletions (which free space) keep working.
        raise _no(cmd.tag, "Not enough disk space on the server, try again later", responses.OVERQUOTA)
    mask, keywords_ok = access.flag_mask(ref.rights)
    limit = s.settings.limits.message_size
    prepared: list[NewMessage] = []
    reads = imapurl.Reads(2 * limit)
    total = 0
    for message in cmd.messages:
        data = await _assemble(s, message, cmd.tag, limit, reads)
        if not data:
            raise _no(cmd.tag, "Empty messages cannot be stored")
        total += len(data)
        if len(data) > limit or total > 2 * limit:
            # the same bound as literals: Limits.authenticated's max_command
            raise _no(cmd.tag, "Message too large", responses.TOOBIG)
        bits, keywords = names_to_flags(message.flags)
        if any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
            raise _no(cmd.tag, "Keyword too long", responses.LIMIT)
        when = None
        if message.internal_date is not None:
            when = int(message.internal_date.timestamp())
        binary = message.binary or b"\x00" in data
        if deliver.costly(data):
            # A big or many-part message: parsed in a worker process, not on the loop.
            data, summary = await s.services.offload(deliver.prepare_append, data, binary)
        else:
            data, summary = deliver.prepare_append(data, binary)
        if binary and len(data) > limit:
            raise _no(cmd.tag, "Message too large once its binary parts are encoded", responses.TOOBIG)
        prepared.append(NewMessage(data, summary, bits & mask, keywords if keywords_ok else (), when))
    try:
        validity, uids = await s.store.append_many(ref.mailbox.id, prepared)
    except OverQuota:
        raise _no(cmd.tag, "Quota exceeded", responses.OVERQUOTA) from None
    # RFC 4315 3: APPENDUID uidvalidity uid-set (several for MULTIAPPEND, RFC 3502).
    return responses.ok(cmd.tag, "APPEND completed", responses.code_appenduid(validity, uids))


HANDLERS = {Append: append}
