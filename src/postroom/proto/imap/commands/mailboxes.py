"""Commands of the authenticated state (RFC 9051 6.3) and their extensions.

ENABLE (RFC 5161), SELECT/EXAMINE (with CONDSTORE/QRESYNC, RFC 7162), CREATE (USE, RFC
6154), DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (LIST-EXTENDED RFC 5258, LIST-STATUS
RFC 5819, SPECIAL-USE RFC 6154), LSUB, NAMESPACE, STATUS, APPEND (MULTIAPPEND RFC 3502,
literal8 RFC 3516, UTF8 RFC 6855), IDLE (RFC 2177), COMPRESS (RFC 4978), GETQUOTA and
GETQUOTAROOT (RFC 9208).

Mailbox names arrive decoded and INBOX-normalized (``Parser.mailbox``). Names that are
about to be created (CREATE, the RENAME target) must also pass the creation policy
(``utf7.check_new_name``); a violation is ``NO [CANNOT]``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from postroom.proto.imap import utf7
from postroom.proto.imap.commands.base import Command, CommandParser, no_arguments
from postroom.proto.imap.grammar import NO, ImapPeerError, Parser, decode_pattern, decode_utf8
from postroom.proto.imap.sequence import SequenceSet, parse_sequence_set

STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",
        "HIGHESTMODSEQ",
        "APPENDLIMIT",
        "DELETED-STORAGE",  # RFC 9208 4.1.4
    }
)
LIST_SELECT_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
# RFC 6154 2 and RFC 8457 3 (\Important).
SPECIAL_USE = {
    a.upper(): a
    for a in (
        "\\All",
        "\\Archive",
        "\\Drafts",
        "\\Flagged",
        "\\Junk",
        "\\Sent",
        "\\Trash",
        "\\Important",
    )
}
COMPRESS_MECHANISMS = frozenset({"DEFLATE"})


@dataclass(frozen=True, slots=True)
class Enable(Command):
    NAME = "ENABLE"
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QResync:
    """QRESYNC select parameter (RFC 7162 3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # (known-sequence-set, known-uid-set)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE when ``readonly``."""

    NAME = "SELECT"
    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None

    @property
    def name(self) -> str:
        return "EXAMINE" if self.readonly else "SELECT"


@dataclass(frozen=True, slots=True)
class Create(Command):
    NAME = "CREATE"
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    NAME = "DELETE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    NAME = "RENAME"
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    NAME = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    NAME = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, basic or extended (RFC 5258).

    ``patterns`` are decoded but otherwise raw (wildcards "*" and "%" kept).
    ``status_items`` is set when RETURN (STATUS (...)) was asked (RFC 5819). ``extended``
    tells the responder to use the RFC 5258 forms (CHILDINFO etc.).
    """

    NAME = "LIST"
    reference: str
    patterns: tuple[str, ...]
    select_options: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    NAME = "LSUB"
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    NAME = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class Status(Command):
    NAME = "STATUS"
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (several with MULTIAPPEND, RFC 3502).

    ``binary``: sent as literal8 (may hold NUL, RFC 3516 4.4); ``utf8``: the RFC 6855
    ``UTF8 (...)`` form. ``parts``: the CATENATE form (RFC 4469), in order: ("TEXT",
    octets) or ("URL", the IMAP URL as sent); ``data`` is then empty.
    """

    data: bytes = field(repr=False)
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    binary: bool = False
    utf8: bool = False
    parts: tuple[tuple[str, bytes], ...] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Append(Command):
    NAME = "APPEND"
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """Answer ``+ idling`` and call ``Receiver.expect_idle_done``."""

    NAME = "IDLE"


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """After the tagged OK, take ``Receiver.take_buffered()`` and inflate from there."""

    NAME = "COMPRESS"
    mechanism: str


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    NAME = "GETQUOTA"
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    NAME = "GETQUOTAROOT"
    mailbox: str


def new_mailbox(p: Parser, *, strip_delimiter: bool = False) -> str:
    """A mailbox name that is about to be created: the stricter creation policy.

    ``strip_delimiter`` (CREATE, RFC 3501 6.3.3): a trailing delimiter only declares the
    intent to create children under the name.
    """
    try:
        name = p.mailbox()
    except ImapPeerError as exc:
        if exc.status != NO:
            raise  # a syntax error stays BAD
        raise ImapPeerError(exc.text, status=NO, code="CANNOT") from None
    if strip_delimiter and name.endswith(utf7.DELIMITER) and len(name) > 1:
        name = name[:-1]
    try:
        utf7.check_new_name(name)
    except utf7.MailboxNameError as exc:
        raise ImapPeerError(str(exc), status=NO, code="CANNOT") from None
    return name


def parse_enable(p: Parser, tag: str) -> Enable:
    # enable = "ENABLE" 1*(SP capability)
    caps = []
    while p.try_sp():
        caps.append(p.keyword("a capability"))
        p.count()
    if not caps:
        raise p.error("ENABLE needs a capability")
    return Enable(tag, tuple(dict.fromkeys(caps)))


def _parse_select(p: Parser, tag: str, readonly: bool) -> Select:
    # select = "SELECT" SP mailbox [select-params]
    # select-params = SP "(" select-param *(SP select-param) ")"
    p.sp()
    mailbox = p.mailbox()
    condstore = False
    qresync: QResync | None = None
    if p.try_sp():

        def param() -> None:
            nonlocal condstore, qresync
            word = p.keyword("a SELECT parameter")
            if word == "CONDSTORE":
                condstore = True
            elif word == "QRESYNC":
                p.sp()
                qresync = _qresync(p)
            else:
                raise p.error("Unknown SELECT parameter")

        p.paren_list(param, allow_empty=False)
    return Select(tag, mailbox, readonly, condstore, qresync)


def _qresync(p: Parser) -> QResync:
    # "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #     [SP seq-match-data] ")"                       (RFC 7162 7)
    p.open_paren()
    uidvalidity = p.nz_number()
    p.sp()
    modseq = p.mod_sequence_value()
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if p.try_sp():
        if p.peek() != 0x28:
            known = parse_sequence_set(p, allow_saved=False)
            if p.try_sp() and p.peek() != 0x28:
                raise p.error("Expected sequence match data")
        if p.peek() == 0x28:
            # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
            p.open_paren()
            seqs = parse_sequence_set(p, allow_saved=False)
            p.sp()
            uids = parse_sequence_set(p, allow_saved=False)
            if not p.close_paren():
                raise p.error("Expected ')'")
            match = (seqs, uids)
    if not p.close_paren():
        raise p.error("Expected ')'")
    return QResync(uidvalidity, modseq, known, match)


def parse_create(p: Parser, tag: str) -> Create:
    # create = "CREATE" SP mailbox [create-params] ; create-param = "USE" SP "(" ... ")"
    p.sp()
    name = new_mailbox(p, strip_delimiter=True)
    uses: list[str] = []
    if p.try_sp():

        def param() -> None:
            if p.keyword("a CREATE parameter") != "USE":
                raise p.error("Unknown CREATE parameter")
            p.sp()
            uses.extend(p.paren_list(lambda: _use_attr(p)))

        p.paren_list(param, allow_empty=False)
    return Create(tag, name, tuple(dict.fromkeys(uses)))


def _use_attr(p: Parser) -> str:
    p.expect_char(b"\\", "a special-use attribute")
    attr = SPECIAL_USE.get("\\" + p.keyword("a special-use attribute"))
    if attr is None:
        raise ImapPeerError("Unsupported special-use attribute", status=NO, code="USEATTR")
    return attr


def _mailbox_command(cls: type[Delete | Subscribe | Unsubscribe | GetQuotaRoot]) -> CommandParser:
    def parse(p: Parser, tag: str) -> Command:
        p.sp()
        return cls(tag, p.mailbox())

    return parse


def parse_rename(p: Parser, tag: str) -> Rename:
    p.sp()
    old = p.mailbox()
    p.sp()
    return Rename(tag, old, new_mailbox(p))


def _reference(p: Parser) -> str:
    # The reference name may be empty and is not a mailbox name on its own.
    return decode_pattern(p.astring(), utf8=p.utf8)


def parse_list(p: Parser, tag: str) -> List:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    p.sp()
    extended = False
    select: frozenset[str] = frozenset()
    if p.peek() == 0x28:
        extended = True
        select = frozenset(p.paren_list(lambda: p.keyword("a LIST selection option")))
        if not select <= LIST_SELECT_OPTIONS:
            raise p.error("Unknown LIST selection option")
        # RFC 5258 3: RECURSIVEMATCH must come with a selection option other than REMOTE.
        if "RECURSIVEMATCH" in select and not select - {"RECURSIVEMATCH", "REMOTE"}:
            raise p.error("RECURSIVEMATCH needs another selection option")
        p.sp()
    reference = _reference(p)
    p.sp()
    if p.peek() == 0x28:
        extended = True
        patterns = tuple(p.paren_list(p.list_mailbox, allow_empty=False))
    else:
        patterns = (p.list_mailbox(),)
    returns: set[str] = set()
    status_items: tuple[str, ...] | None = None
    if p.try_sp():
        extended = True
        if not p.try_keyword("RETURN"):
            raise p.error("Expected RETURN")
        p.sp()

        def option() -> None:
            nonlocal status_items
            word = p.keyword("a LIST return option")
            if word not in LIST_RETURN_OPTIONS:
                raise p.error("Unknown LIST return option")
            if word == "STATUS":
                p.sp()
                status_items = _status_items(p)
            returns.add(word)

        p.paren_list(option)
    return List(tag, reference, patterns, select, frozenset(returns), status_items, extended)


def parse_lsub(p: Parser, tag: str) -> Lsub:
    # lsub = "LSUB" SP mailbox SP list-mailbox
    p.sp()
    reference = _reference(p)
    p.sp()
    return Lsub(tag, reference, p.list_mailbox())


def _status_items(p: Parser) -> tuple[str, ...]:
    # "(" status-att *(SP status-att) ")"
    items = p.paren_list(lambda: p.keyword("a STATUS item"), allow_empty=False)
    for item in items:
        if item not in STATUS_ITEMS:
            raise p.error("Unknown STATUS item")
    return tuple(dict.fromkeys(items))


def parse_status(p: Parser, tag: str) -> Status:
    # status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    return Status(tag, mailbox, _status_items(p))


def parse_append(p: Parser, tag: str) -> Append:
    # append = "APPEND" SP mailbox 1*append-message                    (RFC 3502 6)
    # append-message = append-opts SP append-data
    # append-opts = [SP flag-list] [SP date-time]
    # append-data = literal / literal8 / "UTF8" SP "(" literal8 ")"   (RFC 3516, RFC 6855)
    #             / "CATENATE" SP "(" cat-part *(SP cat-part) ")"     (RFC 4469)
    p.sp()
    mailbox = p.mailbox()
    messages: list[AppendMessage] = []
    while True:
        p.sp()
        flags: tuple[str, ...] = ()
        date = None
        if p.peek() == 0x28:
            flags = p.flag_list()
            p.sp()
        if p.peek() == 0x22:
            date = p.date_time()
            p.sp()
        if p.try_keyword("CATENATE"):
            p.sp()
            parts = tuple(p.paren_list(lambda: _cat_part(p), allow_empty=False))
            messages.append(AppendMessage(b"", flags, date, parts=parts))
            p.count()
            if p.at_end():
                return Append(tag, mailbox, tuple(messages))
            continue
        utf8 = p.try_keyword("UTF8")
        if utf8:
            p.sp()
            p.open_paren()
        if p.peek() not in (0x7B, 0x7E):  # "{" or "~{"
            raise p.error("Expected the message as a literal")
        binary = p.peek() == 0x7E
        data = p.literal(binary=True)
        if utf8 and not p.close_paren():
            raise p.error("Expected ')'")
        messages.append(AppendMessage(data, flags, date, binary, utf8))
        p.count()
        if p.at_end():
            return Append(tag, mailbox, tuple(messages))


def _cat_part(p: Parser) -> tuple[str, bytes]:
    # cat-part = text-literal / url ; text-literal = "TEXT" SP literal ; url = "URL" SP
    # astring (RFC 4469 5); a literal8 is accepted for TEXT as for plain APPEND data.
    word = p.keyword("TEXT or URL")
    p.sp()
    if word == "TEXT":
        if p.peek() not in (0x7B, 0x7E):
            raise p.error("Expected a literal after TEXT")
        return "TEXT", p.literal(binary=True)
    if word == "URL":
        return "URL", p.astring()
    raise p.error("Expected TEXT or URL")


def parse_compress(p: Parser, tag: str) -> Compress:
    # compress = "COMPRESS" SP algorithm (RFC 4978 4)
    p.sp()
    mechanism = p.keyword("a compression mechanism")
    if mechanism not in COMPRESS_MECHANISMS:
        raise p.error("Unknown compression mechanism")
    return Compress(tag, mechanism)


def parse_getquota(p: Parser, tag: str) -> GetQuota:
    p.sp()
    return GetQuota(tag, decode_utf8(p.astring(), "quota root"))


PARSERS: dict[str, CommandParser] = {
    "ENABLE": parse_enable,
    "SELECT": lambda p, tag: _parse_select(p, tag, False),
    "EXAMINE": lambda p, tag: _parse_select(p, tag, True),
    "CREATE": parse_create,
    "DELETE": _mailbox_command(Delete),
    "RENAME": parse_rename,
    "SUBSCRIBE": _mailbox_command(Subscribe),
    "UNSUBSCRIBE": _mailbox_command(Unsubscribe),
    "LIST": parse_list,
    "LSUB": parse_lsub,
    "NAMESPACE": no_arguments(Namespace),
    "STATUS": parse_status,
    "APPEND": parse_append,
    "IDLE": no_arguments(Idle),
    "COMPRESS": parse_compress,
    "GETQUOTA": parse_getquota,
    "GETQUOTAROOT": _mailbox_command(GetQuotaRoot),
}
