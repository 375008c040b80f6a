"""Messages: delivery, APPEND, flags, expunge, copy/move and change tracking (SQLite).

Every write here runs on the writer thread inside the group-commit transaction. UIDs and
mod-sequences are allocated with one ``UPDATE ... RETURNING`` on the mailbox row, so they
are strictly ascending and never reused (the row is the only source of both).
"""

from __future__ import annotations

import functools

import sqlite3
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from postroom.message import search_texts_of
from postroom.message.model import header_block_end
from postroom.store.api import (
    ALL_FLAGS,
    SEARCH_FIELDS,
    Changes,
    Delivery,
    FlagChange,
    MessageContent,
    MessageMeta,
    NewMessage,
    NotFound,
    OverQuota,
    Quota,
    StoreResult,
)
from postroom.store.rows import META_COLS, QUOTA_COLS, masked, meta_row, plan_flags, quota_row, with_meta
from postroom.store.rows import chunks as _chunks

if TYPE_CHECKING:
    from postroom.store.sqlite.bodies import BodyFiles
    from postroom.store.sqlite.snapshots import SnapshotCache

_META_COLS = META_COLS
# SQLite's default limit on bound parameters is large in 3.40 (32766); stay well below.
CHUNK = 900


def chunks(items: Sequence[int], n: int = CHUNK) -> Iterable[Sequence[int]]:
    return _chunks(items, n)


