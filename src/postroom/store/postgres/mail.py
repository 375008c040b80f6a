"""Messages: delivery, APPEND, flags, expunge, copy/move and change tracking (PostgreSQL).

Plain coroutines of a connection, run by the backend inside one transaction
(``Engine.write``) or read (``Engine.read``). UIDs and mod-sequences are allocated by
``UPDATE ... RETURNING`` on the mailbox row, as on SQLite: the row lock serialises
writers of one mailbox until their commit, so UIDs are strictly ascending and never reused
even with several nodes writing.

**Lock order.** Several nodes and many connections write at once, so every transaction
that changes both takes user rows before mailbox rows, each kind in id order, and blob
rows last: a user's quota row (``lock_users``) is locked before any of their mailboxes,
and several mailboxes are locked in id order before any is changed (``lock_mailboxes``).
Two writers can then never wait for each other in a circle; the engine retries the rare
deadlock that is left (two expunges releasing shared blobs in different orders).

**Round trips.** Each statement is a round trip and costs the node CPU in the driver, so
the hot writes batch rows with ``unnest`` arrays: a delivery is one lock, one allocation
and one insert of every row, whatever the number of recipients.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from postroom.message import search_texts_of
from postroom.message.model import header_block_end
from postroom.store.api import (
    SEARCH_FIELDS,
    Changes,
    Delivery,
    MessageMeta,
    NewMessage,
    NotFound,
    OverQuota,
    Quota,
)
from postroom.store.rows import (
    META_COLS,
    QUOTA_COLS,
        masked,
    meta_row,
    quota_row,
)

if TYPE_CHECKING:
    from postroom.store.sqlite.snapshots import SnapshotCache

SearchTexts = tuple[str | None, ...]
# How much of a message a header-only read fetches in its first query: headers are
# rarely longer, and a longer one is read again in full.
HEAD_READ = 16384


@dataclass(frozen=True, slots=True)
class BlobIn:
    """Bytes to store: in ``data``, or already written to the blob store at ``location``
    (then ``data`` is empty). ``size`` is the message's size either way."""

    size: int
    summary: bytes
    data: bytes
    location: str | None = None


def rowcount(status: str) -> int:
    """The row count of a command tag ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def insert_blob(conn: asyncpg.Connection, blob: BlobIn, refs: int) -> int:
    return int(await conn.fetchval(
        "INSERT INTO blobs(size, refs, summary, data, location) VALUES($1, $2, $3, $4, $5) "
        "RETURNING id",
        blob.size, refs, blob.summary, blob.data, blob.location,
    ))


async def insert_blobs(conn: asyncpg.Connection, blobs: Sequence[BlobIn]) -> list[int]:
    """Insert blobs with one reference each; their ids in order. The ids are drawn from
    the sequence first: the order of RETURNING rows is not promised."""
    if len(blobs) == 1:
        return [await insert_blob(conn, blobs[0], 1)]
    ids = [r[0] for r in await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('blobs', 'id')) FROM generate_series(1, $1)",
        len(blobs),
    )]
    await conn.execute(
        "INSERT INTO blobs(id, size, refs, summary, data, location) SELECT * FROM "
        "unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[])",
        ids, [b.size for b in blobs], [1] * len(blobs), [b.summary for b in blobs],
        [b.data for b in blobs], [b.location for b in blobs],
    )
    return ids


# -- locks, allocation, quota -------------------------------------------------------------


async def lock_users(conn: asyncpg.Connection, user_ids: Iterable[int]) -> dict[int, Quota]:
    """Lock user rows in id order (see the lock order above) and read their quotas."""
    ids = sorted(set(user_ids))
    rows = await conn.fetch(
        f"SELECT {QUOTA_COLS} FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", ids
    )
    return {r[0]: quota_row(r) for r in rows}


async def lock_mailboxes(conn: asyncpg.Connection, mailbox_ids: Iterable[int]) -> None:
    ids = sorted(set(mailbox_ids))
    if len(ids) > 1:  # one row needs no ordering: the allocation locks it
        await conn.execute(
            "SELECT id FROM mailboxes WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", ids
        )


async def allocate(conn: asyncpg.Connection, counts: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Reserve ``counts[mailbox]`` UIDs and one new modseq per mailbox:
    {mailbox: (first uid, modseq)}. The caller locked several mailboxes in order first."""
    ids = list(counts)
    rows = await conn.fetch(
        "UPDATE mailboxes m SET uidnext = m.uidnext + c.n, highestmodseq = m.highestmodseq + 1 "
        "FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n) WHERE m.id = c.id "
        "RETURNING m.id, m.uidnext - c.n, m.highestmodseq",
        ids, [counts[i] for i in ids],
    )
    if len(rows) != len(ids):
        raise NotFound("no such mailbox")
    return {r[0]: (r[1], r[2]) for r in rows}


