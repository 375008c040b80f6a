"""SQLite schema and its migrations, applied in order at start-up.

Each entry of ``MIGRATIONS`` moves the schema from version i to i+1 and is never edited
once released: a change is a new entry. ``meta.schema_version`` records where a database is.

Design notes (kept portable to PostgreSQL: integers, text, blobs, no SQLite-only types):
* ``blobs`` holds each message's bytes once with its parse summary and a reference count;
  ``messages`` rows (one per mailbox copy) and ``queue`` rows reference it.
* ``messages.id`` is stable for the life of a message, including MOVE (the row is updated in
  place) and never reused (AUTOINCREMENT), so POP3 UIDL can use it.
* System flags are a bitmask (cheap UNSEEN/DELETED counts); keywords a space-joined string.
* ``expunged`` remembers (uid, modseq) of removed messages for QRESYNC VANISHED.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id),
        address TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        scram TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE INDEX users_domain ON users(domain_id);
    CREATE TABLE aliases (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id),
        source TEXT NOT NULL,
        target TEXT NOT NULL,
        UNIQUE (source, target)
    );
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        recent_uid INTEGER NOT NULL DEFAULT 1,
        special_use TEXT,
        UNIQUE (user_id, name)
    );
    CREATE TABLE subscriptions (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (user_id, name)
    );
    CREATE TABLE blobs (
        id INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL,
        summary BLOB NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        size INTEGER NOT NULL,
        internaldate INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        keywords TEXT NOT NULL DEFAULT '',
        modseq INTEGER NOT NULL,
        UNIQUE (mailbox_id, uid)
    );
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    );
    CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq);
    CREATE TABLE queue (
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL UNIQUE,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        sender TEXT NOT NULL,
        created INTEGER NOT NULL,
        next_attempt INTEGER NOT NULL,
        lease_until INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        held INTEGER NOT NULL DEFAULT 0,
        ret TEXT,
        envid TEXT,
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        body8bit INTEGER NOT NULL DEFAULT 0,
        kind TEXT NOT NULL DEFAULT 'relay',
        delay_warned INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX queue_due ON queue(held, next_attempt);
    CREATE TABLE queue_rcpts (
        id INTEGER PRIMARY KEY,
        queue_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        status TEXT,
        diagnostic TEXT,
        remote_mta TEXT,
        updated INTEGER NOT NULL
    );
    CREATE INDEX queue_rcpts_queue ON queue_rcpts(queue_id);
    CREATE INDEX queue_rcpts_domain ON queue_rcpts(domain, state);
    """,
    # 2: message ids are never reused. POP3 UIDL is the id (RFC 1939 section 7: a
    # unique-id must never be given to another message), and a plain INTEGER PRIMARY KEY
    # hands the highest id out again once that row is deleted; AUTOINCREMENT does not.
    """
    CREATE TABLE messages_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        size INTEGER NOT NULL,
        internaldate INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        keywords TEXT NOT NULL DEFAULT '',
        modseq INTEGER NOT NULL,
        UNIQUE (mailbox_id, uid)
    );
    INSERT INTO messages_v2(id, mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq)
        SELECT id, mailbox_id, uid, blob_id, size, internaldate, flags, keywords, modseq
        FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    """,
]


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if row is None:
        return 0
    v = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(v[0]) if v else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the resulting version. Runs inside a transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the database has schema version {version}, newer than this postroom "
            f"({len(MIGRATIONS)}): upgrade postroom"
        )
    for i in range(version, len(MIGRATIONS)):
        for statement in MIGRATIONS[i].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(i + 1),),
        )
    return len(MIGRATIONS)
