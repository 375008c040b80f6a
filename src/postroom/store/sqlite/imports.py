"""Messages copied in by ``postroom import`` (SQLite), with the record that makes it resumable.

Each batch is one transaction: the messages (blob, row, search texts, as APPEND stores
them) and one ``imported`` row per message naming where it came from. A crash loses the
whole batch or nothing, so the next run, which skips every remembered key, copies exactly
what is missing. The key is checked again inside the transaction, so two imports of the
same source running at once still store each message once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from postroom.message.search import SearchTexts
from postroom.store.api import ImportedMessage, NotFound
from postroom.store.sqlite.mail import insert_blob, place


def import_messages(
    conn: sqlite3.Connection,
    mailbox_id: int,
    origin: str,
    messages: Sequence[ImportedMessage],
    texts: Sequence[SearchTexts],
) -> tuple[list[int], int, int]:
    """Store the messages not imported before; ([uid or 0 per message], user id, modseq)."""
    row = conn.execute(
        "SELECT user_id, highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    user_id, modseq = int(row[0]), int(row[1])
    now = int(time.time())
    uids: list[int] = []
    for msg, text in zip(messages, texts, strict=True):
        cur = conn.execute(
            "INSERT INTO imported(user_id, origin, key) VALUES(?, ?, ?) ON CONFLICT DO NOTHING",
            (user_id, origin, msg.key),
        )
        if cur.rowcount == 0:  # copied by an earlier run (or a concurrent one)
            uids.append(0)
            continue
        blob_id = insert_blob(conn, msg.data, msg.summary, 1)
        when = msg.internaldate if msg.internaldate is not None else now
        keywords = " ".join(sorted(set(msg.keywords)))
        uid, modseq = place(conn, mailbox_id, blob_id, len(msg.data), when, msg.flags, keywords, text)
        uids.append(uid)
    return uids, user_id, modseq


def imported_keys(conn: sqlite3.Connection, user_id: int, origin: str) -> set[str]:
    rows = conn.execute(
        "SELECT key FROM imported WHERE user_id=? AND origin=?", (user_id, origin)
    ).fetchall()
    return {r[0] for r in rows}
