"""The storage contract: the only way the rest of postroom reaches its data.

Why domain-shaped rather than key-value: IMAP and the queue need atomic multi-row
operations (allocate a UID and bump HIGHESTMODSEQ with the insert; expunge and record
VANISHED UIDs; deliver one message to several mailboxes and the queue in one durable write).
Each of those is one method here, and each backend implements it with real SQL in one
transaction. Nothing above this module knows whether SQLite or PostgreSQL runs.

Rules every backend follows:

* Every method is a coroutine and never blocks the event loop (SQLite runs on threads).
* A write method returns only once its effect is durable (fsync'd); concurrent writes
  share commits (group commit).
* After a commit that changes a mailbox, the backend publishes a :class:`MailboxChange`
  through :attr:`Store.changes` (in-process for SQLite, LISTEN/NOTIFY for PostgreSQL).
  Listeners then ask :meth:`Store.changes_since` for the details.
* Errors that callers handle are :class:`StoreError` subclasses with a user-facing message.

Message bytes ("blobs") are stored once and shared by every mailbox copy and queue entry
that references them (delivery to 50 recipients stores one blob; COPY shares the blob).
Each blob carries the parse summary computed once at delivery (see ``postroom.message``).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# System flags as bits (RFC 9051 2.3.2). Keywords are stored separately as strings.
FLAG_SEEN = 1
FLAG_ANSWERED = 2
FLAG_FLAGGED = 4
FLAG_DELETED = 8
FLAG_DRAFT = 16
SYSTEM_FLAGS: dict[str, int] = {
    "\\seen": FLAG_SEEN,
    "\\answered": FLAG_ANSWERED,
    "\\flagged": FLAG_FLAGGED,
    "\\deleted": FLAG_DELETED,
    "\\draft": FLAG_DRAFT,
}
FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (FLAG_SEEN, "\\Seen"),
    (FLAG_ANSWERED, "\\Answered"),
    (FLAG_FLAGGED, "\\Flagged"),
    (FLAG_DELETED, "\\Deleted"),
    (FLAG_DRAFT, "\\Draft"),
)

# Mailboxes every new user gets, with their RFC 6154 special-use attribute.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)

# The maximum number of keywords per mailbox, like Dovecot's; guards against abuse.
MAX_KEYWORD_LENGTH = 128


class StoreError(Exception):
    """An error the caller can report to a user as is."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The operation contradicts existing data (e.g. removing a domain that has users)."""


class OverQuota(StoreError):
    """The write would take the mailbox owner over their storage or message quota
    (IMAP ``NO [OVERQUOTA]``, RFC 9208 4.3; SMTP ``552 5.2.2``)."""


class TooMany(StoreError):
    """A per-object limit on the number of entries would be exceeded (METADATA TOOMANY,
    mailboxes or subscriptions per user: IMAP ``NO [LIMIT]``)."""


class TooLarge(StoreError):
    """The values charged to one user would exceed their total size (METADATA, RFC 5464
    4.3: ``NO [METADATA MAXSIZE n]``); ``room`` is what the command could still have added."""

    def __init__(self, room: int) -> None:
        super().__init__(f"too large: {room} octets left")
        self.room = room


class StoreUnavailable(StoreError):
    """The database cannot be reached now (a PostgreSQL restart or fail-over, a network
    cut). A write that raises this either did nothing or may have committed without the
    caller learning it; either way nothing was acknowledged. Protocols answer with a
    temporary error (SMTP ``451 4.3.0``, IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR
    [SYS/TEMP]``) and the client tries again; the backend reconnects by itself."""


# ---------------------------------------------------------------------------------------
# Accounts


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class User:
    id: int
    address: str  # localpart@domain, lowercase domain, as created
    domain: str
    created: int
    password_hash: str = field(repr=False)
    scram: str | None = field(default=None, repr=False)
    disabled: bool = False
    admin: bool = False  # may use the web admin (``postroom user admin``)


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # "sales@example.org" or "@example.org" (catch-all)
    target: str


@dataclass(frozen=True, slots=True)
class SendAsGrant:
    """User ``user`` may submit mail as ``address`` (an address, or ``@domain`` for any
    address of that domain), beyond what they own (``postroom user sendas``)."""

    user: str
    address: str