async def bump_modseq(conn: asyncpg.Connection, mailbox_id: int) -> int:
    value = await conn.fetchval(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 "
        "RETURNING highestmodseq", mailbox_id,
    )
    if value is None:
        raise NotFound("no such mailbox")
    return int(value)


async def charge(conn: asyncpg.Connection, usage: dict[int, tuple[int, int]]) -> None:
    """Add (octets, messages) to each user's usage (negative to release)."""
    items = [(u, s, n) for u, (s, n) in usage.items() if s or n]
    if items:
        await conn.execute(
            "UPDATE users u SET used_storage = u.used_storage + c.s, "
            "used_messages = u.used_messages + c.n "
            "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS c(id, s, n) WHERE u.id = c.id",
            [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
        )


async def get_quota(conn: asyncpg.Connection, user_id: int) -> Quota:
    row = await conn.fetchrow(f"SELECT {QUOTA_COLS} FROM users WHERE id = $1", user_id)
    if row is None:
        raise NotFound(f"no user {user_id}")
    return quota_row(row)


async def list_quotas(conn: asyncpg.Connection) -> dict[int, Quota]:
    return {r[0]: quota_row(r) for r in await conn.fetch(f"SELECT {QUOTA_COLS} FROM users")}


async def set_quota(conn: asyncpg.Connection, address: str, storage: int | None, messages: int | None) -> Quota:
    row = await conn.fetchrow(
        f"UPDATE users SET quota_storage = $1, quota_messages = $2 WHERE address = $3 "
        f"RETURNING {QUOTA_COLS}", storage, messages, address,
    )
    if row is None:
        raise NotFound(f"no user {address}")
    return quota_row(row)


async def owner_of(conn: asyncpg.Connection, mailbox_id: int) -> tuple[int, int]:
    """(user id, uidvalidity) of a mailbox; NotFound when it is gone."""
    row = await conn.fetchrow("SELECT user_id, uidvalidity FROM mailboxes WHERE id = $1", mailbox_id)
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0]), int(row[1])


# -- placing messages -------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    mailbox_id: int
    uid: int
    blob_id: int
    size: int
    internaldate: int
    flags: int
    keywords: str
    modseq: int
    texts: SearchTexts


async def insert_rows(
    conn: asyncpg.Connection, rows: Sequence[_Row], usage: dict[int, tuple[int, int]] | None = None
) -> None:
    """Insert message rows and their search rows, and with ``usage`` charge the owners'
    quotas ({user: (octets, messages)}), in one statement."""
    cols: list[list[Any]] = [[] for _ in range(13)]
    for r in rows:
        for i, v in enumerate((r.mailbox_id, r.uid, r.blob_id, r.size, r.internaldate, r.flags,
                               r.keywords, r.modseq, *r.texts)):
            cols[i].append(v)
    insert = (
        "INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, flags, keywords, "
        "modseq) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], "
        "$5::bigint[], $6::bigint[], $7::text[], $8::bigint[]) RETURNING 1"
    )
    search = (
        "INSERT INTO message_search SELECT * FROM unnest($1::bigint[], $2::bigint[], "
        "$9::text[], $10::text[], $11::text[], $12::text[], $13::text[])"
    )
    if not usage:
        await conn.execute(f"WITH m AS ({insert}) {search}", *cols)
        return
    users = list(usage)
    await conn.execute(
        f"WITH m AS ({insert}), s AS ({search} RETURNING 1) "
        "UPDATE users u SET used_storage = u.used_storage + c.s, "
        "used_messages = u.used_messages + c.n "
        "FROM unnest($14::bigint[], $15::bigint[], $16::bigint[]) AS c(id, s, n) WHERE u.id = c.id",
        *cols, users, [usage[u][0] for u in users], [usage[u][1] for u in users],
    )


