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
* ``message_search`` holds, per message, the case-folded envelope texts SEARCH FROM, TO,
  CC, BCC and SUBJECT match (``postroom.message.envelope_search_texts``), so those keys
  are one indexed scan of short rows in SQL instead of a Python loop over parsed
  summaries. Rows are keyed like ``messages`` (mailbox_id, uid) and follow them through
  the foreign key: ON UPDATE CASCADE (MOVE, renaming INBOX), ON DELETE CASCADE (EXPUNGE,
  deleted mailboxes and users). Inserts are explicit (``mail.place``, ``copy_messages``).

A migration is SQL text (statements separated by ";") or, when it must compute values
in Python (a backfill), a function of the connection; either runs inside the start-up
transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def _message_search(conn: sqlite3.Connection) -> None:
    """3: the ``message_search`` table, backfilled for every message already stored, and
    indexes on the columns that reference ``blobs``.

    Backfill rather than compute-on-read: SEARCH then has one code path, and the cost
    (parsing each distinct blob's summary once, tens of microseconds) is paid once at the
    first start of the new version rather than hidden inside some user's SEARCH.

    The indexes: with foreign keys on, deleting a blob (the last EXPUNGE of a message)
    makes SQLite look for rows still referencing it, which without an index on
    ``messages.blob_id`` and ``queue.blob_id`` is a scan of every message of every user
    per expunged message (most of EXPUNGE's cost at 40,000 messages).
    """
    conn.execute("CREATE INDEX messages_blob ON messages(blob_id)")
    conn.execute("CREATE INDEX queue_blob ON queue(blob_id)")
    from postroom.message import MessageSummary, SummaryError, envelope_search_texts, scan

    conn.execute(
        """
        CREATE TABLE message_search (
            mailbox_id INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            from_text TEXT,
            to_text TEXT,
            cc_text TEXT,
            bcc_text TEXT,
            subject_text TEXT,
            PRIMARY KEY (mailbox_id, uid),
            FOREIGN KEY (mailbox_id, uid) REFERENCES messages(mailbox_id, uid)
                ON DELETE CASCADE ON UPDATE CASCADE
        ) WITHOUT ROWID
        """
    )
    done: dict[int, tuple[str | None, ...]] = {}
    rows = conn.execute(
        "SELECT m.mailbox_id, m.uid, m.blob_id, b.summary FROM messages m "
        "JOIN blobs b ON b.id = m.blob_id"
    ).fetchall()
    for mailbox_id, uid, blob_id, summary in rows:
        texts = done.get(blob_id)
        if texts is None:
            try:
                parsed = MessageSummary.from_bytes(bytes(summary))
            except SummaryError:  # another format version: re-scan the message
                data = conn.execute("SELECT data FROM blobs WHERE id=?", (blob_id,)).fetchone()
                parsed = scan(bytes(data[0]))
            texts = done[blob_id] = envelope_search_texts(parsed)
        conn.execute(
            "INSERT INTO message_search VALUES(?, ?, ?, ?, ?, ?, ?)", (mailbox_id, uid, *texts)
        )


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
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
    # 3: envelope texts for SEARCH in SQL, indexes on blob references (see _message_search)
    _message_search,
    # 4: mail authentication: DKIM signing keys (private keys live in the database, so its
    # backups are as secret as the keys) and DMARC aggregate-report data.
    """
    CREATE TABLE dkim_keys (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        private_key TEXT NOT NULL,
        public_record TEXT NOT NULL,
        created INTEGER NOT NULL,
        active_from INTEGER NOT NULL,
        retire_at INTEGER,
        UNIQUE (domain, selector)
    );
    CREATE TABLE dmarc_records (
        id INTEGER PRIMARY KEY,
        period INTEGER NOT NULL,
        policy_domain TEXT NOT NULL,
        header_from TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        disposition TEXT NOT NULL,
        dkim TEXT NOT NULL,
        spf TEXT NOT NULL,
        dkim_results TEXT NOT NULL,
        spf_result TEXT NOT NULL,
        reason TEXT NOT NULL,
        policy TEXT NOT NULL,
        rua TEXT NOT NULL,
        count INTEGER NOT NULL,
        UNIQUE (period, policy_domain, header_from, source_ip, envelope_from, disposition,
                dkim, spf, dkim_results, spf_result, reason)
    );
    """,
    # 5: quotas (RFC 9208). Limits are NULL (unlimited) until set; usage is kept up to date
    # by every write that adds or removes a message row (mail.charge), so checking a
    # quota is one row read. The backfill below is the only SUM ever taken.
    """
    ALTER TABLE users ADD COLUMN quota_storage INTEGER;
    ALTER TABLE users ADD COLUMN quota_messages INTEGER;
    ALTER TABLE users ADD COLUMN used_storage INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN used_messages INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET
        used_storage = (SELECT coalesce(sum(m.size), 0) FROM messages m
                        JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = users.id),
        used_messages = (SELECT count(*) FROM messages m
                         JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = users.id)
    """,
    # 6: access control lists (RFC 4314). One row per (mailbox, identifier); identifiers
    # are user addresses, "anyone" or "authenticated". Owners' rights are implicit.
    """
    CREATE TABLE acl (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        identifier TEXT NOT NULL,
        rights TEXT NOT NULL,
        PRIMARY KEY (mailbox_id, identifier)
    );
    CREATE INDEX acl_identifier ON acl(identifier)
    """,
    # 7: METADATA entries (RFC 5464). owner is the user id for "/private/..." entries and 0
    # for "/shared/..." ones; mailbox_id 0 holds the server's entries. Rows of a deleted
    # mailbox or user are removed explicitly (accounts.py).
    """
    CREATE TABLE metadata (
        owner INTEGER NOT NULL,
        mailbox_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (mailbox_id, owner, name)
    )
    """,
    # 8: URLAUTH keys (RFC 4467 7), one random secret per mailbox, created on first use.
    """
    CREATE TABLE urlauth_keys (
        mailbox_id INTEGER PRIMARY KEY REFERENCES mailboxes(id) ON DELETE CASCADE,
        secret BLOB NOT NULL
    )
    """,
    # 9: "may send as" grants (postroom user sendas): an address or "@domain" per row
    """
    CREATE TABLE sendas (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        PRIMARY KEY (user_id, address)
    );
    """,
    # 10: what ``postroom import`` already copied, per user and origin (a source folder):
    # written in the transaction that stores the message, so an interrupted import
    # resumes without duplicates. Rows go with the user.
    """
    CREATE TABLE imported (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        origin TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (user_id, origin, key)
    ) WITHOUT ROWID
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
        step = MIGRATIONS[i]
        if callable(step):
            step(conn)
        else:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(i + 1),),
        )
    return len(MIGRATIONS)