@dataclass(frozen=True, slots=True)
class AddressLookup:
    """What one read tells about an address: its domain, a user, alias targets."""

    domain_is_local: bool
    user: User | None
    alias_targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Quota:
    """A user's quota and usage (RFC 9208 STORAGE and MESSAGE resources).

    Usage is kept up to date by every write that adds or removes a message (never
    computed with a SUM on the hot path). ``None`` limits mean unlimited.
    """

    user_id: int
    storage_used: int  # octets of every message in the user's mailboxes
    storage_limit: int | None
    messages_used: int
    messages_limit: int | None

    def allows(self, size: int, count: int = 1) -> bool:
        """May ``count`` more messages of ``size`` octets in total be stored?"""
        if self.storage_limit is not None and self.storage_used + size > self.storage_limit:
            return False
        return self.messages_limit is None or self.messages_used + count <= self.messages_limit

    @property
    def exceeded(self) -> bool:
        """At or over a limit already: nothing more fits (SMTP refuses at RCPT)."""
        return (self.storage_limit is not None and self.storage_used >= self.storage_limit) or (
            self.messages_limit is not None and self.messages_used >= self.messages_limit
        )


# ---------------------------------------------------------------------------------------
# Mailboxes and messages


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    user_id: int
    name: str  # "/"-separated UTF-8 hierarchy; "INBOX" always upper-case
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    recent: int
    unseen: int
    deleted: int
    size: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    deleted_size: int = 0  # octets of the \\Deleted messages (RFC 9208 DELETED-STORAGE)


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """Everything SELECT needs, from one read (:meth:`Store.mailbox_snapshot`).

    Why columns rather than a list of :class:`MessageMeta`: a session keeps exactly this
    (UIDs, system flags, the few keywords), and building 10,000 dataclasses that are
    thrown away again costs more than the read itself. ``uids`` is an ``array('I')``
    in ascending order; ``flags[i]`` holds the FLAG_* bits of ``uids[i]`` (one octet per
    message); ``keywords`` maps a UID to its sorted keywords, only for messages that have
    some. Modseqs are not included: CONDSTORE/QRESYNC ask :meth:`Store.changes_since`.
    """

    id: int
    user_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    # The first UID that is \Recent for the caller (RFC 3501 2.3.2): [recent_from,
    # uidnext). With ``claim_recent`` the caller now owns them (equal to ``uidnext`` when
    # nothing was left to claim); without, they are the ones nobody has claimed yet, which
    # a read-only session reports as \Recent without taking them from others.
    recent_from: int
    uids: array[int] = field(repr=False)
    flags: bytes = field(repr=False)
    keywords: dict[int, tuple[str, ...]] = field(repr=False)


# Envelope fields that :meth:`Store.search_envelope` evaluates (RFC 9051 6.4.4).
SEARCH_FIELDS = ("from", "to", "cc", "bcc", "subject")


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """A message's place in a mailbox: what SELECT, FETCH FLAGS and POP3 LIST need."""

    id: int  # stable for the life of the message (kept across MOVE); POP3 UIDL uses it
    uid: int
    flags: int  # bitmask of FLAG_*
    keywords: tuple[str, ...]  # sorted
    modseq: int
    size: int
    internaldate: int  # seconds since the epoch, UTC
    blob_id: int


@dataclass(frozen=True, slots=True)
class MessageContent:
    """A message with what :meth:`Store.read_messages` was asked for."""

    meta: MessageMeta
    summary: bytes | None = field(default=None, repr=False)
    data: bytes | None = field(default=None, repr=False)


ALL_FLAGS = FLAG_SEEN | FLAG_ANSWERED | FLAG_FLAGGED | FLAG_DELETED | FLAG_DRAFT


