"""Domains, users, aliases and mailboxes (the account side of the PostgreSQL backend).

Coroutines of a connection, run inside a transaction by the backend for writes. The
SQL mirrors ``sqlite/accounts.py`` statement for statement where it can; where several
rows are written at once (a new user's six mailboxes) they go in one statement. A unique
constraint violated by a concurrent writer (two nodes creating the same mailbox) becomes
the same :class:`AlreadyExists` a check would have raised.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

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
from postroom.store.postgres.mail import charge, lock_users, release_blobs, rowcount
from postroom.store.rows import MAILBOX_COLS, USER_COLS, mailbox_row, user_row

# -- domains ---------------------------------------------------------------------------


async def add_domain(conn: asyncpg.Connection, name: str) -> Domain:
    now = int(time.time())
    try:
        domain_id = await conn.fetchval(
            "INSERT INTO domains(name, created) VALUES($1, $2) RETURNING id", name, now
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"domain {name} already exists") from None
    return Domain(id=int(domain_id), name=name, created=now)


async def remove_domain(conn: asyncpg.Connection, name: str) -> None:
    row = await conn.fetchrow(
        "SELECT id, (SELECT count(*) FROM users WHERE domain_id = d.id), "
        "(SELECT count(*) FROM aliases WHERE domain_id = d.id) FROM domains d WHERE name = $1 "
        "FOR UPDATE", name,
    )
    if row is None:
        raise NotFound(f"no domain {name}")
    if row[1]:
        raise Conflict(f"domain {name} still has {row[1]} user(s); remove them first")
    if row[2]:
        raise Conflict(f"domain {name} still has {row[2]} alias(es); remove them first")
    await conn.execute("DELETE FROM domains WHERE id = $1", row[0])


async def list_domains(conn: asyncpg.Connection) -> list[Domain]:
    return [Domain(*r) for r in await conn.fetch("SELECT id, name, created FROM domains ORDER BY name")]


async def get_domain(conn: asyncpg.Connection, name: str) -> Domain | None:
    r = await conn.fetchrow("SELECT id, name, created FROM domains WHERE name = $1", name)
    return Domain(*r) if r else None


# -- users -----------------------------------------------------------------------------


async def next_uidvalidities(conn: asyncpg.Connection, n: int) -> list[int]:
    """``n`` fresh UIDVALIDITY values: never repeated in this database, even for a
    re-created name (the meta row's lock makes concurrent creators take turns)."""
    last = await conn.fetchval(
        "INSERT INTO meta(key, value) VALUES('uidvalidity', greatest(1, $2::bigint + $1::bigint - 1)::text) "
        "ON CONFLICT(key) DO UPDATE SET value = "
        "greatest(1, (greatest(meta.value::bigint + 1, $2::bigint) + $1::bigint - 1) & 4294967295)::text "
        "RETURNING value::bigint",
        n, int(time.time()) & 0x7FFFFFFF,
    )
    return list(range(int(last) - n + 1, int(last) + 1))


async def _insert_mailboxes(
    conn: asyncpg.Connection, user_id: int, names: Sequence[tuple[str, str | None]]
) -> list[Mailbox]:
    validities = await next_uidvalidities(conn, len(names))
    try:
        rows = await conn.fetch(
            "INSERT INTO mailboxes(user_id, name, uidvalidity, special_use) "
            "SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[]) "
            f"RETURNING {MAILBOX_COLS}",
            user_id, [n for n, _ in names], validities, [s for _, s in names],
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"mailbox {names[-1][0]} already exists") from None
    by_name = {r[2]: mailbox_row(r) for r in rows}
    return [by_name[n] for n, _ in names]


async def add_user(conn: asyncpg.Connection, address: str, password_hash: str, scram: str | None) -> User:
    domain = address.rpartition("@")[2]
    domain_id = await conn.fetchval("SELECT id FROM domains WHERE name = $1", domain)
    if domain_id is None:
        raise NotFound(f"{domain} is not a local domain (add it with `postroom domain add {domain}`)")
    now = int(time.time())
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users(domain_id, address, password_hash, scram, created) "
            "VALUES($1, $2, $3, $4, $5) RETURNING id",
            domain_id, address, password_hash, scram, now,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"user {address} already exists") from None
    await _insert_mailboxes(conn, user_id, DEFAULT_MAILBOXES)
    await conn.execute(
        "INSERT INTO subscriptions(user_id, name) SELECT $1, unnest($2::text[])",
        user_id, [n for n, _ in DEFAULT_MAILBOXES],
    )
    return User(
        id=user_id, address=address, domain=domain, created=now,
        password_hash=password_hash, scram=scram,
    )


