"""DKIM keys and DMARC report rows on PostgreSQL (same tables as ``sqlite/authdata.py``).

DMARC rows are summed with ``ON CONFLICT ... DO UPDATE``: every node records its own
counts each minute, and the rows of one outcome add up whichever node wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from postroom.store.api import AlreadyExists, DkimKey, DmarcRow, NotFound
from postroom.store.postgres.mail import rowcount
from postroom.store.rows import DKIM_COLS, DMARC_KEY, dmarc_row


async def dkim_key_add(conn: asyncpg.Connection, key: DkimKey) -> None:
    try:
        await conn.execute(
            f"INSERT INTO dkim_keys({DKIM_COLS}) VALUES($1, $2, $3, $4, $5, $6, $7, $8)",
            key.domain, key.selector, key.algorithm, key.private_key, key.public_record,
            key.created, key.active_from, key.retire_at,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"selector {key.selector} already exists for {key.domain}") from None


async def dkim_keys(conn: asyncpg.Connection, domain: str | None) -> list[DkimKey]:
    sql = f"SELECT {DKIM_COLS} FROM dkim_keys"
    if domain is None:
        rows = await conn.fetch(sql + " ORDER BY domain, active_from, id")
    else:
        rows = await conn.fetch(sql + " WHERE domain = $1 ORDER BY domain, active_from, id", domain)
    return [DkimKey(*row) for row in rows]


async def dkim_key_update(
    conn: asyncpg.Connection, domain: str, selector: str, active_from: int | None, retire_at: int | None
) -> None:
    status = await conn.execute(
        "UPDATE dkim_keys SET active_from = coalesce($3::bigint, active_from), "
        "retire_at = coalesce($4::bigint, retire_at) WHERE domain = $1 AND selector = $2",
        domain, selector, active_from, retire_at,
    )
    if rowcount(status) == 0:
        raise NotFound(f"no DKIM key {selector} for {domain}")


async def dkim_key_remove(conn: asyncpg.Connection, domain: str, selector: str) -> None:
    status = await conn.execute(
        "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2", domain, selector
    )
    if rowcount(status) == 0:
        raise NotFound(f"no DKIM key {selector} for {domain}")


async def dmarc_add(conn: asyncpg.Connection, rows: Sequence[DmarcRow]) -> None:
    await conn.executemany(
        f"INSERT INTO dmarc_records({DMARC_KEY}, policy, rua, count) "
        "VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
        f"ON CONFLICT({DMARC_KEY}) DO UPDATE SET count = dmarc_records.count + excluded.count, "
        "policy = excluded.policy, rua = excluded.rua",
        [(r.period, r.policy_domain, r.header_from, r.source_ip, r.envelope_from, r.disposition,
          r.dkim, r.spf, r.dkim_results, r.spf_result, r.reason, r.policy, r.rua, r.count)
         for r in rows],
    )


async def dmarc_pending(conn: asyncpg.Connection, before: int) -> list[DmarcRow]:
    rows = await conn.fetch(
        f"SELECT {DMARC_KEY}, policy, rua, count FROM dmarc_records WHERE period < $1 "
        "ORDER BY policy_domain, period, id", before,
    )
    return [dmarc_row(r) for r in rows]


async def dmarc_delete(conn: asyncpg.Connection, policy_domain: str, period: int) -> int:
    return rowcount(await conn.execute(
        "DELETE FROM dmarc_records WHERE policy_domain = $1 AND period = $2", policy_domain, period
    ))
