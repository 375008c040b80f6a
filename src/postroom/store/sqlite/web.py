"""What the HTTP service keeps in SQLite: API tokens, app passwords, web sessions, the
recent delivery log, and the read-only figures the admin UI and metrics show.

Plain functions of a connection, like ``accounts.py``. Secrets arrive as SHA-256 hex
digests (see ``postroom.store.api.ApiToken``); nothing here ever sees a secret.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from postroom.store.api import (
    AlreadyExists,
    ApiToken,
    AppPassword,
    DeliveryLogEntry,
    NotFound,
    QueueStats,
    WebSession,
)

# -- API tokens ------------------------------------------------------------------------


def add_api_token(conn: sqlite3.Connection, name: str, digest: str) -> ApiToken:
    now = int(time.time())
    try:
        cur = conn.execute(
            "INSERT INTO api_tokens(name, digest, created) VALUES(?, ?, ?)", (name, digest, now)
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"a token named {name} already exists") from None
    return ApiToken(id=int(cur.lastrowid or 0), name=name, created=now)


def list_api_tokens(conn: sqlite3.Connection) -> list[ApiToken]:
    return [ApiToken(*r) for r in conn.execute("SELECT id, name, created FROM api_tokens ORDER BY name")]


def remove_api_token(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM api_tokens WHERE name=?", (name,)).rowcount > 0


def find_api_token(conn: sqlite3.Connection, digest: str) -> ApiToken | None:
    r = conn.execute("SELECT id, name, created FROM api_tokens WHERE digest=?", (digest,)).fetchone()
    return ApiToken(*r) if r else None


# -- app passwords ---------------------------------------------------------------------


def add_app_password(conn: sqlite3.Connection, user_id: int, name: str, digest: str) -> AppPassword:
    if conn.execute("SELECT 1 FROM users WHERE id=?", (user_id,)).fetchone() is None:
        raise NotFound("no such user")
    now = int(time.time())
    cur = conn.execute(
        "INSERT INTO app_passwords(user_id, name, digest, created) VALUES(?, ?, ?, ?)",
        (user_id, name, digest, now),
    )
    return AppPassword(id=int(cur.lastrowid or 0), user_id=user_id, name=name, created=now)


def list_app_passwords(conn: sqlite3.Connection, user_id: int) -> list[AppPassword]:
    rows = conn.execute(
        "SELECT id, user_id, name, created FROM app_passwords WHERE user_id=? ORDER BY id",
        (user_id,),
    )
    return [AppPassword(*r) for r in rows]


def remove_app_password(conn: sqlite3.Connection, user_id: int, password_id: int) -> bool:
    cur = conn.execute("DELETE FROM app_passwords WHERE id=? AND user_id=?", (password_id, user_id))
    return cur.rowcount > 0


def find_app_password(conn: sqlite3.Connection, user_id: int, digest: str) -> AppPassword | None:
    r = conn.execute(
        "SELECT id, user_id, name, created FROM app_passwords WHERE user_id=? AND digest=?",
        (user_id, digest),
    ).fetchone()
    return AppPassword(*r) if r else None


# -- web sessions ----------------------------------------------------------------------


def add_web_session(conn: sqlite3.Connection, digest: str, user_id: int, expires: int) -> None:
    now = int(time.time())
    conn.execute("DELETE FROM web_sessions WHERE expires <= ?", (now,))
    conn.execute(
        "INSERT INTO web_sessions(digest, user_id, created, expires) VALUES(?, ?, ?, ?)",
        (digest, user_id, now, expires),
    )


def get_web_session(conn: sqlite3.Connection, digest: str) -> WebSession | None:
    r = conn.execute(
        "SELECT user_id, created, expires FROM web_sessions WHERE digest=?", (digest,)
    ).fetchone()
    return WebSession(*r) if r else None


def remove_web_sessions(conn: sqlite3.Connection, digest: str | None, user_id: int | None) -> int:
    if digest is not None:
        return conn.execute("DELETE FROM web_sessions WHERE digest=?", (digest,)).rowcount
    if user_id is not None:
        return conn.execute("DELETE FROM web_sessions WHERE user_id=?", (user_id,)).rowcount
    return 0


# -- the delivery log ------------------------------------------------------------------


def append_delivery_log(conn: sqlite3.Connection, entries: Sequence[DeliveryLogEntry], keep: int) -> None:
    conn.executemany(
        "INSERT INTO delivery_log(time, direction, qid, sender, recipient, result, detail) "
        "VALUES(?, ?, ?, ?, ?, ?, ?)",
        [(e.time, e.direction, e.qid, e.sender, e.recipient, e.result, e.detail) for e in entries],
    )
    conn.execute(
        "DELETE FROM delivery_log WHERE id <= (SELECT max(id) FROM delivery_log) - ?", (keep,)
    )


def list_delivery_log(conn: sqlite3.Connection, limit: int, before_id: int | None) -> list[DeliveryLogEntry]:
    cols = "time, direction, qid, sender, recipient, result, detail, id"
    if before_id is None:
        rows = conn.execute(f"SELECT {cols} FROM delivery_log ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute(
            f"SELECT {cols} FROM delivery_log WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id, limit),
        )
    return [DeliveryLogEntry(*r) for r in rows]


# -- figures ---------------------------------------------------------------------------


def queue_stats(conn: sqlite3.Connection) -> QueueStats:
    r = conn.execute("SELECT count(*), min(created) FROM queue").fetchone()
    return QueueStats(messages=r[0], oldest=r[1])
