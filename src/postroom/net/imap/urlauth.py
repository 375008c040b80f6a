"""URLAUTH (RFC 4467): GENURLAUTH, RESETKEY, URLFETCH.

GENURLAUTH signs a URL rump of one of the user's own mailboxes (the URL's user must be
the logged-in user, the mailbox a personal one that exists) with the mailbox's key:
``* GENURLAUTH "<rump>:internal:<64 hex digits>"``. URLFETCH returns the data of each
authorized URL the user may use (access "authuser", "anonymous" or "user+<this user>";
"submit+<user>" URLs are for the submission server, BURL), NIL for any other, an
expired one, or one whose key was reset. RESETKEY replaces the key of one mailbox or of
all the user's mailboxes, which invalidates every URL generated for them.

The mechanism is INTERNAL only; the extended URLFETCH of RFC 5524 (URLAUTH=BINARY) is
not implemented and answered BAD. The data of one URLFETCH is bounded (twice the
message size limit, as an APPEND is): over it, ``NO [LIMIT]`` and nothing is sent. See :mod:`postroom.imapurl` for the verification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom import imapurl
from postroom.net import budget
from postroom.net.imap import access
from postroom.proto.imap import responses, wire
from postroom.proto.imap.commands import GenUrlAuth, ResetKey, UrlFetch
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.responses_ext import genurlauth as genurlauth_response
from postroom.proto.imap.responses_ext import urlfetch as urlfetch_response
from postroom.proto.imap.url import UrlError, parse_url

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

CAPABILITIES = ("URLAUTH",)
MAX_URLFETCH = 64  # URLs in one URLFETCH command


def _no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    return ImapPeerError(text, status="NO", code=code, tag=tag)


async def genurlauth(s: ImapSession, cmd: GenUrlAuth) -> bytes:
    user = s.user
    assert user is not None
    urls: list[str] = []
    for text, mechanism in cmd.items:
        if mechanism != imapurl.MECHANISM:
            raise _no(cmd.tag, "Unsupported URLAUTH mechanism")
        try:
            url = parse_url(text)
        except UrlError:
            raise _no(cmd.tag, "Invalid URL") from None
        if url.access is None or url.token is not None:
            raise _no(cmd.tag, "The URL needs ;URLAUTH=<access> and no verifier")
        owner = await imapurl.url_owner(s.store, url)
        if owner is None or owner.id != user.id or access.is_shared(url.mailbox):
            raise _no(cmd.tag, "Only URLs of your own mailboxes can be authorized")
        mailbox = await s.store.get_mailbox(user.id, url.mailbox)
        if mailbox is None or url.uidvalidity not in (None, mailbox.uidvalidity):
            raise _no(cmd.tag, "No such mailbox", responses.NONEXISTENT)
        key = await s.store.urlauth_key(mailbox.id)
        assert key is not None
        urls.append(f"{url.rump}:internal:{imapurl.token(key, url.rump)}")
    s.write(genurlauth_response(urls))
    return responses.ok(cmd.tag, "GENURLAUTH completed")


async def resetkey(s: ImapSession, cmd: ResetKey) -> bytes:
    user = s.user
    assert user is not None
    if any(m != imapurl.MECHANISM for m in cmd.mechanisms):
        raise _no(cmd.tag, "Unsupported URLAUTH mechanism")
    mailbox_id = None
    if cmd.mailbox is not None:
        mailbox = None if access.is_shared(cmd.mailbox) else await s.store.get_mailbox(user.id, cmd.mailbox)
        if mailbox is None:
            raise access.no_such_mailbox(cmd.tag)
        mailbox_id = mailbox.id
    await s.store.reset_urlauth_keys(user.id, mailbox_id)
    return responses.ok(cmd.tag, "RESETKEY completed")


async def fetch_url(s: ImapSession, text: str, reads: imapurl.Reads | None = None) -> bytes | None:
    """The data of one authorized URL for this session, or None (answered NIL)."""
    try:
        url = parse_url(text)
        mailbox = await imapurl.authorized(s.store, url, imapurl.Requester(s.user))
        return await imapurl.read_part(s.store, mailbox, url, reads)
    except (UrlError, imapurl.BadUrl):
        return None


async def urlfetch(s: ImapSession, cmd: UrlFetch) -> bytes:
    if any(params for _, params in cmd.items):
        raise ImapPeerError("URLFETCH parameters (URLAUTH=BINARY) are not supported", tag=cmd.tag)
    if len(cmd.items) > MAX_URLFETCH:
        raise _no(cmd.tag, "Too many URLs", responses.LIMIT)
    # The answer is built whole before it is written: bounded like an APPEND command
    # (twice the message size limit), else 64 URLs of one big message are 64 copies.
    bound = 2 * s.settings.limits.message_size
    reads = imapurl.Reads(bound)
    items = []
    total = 0
    for text, _ in cmd.items:
        await budget.tick()
        data = await fetch_url(s, text, reads)
        total += len(data or b"")
        if total > bound:
            raise _no(cmd.tag, "The URLs' data is too large for one URLFETCH; fetch fewer", responses.LIMIT)
        items.append((text, wire.nstring(data) if data is None or b"\x00" not in data
                      else b"~{%d}\r\n" % len(data) + data))
    s.write(urlfetch_response(items))
    return responses.ok(cmd.tag, "URLFETCH completed")


HANDLERS = {GenUrlAuth: genurlauth, ResetKey: resetkey, UrlFetch: urlfetch}
