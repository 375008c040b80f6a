"""Sharing between users and per-mailbox annotations (the SQLite side).

* ACL (RFC 4314): ``acl`` rows (mailbox, identifier, rights). An owner's rights are
  implicit and never stored; the IMAP layer decides what each right allows.
* METADATA (RFC 5464): ``metadata`` rows keyed by (mailbox, owner, name); owner 0 holds
  "/shared/..." entries, a user id that user's "/private/..." ones; mailbox 0 is the
  server. Names arrive lower-cased (entry names are case-insensitive).
* URLAUTH (RFC 4467): one random secret per mailbox in ``urlauth_keys``.

Plain functions of a connection, run on the writer thread (writes) or a reader thread.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from postroom.store.api import NotFound, SharedMailbox, TooMany
from postroom.store.rows import (
    METADATA_CHARGED,
    canonical_rights,
    check_metadata_charge,
    mailbox_row,
    metadata_charges,
)

URLAUTH_KEY_SIZE = 32


def _require_mailbox(conn: sqlite3.Connection, mailbox_id: int) -> None:
    if conn.execute("SELECT 1 FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone() is None:
        raise NotFound("no such mailbox")


# -- ACL -----------------------------------------------------------------------------------


def get_acl(conn: sqlite3.Connection, mailbox_id: int) -> list[tuple[str, str]]:
    _require_mailbox(conn, mailbox_id)
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT identifier, rights FROM acl WHERE mailbox_id=? ORDER BY identifier",
            (mailbox_id,),
        )
    ]


def set_acl(conn: sqlite3.Connection, mailbox_id: int, identifier: str, rights: str) -> int:
    """Set or (empty rights) remove an entry; returns the mailbox owner's id."""
    owner = conn.execute("SELECT user_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
    if owner is None:
        raise NotFound("no such mailbox")
    rights = canonical_rights(rights)
    if rights:
        conn.execute(
            "INSERT INTO acl(mailbox_id, identifier, rights) VALUES(?, ?, ?) "
            "ON CONFLICT(mailbox_id, identifier) DO UPDATE SET rights=excluded.rights",
            (mailbox_id, identifier, rights),
        )
    else:
        conn.execute("DELETE FROM acl WHERE mailbox_id=? AND identifier=?", (mailbox_id, identifier))
    return int(owner[0])


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def acl_rights(conn: sqlite3.Connection, mailbox_id: int, identifiers: Sequence[str]) -> str:
    if not identifiers:
        return ""
    rows = conn.execute(
        f"SELECT rights FROM acl WHERE mailbox_id=? AND identifier IN ({_marks(identifiers)})",
        (mailbox_id, *identifiers),
    )
    return canonical_rights("".join(r[0] for r in rows))


def shared_mailboxes(
    conn: sqlite3.Connection, user_id: int, identifiers: Sequence[str]
) -> list[SharedMailbox]:
    if not identifiers:
        return []
    rows = conn.execute(
        "SELECT b.id, b.user_id, b.name, b.uidvalidity, b.uidnext, b.highestmodseq, "
        "b.special_use, u.address, group_concat(a.rights, '') "
        "FROM acl a JOIN mailboxes b ON b.id = a.mailbox_id JOIN users u ON u.id = b.user_id "
        f"WHERE a.identifier IN ({_marks(identifiers)}) AND b.user_id != ? "
        "GROUP BY b.id ORDER BY u.address, b.name",
        (*identifiers, user_id),
    )
    out = []
    for r in rows:
        rights = canonical_rights(r[8] or "")
        if rights:
            out.append(SharedMailbox(mailbox_row(r[:7]), r[7], rights))
    return out


# -- METADATA ------------------------------------------------------------------------------


def get_metadata(conn: sqlite3.Connection, user_id: int, mailbox_id: int) -> dict[str, bytes]:
    if mailbox_id:
        _require_mailbox(conn, mailbox_id)
    return {
        r[0]: bytes(r[1])
        for r in conn.execute(
            "SELECT name, value FROM metadata WHERE mailbox_id=? AND owner IN (0, ?)",
            (mailbox_id, user_id),
        )
    }


def set_metadata(
    conn: sqlite3.Connection,
    user_id: int,
    mailbox_id: int,
    entries: Sequence[tuple[str, bytes | None]],
    max_entries: int,
    per_user: tuple[int, int] | None = None,
) -> int:
    """Apply every change or none (the caller's SAVEPOINT undoes a TooMany); returns the
    owner of the mailbox (``user_id`` for server entries), for the change notification."""
    owner_id = user_id
    if mailbox_id:
        row = conn.execute("SELECT user_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound("no such mailbox")
        owner_id = int(row[0])
    added = False
    for name, value in entries:
        scope = user_id if name.startswith("/private/") else 0
        if value is None:
            conn.execute(
                "DELETE FROM metadata WHERE mailbox_id=? AND owner=? AND name=?",
                (mailbox_id, scope, name),
            )
            continue
        cur = conn.execute(
            "UPDATE metadata SET value=? WHERE mailbox_id=? AND owner=? AND name=?",
            (value, mailbox_id, scope, name),
        )
        if cur.rowcount == 0:
            conn.execute(
                "INSERT INTO metadata(owner, mailbox_id, name, value) VALUES(?, ?, ?, ?)",
                (scope, mailbox_id, name, value),
            )
            added = True
    if added:
        count = conn.execute(
            "SELECT count(*) FROM metadata WHERE mailbox_id=? AND owner IN (0, ?)",
            (mailbox_id, user_id),
        ).fetchone()[0]
        if count > max_entries:
            raise TooMany("Too many metadata entries")
    if per_user is not None:
        for charged, added_octets in metadata_charges(user_id, owner_id, mailbox_id, entries).items():
            count, octets = conn.execute(METADATA_CHARGED, (charged, charged)).fetchone()
            check_metadata_charge(per_user, int(count), int(octets), added_octets, added)
    return owner_id


# -- URLAUTH -------------------------------------------------------------------------------


def urlauth_key(conn: sqlite3.Connection, mailbox_id: int) -> bytes:
    """The mailbox's key, created on first use (a write: run on the writer thread)."""
    row = conn.execute("SELECT secret FROM urlauth_keys WHERE mailbox_id=?", (mailbox_id,)).fetchone()
    if row is not None:
        return bytes(row[0])
    _require_mailbox(conn, mailbox_id)
    secret = os.urandom(URLAUTH_KEY_SIZE)
    conn.execute("INSERT INTO urlauth_keys(mailbox_id, secret) VALUES(?, ?)", (mailbox_id, secret))
    return secret


def find_urlauth_key(conn: sqlite3.Connection, mailbox_id: int) -> bytes | None:
    row = conn.execute("SELECT secret FROM urlauth_keys WHERE mailbox_id=?", (mailbox_id,)).fetchone()
    return bytes(row[0]) if row is not None else None


def reset_urlauth_keys(conn: sqlite3.Connection, user_id: int, mailbox_id: int | None) -> None:
    if mailbox_id is None:
        conn.execute(
            "DELETE FROM urlauth_keys WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id=?)",
            (user_id,),
        )
    else:
        conn.execute(
            "DELETE FROM urlauth_keys WHERE mailbox_id=? AND mailbox_id IN "
            "(SELECT id FROM mailboxes WHERE user_id=?)",
            (mailbox_id, user_id),
        )
