"""Applies the shared migration list (``postroom.store.schema``) to a PostgreSQL database.

Several nodes may start at once on one database: the whole check-and-migrate runs in one
transaction under a transaction-level advisory lock, so one node migrates while the others
wait and then find the work done. PostgreSQL's DDL is transactional: a migration that
fails leaves the database exactly at its previous version.
"""

from __future__ import annotations

import asyncpg

from postroom.store.api import StoreError
from postroom.store.schema import MIGRATIONS, SchemaTooNew, statements

# pg_advisory_xact_lock key for migrations: "postroom" in ASCII, as a bigint.
MIGRATION_LOCK = 0x706F7374726F6F6D


class SchemaTooOld(StoreError):
    """The database needs migrations and this node was told not to apply them."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database has schema version {found} and this postroom needs {known}: "
            "run `postroom migrate` (store.auto_migrate is off)"
        )
        self.found = found
        self.known = known


async def current_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('meta') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(value) if value is not None else 0


async def migrate(conn: asyncpg.Connection, *, apply: bool = True) -> tuple[int, int]:
    """Check the schema and (``apply``) bring it up to date: (version before, after).

    :class:`SchemaTooNew` when the database is newer than this postroom; with
    ``apply=False``, :class:`SchemaTooOld` when it is older."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        before = await current_version(conn)
        known = len(MIGRATIONS)
        if before > known:
            raise SchemaTooNew(before, known)
        if before == known:
            return before, before
        if not apply:
            raise SchemaTooOld(before, known)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        for i in range(before, known):
            for statement in statements(MIGRATIONS[i].postgres):
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', $1) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            str(known),
        )
        return before, known
