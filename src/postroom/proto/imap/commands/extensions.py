"""Commands of the sharing and notification extensions, all valid once authenticated.

ACL (RFC 4314): SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS. QUOTA (RFC 9208):
SETQUOTA (GETQUOTA and GETQUOTAROOT live with the mailbox commands). METADATA (RFC 5464):
GETMETADATA, SETMETADATA. URLAUTH (RFC 4467, RFC 5524): GENURLAUTH, RESETKEY, URLFETCH.
NOTIFY (RFC 5465). CANCELUPDATE (RFC 5267 4.3.5, selected state).

Everything the grammar decides is decided here (syntax → BAD): rights letters (RFC 4314
3.1: an unknown right is BAD), entry names (RFC 5464 3.2: invalid names are BAD), the
event and mailbox-filter vocabulary of NOTIFY. Whether the user may do it is the shell's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from postroom.proto.imap.commands.base import Command, CommandParser
from postroom.proto.imap.fetch import FetchAtt, parse_fetch_atts
from postroom.proto.imap.grammar import ImapPeerError, Parser, decode_utf8
from postroom.proto.sasl.saslprep import SaslPrepError, saslprep

# RFC 4314 2.1 (and the obsolete virtual "c" and "d" of 2.1.1): everything else is BAD.
KNOWN_RIGHTS = frozenset("lrswipkxteacd")
MAX_IDENTIFIER = 256

# RFC 5464 3.2: "/" separated, no "//" or trailing "/", no "*" "%", ASCII > 0x19 only.
_ENTRY = re.compile(r"/(?:private|shared)(?:/[\x20-\x24\x26-\x29\x2b-\x2e\x30-\x7e]+)+", re.I)
MAX_ENTRY_NAME = 1024

NOTIFY_EVENTS = {
    e.upper(): e
    for e in (
        "MessageNew",
        "MessageExpunge",
        "FlagChange",
        "AnnotationChange",
        "MailboxName",
        "SubscriptionChange",
        "MailboxMetadataChange",
        "ServerMetadataChange",
    )
}
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
OTHER_FILTERS = frozenset({"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"})
URLFETCH_PARAMS = frozenset({"BODY", "BINARY", "BODYPARTSTRUCTURE"})


# -- ACL -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetAcl(Command):
    """``mode`` "+" adds, "-" removes, "" replaces (RFC 4314 3.1)."""

    NAME = "SETACL"
    mailbox: str
    identifier: str
    mode: str
    rights: str


@dataclass(frozen=True, slots=True)
class DeleteAcl(Command):
    NAME = "DELETEACL"
    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True)
class GetAcl(Command):
    NAME = "GETACL"
    mailbox: str


@dataclass(frozen=True, slots=True)
class ListRights(Command):
    NAME = "LISTRIGHTS"
    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True)
class MyRights(Command):
    NAME = "MYRIGHTS"
    mailbox: str


def _identifier(p: Parser) -> str:
    # identifier = astring, prepared with SASLprep; failure or empty → BAD (RFC 4314 3)
    raw = decode_utf8(p.astring(), "identifier")
    try:
        prepared = saslprep(raw)
    except SaslPrepError:
        raise p.error("Invalid identifier") from None
    if not prepared or len(prepared) > MAX_IDENTIFIER:
        raise p.error("Invalid identifier")
    return prepared


def _rights(raw: str, p: Parser) -> str:
    for r in raw:
        if r not in KNOWN_RIGHTS:
            if r.isupper():
                raise p.error("Uppercase rights are not allowed")
            raise p.error(f"The {r!r} right is not supported")
    return raw


def parse_setacl(p: Parser, tag: str) -> SetAcl:
    # setacl = "SETACL" SP mailbox SP identifier SP mod-rights ; mod-rights = astring
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    identifier = _identifier(p)
    p.sp()
    raw = decode_utf8(p.astring(), "rights")
    mode = raw[:1] if raw[:1] in ("+", "-") else ""
    return SetAcl(tag, mailbox, identifier, mode, _rights(raw[len(mode):], p))


def parse_deleteacl(p: Parser, tag: str) -> DeleteAcl:
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    return DeleteAcl(tag, mailbox, _identifier(p))


def parse_listrights(p: Parser, tag: str) -> ListRights:
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    return ListRights(tag, mailbox, _identifier(p))


def _one_mailbox(cls: type[GetAcl | MyRights]) -> CommandParser:
    def parse(p: Parser, tag: str) -> Command:
        p.sp()
        return cls(tag, p.mailbox())

    return parse


# -- QUOTA -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    NAME = "SETQUOTA"
    root: str
    limits: tuple[tuple[str, int], ...]


def parse_setquota(p: Parser, tag: str) -> SetQuota:
    # setquota = "SETQUOTA" SP quota-root-name SP setquota-list           (RFC 9208 9)
    # setquota-list = "(" [setquota-resource *(SP setquota-resource)] ")"
    # setquota-resource = resource-name SP resource-limit ; resource-limit = number64
    p.sp()
    root = decode_utf8(p.astring(), "quota root")
    p.sp()

    def resource() -> tuple[str, int]:
        name = p.keyword("a resource name")
        p.sp()
        return name, p.number64()

    return SetQuota(tag, root, tuple(p.paren_list(resource)))


# -- METADATA --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetMetadata(Command):
    """``mailbox`` "" means the server (RFC 5464 4.2); ``depth`` is 0, 1 or -1 (infinity)."""

    NAME = "GETMETADATA"
    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: int = 0


@dataclass(frozen=True, slots=True)
class SetMetadata(Command):
    NAME = "SETMETADATA"
    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...] = field(repr=False)


def _metadata_mailbox(p: Parser) -> str:
    # The empty string names the server; anything else is a mailbox name.
    if p.data.startswith(b'""', p.pos):
        p.pos += 2
        return ""
    return p.mailbox()


def entry_name(p: Parser) -> str:
    """An entry name (RFC 5464 3.2), lower-cased: entry names are case-insensitive."""
    raw = p.astring()
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise p.error("Invalid entry name") from None
    if len(name) > MAX_ENTRY_NAME or not _ENTRY.fullmatch(name):
        raise p.error("Invalid entry name")
    parts = name.lower().split("/")
    if len(parts) >= 3 and parts[2] == "vendor" and len(parts) < 5:
        raise p.error("Vendor entry names need a vendor token and a name")
    return name.lower()


def parse_getmetadata(p: Parser, tag: str) -> GetMetadata:
    # getmetadata = "GETMETADATA" [SP getmetadata-options] SP mailbox SP entries
    # getmetadata-option = "MAXSIZE" SP number / "DEPTH" SP ("0" / "1" / "infinity")
    p.sp()
    maxsize: int | None = None
    depth = 0
    if p.peek() == 0x28:

        def option() -> None:
            nonlocal maxsize, depth
            word = p.keyword("a GETMETADATA option")
            p.sp()
            if word == "MAXSIZE":
                maxsize = p.number()
            elif word == "DEPTH":
                value = p.keyword("a depth")
                if value not in ("0", "1", "INFINITY"):
                    raise p.error("DEPTH must be 0, 1 or infinity")
                depth = -1 if value == "INFINITY" else int(value)
            else:
                raise p.error("Unknown GETMETADATA option")

        p.paren_list(option, allow_empty=False)
        p.sp()
    mailbox = _metadata_mailbox(p)
    p.sp()
    if p.peek() == 0x28:
        entries = tuple(p.paren_list(lambda: entry_name(p), allow_empty=False))
    else:
        entries = (entry_name(p),)
    return GetMetadata(tag, mailbox, tuple(dict.fromkeys(entries)), maxsize, depth)


def parse_setmetadata(p: Parser, tag: str) -> SetMetadata:
    # setmetadata = "SETMETADATA" SP mailbox SP entry-values
    # entry-values = "(" entry-value *(SP entry-value) ")" ; entry-value = entry SP value
    # value = nstring / literal8
    p.sp()
    mailbox = _metadata_mailbox(p)
    p.sp()

    def entry_value() -> tuple[str, bytes | None]:
        name = entry_name(p)
        p.sp()
        if p.peek() == 0x7E:
            return name, p.literal(binary=True)
        return name, p.nstring()

    items = p.paren_list(entry_value, allow_empty=False)
    seen: dict[str, bytes | None] = {}
    for name, value in items:
        seen[name] = value  # the last value of a repeated entry wins
    return SetMetadata(tag, mailbox, tuple(seen.items()))


# -- URLAUTH ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenUrlAuth(Command):
    NAME = "GENURLAUTH"
    items: tuple[tuple[str, str], ...]  # (url rump, mechanism upper-cased)


@dataclass(frozen=True, slots=True)
class ResetKey(Command):
    NAME = "RESETKEY"
    mailbox: str | None = None
    mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UrlFetch(Command):
    """``items``: (url, parameters); parameters () is the plain form (RFC 4467 7),
    otherwise the RFC 5524 extended one."""

    NAME = "URLFETCH"
    items: tuple[tuple[str, tuple[str, ...]], ...]


_MECHANISM = re.compile(rb"[A-Za-z0-9.-]+")


def _url(p: Parser) -> str:
    raw = p.astring()
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise p.error("Invalid URL") from None


def _mechanism(p: Parser) -> str:
    m = p.match(_MECHANISM)
    if m is None:
        raise p.error("Expected a URLAUTH mechanism")
    return m.group().decode("ascii").upper()


def parse_genurlauth(p: Parser, tag: str) -> GenUrlAuth:
    # genurlauth = "GENURLAUTH" 1*(SP url-rump SP mechanism)           (RFC 4467 9)
    items = []
    while p.try_sp():
        url = _url(p)
        p.sp()
        items.append((url, _mechanism(p)))
        p.count()
    if not items:
        raise p.error("GENURLAUTH needs a URL")
    return GenUrlAuth(tag, tuple(items))


def parse_resetkey(p: Parser, tag: str) -> ResetKey:
    # resetkey = "RESETKEY" [SP mailbox *(SP mechanism)]
    if not p.try_sp():
        return ResetKey(tag)
    mailbox = p.mailbox()
    mechanisms = []
    while p.try_sp():
        mechanisms.append(_mechanism(p))
        p.count()
    return ResetKey(tag, mailbox, tuple(mechanisms))


def parse_urlfetch(p: Parser, tag: str) -> UrlFetch:
    # urlfetch = "URLFETCH" 1*(SP url-fetch-arg) ; url-fetch-arg = url-full /
    #            "(" url-full *(SP url-fetch-param) ")"                  (RFC 5524 5)
    items: list[tuple[str, tuple[str, ...]]] = []
    while p.try_sp():
        if p.peek() == 0x28:
            p.open_paren()
            url = _url(p)
            params = []
            while p.try_sp():
                word = p.keyword("a URLFETCH parameter")
                if word not in URLFETCH_PARAMS:
                    raise p.error("Unknown URLFETCH parameter")
                params.append(word)
            if not p.close_paren():
                raise p.error("Expected ')'")
            items.append((url, tuple(dict.fromkeys(params))))
        else:
            items.append((_url(p), ()))
        p.count()
    if not items:
        raise p.error("URLFETCH needs a URL")
    return UrlFetch(tag, tuple(items))


# -- NOTIFY ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventGroup:
    """One ``(filter events)`` group: ``filter`` upper-cased (SELECTED, PERSONAL,
    SUBTREE, ...), ``mailboxes`` for SUBTREE and MAILBOXES, ``events`` canonical names
    (empty for NONE), ``fetch`` the MessageNew attributes (SELECTED only)."""

    filter: str
    mailboxes: tuple[str, ...]
    events: frozenset[str]
    fetch: tuple[FetchAtt, ...] = ()


@dataclass(frozen=True, slots=True)
class Notify(Command):
    """NOTIFY SET (``groups``) or NOTIFY NONE (``groups`` None)."""

    NAME = "NOTIFY"
    groups: tuple[EventGroup, ...] | None
    status: bool = False


def _event_group(p: Parser) -> EventGroup:
    # event-group = "(" filter-mailboxes SP events ")"
    p.open_paren()
    word = p.keyword("a mailbox filter")
    mailboxes: tuple[str, ...] = ()
    if word not in SELECTED_FILTERS | OTHER_FILTERS:
        raise p.error("Unknown NOTIFY mailbox filter")
    if word in ("SUBTREE", "MAILBOXES"):
        p.sp()
        if p.peek() == 0x28:
            mailboxes = tuple(p.paren_list(p.mailbox, allow_empty=False))
        else:
            mailboxes = (p.mailbox(),)
    p.sp()
    events: set[str] = set()
    fetch: tuple[FetchAtt, ...] = ()
    if not p.try_keyword("NONE"):

        def event() -> None:
            nonlocal fetch
            name = NOTIFY_EVENTS.get(p.keyword("an event"))
            if name is None:
                raise ImapPeerError(
                    "Unsupported event", status="NO",
                    code="BADEVENT (" + " ".join(NOTIFY_EVENTS.values()) + ")",
                )
            if name == "MessageNew" and p.peek() == 0x20 and p.data[p.pos + 1 : p.pos + 2] == b"(":
                p.sp()
                fetch = parse_fetch_atts(p)
            events.add(name)

        p.paren_list(event, allow_empty=False)
    if not p.close_paren():
        raise p.error("Expected ')'")
    if word in SELECTED_FILTERS and events - MESSAGE_EVENTS:
        # RFC 5465 6.1: only message events for the selected mailbox.
        raise p.error("Only message events apply to SELECTED")
    if fetch and word not in SELECTED_FILTERS:
        raise p.error("MessageNew attributes are only allowed with SELECTED")
    return EventGroup(word, mailboxes, frozenset(events), fetch)


def parse_notify(p: Parser, tag: str) -> Notify:
    # notify = "NOTIFY" SP (notify-set / notify-none)                  (RFC 5465 8)
    # notify-set = "SET" [SP "STATUS"] SP event-groups
    p.sp()
    if p.try_keyword("NONE"):
        return Notify(tag, None)
    if not p.try_keyword("SET"):
        raise p.error("Expected SET or NONE")
    p.sp()
    status = p.try_keyword("STATUS")
    if status:
        p.sp()
    groups = [_event_group(p)]
    while p.try_sp():
        groups.append(_event_group(p))
        p.count()
    if sum(1 for g in groups if g.filter in SELECTED_FILTERS) > 1:
        raise p.error("Only one of SELECTED and SELECTED-DELAYED")
    return Notify(tag, tuple(groups), status)


# -- CANCELUPDATE ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelUpdate(Command):
    NAME = "CANCELUPDATE"
    tags: tuple[str, ...]


def parse_cancelupdate(p: Parser, tag: str) -> CancelUpdate:
    # "CANCELUPDATE" 1*(SP quoted)                                        (RFC 5267 5)
    tags = []
    while p.try_sp():
        tags.append(decode_utf8(p.quoted(), "tag"))
        p.count()
    if not tags:
        raise p.error("CANCELUPDATE needs a tag")
    return CancelUpdate(tag, tuple(tags))


PARSERS: dict[str, CommandParser] = {
    "SETACL": parse_setacl,
    "DELETEACL": parse_deleteacl,
    "GETACL": _one_mailbox(GetAcl),
    "LISTRIGHTS": parse_listrights,
    "MYRIGHTS": _one_mailbox(MyRights),
    "SETQUOTA": parse_setquota,
    "GETMETADATA": parse_getmetadata,
    "SETMETADATA": parse_setmetadata,
    "GENURLAUTH": parse_genurlauth,
    "RESETKEY": parse_resetkey,
    "URLFETCH": parse_urlfetch,
    "NOTIFY": parse_notify,
    "CANCELUPDATE": parse_cancelupdate,
}
