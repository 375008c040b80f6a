"""TLS-RPT rows (RFC 8460) on PostgreSQL: outbound results until reported, and received
reports (same tables and row keys as ``sqlite/tlsdata.py``).

Every node records the results of its own deliveries; ``ON CONFLICT ... DO UPDATE`` adds
the counts of one row key up whichever node wrote them, as for DMARC rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from postroom.store.api import StsPolicyRow, TlsReport, TlsResultRow
from postroom.store.postgres.mail import rowcount
from postroom.store.sqlite.tlsdata import (
    _COLS, _KEY, _REPORT_COLS, _STS_COLS, _like_escape, policy_key, sts_row, sts_values,
)


async def tlsrpt_add(conn: asyncpg.Connection, rows: Sequence[TlsResultRow]) -> None:
    await conn.executemany(
        f"INSERT INTO tlsrpt_results(policy_key, {_COLS}) "
        "VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        f"ON CONFLICT({_KEY}) DO UPDATE SET count = tlsrpt_results.count + excluded.count",
        [(policy_key(r), r.period, r.policy_domain, r.policy_type, r.policy_string, r.mx_host,
          r.result_type, r.sending_ip, r.receiving_mx, r.receiving_ip, r.detail, r.count)
         for r in rows],
    )


async def tlsrpt_pending(conn: asyncpg.Connection, before: int) -> list[TlsResultRow]:
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM tlsrpt_results WHERE period < $1 ORDER BY policy_domain, period, id",
        before,
    )
    return [TlsResultRow(*r) for r in rows]


async def tlsrpt_delete(conn: asyncpg.Connection, policy_domain: str, period: int) -> int:
    return rowcount(await conn.execute(
        "DELETE FROM tlsrpt_results WHERE policy_domain = $1 AND period = $2", policy_domain, period
    ))


async def tls_report_add(conn: asyncpg.Connection, report: TlsReport) -> int | None:
    report_id = await conn.fetchval(
        "INSERT INTO tls_reports(received, organization, report_id, start_time, end_time, domains, "
        "successful, failed, document) VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT(organization, report_id) DO NOTHING RETURNING id",
        report.received, report.organization, report.report_id, report.start, report.end,
        report.domains, report.successful, report.failed, report.document,
    )
    return None if report_id is None else int(report_id)


async def tls_reports(conn: asyncpg.Connection, limit: int, domain: str | None) -> list[TlsReport]:
    sql = f"SELECT {_REPORT_COLS} FROM tls_reports"
    if domain is None:
        rows = await conn.fetch(sql + " ORDER BY received DESC, id DESC LIMIT $1", limit)
    else:
        # domains is "a.example,b.example": match a whole item
        rows = await conn.fetch(
            sql + " WHERE ',' || domains || ',' LIKE $1 ESCAPE '\\' "
            "ORDER BY received DESC, id DESC LIMIT $2",
            f"%,{_like_escape(domain)},%", limit,
        )
    return [TlsReport(*r) for r in rows]


async def sts_policy(conn: asyncpg.Connection, domain: str) -> StsPolicyRow | None:
    found = await conn.fetchrow(f"SELECT {_STS_COLS} FROM mta_sts_policies WHERE domain = $1", domain)
    return None if found is None else sts_row(tuple(found))


async def sts_policy_put(conn: asyncpg.Connection, row: StsPolicyRow) -> None:
    await conn.execute(
        f"INSERT INTO mta_sts_policies({_STS_COLS}) VALUES($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT(domain) DO UPDATE SET policy_id=excluded.policy_id, mode=excluded.mode, "
        "mx=excluded.mx, max_age=excluded.max_age, fetched=excluded.fetched, expires=excluded.expires",
        *sts_values(row),
    )


async def sts_policies_prune(conn: asyncpg.Connection, now: int) -> int:
    return rowcount(await conn.execute("DELETE FROM mta_sts_policies WHERE expires <= $1", now))
