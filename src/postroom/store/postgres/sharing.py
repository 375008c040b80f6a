"""ACL (RFC 4314), METADATA (RFC 5464) and URLAUTH keys (RFC 4467) on PostgreSQL.

Same tables and meaning as ``sqlite/sharing.py`` (see its docstring); coroutines of a
connection. ``set_metadata`` is all or none like MULTIAPPEND: the backend runs it in one
transaction, and a TooMany raised at the end rolls every entry of the call back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import asyncpg

from postroom.store.api import NotFound, SharedMailbox, TooMany
from postroom.store.rows import (
    METADATA_CHARGED,
    canonical_rights,
    check_metadata_charge,
    mailbox_row,
    metadata_charges,
)

URLAUTH_KEY_SIZE = 32


async def _owner(conn: asyncpg.Connection, mailbox_id: int) -> int:
    owner = await conn.fetchval("SELECT user_id FROM mailboxes WHERE id = $1", mailbox_id)
    if owner is None:
        raise NotFound("no such mailbox")
    return int(owner)


async def get_acl(conn: asyncpg.Connection, mailbox_id: int) -> list[tuple[str, str]]:
    await _owner(conn, mailbox_id)
    rows = await conn.fetch(
        "SELECT identifier, rights FROM acl WHERE mailbox_id = $1 ORDER BY identifier", mailbox_id
    )
    return [(r[0], r[1]) for r in rows]


async def set_acl(conn: asyncpg.Connection, mailbox_id: int, identifier: str, rights: str) -> int:
    """Set or (empty rights) remove an entry; returns the mailbox owner's id."""
    owner = await _owner(conn, mailbox_id)
    rights = canonical_rights(rights)
    if rights:
        await conn.execute(
            "INSERT INTO acl(mailbox_id, identifier, rights) VALUES($1, $2, $3) "
            "ON CONFLICT(mailbox_id, identifier) DO UPDATE SET rights = excluded.rights",
            mailbox_id, identifier, rights,
        )
    else:
        await conn.execute(
            "DELETE FROM acl WHERE mailbox_id = $1 AND identifier = $2", mailbox_id, identifier
        )
    return owner


async def acl_rights(conn: asyncpg.Connection, mailbox_id: int, identifiers: Sequence[str]) -> str:
    if not identifiers:
        return ""
    rows = await conn.fetch(
        "SELECT rights FROM acl WHERE mailbox_id = $1 AND identifier = ANY($2::text[])",
        mailbox_id, list(identifiers),
    )
    return canonical_rights("".join(r[0] for r in rows))


async def shared_mailboxes(
    conn: asyncpg.Connection, user_id: int, identifiers: Sequence[str]
) -> list[SharedMailbox]:
    if not identifiers:
        return []
    rows = await conn.fetch(
        "SELECT b.id, b.user_id, b.name, b.uidvalidity, b.uidnext, b.highestmodseq, "
        "b.special_use, u.address, string_agg(a.rights, '') "
        "FROM acl a JOIN mailboxes b ON b.id = a.mailbox_id JOIN users u ON u.id = b.user_id "
        "WHERE a.identifier = ANY($1::text[]) AND b.user_id <> $2 "
        "GROUP BY b.id, u.address ORDER BY u.address, b.name",
        list(identifiers), user_id,
    )
    out = []
    for r in rows:
        rights = canonical_rights(r[8] or "")
        if rights:
            out.append(SharedMailbox(mailbox_row(r[:7]), r[7], rights))
    return out


async def get_metadata(conn: asyncpg.Connection, user_id: int, mailbox_id: int) -> dict[str, bytes]:
    if mailbox_id:
        await _owner(conn, mailbox_id)
    rows = await conn.fetch(
        "SELECT name, value FROM metadata WHERE mailbox_id = $1 AND owner IN (0, $2)",
        mailbox_id, user_id,
    )
    return {r[0]: r[1] for r in rows}


async def set_metadata(
    conn: asyncpg.Connection,
    user_id: int,
    mailbox_id: int,
    entries: Sequence[tuple[str, bytes | None]],
    max_entries: int,
    per_user: tuple[int, int] | None = None,
) -> int:
    """Apply every change or none (the transaction rolls back on TooMany); returns the
    owner of the mailbox (``user_id`` for server entries), for the change notification."""
    owner_id = await _owner(conn, mailbox_id) if mailbox_id else user_id
    added = False
    for name, value in entries:
        scope = user_id if name.startswith("/private/") else 0
        if value is None:
            await conn.execute(
                "DELETE FROM metadata WHERE mailbox_id = $1 AND owner = $2 AND name = $3",
                mailbox_id, scope, name,
            )
            continue
        inserted = await conn.fetchval(
            "INSERT INTO metadata(owner, mailbox_id, name, value) VALUES($1, $2, $3, $4) "
            "ON CONFLICT (mailbox_id, owner, name) DO UPDATE SET value = excluded.value "
            "RETURNING xmax = 0", scope, mailbox_id, name, value,
        )
        added = added or bool(inserted)
    if added:
        count = await conn.fetchval(
            "SELECT count(*) FROM metadata WHERE mailbox_id = $1 AND owner IN (0, $2)",
            mailbox_id, user_id,
        )
        if count > max_entries:
            raise TooMany("Too many metadata entries")
    if per_user is not None:
        query = METADATA_CHARGED.replace("?", "$1", 1).replace("?", "$2", 1)
        for charged, added_octets in metadata_charges(user_id, owner_id, mailbox_id, entries).items():
            row = await conn.fetchrow(query, charged, charged)
            check_metadata_charge(per_user, int(row[0]), int(row[1]), added_octets, added)
    return owner_id


async def urlauth_key(conn: asyncpg.Connection, mailbox_id: int) -> bytes:
    """The mailbox's key, created on first use (two nodes creating it at once agree on
    the one that was inserted first)."""
    await _owner(conn, mailbox_id)
    await conn.execute(
        "INSERT INTO urlauth_keys(mailbox_id, secret) VALUES($1, $2) ON CONFLICT DO NOTHING",
        mailbox_id, os.urandom(URLAUTH_KEY_SIZE),
    )
    return bytes(await conn.fetchval("SELECT secret FROM urlauth_keys WHERE mailbox_id = $1", mailbox_id))


async def find_urlauth_key(conn: asyncpg.Connection, mailbox_id: int) -> bytes | None:
    secret = await conn.fetchval("SELECT secret FROM urlauth_keys WHERE mailbox_id = $1", mailbox_id)
    return bytes(secret) if secret is not None else None


async def reset_urlauth_keys(conn: asyncpg.Connection, user_id: int, mailbox_id: int | None) -> None:
    if mailbox_id is None:
        await conn.execute(
            "DELETE FROM urlauth_keys WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = $1)",
            user_id,
        )
    else:
        await conn.execute(
            "DELETE FROM urlauth_keys WHERE mailbox_id = $1 AND mailbox_id IN "
            "(SELECT id FROM mailboxes WHERE user_id = $2)", mailbox_id, user_id,
        )
