"""The outbound queue on PostgreSQL: entries, per-recipient state, leases across nodes.

Several nodes lease from one queue. ``lease_due`` picks due entries with ``FOR UPDATE
SKIP LOCKED``: two nodes scanning at the same moment each skip the rows the other is
leasing instead of waiting for them, and never lease the same entry (the lease is written
in the same transaction). A lease lasts ``lease_seconds`` and the holder renews it while
it works (``renew_leases``, a heartbeat); a node that dies stops renewing and its entries
come due again when the lease runs out, for another node to finish.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from postroom.store.api import NewQueueEntry, QueuedMessage, RecipientOutcome
from postroom.store.postgres.mail import release_blobs, rowcount
from postroom.store.rows import QUEUE_COLS, RCPT_COLS, domain_of, queued_message


async def add(conn: asyncpg.Connection, blob_id: int, entry: NewQueueEntry, now: int | None = None) -> str:
    await add_many(conn, [(blob_id, entry)], now)
    return entry.qid


async def add_many(
    conn: asyncpg.Connection, entries: Sequence[tuple[int, NewQueueEntry]], now: int | None = None
) -> None:
    """Queue entries (blob id, entry) and their recipients in one statement; recipient ids
    ascend in the order given (the worker reports them in that order)."""
    if not entries:
        return
    now = int(time.time()) if now is None else now
    es = [e for _, e in entries]
    rcpts = [(e.qid, r) for e in es for r in e.recipients]
    await conn.execute(
        "WITH q AS (INSERT INTO queue(qid, blob_id, sender, created, next_attempt, ret, envid, "
        "smtputf8, body8bit, kind) SELECT c.qid, c.b, c.s, $1, $1, c.ret, c.envid, c.u, c.e, c.k "
        "FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], "
        "$8::bigint[], $9::text[]) AS c(qid, b, s, ret, envid, u, e, k) RETURNING id, qid) "
        "INSERT INTO queue_rcpts(queue_id, address, domain, orcpt, notify, updated) "
        "SELECT q.id, r.a, r.d, r.o, r.n, $1 FROM unnest($10::text[], $11::text[], $12::text[], "
        "$13::text[], $14::text[]) WITH ORDINALITY AS r(qid, a, d, o, n, i) "
        "JOIN q ON q.qid = r.qid ORDER BY r.i",
        now, [e.qid for e in es], [b for b, _ in entries], [e.sender for e in es],
        [e.ret for e in es], [e.envid for e in es], [int(e.smtputf8) for e in es],
        [int(e.body8bit) for e in es], [e.kind for e in es],
        [q for q, _ in rcpts], [r.address for _, r in rcpts], [domain_of(r.address) for _, r in rcpts],
        [r.orcpt for _, r in rcpts], [r.notify for _, r in rcpts],
    )


async def _load(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[QueuedMessage]:
    if not rows:
        return []
    rcpts: dict[int, list[asyncpg.Record]] = {r[0]: [] for r in rows}
    for x in await conn.fetch(
        f"SELECT queue_id, {RCPT_COLS} FROM queue_rcpts WHERE queue_id = ANY($1::bigint[]) "
        "ORDER BY id", list(rcpts),
    ):
        rcpts[x[0]].append(x[1:])
    return [queued_message(r, rcpts[r[0]]) for r in rows]


async def lease_due(
    conn: asyncpg.Connection, now: int, limit: int, lease_seconds: int, owner: str
) -> list[QueuedMessage]:
    rows = await conn.fetch(
        "WITH due AS (SELECT id FROM queue WHERE held = 0 AND next_attempt <= $1 "
        "AND lease_until <= $1 ORDER BY next_attempt, id LIMIT $2 FOR UPDATE SKIP LOCKED), "
        "leased AS (UPDATE queue q SET lease_until = $3, lease_owner = $4 FROM due "
        "WHERE q.id = due.id RETURNING q.*) "
        f"SELECT {QUEUE_COLS} FROM leased q JOIN blobs b ON b.id = q.blob_id "
        "ORDER BY q.next_attempt, q.id",
        now, limit, now + lease_seconds, owner,
    )
    return await _load(conn, rows)


async def release_leases(conn: asyncpg.Connection, owner: str) -> int:
    return rowcount(await conn.execute(
        "UPDATE queue SET lease_until = 0 WHERE lease_owner = $1 AND lease_until > 0", owner
    ))


async def renew_leases(conn: asyncpg.Connection, owner: str, qids: Sequence[str], until: int) -> int:
    return rowcount(await conn.execute(
        "UPDATE queue SET lease_until = $3 WHERE qid = ANY($2::text[]) AND lease_owner = $1 "
        "AND lease_until > 0", owner, list(qids), until,
    ))


async def get(conn: asyncpg.Connection, qid: str) -> QueuedMessage | None:
    rows = await conn.fetch(
        f"SELECT {QUEUE_COLS} FROM queue q JOIN blobs b ON b.id = q.blob_id WHERE q.qid = $1", qid
    )
    found = await _load(conn, rows)
    return found[0] if found else None


async def list_all(conn: asyncpg.Connection) -> list[QueuedMessage]:
    rows = await conn.fetch(
        f"SELECT {QUEUE_COLS} FROM queue q JOIN blobs b ON b.id = q.blob_id ORDER BY q.created, q.id"
    )
    return await _load(conn, rows)


async def _finish(conn: asyncpg.Connection, queue_row: int, blob_id: int) -> list[str]:
    await conn.execute("DELETE FROM queue WHERE id = $1", queue_row)
    return await release_blobs(conn, [blob_id])


async def record(
    conn: asyncpg.Connection,
    qid: str,
    outcomes: Sequence[RecipientOutcome],
    next_attempt: int | None,
    last_error: str | None,
    delay_warned: bool | None,
    final: bool = True,
) -> tuple[bool, list[str]]:
    """(entry finished and removed, external objects to collect). One call of the
    server-side function of migration 15 (``postroom_queue_record``): lock the entry,
    update its recipients, and when none is pending any more delete it and release its
    blob; otherwise (``final``) count the attempt. One statement, so the engine runs it
    without BEGIN/COMMIT (``transaction=False``)."""
    row = await conn.fetchrow(
        "SELECT done, garbage FROM postroom_queue_record($1, $2, $3::bigint[], $4::text[], "
        "$5::text[], $6::text[], $7::text[], $8, $9, $10, $11)",
        qid, int(time.time()), [o.recipient_id for o in outcomes], [o.state for o in outcomes],
        [o.status for o in outcomes], [o.diagnostic for o in outcomes],
        [o.remote_mta for o in outcomes], next_attempt, last_error,
        None if delay_warned is None else int(delay_warned), final,
    )
    return bool(row[0]), list(row[1] or ())


async def delete(conn: asyncpg.Connection, qid: str) -> tuple[bool, list[str]]:
    row = await conn.fetchrow("SELECT id, blob_id FROM queue WHERE qid = $1 FOR UPDATE", qid)
    if row is None:
        return False, []
    return True, await _finish(conn, row[0], row[1])


async def hold(conn: asyncpg.Connection, qid: str, held: bool) -> bool:
    return rowcount(await conn.execute("UPDATE queue SET held = $1 WHERE qid = $2", int(held), qid)) > 0


async def flush(conn: asyncpg.Connection, qid: str | None, domain: str | None) -> int:
    now = int(time.time())
    if qid is not None:
        status = await conn.execute(
            "UPDATE queue SET next_attempt = $1 WHERE qid = $2 AND held = 0", now, qid
        )
    elif domain is not None:
        status = await conn.execute(
            "UPDATE queue SET next_attempt = $1 WHERE held = 0 AND id IN "
            "(SELECT queue_id FROM queue_rcpts WHERE domain = $2 AND state = 'pending')",
            now, domain.lower(),
        )
    else:
        status = await conn.execute("UPDATE queue SET next_attempt = $1 WHERE held = 0", now)
    return rowcount(status)


async def next_due(conn: asyncpg.Connection) -> int | None:
    value = await conn.fetchval(
        "SELECT min(greatest(next_attempt, lease_until)) FROM queue WHERE held = 0"
    )
    return int(value) if value is not None else None