def insert_blob(
    conn: sqlite3.Connection, data: bytes, summary: bytes, refs: int, location: str | None = None
) -> int:
    """``location``: the body is in a body file there (``bodies.py``), not in the row."""
    if location is None:
        cur = conn.execute(
            "INSERT INTO blobs(size, refs, summary, data) VALUES(?, ?, ?, ?)",
            (len(data), refs, summary, data),
        )
    else:
        cur = conn.execute(
            "INSERT INTO blobs(size, refs, summary, data, location) VALUES(?, ?, ?, x'', ?)",
            (len(data), refs, summary, location),
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


# -- quota usage (RFC 9208) --------------------------------------------------------------
# Every function below that inserts or deletes message rows charges the owner here, in the
# same transaction, so users.used_* are always exact and a quota check is one row read.


def charge(conn: sqlite3.Connection, user_id: int, size: int, count: int) -> None:
    if size or count:
        conn.execute(
            "UPDATE users SET used_storage = used_storage + ?, used_messages = used_messages + ? "
            "WHERE id=?",
            (size, count, user_id),
        )


_QUOTA_COLS = QUOTA_COLS


def get_quota(conn: sqlite3.Connection, user_id: int) -> Quota:
    row = conn.execute(f"SELECT {_QUOTA_COLS} FROM users WHERE id=?", (user_id,)).fetchone()
    if row is None:
        raise NotFound(f"no user {user_id}")
    return quota_row(row)


def list_quotas(conn: sqlite3.Connection) -> dict[int, Quota]:
    return {r[0]: quota_row(r) for r in conn.execute(f"SELECT {_QUOTA_COLS} FROM users")}


def set_quota(conn: sqlite3.Connection, address: str, storage: int | None, messages: int | None) -> Quota:
    row = conn.execute(
        f"UPDATE users SET quota_storage=?, quota_messages=? WHERE address=? RETURNING {_QUOTA_COLS}",
        (storage, messages, address),
    ).fetchone()
    if row is None:
        raise NotFound(f"no user {address}")
    return quota_row(row)


def require_quota(conn: sqlite3.Connection, user_id: int, size: int, count: int) -> None:
    """Raise OverQuota unless ``count`` messages of ``size`` octets fit (inside the write
    transaction: two concurrent writes cannot both squeeze in)."""
    if not get_quota(conn, user_id).allows(size, count):
        raise OverQuota("Quota exceeded")


def user_of(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int]:
    """(user id, highestmodseq) of a mailbox, for the change published after a write."""
    row = conn.execute(
        "SELECT user_id, highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


SearchTexts = tuple[str | None, ...]


def place(
    conn: sqlite3.Connection,
    mailbox_id: int,
    blob_id: int,
    size: int,
    internaldate: int,
    flags: int,
    keywords: str,
    texts: SearchTexts,
) -> tuple[int, int]:
    """Insert one message row (and its search row); (uid, modseq)."""
    uid, modseq = _allocate(conn, mailbox_id)
    conn.execute(
        "INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq) "
        "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
        (mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq),
    )
    conn.execute("INSERT INTO message_search VALUES(?, ?, ?, ?, ?, ?, ?)", (mailbox_id, uid, *texts))
    return uid, modseq


def inbox_of(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute(
        "SELECT id FROM mailboxes WHERE user_id=? AND name='INBOX'", (user_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} has no INBOX")
    return int(row[0])


# A user's quota row and INBOX id in one statement: every delivery asks both, per user.
_QUOTA_AND_INBOX = (
    f"SELECT {_QUOTA_COLS}, (SELECT m.id FROM mailboxes m WHERE m.user_id=users.id "
    "AND m.name='INBOX') FROM users WHERE id=?"
)


def _quota_and_inbox(conn: sqlite3.Connection, user_id: int) -> tuple[Quota, int]:
    """(:func:`get_quota`, :func:`inbox_of`) of ``user_id``, with their NotFound errors."""
    row = conn.execute(_QUOTA_AND_INBOX, (user_id,)).fetchone()
    if row is None:
        raise NotFound(f"no user {user_id}")
    if row[5] is None:
        raise NotFound(f"user {user_id} has no INBOX")
    return quota_row(row), int(row[5])


def deliver(conn: sqlite3.Connection, d: Delivery) -> tuple[int, list[tuple[int, int, int]]]:
    """Store the blob once and place it in every target mailbox.

    Returns (blob_id, [(mailbox_id, user_id, uid)]). The queue part is added by the caller
    (queue.py) in the same transaction.
    """
    return deliver_checked(conn, d)[:2]


def deliver_checked(
    conn: sqlite3.Connection, d: Delivery, location: str | None = None
) -> tuple[int, list[tuple[int, int, int]], tuple[int, ...]]:
    """:func:`deliver`, also returning the users skipped for quota (``enforce_quota``);
    ``location``: where the body file holds ``d.data`` (see :func:`insert_blob`)."""
    size = len(d.data)
    mailbox_ids: list[tuple[int, int]] = []
    over: list[int] = []
    for user_id in dict.fromkeys(d.user_ids):
        if d.enforce_quota:
            quota, inbox = _quota_and_inbox(conn, user_id)
            if not quota.allows(size):
                over.append(user_id)
                continue
        else:
            inbox = inbox_of(conn, user_id)
        mailbox_ids.append((inbox, user_id))
    for mailbox_id in dict.fromkeys(d.mailbox_ids):
        owner = conn.execute("SELECT user_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        if owner is None:
            raise NotFound("no such mailbox")
        if d.enforce_quota and not get_quota(conn, owner[0]).allows(size):
            over.append(owner[0])
            continue
        mailbox_ids.append((mailbox_id, owner[0]))
    refs = len(mailbox_ids) + (1 if d.queue is not None else 0)
    if refs == 0:
        return 0, [], tuple(over)  # everybody over quota: no blob without a reference
    blob_id = insert_blob(conn, d.data, d.summary, refs, location)
    internaldate = d.internaldate if d.internaldate is not None else int(time.time())
    placed = []
    if mailbox_ids:
        texts = d.search_texts if d.search_texts is not None else search_texts_of(d.summary, d.data)
        for mailbox_id, user_id in mailbox_ids:
            uid, _ = place(conn, mailbox_id, blob_id, size, internaldate, d.flags, "", texts)
            charge(conn, user_id, size, 1)
            placed.append((mailbox_id, user_id, uid))
    return blob_id, placed, tuple(over)


def append_many(
    conn: sqlite3.Connection,
    mailbox_id: int,
    messages: Sequence[NewMessage],
    texts: Sequence[SearchTexts],
    enforce_quota: bool,
    locations: Sequence[str | None] | None = None,
) -> tuple[int, list[int], int, int]:
    """Store every message in this one transaction (MULTIAPPEND, RFC 3502: all or none);
    (uidvalidity, uids, user id, last modseq). ``locations``: per message, where a body
    file holds it (None: in the row)."""
    row = conn.execute(
        "SELECT uidvalidity, user_id FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    user_id = int(row[1])
    total = sum(len(m.data) for m in messages)
    if enforce_quota:
        require_quota(conn, user_id, total, len(messages))
    uids: list[int] = []
    modseq = 0
    now = int(time.time())
    places = locations if locations is not None else [None] * len(messages)
    for message, text, location in zip(messages, texts, places, strict=True):
        blob_id = insert_blob(conn, message.data, message.summary, 1, location)
        when = message.internaldate if message.internaldate is not None else now
        keywords = " ".join(sorted(set(message.keywords)))
        uid, modseq = place(
            conn, mailbox_id, blob_id, len(message.data), when, message.flags, keywords, text
        )
        uids.append(uid)
    charge(conn, user_id, total, len(messages))
    return int(row[0]), uids, user_id, modseq


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


def read_messages(
    conn: sqlite3.Connection,
    files: BodyFiles,
    mailbox_id: int,
    uids: Sequence[int],
    summary: bool,
    data: bool,
    header_only: bool,
    max_data: int | None = None,
) -> list[MessageContent]:
    """Metadata, summaries and bytes of messages in one read transaction (one thread hop).

    ``header_only``: the summary says where the body starts, and the blob is read through
    SQLite's incremental blob I/O up to there, so the overflow pages of a large body are
    never touched. ``max_data``: bytes of messages larger than this are not read (their
    ``data`` is None; the size is in the metadata), so a read on the event loop's thread
    stays small. A body in a body file (``location``) is read from there, as far as needed.
    """
    partial = data and header_only
    out: list[MessageContent] = []
    wanted = sorted(set(uids)) if len(uids) > 1 else uids
    for part in chunks(wanted):
        sql = _read_sql(summary or partial, data and not partial, max_data, len(part))
        for r in conn.execute(sql, (mailbox_id, *part)):
            meta = meta_row(r)
            raw_summary = r[8] if summary or partial else None
            body: bytes | None = None
            if partial:
                assert raw_summary is not None
                end = header_block_end(raw_summary)
                if r[-1] is not None:
                    body = files.read(r[-1], meta.size, end)
                else:
                    with conn.blobopen("blobs", "data", meta.blob_id, readonly=True) as blob:
                        body = blob.read() if end is None else blob.read(min(end, len(blob)))
            elif data and r[-1] is not None:
                body = files.read(r[-1], meta.size)
            elif data and r[-2] is not None:
                body = r[-2]
            out.append(MessageContent(meta, raw_summary if summary else None, body))
    if len(out) > 1:
        out.sort(key=lambda c: c.meta.uid)
    return out


@functools.lru_cache(maxsize=128)
def _read_sql(summary: bool, data: bool, max_data: int | None, count: int) -> str:
    """The SELECT of :func:`read_messages` (built once per shape: it runs for every FETCH)."""
    cols = "m." + _META_COLS.replace(", ", ", m.")
    if summary:
        cols += ", b.summary"
    if data:
        # SQLite knows a blob's size from the row header: a message over the limit costs
        # no read of its overflow pages.
        cols += (", b.data, b.location" if max_data is None else
                 f", CASE WHEN m.size <= {int(max_data)} THEN b.data END"
                 f", CASE WHEN m.size <= {int(max_data)} THEN b.location END")
    elif summary:  # the header-only read (``partial``): where the body is
        cols += ", b.location"
    join = " JOIN blobs b ON b.id = m.blob_id" if summary or data else ""
    marks = ",".join("?" * count)
    return f"SELECT {cols} FROM messages m{join} WHERE m.mailbox_id=? AND m.uid IN ({marks})"


def read_data(conn: sqlite3.Connection, files: BodyFiles, blob_ids: Sequence[int]) -> dict[int, bytes]:
    """The bytes of blobs, from their rows or their body files."""
    out: dict[int, bytes] = {}
    for part in chunks(sorted(set(blob_ids))):
        marks = ",".join("?" * len(part))
        for bid, size, location, value in conn.execute(
            f"SELECT id, size, location, data FROM blobs WHERE id IN ({marks})", tuple(part)
        ):
            out[bid] = files.read(location, size) if location is not None else bytes(value)
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


def store_flags(
    conn: sqlite3.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    change: FlagChange,
    unchangedsince: int | None,
) -> StoreResult:
    current = get_messages(conn, mailbox_id, uids)
    changed: list[MessageMeta] = []
    unchanged, failed, updates = plan_flags(current, change, unchangedsince)
    if updates:
        modseq = _bump_modseq(conn, mailbox_id)
        conn.executemany(
            "UPDATE messages SET flags=?, keywords=?, modseq=? WHERE id=?",
            [(f, " ".join(k), modseq, m.id) for f, k, m in updates],
        )
        for f, k, m in updates:
            changed.append(with_meta(m, flags=f, keywords=k, modseq=modseq))
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
    charge(conn, user_of(conn, mailbox_id)[0], -sum(m.size for m in rows), -len(rows))
    conn.executemany(
        "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES(?, ?, ?)",
        [(mailbox_id, m.uid, modseq) for m in rows],
    )
    _release_blobs(conn, [m.blob_id for m in rows])
    return [m.uid for m in rows]


def copy_messages(
    conn: sqlite3.Connection,
    src: int,
    uids: Sequence[int],
    dst: int,
    move: bool,
    flag_mask: int = ALL_FLAGS,
    keywords: bool = True,
) -> list[tuple[int, int]]:
    rows = get_messages(conn, src, uids)
    if not rows:
        if conn.execute("SELECT 1 FROM mailboxes WHERE id=?", (dst,)).fetchone() is None:
            raise NotFound("no such mailbox")
        return []
    if flag_mask != ALL_FLAGS or not keywords:
        rows = [masked(m, flag_mask, keywords) for m in rows]
    src_owner, dst_owner = user_of(conn, src)[0], user_of(conn, dst)[0]
    size = sum(m.size for m in rows)
    if not move or src_owner != dst_owner:
        require_quota(conn, dst_owner, size, len(rows))
        charge(conn, dst_owner, size, len(rows))
        if move:
            charge(conn, src_owner, -size, -len(rows))
    first, modseq = _allocate(conn, dst, len(rows))
    pairs: list[tuple[int, int]] = []
    if move:
        # The row moves (same id: POP3 UIDL and blob reference stay), the source records
        # the UIDs as expunged for QRESYNC.
        src_modseq = _bump_modseq(conn, src)
        for i, m in enumerate(rows):
            conn.execute(
                "UPDATE messages SET mailbox_id=?, uid=?, modseq=?, flags=?, keywords=? WHERE id=?",
                (dst, first + i, modseq, m.flags, " ".join(m.keywords), m.id),
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
        conn.executemany(
            "INSERT INTO message_search SELECT ?, ?, from_text, to_text, cc_text, bcc_text, "
            "subject_text FROM message_search WHERE mailbox_id=? AND uid=?",
            [(dst, new, src, old) for old, new in pairs],
        )
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


def recent_mark(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int, int]:
    """(uidvalidity, recent_uid, uidnext) of a mailbox: what a \\Recent claim starts from."""
    row = conn.execute(
        "SELECT uidvalidity, recent_uid, uidnext FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0]), int(row[1]), int(row[2])


def save_recent_marks(conn: sqlite3.Connection, marks: Iterable[tuple[int, int, int]]) -> None:
    """Persist claimed \\Recent marks (mailbox id, uidvalidity, recent_uid); never lowers."""
    conn.executemany(
        "UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id=? AND uidvalidity=?",
        [(mark, mailbox_id, validity) for mailbox_id, validity, mark in marks],
    )


# Flags travel as one character each: chr(48 + bits), ASCII for the 6 low bits (the
# FLAG_* bits use 5), so group_concat builds the whole column in C and bytes.translate
# turns it back into one octet per message.
_FLAG_CHARS = bytes(range(48, 48 + 64))
_UNSHIFT = bytes.maketrans(_FLAG_CHARS, bytes(range(64)))


def snapshot_rows(
    conn: sqlite3.Connection, user_id: int, name: str, cache: SnapshotCache | None = None
) -> tuple[tuple[int, int, str, int, int, int, int], array[int], bytes, dict[int, tuple[str, ...]]] | None:
    """The mailbox row and its message columns for ``Store.mailbox_snapshot``.

    One indexed scan of the mailbox's rows; the aggregation happens in SQLite, so the
    reader thread holds the GIL only to split three strings (about 0.2 ms for 2,000
    messages, against several ms for a list of MessageMeta). With ``cache``, an unchanged
    mailbox skips the scan (see :mod:`.snapshots`); callers copy the UID array before
    changing it. Runs inside the engine's read transaction, so the mailbox row (the cache
    key) and the columns come from one snapshot of the database.
    """
    mb = conn.execute(
        "SELECT id, user_id, name, uidvalidity, uidnext, highestmodseq, recent_uid "
        "FROM mailboxes WHERE user_id=? AND name=?",
        (user_id, name),
    ).fetchone()
    if mb is None:
        return None
    key = (mb[0], mb[3], mb[4], mb[5])
    if cache is not None and (hit := cache.get(key)) is not None:
        return tuple(mb), *hit
    row = conn.execute(
        "SELECT group_concat(uid), group_concat(char(48 + (flags & 63)), ''), "
        "group_concat(CASE WHEN keywords != '' THEN uid || ' ' || keywords END, char(10)) "
        "FROM (SELECT uid, flags, keywords FROM messages WHERE mailbox_id=? ORDER BY uid)",
        (mb[0],),
    ).fetchone()
    uids = array("I", map(int, row[0].split(","))) if row[0] else array("I")
    flags = row[1].encode("ascii").translate(_UNSHIFT) if row[1] else b""
    # SQLite documents group_concat's order as arbitrary; it follows the ordered subquery
    # in practice. Should that ever change, fall back to plain rows rather than hand a
    # session a wrong sequence map.
    listed = uids.tolist()
    if len(listed) != len(flags) or listed != sorted(listed):  # pragma: no cover
        rows = conn.execute(
            "SELECT uid, flags FROM messages WHERE mailbox_id=? ORDER BY uid", (mb[0],)
        ).fetchall()
        uids = array("I", (r[0] for r in rows))
        flags = bytes(r[1] & 63 for r in rows)
    keywords: dict[int, tuple[str, ...]] = {}
    if row[2]:
        for line in row[2].split("\n"):
            uid, _, words = line.partition(" ")
            keywords[int(uid)] = tuple(words.split())
    if cache is not None:
        cache.put(key, (uids, flags, keywords))
    return tuple(mb), uids, flags, keywords


def search_envelope(
    conn: sqlite3.Connection, mailbox_id: int, keys: Sequence[tuple[str, str]]
) -> list[list[int]]:
    out: list[list[int]] = []
    for field, needle in keys:
        if field not in SEARCH_FIELDS:
            raise ValueError(f"not an envelope search field: {field!r}")
        column = field + "_text"
        folded = needle.casefold()
        if folded:
            sql = (f"SELECT uid FROM message_search WHERE mailbox_id=? AND instr({column}, ?) > 0 "
                   "ORDER BY uid")
            args: tuple[object, ...] = (mailbox_id, folded)
        else:
            sql = f"SELECT uid FROM message_search WHERE mailbox_id=? AND {column} IS NOT NULL ORDER BY uid"
            args = (mailbox_id,)
        out.append([r[0] for r in conn.execute(sql, args)])
    return out
