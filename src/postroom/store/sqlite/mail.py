"""Messages: delivery, APPEND, flags, expunge, copy/move and change tracking (SQLite).

Every write here runs on the writer thread inside the group-commit transaction. UIDs and
mod-sequences are allocated with one ``UPDATE ... RETURNING`` on the mailbox row, so they
are strictly ascending and never reused (the row is the only source of both).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from postroom.store.api import (
    Changes,
    Delivery,
    FlagChange,
    MessageMeta,
    NotFound,
    StoreResult,
)

_META_COLS = "id, uid, flags, keywords, modseq, size, internaldate, blob_id"
# SQLite's default limit on bound parameters is large in 3.40 (32766); stay well below.
CHUNK = 900


def chunks(items: Sequence[int], n: int = CHUNK) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def meta_row(r: tuple) -> MessageMeta:  # type: ignore[type-arg]
    return MessageMeta(
        id=r[0],
        uid=r[1],
        flags=r[2],
        keywords=tuple(r[3].split()) if r[3] else (),
        modseq=r[4],
        size=r[5],
        internaldate=r[6],
        blob_id=r[7],
    )


def insert_blob(conn: sqlite3.Connection, data: bytes, summary: bytes, refs: int) -> int:
    cur = conn.execute(
        "INSERT INTO blobs(size, refs, summary, data) VALUES(?, ?, ?, ?)",
        (len(data), refs, summary, data),
    )
    return int(cur.lastrowid or 0)


def _allocate(conn: sqlite3.Connection, mailbox_id: int, count: int = 1) -> tuple[int, int]:
    """Reserve ``count`` UIDs and one new modseq; return (first uid, modseq)."""
    row = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 "
        "WHERE id=? RETURNING uidnext - ?, highestmodseq",
        (count, mailbox_id, count),
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return row[0], row[1]


def _bump_modseq(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id=? RETURNING highestmodseq",
        (mailbox_id,),
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0])


def place(
    conn: sqlite3.Connection,
    mailbox_id: int,
    blob_id: int,
    size: int,
    internaldate: int,
    flags: int,
    keywords: str,
) -> int:
    uid, modseq = _allocate(conn, mailbox_id)
    conn.execute(
        "INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
        (mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq),
    )
    return uid


def inbox_of(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute(
        "SELECT id FROM mailboxes WHERE user_id=? AND name='INBOX'", (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} has no INBOX")
    return int(row[0])


def deliver(conn: sqlite3.Connection, d: Delivery) -> tuple[int, list[tuple[int, int, int]]]:
    """Store the blob once and place it in every target mailbox.

    Returns (blob_id, [(mailbox_id, user_id, uid)]). The queue part is added by the caller
    (queue.py) in the same transaction.
    """
    mailbox_ids: list[tuple[int, int]] = []
    for user_id in dict.fromkeys(d.user_ids):
        mailbox_ids.append((inbox_of(conn, user_id), user_id))
    for mailbox_id in dict.fromkeys(d.mailbox_ids):
        owner = conn.execute("SELECT user_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        if owner is None:
            raise NotFound("no such mailbox")
        mailbox_ids.append((mailbox_id, owner[0]))
    refs = len(mailbox_ids) + (1 if d.queue is not None else 0)
    blob_id = insert_blob(conn, d.data, d.summary, refs)
    internaldate = d.internaldate if d.internaldate is not None else int(time.time())
    placed = []
    for mailbox_id, user_id in mailbox_ids:
        uid = place(conn, mailbox_id, blob_id, len(d.data), internaldate, d.flags, "")
        placed.append((mailbox_id, user_id, uid))
    return blob_id, placed


def append(
    conn: sqlite3.Connection,
    mailbox_id: int,
    data: bytes,
    summary: bytes,
    flags: int,
    keywords: Iterable[str],
    internaldate: int | None,
) -> tuple[int, int]:
    row = conn.execute("SELECT uidvalidity FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    blob_id = insert_blob(conn, data, summary, 1)
    when = internaldate if internaldate is not None else int(time.time())
    uid = place(conn, mailbox_id, blob_id, len(data), when, flags, " ".join(sorted(set(keywords))))
    return int(row[0]), uid


def list_messages(conn: sqlite3.Connection, mailbox_id: int) -> list[MessageMeta]:
    rows = conn.execute(
        f"SELECT {_META_COLS} FROM messages WHERE mailbox_id=? ORDER BY uid", (mailbox_id,)
    )
    return [meta_row(r) for r in rows]


def get_messages(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
    out: list[MessageMeta] = []
    for part in chunks(sorted(set(uids))):
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT {_META_COLS} FROM messages WHERE mailbox_id=? AND uid IN ({marks})",
            (mailbox_id, *part),
        )
        out.extend(meta_row(r) for r in rows)
    out.sort(key=lambda m: m.uid)
    return out


def read_column(conn: sqlite3.Connection, column: str, blob_ids: Sequence[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for part in chunks(sorted(set(blob_ids))):
        marks = ",".join("?" * len(part))
        for bid, value in conn.execute(
            f"SELECT id, {column} FROM blobs WHERE id IN ({marks})", tuple(part)
        ):
            out[bid] = bytes(value)
    return out


def _apply(change: FlagChange, flags: int, keywords: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    if change.mode == "replace":
        return change.flags, tuple(sorted(set(change.keywords)))
    if change.mode == "add":
        return flags | change.flags, tuple(sorted(set(keywords) | set(change.keywords)))
    if change.mode == "remove":
        drop = {k.lower() for k in change.keywords}
        return flags & ~change.flags, tuple(k for k in keywords if k.lower() not in drop)
    raise ValueError(f"bad flag change mode {change.mode!r}")


def store_flags(
    conn: sqlite3.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    change: FlagChange,
    unchangedsince: int | None,
) -> StoreResult:
    current = get_messages(conn, mailbox_id, uids)
    changed: list[MessageMeta] = []
    unchanged: list[MessageMeta] = []
    failed: list[int] = []
    updates: list[tuple[int, tuple[str, ...], MessageMeta]] = []
    for m in current:
        # RFC 7162 3.1.3: a message modified after UNCHANGEDSINCE is not touched.
        if unchangedsince is not None and m.modseq > unchangedsince:
            failed.append(m.uid)
            continue
        flags, keywords = _apply(change, m.flags, m.keywords)
        if flags == m.flags and keywords == m.keywords:
            unchanged.append(m)
        else:
            updates.append((flags, keywords, m))
    if updates:
        modseq = _bump_modseq(conn, mailbox_id)
        conn.executemany(
            "UPDATE messages SET flags=?, keywords=?, modseq=? WHERE id=?",
            [(f, " ".join(k), modseq, m.id) for f, k, m in updates],
        )
        for f, k, m in updates:
            changed.append(
                MessageMeta(
                    id=m.id, uid=m.uid, flags=f, keywords=k, modseq=modseq,
                    size=m.size, internaldate=m.internaldate, blob_id=m.blob_id,
                )
            )
    return StoreResult(changed=changed, unchanged=unchanged, failed_uids=failed)


def _release_blobs(conn: sqlite3.Connection, blob_ids: list[int]) -> None:
    counts: dict[int, int] = {}
    for b in blob_ids:
        counts[b] = counts.get(b, 0) + 1
    conn.executemany("UPDATE blobs SET refs = refs - ? WHERE id=?", [(n, b) for b, n in counts.items()])
    for part in chunks(list(counts)):
        marks = ",".join("?" * len(part))
        conn.execute(f"DELETE FROM blobs WHERE refs <= 0 AND id IN ({marks})", tuple(part))


def expunge(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> list[int]:
    rows = get_messages(conn, mailbox_id, uids)
    if not rows:
        return []
    modseq = _bump_modseq(conn, mailbox_id)
    conn.executemany("DELETE FROM messages WHERE id=?", [(m.id,) for m in rows])
    conn.executemany(
        "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES(?, ?, ?)",
        [(mailbox_id, m.uid, modseq) for m in rows],
    )
    _release_blobs(conn, [m.blob_id for m in rows])
    return [m.uid for m in rows]


def copy_messages(
    conn: sqlite3.Connection, src: int, uids: Sequence[int], dst: int, move: bool
) -> list[tuple[int, int]]:
    rows = get_messages(conn, src, uids)
    if not rows:
        if conn.execute("SELECT 1 FROM mailboxes WHERE id=?", (dst,)).fetchone() is None:
            raise NotFound("no such mailbox")
        return []
    first, modseq = _allocate(conn, dst, len(rows))
    pairs: list[tuple[int, int]] = []
    if move:
        # The row moves (same id: POP3 UIDL and blob reference stay), the source records
        # the UIDs as expunged for QRESYNC.
        src_modseq = _bump_modseq(conn, src)
        for i, m in enumerate(rows):
            conn.execute(
                "UPDATE messages SET mailbox_id=?, uid=?, modseq=? WHERE id=?",
                (dst, first + i, modseq, m.id),
            )
            pairs.append((m.uid, first + i))
        conn.executemany(
            "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES(?, ?, ?)",
            [(src, m.uid, src_modseq) for m in rows],
        )
    else:
        conn.executemany(
            "INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (dst, first + i, m.blob_id, m.size, m.internaldate, m.flags, " ".join(m.keywords), modseq)
                for i, m in enumerate(rows)
            ],
        )
        conn.executemany("UPDATE blobs SET refs = refs + 1 WHERE id=?", [(m.blob_id,) for m in rows])
        pairs = [(m.uid, first + i) for i, m in enumerate(rows)]
    return pairs


def changes_since(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> Changes:
    mb = conn.execute(
        "SELECT highestmodseq, uidnext FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    if mb is None:
        raise NotFound("no such mailbox")
    changed = [
        meta_row(r)
        for r in conn.execute(
            f"SELECT {_META_COLS} FROM messages WHERE mailbox_id=? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq),
        )
    ]
    return Changes(
        highestmodseq=mb[0], uidnext=mb[1], changed=changed,
        vanished=vanished_since(conn, mailbox_id, modseq),
    )


def vanished_since(conn: sqlite3.Connection, mailbox_id: int, modseq: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id=? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq),
        )
    ]


def claim_recent(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = conn.execute(
        "SELECT recent_uid, uidnext FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    if row[1] > row[0]:
        conn.execute("UPDATE mailboxes SET recent_uid=? WHERE id=?", (row[1], mailbox_id))
    return int(row[0])