async def drop_messages(conn: asyncpg.Connection, mailbox_ids: Sequence[int]) -> list[str]:
    """Delete every message of the mailboxes, release their blobs, charge the owners back.
    Returns external objects to collect."""
    rows = await conn.fetch(
        "DELETE FROM messages m USING mailboxes b WHERE b.id = m.mailbox_id "
        "AND m.mailbox_id = ANY($1::bigint[]) RETURNING m.blob_id, m.size, b.user_id",
        list(mailbox_ids),
    )
    owners: dict[int, tuple[int, int]] = {}
    for _, size, owner in rows:
        used = owners.get(owner, (0, 0))
        owners[owner] = (used[0] - size, used[1] - 1)
    await charge(conn, owners)
    return await release_blobs(conn, [r[0] for r in rows])


async def remove_user(conn: asyncpg.Connection, address: str) -> list[str]:
    user_id = await conn.fetchval("SELECT id FROM users WHERE address = $1", address)
    if user_id is None:
        raise NotFound(f"no user {address}")
    await lock_users(conn, [user_id])
    mailboxes = [r[0] for r in await conn.fetch(
        "SELECT id FROM mailboxes WHERE user_id = $1 ORDER BY id FOR UPDATE", user_id
    )]
    garbage = await drop_messages(conn, mailboxes)
    # What the user owned elsewhere: private METADATA entries, the METADATA of their
    # mailboxes, ACL entries naming them (RFC 4314: the identifier is gone).
    await conn.execute(
        "DELETE FROM metadata WHERE owner = $1 OR mailbox_id = ANY($2::bigint[])", user_id, mailboxes
    )
    await conn.execute("DELETE FROM acl WHERE identifier = $1", address)
    await conn.execute("DELETE FROM users WHERE id = $1", user_id)
    return garbage


async def set_password(conn: asyncpg.Connection, address: str, password_hash: str, scram: str | None) -> None:
    status = await conn.execute(
        "UPDATE users SET password_hash = $1, scram = $2 WHERE address = $3",
        password_hash, scram, address,
    )
    if rowcount(status) == 0:
        raise NotFound(f"no user {address}")


async def set_user_admin(conn: asyncpg.Connection, address: str, admin: bool) -> None:
    status = await conn.execute("UPDATE users SET admin = $1 WHERE address = $2", int(admin), address)
    if rowcount(status) == 0:
        raise NotFound(f"no user {address}")


_USERS = f"SELECT {USER_COLS} FROM users u JOIN domains d ON d.id = u.domain_id"


async def get_user(conn: asyncpg.Connection, address: str) -> User | None:
    r = await conn.fetchrow(_USERS + " WHERE u.address = $1", address)
    return user_row(r) if r else None


async def get_user_by_id(conn: asyncpg.Connection, user_id: int) -> User | None:
    r = await conn.fetchrow(_USERS + " WHERE u.id = $1", user_id)
    return user_row(r) if r else None


async def list_users(conn: asyncpg.Connection, domain: str | None) -> list[User]:
    if domain is None:
        rows = await conn.fetch(_USERS + " ORDER BY d.name, u.address")
    else:
        rows = await conn.fetch(_USERS + " WHERE d.name = $1 ORDER BY u.address", domain)
    return [user_row(r) for r in rows]


# -- aliases ---------------------------------------------------------------------------


async def add_alias(conn: asyncpg.Connection, source: str, targets: Sequence[str]) -> list[Alias]:
    domain = source.rpartition("@")[2]
    domain_id = await conn.fetchval("SELECT id FROM domains WHERE name = $1", domain)
    if domain_id is None:
        raise NotFound(f"{domain} is not a local domain (add it with `postroom domain add {domain}`)")
    added = []
    for target in targets:
        try:
            await conn.execute(
                "INSERT INTO aliases(domain_id, source, target) VALUES($1, $2, $3)",
                domain_id, source, target,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"alias {source} -> {target} already exists") from None
        added.append(Alias(source, target))
    return added


async def remove_alias(conn: asyncpg.Connection, source: str, target: str | None) -> int:
    if target is None:
        status = await conn.execute("DELETE FROM aliases WHERE source = $1", source)
    else:
        status = await conn.execute(
            "DELETE FROM aliases WHERE source = $1 AND target = $2", source, target
        )
    n = rowcount(status)
    if n == 0:
        raise NotFound(f"no alias {source}" + (f" -> {target}" if target else ""))
    return n