# One delivery's outcome in a batch: (blob_id, [(mailbox_id, user_id, uid)], users skipped
# over quota). blob_id 0 when nothing references it (everybody over quota, no queue entry).
Delivered = tuple[int, list[tuple[int, int, int]], tuple[int, ...]]


async def deliver(
    conn: asyncpg.Connection, d: Delivery, blob: BlobIn
) -> tuple[int, list[tuple[int, int, int]], tuple[int, ...]]:
    """Store the blob once and place it in every target mailbox (quota-checked with
    ``d.enforce_quota``): :func:`deliver_many` with one delivery."""
    return (await deliver_many(conn, [(d, blob)]))[0]


async def deliver_many(
    conn: asyncpg.Connection, items: Sequence[tuple[Delivery, BlobIn]]
) -> list[Delivered]:
    """Several deliveries in this one transaction (the backend's group commit), with the
    outcome each would have had alone, run one after the other in this order: the quota
    check of each counts the messages placed by the ones before it, and UIDs ascend in
    this order. The queue entries are the caller's (:func:`queue.add_many`), on the blob
    ids returned.

    Three statements whatever the number of deliveries and recipients (four when the batch
    reaches several mailboxes, five with explicit mailboxes): lock the users (reading
    their quotas and INBOX ids), insert the blobs and allocate the UIDs, insert the message
    and search rows and charge the quotas."""
    explicit = sorted({m for d, _ in items for m in d.mailbox_ids})
    owner: dict[int, int] = {}
    if explicit:  # rare (Junk, a Sent copy): their owners first, to lock them in order
        owner = {r[0]: r[1] for r in await conn.fetch(
            "SELECT id, user_id FROM mailboxes WHERE id = ANY($1::bigint[])", explicit)}
    quotas: dict[int, Quota] = {}
    inbox: dict[int, int] = {}
    wanted = sorted({u for d, _ in items for u in d.user_ids} | set(owner.values()))
    if wanted:
        for r in await conn.fetch(
            f"SELECT {QUOTA_COLS}, (SELECT b.id FROM mailboxes b WHERE b.user_id = users.id "
            "AND b.name = 'INBOX') AS inbox FROM users WHERE users.id = ANY($1::bigint[]) "
            "ORDER BY users.id FOR UPDATE OF users",
            wanted,
        ):
            quotas[r[0]] = quota_row(r)
            if r[5] is not None:
                inbox[r[0]] = r[5]
    # Plan every delivery as if alone, in order: targets, users skipped, blob references.
    added: dict[int, tuple[int, int]] = {}  # usage placed by the deliveries before
    plans: list[tuple[list[tuple[int, int]], tuple[int, ...], int]] = []
    for d, blob in items:
        targets: list[tuple[int, int]] = []  # (mailbox, user) in the order SQLite places them
        for user_id in dict.fromkeys(d.user_ids):
            if user_id not in inbox:
                raise NotFound(f"user {user_id} has no INBOX")
            targets.append((inbox[user_id], user_id))
        for mailbox_id in dict.fromkeys(d.mailbox_ids):
            if mailbox_id not in owner:
                raise NotFound("no such mailbox")
            targets.append((mailbox_id, owner[mailbox_id]))
        over: list[int] = []
        if d.enforce_quota:
            kept = []
            for mailbox_id, user_id in targets:
                size, count = added.get(user_id, (0, 0))
                if quotas[user_id].allows(size + blob.size, count + 1):
                    kept.append((mailbox_id, user_id))
                else:
                    over.append(user_id)
            targets = kept
        for _, user_id in targets:
            size, count = added.get(user_id, (0, 0))
            added[user_id] = (size + blob.size, count + 1)
        plans.append((targets, tuple(over), len(targets) + (1 if d.queue is not None else 0)))
    stored = [i for i, (_, _, refs) in enumerate(plans) if refs]
    if not stored:
        return [(0, [], over) for _, over, _ in plans]
    counts: dict[int, int] = {}
    for targets, _, _ in plans:
        for mailbox_id, _ in targets:
            counts[mailbox_id] = counts.get(mailbox_id, 0) + 1
    await lock_mailboxes(conn, counts)
    ids = list(counts)
    blobs = [items[i][1] for i in stored]
    # The blob ids are drawn in a materialised CTE and listed in input order (the order
    # of RETURNING rows is not promised); the allocation comes back as (id, first, modseq)
    # triples.
    row = await conn.fetchrow(
        "WITH c AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('blobs', 'id')) AS id, "
        "x.* FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[], $5::text[]) "
        "WITH ORDINALITY AS x(s, r, su, d, l, i)), "
        "b AS (INSERT INTO blobs(id, size, refs, summary, data, location) "
        "SELECT id, s, r, su, d, l FROM c), "
        "a AS (UPDATE mailboxes m SET uidnext = m.uidnext + c.n, "
        "highestmodseq = m.highestmodseq + 1 FROM unnest($6::bigint[], $7::bigint[]) AS c(id, n) "
        "WHERE m.id = c.id RETURNING m.id, m.uidnext - c.n AS first, m.highestmodseq) "
        "SELECT (SELECT array_agg(id ORDER BY i) FROM c), "
        "(SELECT array_agg(array[id, first, highestmodseq]) FROM a)",
        [b.size for b in blobs], [plans[i][2] for i in stored], [b.summary for b in blobs],
        [b.data for b in blobs], [b.location for b in blobs], ids, [counts[i] for i in ids],
    )
    blob_ids = dict(zip(stored, row[0], strict=True))
    allocated = {r[0]: (r[1], r[2]) for r in row[1] or ()}
    if len(allocated) != len(ids):
        raise NotFound("no such mailbox")
    now = int(time.time())
    rows: list[_Row] = []
    used: dict[int, int] = {}
    out: list[Delivered] = []
    for k, ((d, blob), (targets, skipped, _)) in enumerate(zip(items, plans, strict=True)):
        blob_id = blob_ids.get(k, 0)
        placed: list[tuple[int, int, int]] = []
        if targets:
            internaldate = d.internaldate if d.internaldate is not None else now
            texts = d.search_texts if d.search_texts is not None else search_texts_of(d.summary, d.data)
            for mailbox_id, user_id in targets:
                first, modseq = allocated[mailbox_id]
                uid = first + used.get(mailbox_id, 0)
                used[mailbox_id] = used.get(mailbox_id, 0) + 1
                rows.append(_Row(mailbox_id, uid, blob_id, blob.size, internaldate, d.flags, "",
                                 modseq, texts))
                placed.append((mailbox_id, user_id, uid))
        out.append((blob_id, placed, skipped))
    if rows:
        await insert_rows(conn, rows, added)
    return out


