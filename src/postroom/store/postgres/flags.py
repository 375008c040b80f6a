"""STORE on PostgreSQL: a message's flags and keywords changed in as few round trips as
the change allows (``bench/pg_statements.py``).

* System flags only (``\\Seen``, ``\\Flagged``, ``\\Deleted``: what clients set all the
  time): one call of the server-side function ``postroom_store_flags`` (migration 19).
* A change naming keywords: two statements without a transaction, the read and a
  compare-and-set on HIGHESTMODSEQ (:func:`store_flags_optimistic`).
* When another writer changed the mailbox between those two: the locked transaction
  (:func:`store_flags`), the reference the other two must agree with.

The rules for what a change does to a message are store/rows.py's (``plan_flags``),
shared with SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from postroom.store.api import FlagChange, MessageMeta, NotFound, StoreResult
from postroom.store.postgres.mail import get_messages, rowcount
from postroom.store.rows import META_COLS, meta_row, plan_flags, with_meta


async def store_flags(
    conn: asyncpg.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    change: FlagChange,
    unchangedsince: int | None,
) -> tuple[StoreResult, int, int]:
    """(result, owner, highestmodseq after). The mailbox row is locked first, so two
    STOREs on one mailbox run one after the other and both see the other's flags (the
    read of the messages is a statement after the lock: it sees the other's commit).
    Three statements: lock, read, and the modseq bump with the update (the lock is held,
    so the new modseq is the old one plus one)."""
    row = await conn.fetchrow(
        "SELECT highestmodseq, user_id FROM mailboxes WHERE id = $1 FOR UPDATE", mailbox_id
    )
    if row is None:
        raise NotFound("no such mailbox")
    modseq, owner = int(row[0]), int(row[1])
    current = await get_messages(conn, mailbox_id, uids)
    changed: list[MessageMeta] = []
    unchanged, failed, updates = plan_flags(current, change, unchangedsince)
    if updates:
        modseq += 1
        await conn.execute(
            "WITH b AS (UPDATE mailboxes SET highestmodseq = $4 WHERE id = $5) "
            "UPDATE messages m SET flags = c.f, keywords = c.k, modseq = $4 "
            "FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS c(id, f, k) WHERE m.id = c.id",
            [m.id for _, _, m in updates], [f for f, _, _ in updates],
            [" ".join(k) for _, k, _ in updates], modseq, mailbox_id,
        )
        changed = [with_meta(m, flags=f, keywords=k, modseq=modseq) for f, k, m in updates]
    return StoreResult(changed=changed, unchanged=unchanged, failed_uids=failed), owner, modseq


async def store_system_flags(
    conn: asyncpg.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    change: FlagChange,
    unchangedsince: int | None,
) -> tuple[StoreResult, int, int]:
    """:func:`store_flags` for a change that names no keyword, as one call of the
    server-side function ``postroom_store_flags`` (migration 19): the same lock, the same
    rules (``rows.apply_flags``: keywords stay, or all go for a replace), one round trip.

    Keywords are stored sorted and unique by every writer, so "add" and "remove" of no
    keyword leave them exactly as ``apply_flags`` would."""
    assert not change.keywords
    rows = await conn.fetch(
        "SELECT * FROM postroom_store_flags($1, $2, $3, $4, $5, $6, $7)",
        mailbox_id, sorted(set(uids)), change.mode, change.flags, change.mask,
        change.mode == "replace" and change.keywords_allowed, unchangedsince,
    )
    if not rows:
        raise NotFound("no such mailbox")
    owner, modseq, bumped = int(rows[0][0]), int(rows[0][1]), rows[0][2]
    changed: list[MessageMeta] = []
    unchanged: list[MessageMeta] = []
    failed: list[int] = []
    for r in rows:
        if r[3] is None:
            continue
        m = meta_row(r[3:])
        if bumped and m.modseq == modseq:  # the new modseq is this call's alone (the lock)
            changed.append(m)
        elif unchangedsince is not None and m.modseq > unchangedsince:
            failed.append(m.uid)  # RFC 7162 3.1.3
        else:
            unchanged.append(m)
    return StoreResult(changed=changed, unchanged=unchanged, failed_uids=failed), owner, modseq


async def store_flags_optimistic(
    conn: asyncpg.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    change: FlagChange,
    unchangedsince: int | None,
) -> tuple[StoreResult, int, int] | None:
    """:func:`store_flags` in two statements and no explicit transaction (five round
    trips become two: bench/pg_statements.py), or None when another writer got in between
    and the caller must run :func:`store_flags`.

    Why it is exact: the first statement reads the mailbox's HIGHESTMODSEQ and the
    messages in one snapshot; every change to a mailbox's messages (flags, arrival,
    expunge, move, on any node) bumps HIGHESTMODSEQ in its transaction. The second
    statement updates the mailbox row only if HIGHESTMODSEQ is still the value read
    (a compare-and-set: under READ COMMITTED a row locked by a concurrent writer is
    re-checked against its committed version), and the messages only through that
    update; so the flags computed from the read are applied only when nothing changed
    the mailbox since, and the statement is its own transaction (durable on return)."""
    rows = await conn.fetch(
        f"SELECT b.highestmodseq, b.user_id, "
        f"{', '.join('m.' + c.strip() for c in META_COLS.split(','))} FROM mailboxes b "
        "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.uid = ANY($2::bigint[]) "
        "WHERE b.id = $1 ORDER BY m.uid", mailbox_id, sorted(set(uids)),
    )
    if not rows:
        raise NotFound("no such mailbox")
    modseq, owner = int(rows[0][0]), int(rows[0][1])
    current = [meta_row(r[2:]) for r in rows if r[2] is not None]
    unchanged, failed, updates = plan_flags(current, change, unchangedsince)
    if not updates:  # a read: nothing to write, the snapshot is the answer
        return StoreResult(changed=[], unchanged=unchanged, failed_uids=failed), owner, modseq
    status = await conn.execute(
        "WITH b AS (UPDATE mailboxes SET highestmodseq = $4 WHERE id = $5 AND highestmodseq = $6 "
        "RETURNING id) "
        "UPDATE messages m SET flags = c.f, keywords = c.k, modseq = $4 "
        "FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS c(id, f, k), b "
        "WHERE m.id = c.id AND m.mailbox_id = b.id",
        [m.id for _, _, m in updates], [f for f, _, _ in updates],
        [" ".join(k) for _, k, _ in updates], modseq + 1, mailbox_id, modseq,
    )
    if rowcount(status) == 0:
        return None  # HIGHESTMODSEQ moved (or the mailbox is gone): the locked path decides
    modseq += 1
    changed = [with_meta(m, flags=f, keywords=k, modseq=modseq) for f, k, m in updates]
    return StoreResult(changed=changed, unchanged=unchanged, failed_uids=failed), owner, modseq