async def list_aliases(conn: asyncpg.Connection, domain: str | None) -> list[Alias]:
    if domain is None:
        rows = await conn.fetch("SELECT source, target FROM aliases ORDER BY source, target")
    else:
        rows = await conn.fetch(
            "SELECT a.source, a.target FROM aliases a JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = $1 ORDER BY a.source, a.target", domain,
        )
    return [Alias(*r) for r in rows]


async def alias_targets(conn: asyncpg.Connection, source: str) -> list[str]:
    rows = await conn.fetch("SELECT target FROM aliases WHERE source = $1 ORDER BY id", source)
    return [r[0] for r in rows]


async def lookup_address(conn: asyncpg.Connection, address: str) -> AddressLookup:
    """The domain, the user and the alias targets in one statement (every RCPT asks)."""
    domain = address.rpartition("@")[2]
    row = await conn.fetchrow(
        f"SELECT {USER_COLS}, (SELECT array_agg(a.target ORDER BY a.id) FROM aliases a "
        "WHERE a.source = $2) FROM domains d "
        "LEFT JOIN users u ON u.address = $2 AND u.domain_id = d.id AND $3 WHERE d.name = $1",
        domain, address, not address.startswith("@"),
    )
    if row is None:
        return AddressLookup(domain_is_local=False, user=None, alias_targets=())
    return AddressLookup(
        domain_is_local=True,
        user=user_row(row) if row[0] is not None else None,
        alias_targets=tuple(row[USER_COLS.count(",") + 1] or ()),  # after the user's
    )


# -- send-as grants --------------------------------------------------------------------


async def _user_id(conn: asyncpg.Connection, address: str) -> int:
    user_id = await conn.fetchval("SELECT id FROM users WHERE address = $1", address)
    if user_id is None:
        raise NotFound(f"no user {address}")
    return int(user_id)


async def add_sendas(conn: asyncpg.Connection, user: str, address: str) -> SendAsGrant:
    user_id = await _user_id(conn, user)
    status = await conn.execute(
        "INSERT INTO sendas(user_id, address) VALUES($1, $2) ON CONFLICT DO NOTHING",
        user_id, address,
    )
    if rowcount(status) == 0:
        raise AlreadyExists(f"{user} may already send as {address}")
    return SendAsGrant(user, address)


async def remove_sendas(conn: asyncpg.Connection, user: str, address: str) -> None:
    status = await conn.execute(
        "DELETE FROM sendas WHERE user_id = $1 AND address = $2", await _user_id(conn, user), address
    )
    if rowcount(status) == 0:
        raise NotFound(f"{user} has no grant to send as {address}")


async def list_sendas(conn: asyncpg.Connection, user: str | None) -> list[SendAsGrant]:
    sql = "SELECT u.address, s.address FROM sendas s JOIN users u ON u.id = s.user_id"
    if user is None:
        rows = await conn.fetch(sql + " ORDER BY u.address, s.address")
    else:
        rows = await conn.fetch(sql + " WHERE u.address = $1 ORDER BY s.address", user)
    return [SendAsGrant(*r) for r in rows]


# -- mailboxes -------------------------------------------------------------------------


async def list_mailboxes(conn: asyncpg.Connection, user_id: int) -> list[Mailbox]:
    rows = await conn.fetch(
        f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 ORDER BY name", user_id
    )
    return [mailbox_row(r) for r in rows]


async def get_mailbox(conn: asyncpg.Connection, user_id: int, name: str) -> Mailbox | None:
    r = await conn.fetchrow(
        f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE user_id = $1 AND name = $2", user_id, name
    )
    return mailbox_row(r) if r else None


