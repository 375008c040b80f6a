"""Messages copied in by ``postroom import`` (PostgreSQL): the same all-or-nothing batch
as ``sqlite/imports.py`` (see its docstring), with the remembered keys inserted in one
statement that tells which were new. Two imports of one source racing on two nodes: the
second waits on the first's key rows and, once it commits, finds them taken."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from postroom.store.api import ImportedMessage
from postroom.store.postgres.mail import BlobIn, SearchTexts, append_many, owner_of


async def import_messages(
    conn: asyncpg.Connection,
    mailbox_id: int,
    origin: str,
    messages: Sequence[ImportedMessage],
    blobs: Sequence[BlobIn],
    texts: Sequence[SearchTexts],
) -> tuple[list[int], int, int]:
    """([uid or 0 per message], user id, modseq); quota as for MULTIAPPEND."""
    user_id, _ = await owner_of(conn, mailbox_id)
    keys = [m.key for m in messages]
    new = {r[0] for r in await conn.fetch(
        "INSERT INTO imported(user_id, origin, key) SELECT $1, $2, unnest($3::text[]) "
        "ON CONFLICT DO NOTHING RETURNING key", user_id, origin, keys,
    )}
    fresh = [i for i, key in enumerate(keys) if key in new and keys.index(key) == i]
    uids = [0] * len(messages)
    if not fresh:
        return uids, user_id, 0
    _, stored, _, modseq = await append_many(
        conn, mailbox_id, [messages[i].message for i in fresh], [blobs[i] for i in fresh],
        [texts[i] for i in fresh], True,
    )
    for i, uid in zip(fresh, stored, strict=True):
        uids[i] = uid
    return uids, user_id, modseq


async def imported_keys(conn: asyncpg.Connection, user_id: int, origin: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT key FROM imported WHERE user_id = $1 AND origin = $2", user_id, origin
    )
    return {r[0] for r in rows}
