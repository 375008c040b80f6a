"""TLS-RPT rows (RFC 8460): outbound results until reported, and received reports.

Plain functions of a connection, run on the writer or a reader thread; portable SQL
(``ON CONFLICT ... DO UPDATE`` means the same in PostgreSQL).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from postroom.store.api import StsPolicyRow, TlsReport, TlsResultRow

_KEY = "period, policy_domain, policy_key, result_type, sending_ip, receiving_mx, receiving_ip, detail"
_COLS = (
    "period, policy_domain, policy_type, policy_string, mx_host, result_type, sending_ip, "
    "receiving_mx, receiving_ip, detail, count"
)
_REPORT_COLS = "id, received, organization, report_id, start_time, end_time, domains, successful, failed, document"


def policy_key(row: TlsResultRow) -> str:
    """A short stable key for (type, policy string, mx patterns): policies can be long."""
    text = "\0".join((row.policy_type, row.policy_string, row.mx_host))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tlsrpt_add(conn: sqlite3.Connection, rows: Sequence[TlsResultRow]) -> None:
    for r in rows:
        conn.execute(
            f"INSERT INTO tlsrpt_results(policy_key, {_COLS}) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT({_KEY}) DO UPDATE SET count = tlsrpt_results.count + excluded.count",
            (policy_key(r), r.period, r.policy_domain, r.policy_type, r.policy_string, r.mx_host,
             r.result_type, r.sending_ip, r.receiving_mx, r.receiving_ip, r.detail, r.count),
        )


def tlsrpt_pending(conn: sqlite3.Connection, before: int) -> list[TlsResultRow]:
    rows = conn.execute(
        f"SELECT {_COLS} FROM tlsrpt_results WHERE period < ? ORDER BY policy_domain, period, id",
        (before,),
    ).fetchall()
    return [TlsResultRow(*r) for r in rows]


def tlsrpt_delete(conn: sqlite3.Connection, policy_domain: str, period: int) -> int:
    cur = conn.execute(
        "DELETE FROM tlsrpt_results WHERE policy_domain=? AND period=?", (policy_domain, period)
    )
    return cur.rowcount


def tls_report_add(conn: sqlite3.Connection, report: TlsReport) -> int | None:
    cur = conn.execute(
        "INSERT INTO tls_reports(received, organization, report_id, start_time, end_time, domains, "
        "successful, failed, document) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(organization, report_id) DO NOTHING",
        (report.received, report.organization, report.report_id, report.start, report.end,
         report.domains, report.successful, report.failed, report.document),
    )
    if cur.rowcount == 0:
        return None
    row = conn.execute(
        "SELECT id FROM tls_reports WHERE organization=? AND report_id=?",
        (report.organization, report.report_id),
    ).fetchone()
    return int(row[0])


def tls_reports(conn: sqlite3.Connection, limit: int, domain: str | None) -> list[TlsReport]:
    sql = f"SELECT {_REPORT_COLS} FROM tls_reports"
    args: tuple[object, ...] = ()
    if domain is not None:
        # domains is "a.example,b.example": match a whole item
        sql += " WHERE ',' || domains || ',' LIKE ?"
        args = (f"%,{_like_escape(domain)},%",)
        sql += " ESCAPE '\\'"
    rows = conn.execute(sql + " ORDER BY received DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
    return [TlsReport(*r) for r in rows]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_STS_COLS = "domain, policy_id, mode, mx, max_age, fetched, expires"


def sts_row(values: Sequence[Any]) -> StsPolicyRow:
    domain, policy_id, mode, mx, max_age, fetched, expires = values
    patterns = tuple(p for p in mx.split("\n") if p)
    return StsPolicyRow(domain, policy_id, mode, patterns, int(max_age), int(fetched), int(expires))


def sts_values(row: StsPolicyRow) -> tuple[object, ...]:
    return (row.domain, row.policy_id, row.mode, "\n".join(row.mx), row.max_age, row.fetched, row.expires)


def sts_policy(conn: sqlite3.Connection, domain: str) -> StsPolicyRow | None:
    found = conn.execute(f"SELECT {_STS_COLS} FROM mta_sts_policies WHERE domain=?", (domain,)).fetchone()
    return None if found is None else sts_row(found)


def sts_policy_put(conn: sqlite3.Connection, row: StsPolicyRow) -> None:
    conn.execute(
        f"INSERT INTO mta_sts_policies({_STS_COLS}) VALUES(?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(domain) DO UPDATE SET policy_id=excluded.policy_id, mode=excluded.mode, "
        "mx=excluded.mx, max_age=excluded.max_age, fetched=excluded.fetched, expires=excluded.expires",
        sts_values(row),
    )


def sts_policies_prune(conn: sqlite3.Connection, now: int) -> int:
    return conn.execute("DELETE FROM mta_sts_policies WHERE expires <= ?", (now,)).rowcount