async def get_mailbox_by_id(conn: asyncpg.Connection, mailbox_id: int) -> Mailbox | None:
    r = await conn.fetchrow(f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE id = $1", mailbox_id)
    return mailbox_row(r) if r else None


async def _check_mailbox_count(
    conn: asyncpg.Connection, user_id: int, adding: int, max_mailboxes: int | None
) -> None:
    """TooMany before anything is written (as the SQLite backend; the caller holds the
    user's row lock, so two nodes creating at once cannot both pass the count)."""
    if max_mailboxes is None or adding <= 0:
        return
    have = await conn.fetchval("SELECT count(*) FROM mailboxes WHERE user_id = $1", user_id)
    if have + adding > max_mailboxes:
        raise TooMany(f"at most {max_mailboxes} mailboxes per user")


async def create_mailbox(
    conn: asyncpg.Connection, user_id: int, name: str, special_use: str | None,
    max_mailboxes: int | None = None,
) -> Mailbox:
    if max_mailboxes is not None:
        await lock_users(conn, [user_id])
    if await get_mailbox(conn, user_id, name) is not None:
        raise AlreadyExists(f"mailbox {name} already exists")
    if special_use is not None:
        taken = await conn.fetchval(
            "SELECT name FROM mailboxes WHERE user_id = $1 AND special_use = $2", user_id, special_use
        )
        if taken:
            raise Conflict(f"{special_use} is already used by {taken}")
    # RFC 9051 6.3.4: create missing superior names too, so the hierarchy stays navigable.
    parts = name.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    existing = {r[0]: r[1] for r in await conn.fetch(
        "SELECT name, id FROM mailboxes WHERE user_id = $1 AND name = ANY($2::text[])",
        user_id, parents,
    )}
    missing = [(p, None) for p in parents if p not in existing]
    await _check_mailbox_count(conn, user_id, len(missing) + 1, max_mailboxes)
    made = await _insert_mailboxes(conn, user_id, [*missing, (name, special_use)])
    for mb in made[:-1]:
        existing[mb.name] = mb.id
    created = made[-1]
    if parents:
        # RFC 4314 4: a new mailbox SHOULD inherit the ACL of its parent.
        await conn.execute(
            "INSERT INTO acl(mailbox_id, identifier, rights) "
            "SELECT $1, identifier, rights FROM acl WHERE mailbox_id = $2",
            created.id, existing[parents[-1]],
        )
    return created


async def delete_mailbox(conn: asyncpg.Connection, user_id: int, name: str) -> tuple[int, list[str]]:
    """(the deleted mailbox's id, external objects to collect)."""
    if name == "INBOX":
        raise StoreError("INBOX cannot be deleted")
    await lock_users(conn, [user_id])
    mb = await get_mailbox(conn, user_id, name)
    if mb is None:
        raise NotFound(f"no mailbox {name}")
    child = await conn.fetchval(
        "SELECT 1 FROM mailboxes WHERE user_id = $1 AND left(name, $2) = $3 LIMIT 1",
        user_id, len(name) + 1, name + "/",
    )
    if child:
        raise Conflict(f"mailbox {name} has children; delete them first")
    await conn.execute("SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE", mb.id)
    garbage = await drop_messages(conn, [mb.id])
    # RFC 5464 4.1 / RFC 4314 4: a mailbox created later under the same name inherits
    # nothing (the ACL and URLAUTH key go by the foreign key).
    await conn.execute("DELETE FROM metadata WHERE mailbox_id = $1", mb.id)
    await conn.execute("DELETE FROM mailboxes WHERE id = $1", mb.id)
    return mb.id, garbage


async def rename_mailbox(
    conn: asyncpg.Connection, user_id: int, old: str, new: str, max_mailboxes: int | None = None
) -> list[int]:
    """Rename ``old`` and its children. Returns ids of mailboxes whose content changed."""
    await lock_users(conn, [user_id])  # one rename (or create) of this user at a time
    src = await get_mailbox(conn, user_id, old)
    if src is None:
        raise NotFound(f"no mailbox {old}")
    if await get_mailbox(conn, user_id, new) is not None:
        raise AlreadyExists(f"mailbox {new} already exists")
    if new.startswith(old + "/"):
        raise StoreError("cannot rename a mailbox into its own child")
    # Superior names of the new name must exist (as for CREATE).
    parts = new.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    existing = {r[0] for r in await conn.fetch(
        "SELECT name FROM mailboxes WHERE user_id = $1 AND name = ANY($2::text[])", user_id, parents
    )}
    missing = [(p, None) for p in parents if p not in existing]
    # Renaming INBOX adds one more mailbox (INBOX stays).
    await _check_mailbox_count(conn, user_id, len(missing) + (old == "INBOX"), max_mailboxes)
    if missing:
        await _insert_mailboxes(conn, user_id, missing)
    if old == "INBOX":
        # RFC 9051 6.3.6: renaming INBOX moves its messages to a new mailbox; INBOX stays,
        # empty, and its children are not renamed.
        (dst,) = await _insert_mailboxes(conn, user_id, [(new, None)])
        await conn.execute("SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE", src.id)
        rows = await conn.fetch(
            "SELECT id, uid FROM messages WHERE mailbox_id = $1 ORDER BY uid", src.id
        )
        if rows:
            modseq = await conn.fetchval(
                "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = $1 "
                "RETURNING highestmodseq", src.id,
            )
            await conn.execute(
                "INSERT INTO expunged(mailbox_id, uid, modseq) SELECT $1, unnest($2::bigint[]), $3 "
                "ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
                src.id, [r[1] for r in rows], modseq,
            )
            await conn.execute(
                "UPDATE messages m SET mailbox_id = $1, uid = c.uid, modseq = 2 "
                "FROM unnest($2::bigint[], $3::bigint[]) AS c(id, uid) WHERE m.id = c.id",
                dst.id, [r[0] for r in rows], list(range(1, len(rows) + 1)),
            )
            await conn.execute(
                "UPDATE mailboxes SET uidnext = $1, highestmodseq = 2 WHERE id = $2",
                len(rows) + 1, dst.id,
            )
        return [src.id, dst.id]
    await conn.execute(
        "UPDATE mailboxes SET name = $1 || substr(name, $2) "
        "WHERE user_id = $3 AND (name = $4 OR left(name, $5) = $6)",
        new, len(old) + 1, user_id, old, len(old) + 1, old + "/",
    )
    # Subscriptions follow, except where the new name is subscribed already (as SQLite's
    # UPDATE OR IGNORE leaves those rows).
    await conn.execute(
        "UPDATE subscriptions s SET name = $1 || substr(s.name, $2) "
        "WHERE s.user_id = $3 AND (s.name = $4 OR left(s.name, $5) = $6) AND NOT EXISTS "
        "(SELECT 1 FROM subscriptions t WHERE t.user_id = $3 AND t.name = $1 || substr(s.name, $2))",
        new, len(old) + 1, user_id, old, len(old) + 1, old + "/",
    )
    return []


async def list_subscriptions(conn: asyncpg.Connection, user_id: int) -> list[str]:
    rows = await conn.fetch("SELECT name FROM subscriptions WHERE user_id = $1 ORDER BY name", user_id)
    return [r[0] for r in rows]


async def set_subscribed(
    conn: asyncpg.Connection, user_id: int, name: str, subscribed: bool,
    max_subscriptions: int | None = None,
) -> None:
    if subscribed and max_subscriptions is not None:
        # RFC 9051 6.3.7: names that do not exist may be subscribed: bounded on their own.
        await lock_users(conn, [user_id])
        have = await conn.fetchval("SELECT count(*) FROM subscriptions WHERE user_id = $1", user_id)
        if have >= max_subscriptions and not await conn.fetchval(
            "SELECT 1 FROM subscriptions WHERE user_id = $1 AND name = $2", user_id, name
        ):
            raise TooMany(f"at most {max_subscriptions} subscriptions per user")
    if subscribed:
        await conn.execute(
            "INSERT INTO subscriptions(user_id, name) VALUES($1, $2) ON CONFLICT DO NOTHING",
            user_id, name,
        )
    else:
        await conn.execute("DELETE FROM subscriptions WHERE user_id = $1 AND name = $2", user_id, name)


async def mailbox_status(conn: asyncpg.Connection, mailbox_id: int) -> MailboxStatus:
    """One statement, so the counts and the mailbox row agree; \\Recent counts from the
    mark on the row (claimed there by every node)."""
    r = await conn.fetchrow(
        "SELECT b.uidvalidity, b.uidnext, b.highestmodseq, count(m.id), "
        "count(m.id) FILTER (WHERE m.flags & 1 = 0), count(m.id) FILTER (WHERE m.flags & 8 <> 0), "
        "coalesce(sum(m.size), 0), count(m.id) FILTER (WHERE m.uid >= b.recent_uid), "
        "coalesce(sum(m.size) FILTER (WHERE m.flags & 8 <> 0), 0) "
        "FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.id = $1 "
        "GROUP BY b.id", mailbox_id,
    )
    if r is None:
        raise NotFound("no such mailbox")
    return MailboxStatus(
        messages=r[3], unseen=r[4], deleted=r[5], size=int(r[6]), recent=r[7],
        uidvalidity=r[0], uidnext=r[1], highestmodseq=r[2], deleted_size=int(r[8]),
    )
