"""The outbound queue in SQLite: entries, per-recipient state, leases.

A queue entry references its message blob (shared with local copies of the same
delivery). Workers *lease* due entries (``lease_until``, ``lease_owner``) so that a second
worker — or, on PostgreSQL, a second node — never delivers the same entry concurrently,
and a crashed worker's leases simply expire. At start-up a node releases the leases it
held before it died (same owner name), so nothing waits for the expiry after a restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from postroom.store.api import NewQueueEntry, QueuedMessage, RecipientOutcome
from postroom.store.rows import QUEUE_COLS, RCPT_COLS, domain_of, queued_message
from postroom.store.sqlite.mail import _release_blobs

_Q_COLS = QUEUE_COLS


def add(conn: sqlite3.Connection, blob_id: int, entry: NewQueueEntry, now: int | None = None) -> str:
    now = int(time.time()) if now is None else now
    cur = conn.execute(
        "INSERT INTO queue(qid, blob_id, sender, created, next_attempt, ret, envid, smtputf8, "
        "body8bit, kind) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.qid, blob_id, entry.sender, now, now, entry.ret, entry.envid,
            int(entry.smtputf8), int(entry.body8bit), entry.kind,
        ),
    )
    qrow = cur.lastrowid
    conn.executemany(
        "INSERT INTO queue_rcpts(queue_id, address, domain, orcpt, notify, updated) "
        "VALUES(?, ?, ?, ?, ?, ?)",
        [(qrow, r.address, domain_of(r.address), r.orcpt, r.notify, now) for r in entry.recipients],
    )
    return entry.qid


def _load(conn: sqlite3.Connection, rows: list[tuple]) -> list[QueuedMessage]:  # type: ignore[type-arg]
    return [
        queued_message(r, conn.execute(
            f"SELECT {RCPT_COLS} FROM queue_rcpts WHERE queue_id=? ORDER BY id", (r[0],)
        ))
        for r in rows
    ]


def lease_due(
    conn: sqlite3.Connection, now: int, limit: int, lease_seconds: int, owner: str
) -> list[QueuedMessage]:
    rows = conn.execute(
        f"SELECT {_Q_COLS} FROM queue q JOIN blobs b ON b.id=q.blob_id "
        "WHERE q.held=0 AND q.next_attempt <= ? AND q.lease_until <= ? "
        "ORDER BY q.next_attempt, q.id LIMIT ?",
        (now, now, limit),
    ).fetchall()
    if rows:
        conn.executemany(
            "UPDATE queue SET lease_until=?, lease_owner=? WHERE id=?",
            [(now + lease_seconds, owner, r[0]) for r in rows],
        )
    return _load(conn, rows)


def release_leases(conn: sqlite3.Connection, owner: str) -> int:
    cur = conn.execute("UPDATE queue SET lease_until=0 WHERE lease_owner=?", (owner,))
    return cur.rowcount


def renew_leases(conn: sqlite3.Connection, owner: str, qids: Sequence[str], until: int) -> int:
    n = 0
    for qid in qids:
        cur = conn.execute(
            "UPDATE queue SET lease_until=? WHERE qid=? AND lease_owner=? AND lease_until > 0",
            (until, qid, owner),
        )
        n += cur.rowcount
    return n


def get(conn: sqlite3.Connection, qid: str) -> QueuedMessage | None:
    rows = conn.execute(
        f"SELECT {_Q_COLS} FROM queue q JOIN blobs b ON b.id=q.blob_id WHERE q.qid=?", (qid,)
    ).fetchall()
    found = _load(conn, rows)
    return found[0] if found else None


def list_all(conn: sqlite3.Connection) -> list[QueuedMessage]:
    rows = conn.execute(
        f"SELECT {_Q_COLS} FROM queue q JOIN blobs b ON b.id=q.blob_id ORDER BY q.created, q.id"
    ).fetchall()
    return _load(conn, rows)


def _finish(conn: sqlite3.Connection, queue_row: int, blob_id: int) -> None:
    conn.execute("DELETE FROM queue WHERE id=?", (queue_row,))
    _release_blobs(conn, [blob_id])


def record(
    conn: sqlite3.Connection,
    qid: str,
    outcomes: Sequence[RecipientOutcome],
    next_attempt: int | None,
    last_error: str | None,
    delay_warned: bool | None,
    final: bool = True,
) -> bool:
    row = conn.execute("SELECT id, blob_id FROM queue WHERE qid=?", (qid,)).fetchone()
    if row is None:
        return True  # deleted meanwhile (queue delete): nothing left to do
    now = int(time.time())
    conn.executemany(
        "UPDATE queue_rcpts SET state=?, status=?, diagnostic=?, remote_mta=?, updated=? "
        "WHERE id=? AND queue_id=?",
        [
            (o.state, o.status, o.diagnostic, o.remote_mta, now, o.recipient_id, row[0])
            for o in outcomes
        ],
    )
    pending = conn.execute(
        "SELECT count(*) FROM queue_rcpts WHERE queue_id=? AND state='pending'", (row[0],)
    ).fetchone()[0]
    if pending == 0:
        _finish(conn, row[0], row[1])
        return True
    if not final:  # intermediate: the worker still holds the lease and decides later
        return False
    sets = ["attempts=attempts+1", "lease_until=0", "last_error=?"]
    args: list[object] = [last_error]
    if next_attempt is not None:
        sets.append("next_attempt=?")
        args.append(next_attempt)
    if delay_warned is not None:
        sets.append("delay_warned=?")
        args.append(int(delay_warned))
    conn.execute(f"UPDATE queue SET {', '.join(sets)} WHERE id=?", (*args, row[0]))
    return False


def delete(conn: sqlite3.Connection, qid: str) -> bool:
    row = conn.execute("SELECT id, blob_id FROM queue WHERE qid=?", (qid,)).fetchone()
    if row is None:
        return False
    _finish(conn, row[0], row[1])
    return True


def hold(conn: sqlite3.Connection, qid: str, held: bool) -> bool:
    cur = conn.execute("UPDATE queue SET held=? WHERE qid=?", (int(held), qid))
    return cur.rowcount > 0


def flush(conn: sqlite3.Connection, qid: str | None, domain: str | None) -> int:
    now = int(time.time())
    if qid is not None:
        cur = conn.execute("UPDATE queue SET next_attempt=? WHERE qid=? AND held=0", (now, qid))
    elif domain is not None:
        cur = conn.execute(
            "UPDATE queue SET next_attempt=? WHERE held=0 AND id IN "
            "(SELECT queue_id FROM queue_rcpts WHERE domain=? AND state='pending')",
            (now, domain.lower()),
        )
    else:
        cur = conn.execute("UPDATE queue SET next_attempt=? WHERE held=0", (now,))
    return cur.rowcount


def next_due(conn: sqlite3.Connection) -> int | None:
    row = conn.execute(
        "SELECT min(max(next_attempt, lease_until)) FROM queue WHERE held=0"
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None
