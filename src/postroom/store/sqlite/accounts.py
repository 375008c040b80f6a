"""Domains, users, aliases and mailboxes (the account side of the SQLite backend).

Plain functions of a connection: the backend runs them on the writer thread (inside the
group-commit transaction) or on a reader thread. Addresses arrive already normalised
(lower-case) from the admin service and the directory.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from postroom.store.api import (
    DEFAULT_MAILBOXES,
    AddressLookup,
    Alias,
    AlreadyExists,
    Conflict,
    Domain,
    Mailbox,
    MailboxStatus,
    NotFound,
    SendAsGrant,
    StoreError,
    TooMany,
    User,
)
from postroom.store.rows import MAILBOX_COLS as _MAILBOX_COLS
from postroom.store.rows import USER_COLS as _USER_COLS
from postroom.store.rows import mailbox_row
from postroom.store.rows import user_row as _user

# -- domains ---------------------------------------------------------------------------


def add_domain(conn: sqlite3.Connection, name: str) -> Domain:
    now = int(time.time())
    try:
        cur = conn.execute("INSERT INTO domains(name, created) VALUES(?, ?)", (name, now))
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"domain {name} already exists") from None
    return Domain(id=int(cur.lastrowid or 0), name=name, created=now)


def remove_domain(conn: sqlite3.Connection, name: str) -> None:
    row = conn.execute("SELECT id FROM domains WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no domain {name}")
    users = conn.execute("SELECT count(*) FROM users WHERE domain_id=?", (row[0],)).fetchone()[0]
    if users:
        raise Conflict(f"domain {name} still has {users} user(s); remove them first")
    aliases = conn.execute("SELECT count(*) FROM aliases WHERE domain_id=?", (row[0],)).fetchone()[0]
    if aliases:
        raise Conflict(f"domain {name} still has {aliases} alias(es); remove them first")
    conn.execute("DELETE FROM domains WHERE id=?", (row[0],))


def list_domains(conn: sqlite3.Connection) -> list[Domain]:
    return [Domain(*r) for r in conn.execute("SELECT id, name, created FROM domains ORDER BY name")]


def get_domain(conn: sqlite3.Connection, name: str) -> Domain | None:
    r = conn.execute("SELECT id, name, created FROM domains WHERE name=?", (name,)).fetchone()
    return Domain(*r) if r else None


# -- users -----------------------------------------------------------------------------


def next_uidvalidity(conn: sqlite3.Connection) -> int:
    """A fresh UIDVALIDITY: never repeats in this database, even for a re-created name."""
    row = conn.execute("SELECT value FROM meta WHERE key='uidvalidity'").fetchone()
    value = max(int(row[0]) + 1 if row else 0, int(time.time()) & 0x7FFFFFFF)
    value = max(1, value & 0xFFFFFFFF)
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('uidvalidity', ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (str(value),),
    )
    return value


def _insert_mailbox(
    conn: sqlite3.Connection, user_id: int, name: str, special_use: str | None
) -> Mailbox:
    uidvalidity = next_uidvalidity(conn)
    cur = conn.execute(
        "INSERT INTO mailboxes(user_id, name, uidvalidity, special_use) VALUES(?, ?, ?, ?)",
        (user_id, name, uidvalidity, special_use),
    )
    return Mailbox(
        id=int(cur.lastrowid or 0),
        user_id=user_id,
        name=name,
        uidvalidity=uidvalidity,
        uidnext=1,
        highestmodseq=1,
        special_use=special_use,
    )


def add_user(conn: sqlite3.Connection, address: str, password_hash: str, scram: str | None) -> User:
    domain = address.rpartition("@")[2]
    d = conn.execute("SELECT id FROM domains WHERE name=?", (domain,)).fetchone()
    if d is None:
        raise NotFound(f"{domain} is not a local domain (add it with `postroom domain add {domain}`)")
    now = int(time.time())
    try:
        cur = conn.execute(
            "INSERT INTO users(domain_id, address, password_hash, scram, created) "
            "VALUES(?, ?, ?, ?, ?)",
            (d[0], address, password_hash, scram, now),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"user {address} already exists") from None
    user_id = int(cur.lastrowid or 0)
    for name, special in DEFAULT_MAILBOXES:
        _insert_mailbox(conn, user_id, name, special)
        conn.execute("INSERT INTO subscriptions(user_id, name) VALUES(?, ?)", (user_id, name))
    return User(
        id=user_id, address=address, domain=domain, created=now,
        password_hash=password_hash, scram=scram,
    )


def _drop_messages(conn: sqlite3.Connection, where: str, args: tuple) -> None:  # type: ignore[type-arg]
    """Delete the message rows matching ``where`` and release their blob references."""
    from postroom.store.sqlite.mail import _release_blobs, charge

    rows = conn.execute(
        f"SELECT m.blob_id, m.size, b.user_id FROM messages m "
        f"JOIN mailboxes b ON b.id = m.mailbox_id WHERE {where}", args
    ).fetchall()
    conn.execute(f"DELETE FROM messages WHERE id IN (SELECT id FROM messages m WHERE {where})", args)
    _release_blobs(conn, [r[0] for r in rows])
    owners: dict[int, list[int]] = {}
    for _, size, owner in rows:
        used = owners.setdefault(owner, [0, 0])
        used[0] += size
        used[1] += 1
    for owner, (size, count) in owners.items():
        charge(conn, owner, -size, -count)


def remove_user(conn: sqlite3.Connection, address: str) -> None:
    row = conn.execute("SELECT id FROM users WHERE address=?", (address,)).fetchone()
    if row is None:
        raise NotFound(f"no user {address}")
    user_id = row[0]
    _drop_messages(conn, "m.mailbox_id IN (SELECT id FROM mailboxes WHERE user_id=?)", (user_id,))
    # What the user owned elsewhere: private METADATA entries, the METADATA of their
    # mailboxes, ACL entries naming them (RFC 4314: the identifier is gone).
    conn.execute(
        "DELETE FROM metadata WHERE owner=? OR mailbox_id IN "
        "(SELECT id FROM mailboxes WHERE user_id=?)", (user_id, user_id),
    )
    conn.execute("DELETE FROM acl WHERE identifier=?", (address,))
    conn.execute("DELETE FROM users WHERE id=?", (user_id,))


def set_password(conn: sqlite3.Connection, address: str, password_hash: str, scram: str | None) -> None:
    cur = conn.execute(
        "UPDATE users SET password_hash=?, scram=? WHERE address=?", (password_hash, scram, address)
    )
    if cur.rowcount == 0:
        raise NotFound(f"no user {address}")


def set_user_admin(conn: sqlite3.Connection, address: str, admin: bool) -> None:
    cur = conn.execute("UPDATE users SET admin=? WHERE address=?", (int(admin), address))
    if cur.rowcount == 0:
        raise NotFound(f"no user {address}")


def get_user(conn: sqlite3.Connection, address: str) -> User | None:
    r = conn.execute(
        f"SELECT {_USER_COLS} FROM users u JOIN domains d ON d.id=u.domain_id WHERE u.address=?",
        (address,),
    ).fetchone()
    return _user(r) if r else None


def get_user_by_id(conn: sqlite3.Connection, user_id: int) -> User | None:
    r = conn.execute(
        f"SELECT {_USER_COLS} FROM users u JOIN domains d ON d.id=u.domain_id WHERE u.id=?",
        (user_id,),
    ).fetchone()
    return _user(r) if r else None


def list_users(conn: sqlite3.Connection, domain: str | None) -> list[User]:
    sql = f"SELECT {_USER_COLS} FROM users u JOIN domains d ON d.id=u.domain_id"
    if domain is None:
        rows = conn.execute(sql + " ORDER BY d.name, u.address")
    else:
        rows = conn.execute(sql + " WHERE d.name=? ORDER BY u.address", (domain,))
    return [_user(r) for r in rows]


# -- aliases ---------------------------------------------------------------------------


def add_alias(conn: sqlite3.Connection, source: str, targets: Sequence[str]) -> list[Alias]:
    domain = source.rpartition("@")[2]
    d = conn.execute("SELECT id FROM domains WHERE name=?", (domain,)).fetchone()
    if d is None:
        raise NotFound(f"{domain} is not a local domain (add it with `postroom domain add {domain}`)")
    added = []
    for target in targets:
        try:
            conn.execute(
                "INSERT INTO aliases(domain_id, source, target) VALUES(?, ?, ?)",
                (d[0], source, target),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"alias {source} -> {target} already exists") from None
        added.append(Alias(source, target))
    return added


def remove_alias(conn: sqlite3.Connection, source: str, target: str | None) -> int:
    if target is None:
        cur = conn.execute("DELETE FROM aliases WHERE source=?", (source,))
    else:
        cur = conn.execute("DELETE FROM aliases WHERE source=? AND target=?", (source, target))
    if cur.rowcount == 0:
        raise NotFound(f"no alias {source}" + (f" -> {target}" if target else ""))
    return cur.rowcount


def list_aliases(conn: sqlite3.Connection, domain: str | None) -> list[Alias]:
    if domain is None:
        rows = conn.execute("SELECT source, target FROM aliases ORDER BY source, target")
    else:
        rows = conn.execute(
            "SELECT a.source, a.target FROM aliases a JOIN domains d ON d.id=a.domain_id "
            "WHERE d.name=? ORDER BY a.source, a.target",
            (domain,),
        )
    return [Alias(*r) for r in rows]


def alias_targets(conn: sqlite3.Connection, source: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT target FROM aliases WHERE source=? ORDER BY id", (source,))]


# The domain, the user and the alias targets of an address in one statement: one
# statement is its own read transaction (one snapshot), so the per-RCPT lookup needs no
# BEGIN/COMMIT around three SELECTs (six statements from Python became one). Rows: kind 0
# = the domain is local, 1 = the user, 2 = an alias target (in column 3, its id in column
# 2). No ORDER BY: the rows are told apart by kind, whatever their order, and only alias
# targets need an order (id), which Python gives them when there are any; sorting the
# compound cost SQLite a sorter per RCPT (~10% of the statement).
_LOOKUP_ADDRESS = (
    "SELECT 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM domains WHERE name=?1 "
    f"UNION ALL SELECT 1, 0, {_USER_COLS} FROM users u JOIN domains d ON d.id=u.domain_id "
    "WHERE u.address=?2 AND ?3 "
    "UNION ALL SELECT 2, id, target, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM aliases "
    "WHERE source=?2"
)


def lookup_address(conn: sqlite3.Connection, address: str) -> AddressLookup:
    domain = address.rpartition("@")[2]
    local = False
    user: User | None = None
    targets: list[tuple[int, str]] = []
    # (?3 as an int: sqlite3 binds int, float, str and bytearray as they are; a bool goes
    # through the adapter lookup first, with two attribute misses)
    is_user = 0 if address.startswith("@") else 1
    for r in conn.execute(_LOOKUP_ADDRESS, (domain, address, is_user)):
        kind = r[0]
        if kind == 0:
            local = True
        elif kind == 1:
            user = _user(r[2:])
        else:
            targets.append((r[1], r[2]))
    if not local:
        return AddressLookup(domain_is_local=False, user=None, alias_targets=())
    if targets:
        targets.sort()
    return AddressLookup(domain_is_local=True, user=user, alias_targets=tuple(t for _, t in targets))


# -- send-as grants --------------------------------------------------------------------


def _user_id(conn: sqlite3.Connection, address: str) -> int:
    row = conn.execute("SELECT id FROM users WHERE address=?", (address,)).fetchone()
    if row is None:
        raise NotFound(f"no user {address}")
    return int(row[0])


def add_sendas(conn: sqlite3.Connection, user: str, address: str) -> SendAsGrant:
    user_id = _user_id(conn, user)
    try:
        conn.execute("INSERT INTO sendas(user_id, address) VALUES(?, ?)", (user_id, address))
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"{user} may already send as {address}") from None
    return SendAsGrant(user, address)


def remove_sendas(conn: sqlite3.Connection, user: str, address: str) -> None:
    cur = conn.execute(
        "DELETE FROM sendas WHERE user_id=? AND address=?", (_user_id(conn, user), address)
    )
    if cur.rowcount == 0:
        raise NotFound(f"{user} has no grant to send as {address}")


def list_sendas(conn: sqlite3.Connection, user: str | None) -> list[SendAsGrant]:
    sql = "SELECT u.address, s.address FROM sendas s JOIN users u ON u.id=s.user_id"
    if user is None:
        rows = conn.execute(sql + " ORDER BY u.address, s.address")
    else:
        rows = conn.execute(sql + " WHERE u.address=? ORDER BY s.address", (user,))
    return [SendAsGrant(*r) for r in rows]


# -- mailboxes -------------------------------------------------------------------------


def list_mailboxes(conn: sqlite3.Connection, user_id: int) -> list[Mailbox]:
    rows = conn.execute(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE user_id=? ORDER BY name", (user_id,)
    )
    return [mailbox_row(r) for r in rows]


def get_mailbox(conn: sqlite3.Connection, user_id: int, name: str) -> Mailbox | None:
    r = conn.execute(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE user_id=? AND name=?", (user_id, name)
    ).fetchone()
    return mailbox_row(r) if r else None


def get_mailbox_by_id(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox | None:
    r = conn.execute(f"SELECT {_MAILBOX_COLS} FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
    return mailbox_row(r) if r else None


def _missing_superiors(conn: sqlite3.Connection, user_id: int, name: str) -> list[str]:
    parts = name.split("/")
    names = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return [n for n in names if get_mailbox(conn, user_id, n) is None]


def _check_mailbox_count(
    conn: sqlite3.Connection, user_id: int, adding: int, max_mailboxes: int | None
) -> None:
    """TooMany before anything is written when ``adding`` more would exceed the bound: a
    client creating mailboxes in a loop (or one name 1,000 levels deep) would otherwise grow
    every LIST, NOTIFY and STATUS of the account without end."""
    if max_mailboxes is None:
        return
    (have,) = conn.execute("SELECT count(*) FROM mailboxes WHERE user_id=?", (user_id,)).fetchone()
    if have + adding > max_mailboxes:
        raise TooMany(f"at most {max_mailboxes} mailboxes per user")


def create_mailbox(
    conn: sqlite3.Connection, user_id: int, name: str, special_use: str | None,
    max_mailboxes: int | None = None,
) -> Mailbox:
    if get_mailbox(conn, user_id, name) is not None:
        raise AlreadyExists(f"mailbox {name} already exists")
    if special_use is not None:
        taken = conn.execute(
            "SELECT name FROM mailboxes WHERE user_id=? AND special_use=?", (user_id, special_use)
        ).fetchone()
        if taken:
            raise Conflict(f"{special_use} is already used by {taken[0]}")
    # RFC 9051 6.3.4: create missing superior names too, so the hierarchy stays navigable.
    missing = set(_missing_superiors(conn, user_id, name))
    _check_mailbox_count(conn, user_id, len(missing) + 1, max_mailboxes)
    parts = name.split("/")
    inherit: int | None = None
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        found = None if parent in missing else get_mailbox(conn, user_id, parent)
        inherit = (found or _insert_mailbox(conn, user_id, parent, None)).id
    created = _insert_mailbox(conn, user_id, name, special_use)
    if inherit is not None:
        # RFC 4314 4: a new mailbox SHOULD inherit the ACL of its parent.
        conn.execute(
            "INSERT INTO acl(mailbox_id, identifier, rights) "
            "SELECT ?, identifier, rights FROM acl WHERE mailbox_id=?",
            (created.id, inherit),
        )
    return created


def delete_mailbox(conn: sqlite3.Connection, user_id: int, name: str) -> int:
    if name == "INBOX":
        raise StoreError("INBOX cannot be deleted")
    mb = get_mailbox(conn, user_id, name)
    if mb is None:
        raise NotFound(f"no mailbox {name}")
    child = conn.execute(
        "SELECT 1 FROM mailboxes WHERE user_id=? AND substr(name, 1, ?) = ? LIMIT 1",
        (user_id, len(name) + 1, name + "/"),
    ).fetchone()
    if child:
        raise Conflict(f"mailbox {name} has children; delete them first")
    _drop_messages(conn, "m.mailbox_id=?", (mb.id,))
    # RFC 5464 4.1 / RFC 4314 4: a mailbox created later under the same name inherits
    # nothing (the ACL and URLAUTH key go by the foreign key).
    conn.execute("DELETE FROM metadata WHERE mailbox_id=?", (mb.id,))
    conn.execute("DELETE FROM mailboxes WHERE id=?", (mb.id,))
    return mb.id


def rename_mailbox(
    conn: sqlite3.Connection, user_id: int, old: str, new: str, max_mailboxes: int | None = None
) -> list[int]:
    """Rename ``old`` and its children. Returns ids of mailboxes whose content changed."""
    src = get_mailbox(conn, user_id, old)
    if src is None:
        raise NotFound(f"no mailbox {old}")
    if get_mailbox(conn, user_id, new) is not None:
        raise AlreadyExists(f"mailbox {new} already exists")
    if new.startswith(old + "/"):
        raise StoreError("cannot rename a mailbox into its own child")
    # Superior names of the new name must exist (as for CREATE); renaming INBOX adds one more.
    missing = _missing_superiors(conn, user_id, new)
    _check_mailbox_count(conn, user_id, len(missing) + (old == "INBOX"), max_mailboxes)
    for parent in missing:
        _insert_mailbox(conn, user_id, parent, None)
    if old == "INBOX":
        # RFC 9051 6.3.6: renaming INBOX moves its messages to a new mailbox; INBOX stays,
        # empty, and its children are not renamed.
        dst = _insert_mailbox(conn, user_id, new, None)
        rows = conn.execute(
            "SELECT id, uid FROM messages WHERE mailbox_id=? ORDER BY uid", (src.id,)
        ).fetchall()
        if rows:
            modseq = conn.execute(
                "UPDATE mailboxes SET highestmodseq=highestmodseq+1 WHERE id=? RETURNING highestmodseq",
                (src.id,),
            ).fetchone()[0]
            next_uid = 1
            for msg_id, uid in rows:
                conn.execute(
                    "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES(?, ?, ?)",
                    (src.id, uid, modseq),
                )
                conn.execute(
                    "UPDATE messages SET mailbox_id=?, uid=?, modseq=2 WHERE id=?",
                    (dst.id, next_uid, msg_id),
                )
                next_uid += 1
            conn.execute(
                "UPDATE mailboxes SET uidnext=?, highestmodseq=2 WHERE id=?", (next_uid, dst.id)
            )
        return [src.id, dst.id]
    conn.execute(
        "UPDATE mailboxes SET name = ? || substr(name, ?) "
        "WHERE user_id=? AND (name=? OR substr(name, 1, ?) = ?)",
        (new, len(old) + 1, user_id, old, len(old) + 1, old + "/"),
    )
    conn.execute(
        "UPDATE OR IGNORE subscriptions SET name = ? || substr(name, ?) "
        "WHERE user_id=? AND (name=? OR substr(name, 1, ?) = ?)",
        (new, len(old) + 1, user_id, old, len(old) + 1, old + "/"),
    )
    return []


def list_subscriptions(conn: sqlite3.Connection, user_id: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM subscriptions WHERE user_id=? ORDER BY name", (user_id,)
        )
    ]


def set_subscribed(
    conn: sqlite3.Connection, user_id: int, name: str, subscribed: bool,
    max_subscriptions: int | None = None,
) -> None:
    if subscribed and max_subscriptions is not None:
        # RFC 9051 6.3.7 lets a client subscribe to names that do not exist, so the
        # mailbox bound does not bound these: they have their own.
        (have,) = conn.execute(
            "SELECT count(*) FROM subscriptions WHERE user_id=?", (user_id,)
        ).fetchone()
        if have >= max_subscriptions and not conn.execute(
            "SELECT 1 FROM subscriptions WHERE user_id=? AND name=?", (user_id, name)
        ).fetchone():
            raise TooMany(f"at most {max_subscriptions} subscriptions per user")
    if subscribed:
        conn.execute(
            "INSERT OR IGNORE INTO subscriptions(user_id, name) VALUES(?, ?)", (user_id, name)
        )
    else:
        conn.execute("DELETE FROM subscriptions WHERE user_id=? AND name=?", (user_id, name))


def mailbox_status(
    conn: sqlite3.Connection, mailbox_id: int, recent: tuple[int, int] | None = None
) -> MailboxStatus:
    """``recent``: the backend's in-memory \\Recent mark (uidvalidity, mark), which may be
    ahead of the ``recent_uid`` column (see backend.py)."""
    mb = conn.execute(
        "SELECT uidvalidity, uidnext, highestmodseq, recent_uid FROM mailboxes WHERE id=?",
        (mailbox_id,),
    ).fetchone()
    if mb is None:
        raise NotFound("no such mailbox")
    mark = mb[3]
    if recent is not None and recent[0] == mb[0]:
        mark = max(mark, recent[1])
    r = conn.execute(
        "SELECT count(*), coalesce(sum((flags & 1) = 0), 0), coalesce(sum((flags & 8) != 0), 0), "
        "coalesce(sum(size), 0), coalesce(sum(uid >= ?), 0), "
        "coalesce(sum(CASE WHEN flags & 8 THEN size ELSE 0 END), 0) "
        "FROM messages WHERE mailbox_id=?",
        (mark, mailbox_id),
    ).fetchone()
    return MailboxStatus(
        messages=r[0], unseen=r[1], deleted=r[2], size=r[3], recent=r[4],
        uidvalidity=mb[0], uidnext=mb[1], highestmodseq=mb[2], deleted_size=r[5],
    )
