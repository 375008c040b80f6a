"""What the HTTP service keeps on PostgreSQL: API tokens, app passwords, web sessions, the
recent delivery log and the queue figures (same tables as ``sqlite/web.py``).

Secrets arrive as SHA-256 hex digests (see ``postroom.store.api.ApiToken``). Every node
shares these tables: a token made on one node, or a web session opened there, is valid on
all of them at once (the HTTP service may sit behind the same load balancer). The
delivery log is one log for the whole cluster, trimmed by id: several nodes append at
once, so ``keep`` is honoured to within the rows of the appends in flight.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from postroom.store.api import (
    AlreadyExists,
    ApiToken,
    AppPassword,
    DeliveryLogEntry,
    NotFound,
    QueueStats,
    WebSession,
)
from postroom.store.postgres.mail import rowcount

# -- API tokens ------------------------------------------------------------------------


async def add_api_token(conn: asyncpg.Connection, name: str, digest: str) -> ApiToken:
    now = int(time.time())
    try:
        token_id = await conn.fetchval(
            "INSERT INTO api_tokens(name, digest, created) VALUES($1, $2, $3) RETURNING id",
            name, digest, now,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"a token named {name} already exists") from None
    return ApiToken(id=token_id, name=name, created=now)


async def list_api_tokens(conn: asyncpg.Connection) -> list[ApiToken]:
    rows = await conn.fetch("SELECT id, name, created FROM api_tokens ORDER BY name")
    return [ApiToken(*r) for r in rows]


async def remove_api_token(conn: asyncpg.Connection, name: str) -> bool:
    return rowcount(await conn.execute("DELETE FROM api_tokens WHERE name = $1", name)) > 0


async def find_api_token(conn: asyncpg.Connection, digest: str) -> ApiToken | None:
    r = await conn.fetchrow("SELECT id, name, created FROM api_tokens WHERE digest = $1", digest)
    return ApiToken(*r) if r else None


# -- app passwords ---------------------------------------------------------------------


async def add_app_password(conn: asyncpg.Connection, user_id: int, name: str, digest: str) -> AppPassword:
    now = int(time.time())
    try:
        password_id = await conn.fetchval(
            "INSERT INTO app_passwords(user_id, name, digest, created) "
            "VALUES($1, $2, $3, $4) RETURNING id",
            user_id, name, digest, now,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("no such user") from None
    return AppPassword(id=password_id, user_id=user_id, name=name, created=now)


async def list_app_passwords(conn: asyncpg.Connection, user_id: int) -> list[AppPassword]:
    rows = await conn.fetch(
        "SELECT id, user_id, name, created FROM app_passwords WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [AppPassword(*r) for r in rows]


async def remove_app_password(conn: asyncpg.Connection, user_id: int, password_id: int) -> bool:
    status = await conn.execute(
        "DELETE FROM app_passwords WHERE id = $1 AND user_id = $2", password_id, user_id
    )
    return rowcount(status) > 0


async def find_app_password(conn: asyncpg.Connection, user_id: int, digest: str) -> AppPassword | None:
    r = await conn.fetchrow(
        "SELECT id, user_id, name, created FROM app_passwords WHERE user_id = $1 AND digest = $2",
        user_id, digest,
    )
    return AppPassword(*r) if r else None


# -- web sessions ----------------------------------------------------------------------


async def add_web_session(conn: asyncpg.Connection, digest: str, user_id: int, expires: int) -> None:
    now = int(time.time())
    await conn.execute("DELETE FROM web_sessions WHERE expires <= $1", now)
    await conn.execute(
        "INSERT INTO web_sessions(digest, user_id, created, expires) VALUES($1, $2, $3, $4)",
        digest, user_id, now, expires,
    )


async def get_web_session(conn: asyncpg.Connection, digest: str) -> WebSession | None:
    r = await conn.fetchrow(
        "SELECT user_id, created, expires FROM web_sessions WHERE digest = $1", digest
    )
    return WebSession(*r) if r else None


async def remove_web_sessions(conn: asyncpg.Connection, digest: str | None, user_id: int | None) -> int:
    if digest is not None:
        return rowcount(await conn.execute("DELETE FROM web_sessions WHERE digest = $1", digest))
    if user_id is not None:
        return rowcount(await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id))
    return 0


# -- the delivery log ------------------------------------------------------------------


async def append_delivery_log(
    conn: asyncpg.Connection, entries: Sequence[DeliveryLogEntry], keep: int
) -> None:
    # One statement for the whole batch (a round trip per row would cost node CPU).
    await conn.execute(
        "INSERT INTO delivery_log(time, direction, qid, sender, recipient, result, detail) "
        "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::text[])",
        [e.time for e in entries], [e.direction for e in entries], [e.qid for e in entries],
        [e.sender for e in entries], [e.recipient for e in entries],
        [e.result for e in entries], [e.detail for e in entries],
    )
    await conn.execute(
        "DELETE FROM delivery_log WHERE id <= (SELECT max(id) FROM delivery_log) - $1", keep
    )


async def list_delivery_log(
    conn: asyncpg.Connection, limit: int, before_id: int | None
) -> list[DeliveryLogEntry]:
    cols = "time, direction, qid, sender, recipient, result, detail, id"
    if before_id is None:
        rows = await conn.fetch(f"SELECT {cols} FROM delivery_log ORDER BY id DESC LIMIT $1", limit)
    else:
        rows = await conn.fetch(
            f"SELECT {cols} FROM delivery_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id, limit,
        )
    return [DeliveryLogEntry(*r) for r in rows]


# -- figures ---------------------------------------------------------------------------


async def queue_stats(conn: asyncpg.Connection) -> QueueStats:
    r = await conn.fetchrow("SELECT count(*), min(created) FROM queue")
    return QueueStats(messages=r[0], oldest=r[1])

