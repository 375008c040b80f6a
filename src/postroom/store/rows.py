"""What both SQL backends share above their SQL: rows to dataclasses, flag arithmetic.

The two backends select the same columns in the same order (the schema is one,
``postroom.store.schema``), so a row is turned into the contract's dataclass by one
function here whichever driver returned it (a ``sqlite3`` tuple or an ``asyncpg.Record``,
both indexable). Flag changes (STORE, COPY with ACL masks) are pure arithmetic on a
message's flags and keywords, decided in Python on both backends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from postroom.store.api import (
    ALL_FLAGS,
    ALL_RIGHTS,
    DmarcRow,
    FlagChange,
    Mailbox,
    MessageMeta,
    QueuedMessage,
    QueuedRecipient,
    Quota,
    TooLarge,
    TooMany,
    User,
)

Row = Sequence[Any]

USER_COLS = "u.id, u.address, d.name, u.created, u.password_hash, u.scram, u.disabled, u.admin"
MAILBOX_COLS = "id, user_id, name, uidvalidity, uidnext, highestmodseq, special_use"
META_COLS = "id, uid, flags, keywords, modseq, size, internaldate, blob_id"
QUOTA_COLS = "id, used_storage, quota_storage, used_messages, quota_messages"
QUEUE_COLS = (
    "q.id, q.qid, q.blob_id, q.sender, q.created, q.next_attempt, q.attempts, q.last_error, "
    "q.held, q.ret, q.envid, q.smtputf8, q.body8bit, q.kind, q.delay_warned, b.size"
)
RCPT_COLS = "id, address, orcpt, notify, state, status, diagnostic, remote_mta, updated"
DKIM_COLS = "domain, selector, algorithm, private_key, public_record, created, active_from, retire_at"
DMARC_KEY = (
    "period, policy_domain, header_from, source_ip, envelope_from, disposition, dkim, spf, "
    "dkim_results, spf_result, reason"
)


def user_row(row: Row) -> User:
    return User(
        id=row[0], address=row[1], domain=row[2], created=row[3], password_hash=row[4],
        scram=row[5], disabled=bool(row[6]), admin=bool(row[7]),
    )


def mailbox_row(row: Row) -> Mailbox:
    return Mailbox(
        id=row[0], user_id=row[1], name=row[2], uidvalidity=row[3], uidnext=row[4],
        highestmodseq=row[5], special_use=row[6],
    )


def meta_row(r: Row) -> MessageMeta:
    return MessageMeta(
        id=r[0], uid=r[1], flags=r[2], keywords=tuple(r[3].split()) if r[3] else (),
        modseq=r[4], size=r[5], internaldate=r[6], blob_id=r[7],
    )


def quota_row(row: Row) -> Quota:
    return Quota(user_id=row[0], storage_used=row[1], storage_limit=row[2],
                 messages_used=row[3], messages_limit=row[4])


def queued_message(r: Row, recipients: Iterable[Row]) -> QueuedMessage:
    """A QUEUE_COLS row and its RCPT_COLS rows."""
    return QueuedMessage(
        qid=r[1], blob_id=r[2], sender=r[3], created=r[4], next_attempt=r[5],
        attempts=r[6], last_error=r[7], held=bool(r[8]), ret=r[9], envid=r[10],
        smtputf8=bool(r[11]), body8bit=bool(r[12]), kind=r[13],
        delay_warned=bool(r[14]), size=r[15],
        recipients=tuple(QueuedRecipient(*x) for x in recipients),
    )


def dmarc_row(r: Row) -> DmarcRow:
    """DMARC_KEY columns, then policy, rua, count."""
    return DmarcRow(
        period=r[0], policy_domain=r[1], header_from=r[2], source_ip=r[3], envelope_from=r[4],
        disposition=r[5], dkim=r[6], spf=r[7], dkim_results=r[8], spf_result=r[9],
        reason=r[10], policy=r[11], rua=r[12], count=r[13],
    )


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def canonical_rights(rights: str) -> str:
    """The rights in ALL_RIGHTS order, each once, unknown letters dropped."""
    return "".join(r for r in ALL_RIGHTS if r in rights)


def apply_flags(change: FlagChange, flags: int, keywords: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    """A message's flags and keywords after ``change`` (STORE), within its mask."""
    new_flags, new_keywords = _apply_all(change, flags, keywords)
    mask = change.mask
    new_flags = (flags & ~mask) | (new_flags & mask)  # flags outside the mask stay
    return new_flags, new_keywords if change.keywords_allowed else keywords


