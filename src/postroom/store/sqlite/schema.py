"""Applies the shared migration list (``postroom.store.schema``) to an SQLite database."""

from __future__ import annotations

import sqlite3

from postroom.store.schema import MIGRATIONS, SchemaTooNew, statements

__all__ = ["MIGRATIONS", "current_version", "migrate"]


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if row is None:
        return 0
    v = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(v[0]) if v else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the resulting version. Runs inside a transaction.
    :class:`SchemaTooNew` when the database is newer than this postroom."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise SchemaTooNew(version, len(MIGRATIONS))
    for i in range(version, len(MIGRATIONS)):
        step = MIGRATIONS[i].sqlite
        if callable(step):
            step(conn)
        else:
            for statement in statements(step):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(i + 1),),
        )
    return len(MIGRATIONS)