@dataclass(frozen=True, slots=True)
class FlagChange:
    """How STORE changes flags: mode "add", "remove" or "replace".

    ``mask``: the system flags the change may touch at all (others keep their value,
    whatever the mode); ``keywords_allowed``: False leaves keywords untouched. Both
    express ACL rights (RFC 4314 4: \\Seen needs "s", \\Deleted "t", the rest "w").
    """

    mode: str
    flags: int
    keywords: tuple[str, ...] = ()
    mask: int = ALL_FLAGS
    keywords_allowed: bool = True


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of :meth:`Store.append_many` (MULTIAPPEND: all or none)."""

    data: bytes = field(repr=False)
    summary: bytes = field(repr=False)
    flags: int = 0
    keywords: tuple[str, ...] = ()
    internaldate: int | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    changed: list[MessageMeta]  # messages whose flags changed (new modseq)
    unchanged: list[MessageMeta]  # targeted but already as requested (modseq untouched)
    failed_uids: list[int]  # UNCHANGEDSINCE conflicts (RFC 7162 3.1.3 MODIFIED)


@dataclass(frozen=True, slots=True)
class Changes:
    """Everything that changed in a mailbox after a modseq (CONDSTORE/QRESYNC and IDLE)."""

    highestmodseq: int
    uidnext: int
    changed: list[MessageMeta]  # messages added or with flags changed since the modseq
    vanished: list[int]  # UIDs expunged since the modseq
    # What changes_since(claim_above=...) claimed: claim_recent's answer (the caller owns
    # [recent_from, uidnext)), None when nothing above claim_above arrived (no claim).
    recent_from: int | None = None


# What a change notification is about (MailboxChange.kind). Mailbox listeners only hear
# MESSAGES; account listeners (ChangeHub.subscribe_user) hear every kind for the owner.
MESSAGES = "messages"  # messages added, flags changed, expunged (the mailbox's modseq)
MAILBOXES = "mailboxes"  # a mailbox was created, deleted or renamed, or its ACL changed
SUBSCRIPTIONS = "subscriptions"
METADATA = "metadata"  # a METADATA entry of the mailbox (or the server: mailbox_id 0)


@dataclass(frozen=True, slots=True)
class MailboxChange:
    """Published after a commit that changed a mailbox; listeners re-read what they need."""

    mailbox_id: int
    user_id: int
    modseq: int
    kind: str = MESSAGES


# ---------------------------------------------------------------------------------------
# Delivery and the queue


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    address: str
    orcpt: str | None = None  # RFC 3461 ORCPT, "rfc822;addr" decoded
    notify: str | None = None  # RFC 3461 NOTIFY value, e.g. "FAILURE,DELAY", "NEVER"


@dataclass(frozen=True, slots=True)
class NewQueueEntry:
    qid: str
    sender: str  # "" = null reverse-path
    recipients: tuple[QueueRecipient, ...]
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None
    smtputf8: bool = False
    body8bit: bool = False
    kind: str = "relay"  # "relay" | "dsn": DSNs never bounce (loop prevention)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One durable write of an incoming message: to local mailboxes and/or to the queue."""

    data: bytes = field(repr=False)
    summary: bytes = field(repr=False)
    user_ids: tuple[int, ...] = ()  # each gets the message in its INBOX
    mailbox_ids: tuple[int, ...] = ()  # explicit mailboxes (e.g. Sent copy, sieve later)
    queue: NewQueueEntry | None = None
    internaldate: int | None = None  # default: now
    flags: int = 0
    # Skip the users of ``user_ids`` (and the owners of ``mailbox_ids``) whom this message
    # would take over quota, checked in the same transaction as the insert; their user ids
    # are listed in DeliveryResult.over_quota.
    enforce_quota: bool = False
    # The case-folded envelope texts SEARCH FROM/TO/CC/BCC/SUBJECT match (see
    # :meth:`Store.search_envelope`), when the caller computed them from its own parse of
    # ``data`` (``postroom.message.envelope_search_texts``); None: the backend derives
    # them from ``summary``. Passing them keeps that decoding out of the write transaction.
    search_texts: tuple[str | None, ...] | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    blob_id: int
    placed: list[tuple[int, int]]  # (mailbox_id, uid)
    queued: str | None  # qid
    over_quota: tuple[int, ...] = ()  # user ids skipped (enforce_quota)


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    id: int
    address: str
    orcpt: str | None
    notify: str | None
    state: str  # "pending" | "delivered" | "failed" | "expired"
    status: str | None  # enhanced status, "5.1.1"
    diagnostic: str | None  # remote reply text or our reason
    remote_mta: str | None
    updated: int


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    qid: str
    blob_id: int
    sender: str
    created: int
    next_attempt: int
    attempts: int
    last_error: str | None
    held: bool
    ret: str | None
    envid: str | None
    smtputf8: bool
    body8bit: bool
    kind: str
    delay_warned: bool
    size: int
    recipients: tuple[QueuedRecipient, ...]

    @property
    def pending(self) -> list[QueuedRecipient]:
        return [r for r in self.recipients if r.state == "pending"]


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """A per-recipient result recorded after a delivery attempt."""

    recipient_id: int
    state: str  # "pending" (temporary failure) | "delivered" | "failed" | "expired"
    status: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None


# ---------------------------------------------------------------------------------------
# Sharing: ACL (RFC 4314) and METADATA (RFC 5464)

# Every right postroom knows, in canonical order (RFC 4314 2.1; "c" and "d" are the
# obsolete virtual rights of 2.1.1 and never stored). A mailbox's owner has all of them.
ALL_RIGHTS = "lrswipkxtea"
# The identifiers that match every logged-in user (RFC 4314 2: "anyone"; "authenticated"
# as Dovecot and Cyrus also accept).
ANYONE = "anyone"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True, slots=True)
class SharedMailbox:
    """Another user's mailbox that an ACL entry opens to the caller."""

    mailbox: Mailbox
    owner: str  # the owner's address
    rights: str  # union of the rights of every matching identifier, canonical order