FlagUpdate = tuple[int, tuple[str, ...], MessageMeta]  # new flags, new keywords, the message


def plan_flags(
    current: Sequence[MessageMeta], change: FlagChange, unchangedsince: int | None
) -> tuple[list[MessageMeta], list[int], list[FlagUpdate]]:
    """What a STORE does to each message: (unchanged, failed UIDs, updates)."""
    unchanged: list[MessageMeta] = []
    failed: list[int] = []
    updates: list[FlagUpdate] = []
    for m in current:
        # RFC 7162 3.1.3: a message modified after UNCHANGEDSINCE is not touched.
        if unchangedsince is not None and m.modseq > unchangedsince:
            failed.append(m.uid)
            continue
        flags, keywords = apply_flags(change, m.flags, m.keywords)
        if flags == m.flags and keywords == m.keywords:
            unchanged.append(m)
        else:
            updates.append((flags, keywords, m))
    return unchanged, failed, updates


def _apply_all(change: FlagChange, flags: int, keywords: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    if change.mode == "replace":
        return change.flags, tuple(sorted(set(change.keywords)))
    if change.mode == "add":
        return flags | change.flags, tuple(sorted(set(keywords) | set(change.keywords)))
    if change.mode == "remove":
        drop = {k.lower() for k in change.keywords}
        return flags & ~change.flags, tuple(k for k in keywords if k.lower() not in drop)
    raise ValueError(f"bad flag change mode {change.mode!r}")


def with_meta(m: MessageMeta, **changes: Any) -> MessageMeta:
    return dataclasses.replace(m, **changes)


def masked(m: MessageMeta, flag_mask: int, keywords: bool) -> MessageMeta:
    """The copy of a message that COPY/MOVE may make (ACL rights on the destination)."""
    if flag_mask == ALL_FLAGS and keywords:
        return m
    return with_meta(m, flags=m.flags & flag_mask, keywords=m.keywords if keywords else ())


def chunks(items: Sequence[int], n: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


# -- METADATA charged to a user (RFC 5464 4.3; limits.metadata_*_per_user) ----------------

# Entries and value octets charged to user ? (twice): their "/private/" entries anywhere
# (the server's included) and the "/shared/" entries of the mailboxes they own. Portable
# SQL: length() of a BLOB (SQLite) or bytea (PostgreSQL) counts octets.
METADATA_CHARGED = (
    "SELECT count(*), coalesce(sum(length(value)), 0) FROM metadata WHERE owner = ? "
    "OR (owner = 0 AND mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = ?))"
)


def metadata_charges(user_id: int, owner_id: int, mailbox_id: int,
                     entries: Iterable[tuple[str, bytes | None]]) -> dict[int, int]:
    """The users one SETMETADATA adds to (a value set, not removed), with the octets of
    the values it sets for each: ``user_id`` for "/private/" entries, the mailbox's owner
    for "/shared/" ones (server "/shared/" entries are the administrator's: nobody's)."""
    out: dict[int, int] = {}
    for name, value in entries:
        if value is None:
            continue
        if name.startswith("/private/"):
            out[user_id] = out.get(user_id, 0) + len(value)
        elif mailbox_id:
            out[owner_id] = out.get(owner_id, 0) + len(value)
    return out


def check_metadata_charge(per_user: tuple[int, int], count: int, octets: int,
                          added_octets: int, added: bool) -> None:
    """Raise TooMany (only when the change ``added`` an entry) or TooLarge when a user's
    charge, counted after the change, is over ``per_user`` (entries, octets); TooLarge
    says how many octets the change could have set (RFC 5464 4.3: MAXSIZE n)."""
    max_entries, max_octets = per_user
    if added and count > max_entries:
        raise TooMany("Too many metadata entries for this user")
    if octets > max_octets:
        raise TooLarge(max(0, max_octets - (octets - added_octets)))
