"""POP3 exclusive access to a maildrop (RFC 1939 8) across every node: advisory locks.

One dedicated connection per process holds a session-level advisory lock per locked
maildrop (``pg_try_advisory_lock``, never waiting). Why a lock on a connection rather
than a row with an expiry: PostgreSQL drops a session's advisory locks the moment the
session ends, so a node killed with SIGKILL (its connection closes) or cut off from the
database never leaves a maildrop locked, and nothing has to expire or be cleaned.
Advisory locks are re-entrant within one session, so two POP3 sessions of this process
exclude each other through an in-process set, as on SQLite.

If the connection is lost, every lock it held is gone: the next use reconnects and takes
the locks of the sessions still running here again; one another node took meanwhile is
logged (both sessions then run, as they could while the database was unreachable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from postroom.store.api import StoreUnavailable
from postroom.store.postgres.engine import unavailable

log = logging.getLogger(__name__)

# Advisory lock keys: "POP3" in the high 32 bits, the user id in the low ones.
NAMESPACE = 0x504F5033 << 32


def key(user_id: int) -> int:
    return NAMESPACE | (user_id & 0xFFFFFFFF)


class MaildropLocks:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._held: set[int] = set()  # locked in the database
        self._claimed: set[int] = set()  # held or being taken by a session of this process
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        try:
            conn = await self._connect()
        except Exception as e:
            if unavailable(e):
                raise StoreUnavailable("the database is unavailable") from None
            raise
        self._conn = conn
        for user_id in sorted(self._held):  # a new session: take our locks again
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key(user_id)):
                log.warning("maildrop lock of user %d was taken by another node", user_id)
        return conn

    async def _call(self, sql: str, user_id: int) -> bool:
        async with self._lock:
            for attempt in (0, 1):
                conn = await self._connection()
                try:
                    return bool(await conn.fetchval(sql, key(user_id)))
                except Exception as e:
                    if not unavailable(e):
                        raise
                    self._conn = None
                    if attempt:
                        raise StoreUnavailable("the database is unavailable") from None
        raise AssertionError("unreachable")

    async def try_lock(self, user_id: int) -> bool:
        if user_id in self._claimed:
            return False
        self._claimed.add(user_id)  # before the await: a second session here is refused
        try:
            if await self._call("SELECT pg_try_advisory_lock($1)", user_id):
                self._held.add(user_id)
                return True
        except BaseException:
            self._claimed.discard(user_id)
            raise
        self._claimed.discard(user_id)
        return False

    async def unlock(self, user_id: int) -> None:
        if user_id not in self._held:
            return
        # Free for this process's next session at once: if that session's lock reaches
        # the database before this unlock, the session lock is taken twice (advisory locks
        # count) and this unlock leaves it held once, for the new session.
        self._held.discard(user_id)
        self._claimed.discard(user_id)
        if self._conn is not None and not self._conn.is_closed():
            await self._call("SELECT pg_advisory_unlock($1)", user_id)
        # else: the session (and with it the lock) is gone already

    async def close(self) -> None:
        self._held.clear()
        self._claimed.clear()
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), 2)
            except Exception:
                self._conn.terminate()
            self._conn = None