# Credentials and activity of the HTTP service (postroom.web)
#
# Secrets (API tokens, app passwords, session ids) are random, generated by postroom, and
# stored only as a SHA-256 hex digest: with 116+ bits of entropy a slow hash adds nothing,
# and a digest can be looked up directly (one indexed read, no per-row verify).


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class AppPassword:
    """A per-device password of a user: valid for IMAP/POP3/SMTP AUTH, not the web."""

    id: int
    user_id: int
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class WebSession:
    user_id: int
    created: int
    expires: int


@dataclass(frozen=True, slots=True)
class DeliveryLogEntry:
    """One line of the recent delivery log the admin UI shows (see postroom.activity).

    ``direction``: "in" (accepted or refused at end of data by SMTP) or "out" (a queue
    delivery attempt's outcome per recipient). ``result``: "accepted", "refused",
    "delivered", "deferred", "failed", "expired" or "bounced".
    """

    time: int
    direction: str
    qid: str
    sender: str
    recipient: str
    result: str
    detail: str = ""
    id: int = 0  # assigned by the store


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    oldest: int | None  # creation time of the oldest entry


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    """One message copied in from another system (``postroom import``).

    ``key`` names the message in its origin (an IMAP ``UIDVALIDITY:UID``, a Maildir file's
    unique name, an mbox message's hash): the store remembers it per (user, origin) in the
    same transaction as the message, so an interrupted import resumes without copying a
    message twice (see :meth:`Store.import_messages`).
    """

    key: str
    message: NewMessage  # data already normalised: CRLF, final CRLF


