"""Reading messages by IMAP URL: CATENATE and URLFETCH in IMAP, BURL on submission.

One place decides what a URL (already parsed, :mod:`postroom.proto.imap.url`) yields, so
that an IMAP client and the submission server get the same octets for the same URL:

* :func:`read_part` reads the message a URL names in a given mailbox (UIDVALIDITY checked
  when the URL has one) and cuts the section and partial range out of it, exactly as
  ``FETCH BODY.PEEK[section]<partial>`` would (RFC 5092 6, RFC 4469 3). A part that does
  not exist is an error here (BADURL), not an empty string as in FETCH.
* URLAUTH (RFC 4467): :func:`token` is the verifier of a URL rump, an HMAC-SHA256 under
  the mailbox's secret key (mechanism INTERNAL, RFC 4467 2.4 leaves the algorithm to the
  server); :func:`authorized` checks an authorized URL for a requester: the access
  identifier, the expiry and the verifier (compared in constant time). RESETKEY replaces
  the key, which invalidates every URL of the mailbox.

A command that names many URLs (a CATENATE of thousands of parts, URLFETCH) reads each
message once: :class:`Reads` keeps the messages one command has read, bounded in octets.

The URL's user is the owner of the mailbox (the one who generated it). A user part
without "@" is taken as a local part in the URL's host (``imap://alice@example.org/``
means alice@example.org), which is how clients build URLs from a login and a domain.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass

from postroom.message import MessageSummary, SummaryError
from postroom.proto.imap.sections import apply_partial, extract, find_part
from postroom.proto.imap.url import ImapUrl
from postroom.store.api import Mailbox, MessageContent, Store, User

MECHANISM = "INTERNAL"  # the only URLAUTH mechanism (RFC 4467 2.4)


class BadUrl(Exception):
    """The URL does not resolve to readable data (NO [BADURL], BURL 554 5.7.8 / 5.5.4)."""


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks: an IMAP session's user, or the submission server for a user (BURL)."""

    user: User | None  # None: not logged in (only "anonymous" URLs)
    submit: bool = False  # the submission server acting for ``user`` (RFC 4467 submit+)


def token(key: bytes, rump: str) -> str:
    """The verifier of ``rump`` (RFC 4467 2.4): 64 hex digits of HMAC-SHA256."""
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha256).hexdigest()


async def url_owner(store: Store, url: ImapUrl, fallback: User | None = None) -> User | None:
    """The user a URL's user part names (see the module docstring), or ``fallback`` for
    a relative URL or a bare local part that names no account in the URL's host."""
    if url.user is None:
        return fallback
    if "@" in url.user:
        return await store.get_user(url.user.rpartition("@")[0] + "@" + url.user.rpartition("@")[2].lower())
    if url.host:
        found = await store.get_user(f"{url.user}@{url.host}")
        if found is not None:
            return found
    if fallback is not None and fallback.address.rpartition("@")[0] == url.user:
        return fallback
    return None


def access_allows(access: str, requester: Requester) -> bool:
    """RFC 4467 3: may this requester use a URL with this access identifier?"""
    if access == "anonymous":
        return True
    user = requester.user
    if user is None:
        return False
    if access == "authuser":
        return True
    kind, _, who = access.partition("+")
    if who.lower() != user.address.lower():
        return False
    if kind == "submit":
        return requester.submit
    return kind == "user"


def expired(url: ImapUrl, now: datetime.datetime | None = None) -> bool:
    if url.expire is None:
        return False
    return (now or datetime.datetime.now(datetime.UTC)) >= url.expire


async def authorized(store: Store, url: ImapUrl, requester: Requester) -> Mailbox:
    """The mailbox an authorized URL opens to ``requester``; BadUrl otherwise."""
    if not url.authorized or url.mechanism != MECHANISM or url.access is None:
        raise BadUrl("not an authorized URL")
    if not access_allows(url.access, requester) or expired(url):
        raise BadUrl("access denied or expired")
    owner = await url_owner(store, url)
    if owner is None:
        raise BadUrl("no such user")
    mailbox = await store.get_mailbox(owner.id, url.mailbox)
    if mailbox is None:
        raise BadUrl("no such mailbox")
    key = await store.urlauth_key(mailbox.id, create=False)
    if key is None or not hmac.compare_digest(token(key, url.rump), url.token or ""):
        raise BadUrl("bad verifier")
    return mailbox


class Reads:
    """The messages one command has read by URL, so that a command naming one message in
    many URLs reads it once (a CATENATE of 2,000 one-octet PARTIALs of a 50 MB message
    would otherwise read 100 GB). Bounded: once more than ``max_octets`` are held, the
    oldest are dropped (a command naming many different messages reads them again)."""

    def __init__(self, max_octets: int) -> None:
        self.max_octets = max_octets
        self._held: dict[tuple[int, int], MessageContent] = {}  # oldest first
        self._octets = 0

    async def get(self, store: Store, mailbox_id: int, uid: int) -> MessageContent | None:
        key = (mailbox_id, uid)
        held = self._held.get(key)
        if held is not None:
            return held
        found = await store.read_messages(mailbox_id, [uid], summary=True, data=True)
        if not found or found[0].data is None or found[0].summary is None:
            return None
        self._held[key] = found[0]
        self._octets += len(found[0].data)
        while self._octets > self.max_octets and len(self._held) > 1:
            oldest = next(iter(self._held))
            self._octets -= len(self._held.pop(oldest).data or b"")
        return found[0]


async def read_part(store: Store, mailbox: Mailbox, url: ImapUrl, reads: Reads | None = None) -> bytes:
    """The octets ``url`` names inside ``mailbox`` (see the module docstring); through
    ``reads`` when the command names more than one URL."""
    if url.uidvalidity is not None and url.uidvalidity != mailbox.uidvalidity:
        raise BadUrl("UIDVALIDITY changed")
    message = await (reads or Reads(0)).get(store, mailbox.id, url.uid)
    if message is None or message.data is None or message.summary is None:
        raise BadUrl("no such message")
    data = message.data
    if url.section is None:
        part = data
    else:
        try:
            summary = MessageSummary.from_bytes(message.summary)
        except SummaryError:
            from postroom.deliver import summarize

            summary = MessageSummary.from_bytes(summarize(data))
        if url.section.part and find_part(summary, url.section.part) is None:
            raise BadUrl("no such part")
        part = extract(data, summary, url.section)
    if url.partial is not None:
        offset, length = url.partial
        part = apply_partial(part, (offset, length if length is not None else len(part) + 1))
    return part
