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


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # "sales@example.org" or "@example.org" (catch-all)
    target: str


@dataclass(frozen=True, slots=True)
class AddressLookup:
    """What one read tells about an address: its domain, a user, alias targets."""

    domain_is_local: bool
    user: User | None
    alias_targets: tuple[str, ...]


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


@dataclass(frozen=True, slots=True)
class FlagChange:
    """How STORE changes flags: mode "add", "remove" or "replace"."""

    mode: str
    flags: int
    keywords: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class MailboxChange:
    """Published after a commit that changed a mailbox; listeners re-read what they need."""

    mailbox_id: int
    user_id: int
    modseq: int


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


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    blob_id: int
    placed: list[tuple[int, int]]  # (mailbox_id, uid)
    queued: str | None  # qid


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


ChangeListener = Callable[[MailboxChange], None]


class ChangeHub(Protocol):
    """Publish/subscribe of mailbox changes, and a wake-up for the queue runner."""

    def subscribe(self, mailbox_id: int, listener: ChangeListener) -> None: ...
    def unsubscribe(self, mailbox_id: int, listener: ChangeListener) -> None: ...
    def subscribe_queue(self, listener: Callable[[], None]) -> None: ...
    def unsubscribe_queue(self, listener: Callable[[], None]) -> None: ...


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

    # -- mailboxes ---------------------------------------------------------------------
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None: ...
    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None
    ) -> Mailbox: ...
    async def delete_mailbox(self, user_id: int, name: str) -> None: ...
    async def rename_mailbox(self, user_id: int, old: str, new: str) -> None: ...
    async def list_subscriptions(self, user_id: int) -> list[str]: ...
    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None: ...
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
    ) -> tuple[int, int]: ...  # (uidvalidity, uid)
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
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]: ...  # (src uid, dst uid)
    async def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]: ...
    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes: ...
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
    async def search_envelope(
        self, mailbox_id: int, keys: Sequence[tuple[str, str]]
    ) -> list[list[int]]: ...
    # SEARCH FROM/TO/CC/BCC/SUBJECT (RFC 9051 6.4.4) evaluated by the store: for each
    # (field, needle), field in SEARCH_FIELDS, the ascending UIDs of the messages whose
    # envelope field, RFC 2047 words decoded (postroom.message.envelope_search_texts),
    # contains ``needle`` ignoring case (str.casefold). An empty needle matches every
    # message that has the field. Backends store the folded texts at delivery/APPEND.

    # -- the outbound queue ------------------------------------------------------------
    async def queue_due(
        self, now: int, limit: int, lease_seconds: int, owner: str
    ) -> list[QueuedMessage]: ...
    async def queue_release_leases(self, owner: str) -> int: ...
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

    # -- POP3 exclusive access ------------------------------------------------------------
    def try_lock_maildrop(self, user_id: int) -> bool: ...
    def unlock_maildrop(self, user_id: int) -> None: ...


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