ChangeListener = Callable[[MailboxChange], None]


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM signing key (RFC 6376). It signs from ``active_from`` until ``retire_at``
    (None: until retired); its DNS record should be published before ``active_from`` and
    kept until some days after ``retire_at`` (see ``postroom dkim rotate``)."""

    domain: str
    selector: str
    algorithm: str  # "ed25519" | "rsa"
    private_key: str = field(repr=False)  # PKCS#8 PEM
    public_record: str  # the TXT record value, "v=DKIM1; k=...; p=..."
    created: int
    active_from: int
    retire_at: int | None = None


@dataclass(frozen=True, slots=True)
class DmarcRow:
    """DMARC results aggregated for a report (RFC 7489 7.2): one row per distinct outcome
    per UTC day, with a message count."""

    period: int  # start of the UTC day (epoch seconds)
    policy_domain: str  # the domain whose record applied (the From: domain or its org domain)
    header_from: str
    source_ip: str
    envelope_from: str
    disposition: str  # none | quarantine | reject
    dkim: str  # "pass" | "fail": DMARC-aligned DKIM
    spf: str  # "pass" | "fail": DMARC-aligned SPF
    dkim_results: str  # "domain/selector/result" joined by " " (auth_results of the report)
    spf_result: str  # "domain/scope/result"
    reason: str  # policy override reason ("" | "local_policy" | "trusted_forwarder" ...)
    policy: str  # the published record's tags as they applied: "p=reject sp=... adkim=r ..."
    rua: str  # the rua= value of the record
    count: int = 1


@dataclass(frozen=True, slots=True)
class TlsResultRow:
    """Outbound TLS results aggregated for a TLS-RPT report (RFC 8460 4): per UTC day,
    recipient domain and applied policy, one row of successful sessions (``result_type``
    "") and one row per distinct failure (RFC 8460 4.3 result type and where it happened),
    each with a session count."""

    period: int  # start of the UTC day (epoch seconds)
    policy_domain: str  # the recipient domain the report goes to
    policy_type: str  # "sts" | "tlsa" | "no-policy-found" (RFC 8460 4.4)
    policy_string: str  # the policy's lines joined by "\n" (sts: the policy; tlsa: records)
    mx_host: str  # sts: the policy's mx patterns; tlsa: the MX host; joined by "\n"
    result_type: str = ""  # "" for the successful-sessions row, else RFC 8460 4.3
    sending_ip: str = ""
    receiving_mx: str = ""
    receiving_ip: str = ""
    detail: str = ""  # additional information (failure-reason-code)
    count: int = 1


@dataclass(frozen=True, slots=True)
class TlsReport:
    """A TLS-RPT report we received (RFC 8460 4), as parsed; ``document`` is the JSON."""

    id: int
    received: int  # epoch seconds
    organization: str
    report_id: str
    start: int  # date-range, epoch seconds
    end: int
    domains: str  # the policy domains, joined by ","
    successful: int  # total-successful-session-count over the policies
    failed: int  # total-failure-session-count over the policies
    document: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class StsPolicyRow:
    """A recipient domain's MTA-STS policy as last fetched (RFC 8461 3.2), kept across
    restarts until ``expires`` (fetch time + max_age, epoch seconds)."""

    domain: str  # lower case, no trailing dot
    policy_id: str  # the ``id`` of the _mta-sts TXT record it was fetched under
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    fetched: int
    expires: int


class ChangeHub(Protocol):
    """Publish/subscribe of mailbox changes, and a wake-up for the queue runner."""

    def subscribe(self, mailbox_id: int, listener: ChangeListener) -> None: ...
    def unsubscribe(self, mailbox_id: int, listener: ChangeListener) -> None: ...
    def subscribe_queue(self, listener: Callable[[], None]) -> None: ...
    def unsubscribe_queue(self, listener: Callable[[], None]) -> None: ...
    # Every change of every kind to the mailboxes (and subscriptions, METADATA) of one
    # user: NOTIFY (RFC 5465) and unsolicited METADATA responses listen here.
    def subscribe_user(self, user_id: int, listener: ChangeListener) -> None: ...
    def unsubscribe_user(self, user_id: int, listener: ChangeListener) -> None: ...


class Store(Protocol):
    """The contract. See the module docstring for the rules every backend follows."""

    @property
    def changes(self) -> ChangeHub: ...

    async def close(self) -> None: ...

    # -- domains, users, aliases -------------------------------------------------------
    async def add_domain(self, name: str) -> Domain: ...
    async def remove_domain(self, name: str) -> None: ...
    async def list_domains(self) -> list[Domain]: ...
    async def get_domain(self, name: str) -> Domain | None: ...
    async def add_user(self, address: str, password_hash: str, scram: str | None) -> User: ...
    async def remove_user(self, address: str) -> None: ...
    async def set_password(self, address: str, password_hash: str, scram: str | None) -> None: ...
    async def get_user(self, address: str) -> User | None: ...
    async def get_user_by_id(self, user_id: int) -> User | None: ...
    async def list_users(self, domain: str | None = None) -> list[User]: ...
    async def add_alias(self, source: str, targets: Sequence[str]) -> list[Alias]: ...
    async def remove_alias(self, source: str, target: str | None = None) -> int: ...
    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...
    async def alias_targets(self, source: str) -> list[str]: ...
    async def lookup_address(self, address: str) -> AddressLookup: ...
    async def add_sendas(self, user: str, address: str) -> SendAsGrant: ...
    # NotFound when there is no such user; AlreadyExists when granted already. ``address``
    # is a normalised address or "@domain" (any domain: a user may send for a domain we
    # do not host, e.g. a mailing-list domain).
    async def remove_sendas(self, user: str, address: str) -> None: ...  # NotFound
    async def list_sendas(self, user: str | None = None) -> list[SendAsGrant]: ...
    # Sorted by user, then address; grants disappear with their user.
    async def set_user_admin(self, address: str, admin: bool) -> None: ...

    # -- mailboxes ---------------------------------------------------------------------
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None: ...
    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None, *,
        max_mailboxes: int | None = None,
    ) -> Mailbox: ...
    # Creates missing superior names too. TooMany (nothing created) when the user would
    # own more than ``max_mailboxes`` mailboxes, counting those superior names.
    async def delete_mailbox(self, user_id: int, name: str) -> None: ...
    async def rename_mailbox(
        self, user_id: int, old: str, new: str, *, max_mailboxes: int | None = None
    ) -> None: ...
    # TooMany as for create_mailbox when the new name's missing superiors would exceed it.
    async def list_subscriptions(self, user_id: int) -> list[str]: ...
    async def set_subscribed(
        self, user_id: int, name: str, subscribed: bool, *, max_subscriptions: int | None = None
    ) -> None: ...
    # TooMany when a new subscription would make more than ``max_subscriptions``.
    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus: ...
    async def mailbox_snapshot(
        self, user_id: int, name: str, *, claim_recent: bool = False
    ) -> MailboxSnapshot | None: ...
    # One read (None: no such mailbox). ``claim_recent``: also claim \Recent for every
    # message not claimed before, as :meth:`claim_recent` does (``recent_from``);
    # otherwise ``recent_from`` is the current mark and nothing is claimed.

    # -- messages ----------------------------------------------------------------------
    async def deliver(self, delivery: Delivery) -> DeliveryResult: ...
    async def append(
        self,
        mailbox_id: int,
        data: bytes,
        summary: bytes,
        flags: int = 0,
        keywords: Iterable[str] = (),
        internaldate: int | None = None,
    ) -> tuple[int, int]: ...  # (uidvalidity, uid); OverQuota when it does not fit
    async def list_messages(self, mailbox_id: int) -> list[MessageMeta]: ...
    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]: ...
    async def read_messages(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        *,
        summary: bool = False,
        data: bool = False,
        header_only: bool = False,
    ) -> list[MessageContent]: ...
    # FETCH in one read: the messages among ``uids`` that exist, in UID order, with their
    # parse summaries and/or bytes as asked. ``header_only`` (with ``data``): ``data`` may
    # hold just the top-level header block, the octets before the body (enough for
    # BODY[HEADER], HEADER.FIELDS, RFC822.HEADER), so a backend can skip reading the body.
    # Callers bound memory by asking for the bytes of few messages at a time.
    async def read_blob(self, blob_id: int) -> bytes: ...
    async def read_blobs(self, blob_ids: Sequence[int]) -> dict[int, bytes]: ...
    async def read_summaries(self, blob_ids: Sequence[int]) -> dict[int, bytes]: ...
    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        change: FlagChange,
        unchangedsince: int | None = None,
    ) -> StoreResult: ...
    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]: ...
    async def copy_messages(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        *,
        flag_mask: int = ALL_FLAGS,
        keywords: bool = True,
    ) -> list[tuple[int, int]]: ...  # (src uid, dst uid)
    async def move_messages(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        *,
        flag_mask: int = ALL_FLAGS,
        keywords: bool = True,
    ) -> list[tuple[int, int]]: ...
    # The copies keep only the system flags in ``flag_mask`` and, with ``keywords``, the
    # keywords (ACL rights on the destination, RFC 4314 4). OverQuota when the
    # destination's owner would go over quota (a MOVE within one user never does).
    async def changes_since(
        self, mailbox_id: int, modseq: int, *, claim_above: int | None = None, claim: bool = True
    ) -> Changes: ...
    # ``claim_above`` (an IMAP4rev1 session's last UID): when a message above it is among
    # the changes, \Recent is claimed in the same call as ``claim_recent(mailbox_id,
    # changes.uidnext, claim=claim)`` would, its answer in ``Changes.recent_from`` (one
    # round trip instead of two on PostgreSQL); None: no claim.
    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]: ...
    async def claim_recent(
        self, mailbox_id: int, upto: int | None = None, *, claim: bool = True
    ) -> int: ...
    # \Recent (RFC 3501 2.3.2): the first session to see a message gets it. Claims every
    # UID below ``upto`` (default: the mailbox's UIDNEXT) not claimed before and returns
    # the previous mark: the caller owns [returned value, upto). The claim need not be
    # durable: RFC 3501 lets \Recent be approximate, so after a crash a message may be
    # \Recent once more; backends may keep the mark in memory and persist it lazily.
    # ``claim=False`` (a read-only session, EXAMINE) only returns the mark: the UIDs from
    # it up are \Recent for that session too, and stay so for the next one.
    async def append_many(
        self, mailbox_id: int, messages: Sequence[NewMessage], *, enforce_quota: bool = True
    ) -> tuple[int, list[int]]: ...
    # MULTIAPPEND (RFC 3502 6.3.11): every message in one transaction, or none; returns
    # (uidvalidity, uids in order). OverQuota when the owner's quota would be exceeded.
    async def search_envelope(
        self, mailbox_id: int, keys: Sequence[tuple[str, str]]
    ) -> list[list[int]]: ...
    # SEARCH FROM/TO/CC/BCC/SUBJECT (RFC 9051 6.4.4) evaluated by the store: for each
    # (field, needle), field in SEARCH_FIELDS, the ascending UIDs of the messages whose
    # envelope field, RFC 2047 words decoded (postroom.message.envelope_search_texts),
    # contains ``needle`` ignoring case (str.casefold). An empty needle matches every
    # message that has the field. Backends store the folded texts at delivery/APPEND.

    # -- quota (RFC 9208) ----------------------------------------------------------------
    async def get_quota(self, user_id: int) -> Quota: ...
    async def set_quota(
        self, address: str, storage: int | None, messages: int | None
    ) -> Quota: ...  # None: unlimited; NotFound for an unknown user
    async def list_quotas(self) -> dict[int, Quota]: ...  # by user id

    # -- ACL (RFC 4314) ------------------------------------------------------------------
    async def get_acl(self, mailbox_id: int) -> list[tuple[str, str]]: ...
    # (identifier, rights) in identifier order; the owner's implicit rights are not listed.
    async def set_acl(self, mailbox_id: int, identifier: str, rights: str) -> None: ...
    # Replace the identifier's rights (canonical letters of ALL_RIGHTS); "" removes the
    # entry. NotFound when the mailbox is gone.
    async def shared_mailboxes(
        self, user_id: int, identifiers: Sequence[str]
    ) -> list[SharedMailbox]: ...
    # Mailboxes of users other than ``user_id`` with a non-empty ACL entry for any of
    # ``identifiers``, ordered by owner address and name.
    async def acl_rights(self, mailbox_id: int, identifiers: Sequence[str]) -> str: ...

    # -- METADATA (RFC 5464) --------------------------------------------------------------
    async def get_metadata(self, user_id: int, mailbox_id: int) -> dict[str, bytes]: ...
    # Every entry of a mailbox (``mailbox_id`` 0: the server) visible to ``user_id``: the
    # "/shared/..." entries and that user's "/private/..." ones, by lower-case name.
    async def set_metadata(
        self,
        user_id: int,
        mailbox_id: int,
        entries: Sequence[tuple[str, bytes | None]],
        max_entries: int,
        per_user: tuple[int, int] | None = None,
    ) -> None: ...
    # Set (None: remove) entries, all or none. Names are lower-case and start with
    # "/private/" (kept per user) or "/shared/". TooMany when the mailbox would carry
    # more than ``max_entries`` entries visible to the user. ``per_user`` (entries,
    # octets): the most entries and value octets charged to one user, who is charged
    # with their "/private/" entries everywhere and the "/shared/" ones of the mailboxes
    # they own; past it TooMany (entries) or TooLarge (octets), checked for the users
    # this call adds to.

    # -- URLAUTH (RFC 4467) ---------------------------------------------------------------
    async def urlauth_key(self, mailbox_id: int, *, create: bool = True) -> bytes | None: ...
    # The mailbox's secret URLAUTH key, created (random, 32 octets) on first use; without
    # ``create``, None when there is none (never generated, or reset since).
    async def reset_urlauth_keys(self, user_id: int, mailbox_id: int | None = None) -> None: ...
    # RESETKEY: forget the key of one mailbox, or of every mailbox of the user.

    # -- migration ---------------------------------------------------------------------
    async def import_messages(
        self, mailbox_id: int, origin: str, messages: Sequence[ImportedMessage]
    ) -> list[int]: ...
    # Append ``messages`` to the mailbox in order, and remember each (origin, key) for the
    # mailbox's owner, all in one transaction (durable on return). A message whose key is
    # already remembered for that user and origin is not stored again: its entry in the
    # returned list is 0, the others are the new UIDs. ``origin`` is an opaque string
    # chosen by the importer (e.g. "imap://user@host/INBOX"). The owner's quota applies
    # as for APPEND: OverQuota, and nothing of the batch is stored.
    async def imported_keys(self, user_id: int, origin: str) -> set[str]: ...
    # The keys remembered for ``user_id`` and ``origin`` (empty when none).

    # -- the outbound queue ------------------------------------------------------------
    async def queue_due(
        self, now: int, limit: int, lease_seconds: int, owner: str
    ) -> list[QueuedMessage]: ...
    async def queue_release_leases(self, owner: str) -> int: ...
    async def queue_renew_leases(self, owner: str, qids: Sequence[str], until: int) -> int: ...
    # Extend the leases ``owner`` still holds on ``qids`` (the entries it is working on)
    # to ``until``: a heartbeat. The worker renews well within the lease time, so a node
    # that dies stops renewing and another node takes its work over when the leases run
    # out, while a long delivery of a live node is never taken from it. Returns how many.
    async def queue_get(self, qid: str) -> QueuedMessage | None: ...
    async def queue_list(self) -> list[QueuedMessage]: ...
    async def queue_record(
        self,
        qid: str,
        outcomes: Sequence[RecipientOutcome],
        next_attempt: int | None,
        last_error: str | None,
        delay_warned: bool | None = None,
        *,
        final: bool = True,
    ) -> bool: ...  # True when the entry is finished and removed
    # ``final=False``: an intermediate record made while other recipients of the entry are
    # still being delivered (results written right after each remote reply): the outcomes
    # are stored (and the entry removed when none is left pending), but attempts,
    # next_attempt, last_error and the lease stay as they are.
    async def queue_delete(self, qid: str) -> bool: ...
    async def queue_hold(self, qid: str, held: bool) -> bool: ...
    async def queue_flush(self, qid: str | None = None, domain: str | None = None) -> int: ...
    async def queue_next_due(self) -> int | None: ...

    # -- mail authentication ------------------------------------------------------------
    async def dkim_key_add(self, key: DkimKey) -> None: ...  # AlreadyExists for a known selector
    async def dkim_keys(self, domain: str | None = None) -> list[DkimKey]: ...  # by domain, active_from
    async def dkim_key_update(
        self, domain: str, selector: str, *, active_from: int | None = None, retire_at: int | None = None
    ) -> None: ...  # NotFound; only the given fields change
    async def dkim_key_remove(self, domain: str, selector: str) -> None: ...  # NotFound
    async def dmarc_add(self, rows: Sequence[DmarcRow]) -> None: ...  # counts add up per outcome
    async def dmarc_pending(self, before: int) -> list[DmarcRow]: ...  # rows of periods < before
    async def dmarc_delete(
        self, policy_domain: str, period: int, *, report: Delivery | None = None
    ) -> int: ...
    # Deletes the rows of one report and returns how many there were. With ``report``, the
    # report is delivered (queued) in the same transaction, and only when rows were deleted:
    # a crash never loses or repeats a day's report, and two senders racing (the server's
    # daily run and ``postroom dmarc send-reports``) send it once.
    # TLS-RPT (RFC 8460): outbound results to report, and the reports we received.
    async def tlsrpt_add(self, rows: Sequence[TlsResultRow]) -> None: ...  # counts add up per row key
    async def tlsrpt_pending(self, before: int) -> list[TlsResultRow]: ...  # rows of periods < before
    async def tlsrpt_delete(
        self, policy_domain: str, period: int, *, report: Delivery | None = None
    ) -> int: ...  # as dmarc_delete: the report is queued with the rows' deletion, once
    async def tls_report_add(self, report: TlsReport) -> int | None: ...
    # Stores a received report (``id`` ignored) and returns its id; None when a report with
    # the same organization and report id is already stored (a resend).
    async def tls_reports(self, *, limit: int = 100, domain: str | None = None) -> list[TlsReport]: ...
    # Newest first; ``domain``: only reports that cover it.
    # MTA-STS policies of recipient domains (RFC 8461 5.1: kept across restarts).
    async def sts_policy(self, domain: str) -> StsPolicyRow | None: ...  # expired ones too
    async def sts_policy_put(self, row: StsPolicyRow) -> None: ...  # replaces the domain's row
    async def sts_policies_prune(self, now: int) -> int: ...  # deletes rows expired by now
    async def queue_stats(self) -> QueueStats: ...

    # -- credentials of the HTTP service (digests only; see ApiToken) ---------------------
    async def add_api_token(self, name: str, digest: str) -> ApiToken: ...
    async def list_api_tokens(self) -> list[ApiToken]: ...
    async def remove_api_token(self, name: str) -> bool: ...
    async def find_api_token(self, digest: str) -> ApiToken | None: ...
    async def add_app_password(self, user_id: int, name: str, digest: str) -> AppPassword: ...
    async def list_app_passwords(self, user_id: int) -> list[AppPassword]: ...
    async def remove_app_password(self, user_id: int, password_id: int) -> bool: ...
    async def find_app_password(self, user_id: int, digest: str) -> AppPassword | None: ...
    async def add_web_session(self, digest: str, user_id: int, expires: int) -> None: ...
    # Also forgets every session expired by now (the table stays bounded).
    async def get_web_session(self, digest: str) -> WebSession | None: ...
    async def remove_web_sessions(
        self, *, digest: str | None = None, user_id: int | None = None
    ) -> int: ...
    # One session (logout) or every session of a user (password change).

    # -- the recent delivery log (bounded) -------------------------------------------------
    async def append_delivery_log(self, entries: Sequence[DeliveryLogEntry], keep: int) -> None: ...
    # Appends, then forgets all but the newest ``keep`` entries.
    async def list_delivery_log(self, limit: int, before_id: int | None = None) -> list[DeliveryLogEntry]: ...
    # Newest first; ``before_id`` pages back.

    # -- POP3 exclusive access ------------------------------------------------------------
    async def try_lock_maildrop(self, user_id: int) -> bool: ...
    async def unlock_maildrop(self, user_id: int) -> None: ...
    # RFC 1939 8: one POP3 session per maildrop, across every process and node that
    # shares the store; a lock held by a process that dies is released (coroutines, so
    # that a database-side lock, e.g. a PostgreSQL advisory lock, fits).


def flags_to_names(flags: int, keywords: Iterable[str] = ()) -> list[str]:
    names = [name for bit, name in FLAG_NAMES if flags & bit]
    names.extend(keywords)
    return names


def names_to_flags(names: Iterable[str]) -> tuple[int, tuple[str, ...]]:
    """Split flag names into the system-flag bitmask and sorted, de-duplicated keywords.

    ``\\Recent`` is session state, never stored, and is dropped here.
    """
    bits = 0
    keywords: set[str] = set()
    for name in names:
        low = name.lower()
        bit = SYSTEM_FLAGS.get(low)
        if bit is not None:
            bits |= bit
        elif low == "\\recent":
            continue
        elif not name.startswith("\\"):
            keywords.add(name)
    return bits, tuple(sorted(keywords))