async def append_many(
    conn: asyncpg.Connection,
    mailbox_id: int,
    messages: Sequence[NewMessage],
    blobs: Sequence[BlobIn],
    texts: Sequence[SearchTexts],
    enforce_quota: bool,
) -> tuple[int, list[int], int, int]:
    """Store every message in this one transaction (MULTIAPPEND, RFC 3502: all or none);
    (uidvalidity, uids, user id, last modseq). OverQuota when they do not fit.

    One call of the server-side function ``postroom_append`` (migration 17): the owner,
    its quota row locked, the blobs, the UIDs and modseq, the message and search rows and
    the usage, in one round trip; outside a transaction its statement is its own."""
    now = int(time.time())
    texts_by_field = list(zip(*texts, strict=True)) if texts else [()] * len(SEARCH_FIELDS)
    row = await conn.fetchrow(
        "SELECT * FROM postroom_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        mailbox_id, [b.size for b in blobs], [b.summary for b in blobs], [b.data for b in blobs],
        [b.location for b in blobs],
        [m.internaldate if m.internaldate is not None else now for m in messages],
        [m.flags for m in messages], [" ".join(sorted(set(m.keywords))) for m in messages],
        *(list(t) for t in texts_by_field), enforce_quota,
    )
    validity, first, user_id, modseq, over = row
    if over:
        raise OverQuota("Quota exceeded")
    if validity is None:
        raise NotFound("no such mailbox")
    return int(validity), [first + i for i in range(len(messages))], int(user_id), int(modseq)


# -- reading ------------------------------------------------------------------------------


async def list_messages(conn: asyncpg.Connection, mailbox_id: int) -> list[MessageMeta]:
    rows = await conn.fetch(
        f"SELECT {META_COLS} FROM messages WHERE mailbox_id = $1 ORDER BY uid", mailbox_id
    )
    return [meta_row(r) for r in rows]


