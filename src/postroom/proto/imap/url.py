"""IMAP URLs (RFC 5092) as CATENATE, URLAUTH and BURL use them: a message or message part.

Grammar handled (RFC 5092 11, RFC 4467 9)::

    imapurl        = "imap://" iserver "/" imessagepart [iurlauth]
    iserver        = [enc-user [";AUTH=" ("*" / enc-auth-type)] "@"] host [":" port]
    imessagepart   = enc-mailbox [";UIDVALIDITY=" nz-number] "/;UID=" nz-number
                     ["/;SECTION=" enc-section] ["/;PARTIAL=" number ["." nz-number]]
    iurlauth       = [";EXPIRE=" date-time] ";URLAUTH=" access [":" mechanism ":" token]
    access         = ("submit+" enc-user) / ("user+" enc-user) / "authuser" / "anonymous"

plus the relative form CATENATE uses (RFC 4469 3: no scheme and server, resolved against
the session's user and server): ``"/" imessagepart``. Keywords are case-insensitive;
mailbox names and users are UTF-8, percent-encoded (%XX); the section is a FETCH section
spec, percent-encoded. Anything else, including IMAP URLs of mailboxes or searches, is
:class:`UrlError` (the caller answers ``NO [BADURL ...]``).

``rump`` is the URL text up to and including the access identifier: what a URLAUTH token
authorizes (RFC 4467 2.4), byte for byte as the client wrote it, so a token computed by
GENURLAUTH verifies the same octets at URLFETCH.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from urllib.parse import unquote

from postroom.proto.imap.grammar import ImapPeerError, Parser
from postroom.proto.imap.sections import SectionSpec

MAX_URL = 8192


class UrlError(ValueError):
    """Not a URL we can resolve (the message is safe to log, not shown to clients)."""


@dataclass(frozen=True, slots=True)
class ImapUrl:
    """One message (or part) URL. ``user`` and ``host`` are None in a relative URL."""

    user: str | None
    host: str | None
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: SectionSpec | None  # the ;SECTION= spec, None for the whole message
    section_text: str | None  # as written (decoded), for messages and logs
    partial: tuple[int, int | None] | None  # (offset, length or None: to the end)
    expire: datetime.datetime | None
    access: str | None  # "authuser", "anonymous", "user+alice@x", "submit+alice@x"
    mechanism: str | None  # upper-cased, e.g. "INTERNAL"
    token: str | None  # lower-case hex
    rump: str  # text up to the end of the access identifier ("" without ;URLAUTH=)

    @property
    def authorized(self) -> bool:
        return self.access is not None and self.token is not None


# ";" params inside one path segment.
_SERVER = re.compile(r"imap://(?:([^@/;]*)(?:;AUTH=[^@/]*)?@)?([^/:@]+)(?::(\d{1,5}))?/", re.I)
_UIDVALIDITY = re.compile(r";UIDVALIDITY=(\d{1,10})$", re.I)
_UID = re.compile(r";UID=(\d{1,10})", re.I)
_SECTION = re.compile(r";SECTION=(.+)", re.I)
_PARTIAL = re.compile(r";PARTIAL=(\d{1,20})(?:\.(\d{1,20}))?", re.I)
_EXPIRE = re.compile(r";EXPIRE=([0-9TtZz:.+-]+)", re.I)
_URLAUTH = re.compile(r";URLAUTH=((?:submit\+|user\+)[^:;/]+|authuser|anonymous)", re.I)
_VERIFIER = re.compile(r":([A-Za-z0-9.-]+):([0-9A-Fa-f]{32,})$")
_HEX_ESCAPE_OK = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")


def _decode(text: str, what: str) -> str:
    if not _HEX_ESCAPE_OK.fullmatch(text):
        raise UrlError(f"bad percent-encoding in {what}")
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise UrlError(f"bad UTF-8 in {what}") from None


def _section(text: str) -> SectionSpec:
    """``1.2.MIME``, ``HEADER.FIELDS (From To)`` ... through the FETCH section grammar."""
    from postroom.proto.imap.fetch import _section as parse_section

    try:
        p = Parser(b"[" + text.encode("utf-8") + b"]")
        section = parse_section(p)
        p.expect_end()
    except ImapPeerError:
        raise UrlError("bad section") from None
    return SectionSpec(section.part, section.text, section.fields)


def parse_url(text: str, *, relative: bool = False) -> ImapUrl:
    """Parse an absolute IMAP message URL (or, with ``relative``, also "/mailbox/;UID=")."""
    if len(text) > MAX_URL or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise UrlError("not a URL")
    user = host = None
    m = _SERVER.match(text)
    if m is not None:
        user = _decode(m.group(1), "user") if m.group(1) else None
        host = m.group(2).lower()
        path = text[m.end() - 1 :]
    elif relative and text.startswith("/") and not text.startswith("//"):
        path = text
    else:
        raise UrlError("not an imap:// URL")
    offset = len(text) - len(path)  # where ``path`` starts in ``text``
    # Split off the verifier (":mech:token") and the URLAUTH rump.
    mechanism = token = None
    v = _VERIFIER.search(path)
    if v is not None:
        mechanism, token = v.group(1).upper(), v.group(2).lower()
        path = path[: v.start()]
    access = None
    expire = None
    rump = ""
    a = _URLAUTH.search(path)
    if a is not None:
        if a.end() != len(path):
            raise UrlError("text after the access identifier")
        access = a.group(1)
        if access.lower() in ("authuser", "anonymous"):
            access = access.lower()
        else:
            kind, _, who = access.partition("+")
            access = kind.lower() + "+" + _decode(who, "access user")
        rump = text[: offset + a.end()]
        path = path[: a.start()]
        e = _EXPIRE.search(path)
        if e is not None and e.end() == len(path):
            expire = _expire(e.group(1))
            path = path[: e.start()]
    elif token is not None:
        raise UrlError("a verifier without URLAUTH")
    # path = "/" enc-mailbox [;UIDVALIDITY=n] "/;UID=n" ["/;SECTION=s"] ["/;PARTIAL=p"]
    segments = path[1:].split("/;")
    if len(segments) < 2:
        raise UrlError("no ;UID")
    box = segments[0]
    uidvalidity = None
    mv = _UIDVALIDITY.search(box)
    if mv is not None:
        uidvalidity = int(mv.group(1))
        box = box[: mv.start()]
    if box.endswith("/"):
        box = box[:-1]
    mailbox = _decode(box, "mailbox")
    if not mailbox:
        raise UrlError("no mailbox")
    mu = _UID.fullmatch(";" + segments[1])
    if mu is None or int(mu.group(1)) == 0:
        raise UrlError("bad ;UID")
    uid = int(mu.group(1))
    section = section_text = None
    partial: tuple[int, int | None] | None = None
    for seg in segments[2:]:
        if section is None and partial is None and (ms := _SECTION.fullmatch(";" + seg)):
            section_text = _decode(ms.group(1), "section")
            section = _section(section_text)
        elif partial is None and (mp := _PARTIAL.fullmatch(";" + seg)):
            length = int(mp.group(2)) if mp.group(2) else None
            if length == 0:
                raise UrlError("empty ;PARTIAL")
            partial = (int(mp.group(1)), length)
        else:
            raise UrlError("unknown URL part")
    return ImapUrl(user, host, mailbox, uidvalidity, uid, section, section_text, partial,
                   expire, access, mechanism, token, rump)


def _expire(text: str) -> datetime.datetime:
    # RFC 3339 date-time; a time without offset would be ambiguous: refuse it.
    value = text.upper().replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise UrlError("bad ;EXPIRE") from None
    if when.tzinfo is None:
        raise UrlError("bad ;EXPIRE")
    return when
