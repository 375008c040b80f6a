"""Messages copied in by ``postroom import`` (SQLite), with the record that makes it resumable.

Each batch is one transaction: the messages (as MULTIAPPEND stores them, quota included)
and one ``imported`` row per message naming where it came from. A crash loses the
whole batch or nothing, so the next run, which skips every remembered key, copies exactly
what is missing. The key is checked again inside the transaction, so two imports of the
same source running at once still store each message once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.message.search import SearchTexts
from postroom.store.api import ImportedMessage, NotFound
from postroom.store.sqlite.mail import append_many


def import_messages(
    conn: sqlite3.Connection,
    mailbox_id: int,
    origin: str,
    messages: Sequence[ImportedMessage],
    texts: Sequence[SearchTexts],
) -> tuple[list[int], int, int]:
    """Store the messages not imported before; ([uid or 0 per message], user id, modseq).

    The new ones are stored as MULTIAPPEND stores them (``mail.append_many``: quota checked,
    usage charged), so an import counts against the owner's quota like any other mail.
    """
    row = conn.execute("SELECT user_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    user_id = int(row[0])
    fresh: list[int] = []  # positions in ``messages`` of those stored now
    for i, item in enumerate(messages):
        cur = conn.execute(
            "INSERT INTO imported(user_id, origin, key) VALUES(?, ?, ?) ON CONFLICT DO NOTHING",
            (user_id, origin, item.key),
        )
        if cur.rowcount:  # 0: copied by an earlier run (or a concurrent one)
            fresh.append(i)
    uids = [0] * len(messages)
    if not fresh:
        return uids, user_id, 0
    _, stored, _, modseq = append_many(
        conn, mailbox_id, [messages[i].message for i in fresh], [texts[i] for i in fresh], True
    )
    for i, uid in zip(fresh, stored, strict=True):
        uids[i] = uid
    return uids, user_id, modseq


def imported_keys(conn: sqlite3.Connection, user_id: int, origin: str) -> set[str]:
    rows = conn.execute(
        "SELECT key FROM imported WHERE user_id=? AND origin=?", (user_id, origin)
    ).fetchall()
    return {r[0] for r in rows}