async def get_messages(conn: asyncpg.Connection, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
    rows = await conn.fetch(
        f"SELECT {META_COLS} FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) "
        "ORDER BY uid", mailbox_id, sorted(set(uids)),
    )
    return [meta_row(r) for r in rows]


# A message's bytes as read: (bytes or b"" when external, location or None).
Stored = tuple[bytes, str | None]


async def read_messages(
    conn: asyncpg.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    summary: bool,
    data: bool,
    header_only: bool,
) -> list[tuple[MessageMeta, bytes | None, Stored | None, int | None]]:
    """Rows for FETCH: (meta, summary, stored bytes, header end). With ``header_only`` the
    first HEAD_READ octets are read (TOAST fetches only their chunks: the column is
    stored EXTERNAL), and messages whose header is longer are read again in full; the
    caller cuts at the header end. External blobs come back as their location."""
    partial = data and header_only
    cols = "m.id, m.uid, m.flags, m.keywords, m.modseq, m.size, m.internaldate, m.blob_id"
    if summary or partial:
        cols += ", b.summary"
    if data:
        cols += (f", substring(b.data from 1 for {HEAD_READ})" if partial else ", b.data")
        cols += ", b.location"
    join = " JOIN blobs b ON b.id = m.blob_id" if (summary or data) else ""
    wanted = sorted(set(uids))
    if len(wanted) == 1:
        # One message (a client opening one: most FETCHes): "uid = $2" gets PostgreSQL's
        # generic plan after five calls, "uid = ANY($2)" a new custom plan on every call
        # (the array's length is unknown to a generic plan): ~0.15 ms of the database's
        # CPU per FETCH (bench/pg_statements.py, plans per statement).
        rows = await conn.fetch(
            f"SELECT {cols} FROM messages m{join} WHERE m.mailbox_id = $1 AND m.uid = $2",
            mailbox_id, wanted[0],
        )
    else:
        rows = await conn.fetch(
            f"SELECT {cols} FROM messages m{join} WHERE m.mailbox_id = $1 "
            "AND m.uid = ANY($2::bigint[]) ORDER BY m.uid", mailbox_id, wanted,
        )
    out: list[tuple[MessageMeta, bytes | None, Stored | None, int | None]] = []
    again: list[int] = []
    for r in rows:
        meta = meta_row(r)
        raw = r[8] if summary or partial else None
        stored: Stored | None = None
        end: int | None = None
        if data:
            stored = (r[-2], r[-1])
            if partial:
                assert raw is not None
                end = header_block_end(raw)
                if r[-1] is None and (end is None or end > HEAD_READ):
                    again.append(meta.blob_id)
        out.append((meta, raw if summary else None, stored, end))
    if again:
        full = await read_stored(conn, again)
        out = [(m, s, full.get(m.blob_id, st) if st is not None else None, e) for m, s, st, e in out]
    return out


async def read_stored(conn: asyncpg.Connection, blob_ids: Sequence[int]) -> dict[int, Stored]:
    rows = await conn.fetch(
        "SELECT id, data, location FROM blobs WHERE id = ANY($1::bigint[])", sorted(set(blob_ids))
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def read_summaries(conn: asyncpg.Connection, blob_ids: Sequence[int]) -> dict[int, bytes]:
    rows = await conn.fetch(
        "SELECT id, summary FROM blobs WHERE id = ANY($1::bigint[])", sorted(set(blob_ids))
    )
    return {r[0]: r[1] for r in rows}


# -- changing -----------------------------------------------------------------------------


async def release_blobs(conn: asyncpg.Connection, blob_ids: Sequence[int]) -> list[str]:
    """Drop one reference per entry of ``blob_ids``; delete blobs left without any and
    list their external objects in ``blob_garbage`` (in this transaction, so an object is
    deleted only once no row can reference it). Returns those locations."""
    counts: dict[int, int] = {}
    for b in blob_ids:
        counts[b] = counts.get(b, 0) + 1
    if not counts:
        return []
    ids = sorted(counts)
    rows = await conn.fetch(
        "UPDATE blobs b SET refs = b.refs - c.n FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n) "
        "WHERE b.id = c.id RETURNING b.id, b.refs", ids, [counts[i] for i in ids],
    )
    dead = [r[0] for r in rows if r[1] <= 0]
    if not dead:
        return []
    gone = await conn.fetch(
        "DELETE FROM blobs WHERE id = ANY($1::bigint[]) RETURNING location", dead
    )
    locations = [r[0] for r in gone if r[0] is not None]
    if locations:
        await conn.execute(
            "INSERT INTO blob_garbage(location, since) SELECT unnest($1::text[]), $2 "
            "ON CONFLICT DO NOTHING", locations, int(time.time()),
        )
    return locations


async def expunge(conn: asyncpg.Connection, mailbox_id: int, uids: Sequence[int]) -> tuple[list[int], int, int, list[str]]:
    """(expunged uids, owner, modseq, external objects to collect). One call of the
    server-side function ``postroom_expunge`` (migration 18): lock the owner's row, bump
    the modseq, delete the rows, release the usage, remember the UIDs for QRESYNC and drop
    the blob references (:func:`release_blobs`' work), in one round trip."""
    row = await conn.fetchrow(
        "SELECT * FROM postroom_expunge($1, $2, $3)", mailbox_id, sorted(set(uids)), int(time.time())
    )
    owner, modseq, gone, garbage = row
    if owner is None:
        raise NotFound("no such mailbox")
    return list(gone), int(owner), int(modseq), list(garbage)


async def copy_messages(
    conn: asyncpg.Connection,
    src: int,
    uids: Sequence[int],
    dst: int,
    move: bool,
    flag_mask: int,
    keywords: bool,
) -> tuple[list[tuple[int, int]], tuple[int, int], tuple[int, int]]:
    """COPY or MOVE; (pairs, (dst owner, dst modseq), (src owner, src modseq))."""
    owners = {
        r[0]: r[1] for r in await conn.fetch(
            "SELECT id, user_id FROM mailboxes WHERE id = ANY($1::bigint[])", [src, dst]
        )
    }
    if dst not in owners:
        raise NotFound("no such mailbox")
    if src not in owners:
        return [], (owners[dst], 0), (0, 0)
    src_owner, dst_owner = owners[src], owners[dst]
    quotas = await lock_users(conn, [src_owner, dst_owner])
    await lock_mailboxes(conn, [src, dst])
    rows = [masked(m, flag_mask, keywords) for m in await get_messages(conn, src, uids)]
    if not rows:
        return [], (dst_owner, 0), (src_owner, 0)
    size = sum(m.size for m in rows)
    if not move or src_owner != dst_owner:
        if not quotas[dst_owner].allows(size, len(rows)):
            raise OverQuota("Quota exceeded")
        usage = {dst_owner: (size, len(rows))}
        if move:
            usage[src_owner] = (-size, -len(rows))
        await charge(conn, usage)
    first, modseq = (await allocate(conn, {dst: len(rows)}))[dst]
    pairs = [(m.uid, first + i) for i, m in enumerate(rows)]
    src_modseq = 0
    if move:
        # The row moves (same id: POP3 UIDL and the blob reference stay; the search row
        # follows by ON UPDATE CASCADE); the source records the UIDs as expunged.
        src_modseq = await bump_modseq(conn, src)
        await conn.execute(
            "UPDATE messages m SET mailbox_id = $1, uid = c.uid, modseq = $2, flags = c.f, "
            "keywords = c.k FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::text[]) "
            "AS c(id, uid, f, k) WHERE m.id = c.id",
            dst, modseq, [m.id for m in rows], [new for _, new in pairs],
            [m.flags for m in rows], [" ".join(m.keywords) for m in rows],
        )
        await conn.execute(
            "INSERT INTO expunged(mailbox_id, uid, modseq) SELECT $1, unnest($2::bigint[]), $3 "
            "ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
            src, [m.uid for m in rows], src_modseq,
        )
    else:
        await conn.execute(
            "WITH c AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], "
            "$5::bigint[], $6::bigint[], $7::bigint[], $8::text[]) AS c(old, new, blob, size, "
            "idate, f, k)), "
            "m AS (INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, flags, "
            "keywords, modseq) SELECT $1, new, blob, size, idate, f, k, $9 FROM c RETURNING 1) "
            "INSERT INTO message_search SELECT $1, c.new, s.from_text, s.to_text, s.cc_text, "
            "s.bcc_text, s.subject_text FROM c JOIN message_search s "
            "ON s.mailbox_id = $10 AND s.uid = c.old",
            dst, [m.uid for m in rows], [new for _, new in pairs], [m.blob_id for m in rows],
            [m.size for m in rows], [m.internaldate for m in rows], [m.flags for m in rows],
            [" ".join(m.keywords) for m in rows], modseq, src,
        )
        await conn.execute(
            "UPDATE blobs b SET refs = b.refs + c.n FROM (SELECT id, count(*) AS n FROM "
            "unnest($1::bigint[]) AS id GROUP BY id) AS c WHERE b.id = c.id",
            [m.blob_id for m in rows],
        )
    return pairs, (dst_owner, modseq), (src_owner, src_modseq)


async def changes_since(
    conn: asyncpg.Connection, mailbox_id: int, modseq: int,
    claim_above: int | None = None, claim: bool = False,
) -> Changes:
    """One statement (one snapshot: the mailbox row, the changed messages and the
    vanished UIDs agree, without a transaction around several reads): the mailbox row
    joined with its changed messages, the vanished UIDs as an array on every row.

    With ``claim_above`` it also answers \\Recent (``Changes.recent_from``) when a message
    above that UID changed: ``claim`` claims up to the UIDNEXT this snapshot saw, in the
    same statement, as :func:`claim_recent` does (the previous mark, read from the row
    locked FOR UPDATE, so two sessions never both own a UID); without ``claim`` the mark
    is only read (:func:`recent_mark`). The claim commits without waiting for the WAL
    flush (``set_config('synchronous_commit', 'off', true)``: this statement's
    transaction only), like the lazy pool's claims: a claim lost in a crash only makes a
    message \\Recent once more, which RFC 3501 allows."""
    cols = ", ".join("m." + c.strip() for c in META_COLS.split(","))
    vanished = ("(SELECT array_agg(e.uid ORDER BY e.uid) FROM expunged e "
                "WHERE e.mailbox_id = $1 AND e.modseq > $2)")
    if claim_above is None:
        rows = await conn.fetch(
            f"SELECT b.highestmodseq, b.uidnext, {vanished}, {cols} FROM mailboxes b "
            "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.modseq > $2 WHERE b.id = $1 "
            "ORDER BY m.uid", mailbox_id, modseq,
        )
        mark = None
    elif not claim:
        rows = await conn.fetch(
            f"SELECT b.highestmodseq, b.uidnext, {vanished}, {cols}, "
            "least(b.recent_uid, b.uidnext) FROM mailboxes b "
            "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.modseq > $2 WHERE b.id = $1 "
            "ORDER BY m.uid", mailbox_id, modseq,
        )
        mark = rows[0][-1] if rows else None
    else:
        rows = await conn.fetch(
            "WITH b AS (SELECT id, highestmodseq, uidnext FROM mailboxes WHERE id = $1), "
            "r AS (UPDATE mailboxes m SET recent_uid = greatest(m.recent_uid, b.uidnext) "
            "FROM b, (SELECT id, recent_uid FROM mailboxes WHERE id = $1 FOR UPDATE) AS old "
            "WHERE m.id = old.id AND EXISTS (SELECT 1 FROM messages n WHERE n.mailbox_id = $1 "
            "AND n.modseq > $2 AND n.uid > $3) RETURNING old.recent_uid) "
            f"SELECT b.highestmodseq, b.uidnext, {vanished}, {cols}, (SELECT recent_uid FROM r), "
            "(SELECT set_config('synchronous_commit', 'off', true)) FROM b "
            "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.modseq > $2 ORDER BY m.uid",
            mailbox_id, modseq, claim_above,
        )
        mark = rows[0][-2] if rows else None
    if not rows:
        raise NotFound("no such mailbox")
    first = rows[0]
    changed = [meta_row(r[3:11]) for r in rows if r[3] is not None]
    if claim_above is None or not any(m.uid > claim_above for m in changed):
        mark = None
    return Changes(
        highestmodseq=first[0], uidnext=first[1], changed=changed,
        vanished=list(first[2] or ()), recent_from=None if mark is None else int(mark),
    )


async def vanished_since(conn: asyncpg.Connection, mailbox_id: int, modseq: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
        mailbox_id, modseq,
    )
    return [r[0] for r in rows]


async def claim_recent(conn: asyncpg.Connection, mailbox_id: int, upto: int | None) -> int:
    """\\Recent (RFC 3501 2.3.2) claimed on the mailbox row, so every node agrees on who
    saw a message first: returns the previous mark; the caller owns [mark, upto)."""
    mark = await conn.fetchval(
        "UPDATE mailboxes m SET recent_uid = greatest(m.recent_uid, coalesce($2::bigint, m.uidnext)) "
        "FROM (SELECT id, recent_uid FROM mailboxes WHERE id = $1 FOR UPDATE) AS old "
        "WHERE m.id = old.id RETURNING old.recent_uid", mailbox_id, upto,
    )
    if mark is None:
        raise NotFound("no such mailbox")
    return int(mark)


async def recent_mark(conn: asyncpg.Connection, mailbox_id: int, upto: int | None) -> int:
    """The \\Recent mark without claiming (EXAMINE): the UIDs from it up to ``upto`` are
    \\Recent for the caller too."""
    row = await conn.fetchrow("SELECT recent_uid, uidnext FROM mailboxes WHERE id = $1", mailbox_id)
    if row is None:
        raise NotFound("no such mailbox")
    return min(int(row[0]), int(row[1]) if upto is None else upto)


async def snapshot_rows(
    conn: asyncpg.Connection, user_id: int, name: str, cache: SnapshotCache | None = None
) -> tuple[tuple[int, int, str, int, int, int, int], array[int], bytes, dict[int, tuple[str, ...]]] | None:
    """The mailbox row and its message columns for ``Store.mailbox_snapshot``.

    The cache key (id, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) is exact whichever node wrote
    last: every change to a mailbox's messages bumps UIDNEXT or HIGHESTMODSEQ in the
    transaction that makes it. A miss reads the row and the columns in one statement (one
    snapshot), so they always agree."""
    mb = await conn.fetchrow(
        "SELECT id, user_id, name, uidvalidity, uidnext, highestmodseq, recent_uid "
        "FROM mailboxes WHERE user_id = $1 AND name = $2", user_id, name,
    )
    if mb is None:
        return None
    key = (mb[0], mb[3], mb[4], mb[5])
    if cache is not None and (hit := cache.get(key)) is not None:
        return tuple(mb), *hit  # type: ignore[return-value]
    row = await conn.fetchrow(
        "SELECT b.id, b.user_id, b.name, b.uidvalidity, b.uidnext, b.highestmodseq, b.recent_uid, "
        "(SELECT array_agg(uid ORDER BY uid) FROM messages WHERE mailbox_id = b.id), "
        "(SELECT array_agg(flags & 63 ORDER BY uid) FROM messages WHERE mailbox_id = b.id), "
        "(SELECT array_agg(uid::text || ' ' || keywords ORDER BY uid) FROM messages "
        " WHERE mailbox_id = b.id AND keywords <> '') "
        "FROM mailboxes b WHERE b.id = $1", mb[0],
    )
    if row is None:  # deleted between the two statements
        return None
    mb = row[:7]
    uids = array("I", row[7] or ())
    flags = bytes(row[8] or ())
    keywords: dict[int, tuple[str, ...]] = {}
    for line in row[9] or ():
        uid, _, words = line.partition(" ")
        keywords[int(uid)] = tuple(words.split())
    if cache is not None:
        cache.put((mb[0], mb[3], mb[4], mb[5]), (uids, flags, keywords))
    return tuple(mb), uids, flags, keywords  # type: ignore[return-value]


async def search_envelope(
    conn: asyncpg.Connection, mailbox_id: int, keys: Sequence[tuple[str, str]]
) -> list[list[int]]:
    out: list[list[int]] = []
    for field, needle in keys:
        if field not in SEARCH_FIELDS:
            raise ValueError(f"not an envelope search field: {field!r}")
        column = field + "_text"
        folded = needle.casefold()
        if folded:
            rows = await conn.fetch(
                f"SELECT uid FROM message_search WHERE mailbox_id = $1 "
                f"AND strpos({column}, $2) > 0 ORDER BY uid", mailbox_id, folded,
            )
        else:
            rows = await conn.fetch(
                f"SELECT uid FROM message_search WHERE mailbox_id = $1 AND {column} IS NOT NULL "
                "ORDER BY uid", mailbox_id,
            )
        out.append([r[0] for r in rows])
    return out
