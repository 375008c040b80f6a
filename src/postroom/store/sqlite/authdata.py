"""DKIM keys and DMARC report rows (the mail-authentication side of the SQLite backend).

Plain functions of a connection, run on the writer or a reader thread. The SQL is portable
(``ON CONFLICT ... DO UPDATE`` exists in PostgreSQL with the same meaning).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.store.api import AlreadyExists, DkimKey, DmarcRow, NotFound
from postroom.store.rows import DKIM_COLS, DMARC_KEY, dmarc_row

_KEY_COLS = DKIM_COLS
_DMARC_KEY = DMARC_KEY


def dkim_key_add(conn: sqlite3.Connection, key: DkimKey) -> None:
    try:
        conn.execute(
            f"INSERT INTO dkim_keys({_KEY_COLS}) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (key.domain, key.selector, key.algorithm, key.private_key, key.public_record,
             key.created, key.active_from, key.retire_at),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"selector {key.selector} already exists for {key.domain}") from None


def dkim_keys(conn: sqlite3.Connection, domain: str | None) -> list[DkimKey]:
    sql = f"SELECT {_KEY_COLS} FROM dkim_keys"
    args: tuple[str, ...] = ()
    if domain is not None:
        sql += " WHERE domain=?"
        args = (domain,)
    rows = conn.execute(sql + " ORDER BY domain, active_from, id", args).fetchall()
    return [DkimKey(*row) for row in rows]


def dkim_key_update(
    conn: sqlite3.Connection, domain: str, selector: str, active_from: int | None, retire_at: int | None
) -> None:
    row = conn.execute(
        "SELECT id FROM dkim_keys WHERE domain=? AND selector=?", (domain, selector)
    ).fetchone()
    if row is None:
        raise NotFound(f"no DKIM key {selector} for {domain}")
    if active_from is not None:
        conn.execute("UPDATE dkim_keys SET active_from=? WHERE id=?", (active_from, row[0]))
    if retire_at is not None:
        conn.execute("UPDATE dkim_keys SET retire_at=? WHERE id=?", (retire_at, row[0]))


def dkim_key_remove(conn: sqlite3.Connection, domain: str, selector: str) -> None:
    cur = conn.execute("DELETE FROM dkim_keys WHERE domain=? AND selector=?", (domain, selector))
    if cur.rowcount == 0:
        raise NotFound(f"no DKIM key {selector} for {domain}")


def dmarc_add(conn: sqlite3.Connection, rows: Sequence[DmarcRow]) -> None:
    for r in rows:
        conn.execute(
            f"INSERT INTO dmarc_records({_DMARC_KEY}, policy, rua, count) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT({_DMARC_KEY}) DO UPDATE SET count = dmarc_records.count + excluded.count, "
            "policy = excluded.policy, rua = excluded.rua",
            (r.period, r.policy_domain, r.header_from, r.source_ip, r.envelope_from, r.disposition,
             r.dkim, r.spf, r.dkim_results, r.spf_result, r.reason, r.policy, r.rua, r.count),
        )


def dmarc_pending(conn: sqlite3.Connection, before: int) -> list[DmarcRow]:
    rows = conn.execute(
        f"SELECT {_DMARC_KEY}, policy, rua, count FROM dmarc_records WHERE period < ? "
        "ORDER BY policy_domain, period, id",
        (before,),
    ).fetchall()
    return [dmarc_row(r) for r in rows]


def dmarc_delete(conn: sqlite3.Connection, policy_domain: str, period: int) -> int:
    cur = conn.execute(
        "DELETE FROM dmarc_records WHERE policy_domain=? AND period=?", (policy_domain, period)
    )
    return cur.rowcount
