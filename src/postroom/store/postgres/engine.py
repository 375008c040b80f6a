"""PostgreSQL connections: a pool, transactions with retries, and what an outage looks like.

Why asyncpg: measured against psycopg 3's async pool on the same SQL (``bench/pg_drivers.py``,
docs/architecture.md), asyncpg spends 1.4x less client CPU per delivery transaction and 2-3x
less per FETCH read and per point lookup; the node's CPU, not the database, is what limits a
postroom node, so the cheaper driver wins.

Why connections go back to the pool without asyncpg's reset: by default every release runs
``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` (one more round trip
and four statements for every read and write; measured with ``bench/pg_statements.py``, 12
of the 20 statements of an SMTP delivery). Connections used through :meth:`Engine.read`
and :meth:`Engine.write` never change session state (no SET, LISTEN, cursors or session
advisory locks: those live on dedicated connections, ``notify.py`` and ``locks.py``), and
asyncpg still rolls back an open transaction on release; only a connection handed out by
:meth:`Engine.connection` (migrations, the blob sweeper's advisory lock) gets the full
reset.

Deliveries do not come here one by one: ``batch.py`` group-commits them (one transaction
for every delivery queued while the previous one committed).

Transactions (:meth:`Engine.write`) run at READ COMMITTED; the functions that need
exclusion lock the rows they change in one fixed order (a user before their mailboxes,
mailboxes by id: see ``mail.py``), and a deadlock or serialization failure that still
happens is retried from the start (the function runs again, on a fresh transaction).
Reads that must see one state across several statements run in a REPEATABLE READ
read-only transaction (``snapshot=True``); a single statement needs none.

An unreachable database (a restart, a fail-over, a network cut) raises
:class:`StoreUnavailable`, which every protocol answers with a temporary error. A read is
tried once more on a fresh connection first; a write is tried again only when it failed
before its transaction began (nothing can have been done), never after: a write whose
COMMIT was lost may have committed, and the client's retry is then a duplicate rather than
a loss. After any such failure the pool's idle connections are dropped (they are as dead
as the one that failed), so recovery takes one reconnect, not one failure per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from postroom.store.api import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Fn = Callable[[asyncpg.Connection], Awaitable[T]]

RETRIES = 8  # deadlock / serialization failure retries of one write
ACQUIRE_TIMEOUT = 30.0  # waiting for a free pooled connection
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0  # no single statement of ours takes this long

# SQLSTATE classes and errors that mean "the database is not there now".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ReadOnlySQLTransactionError,  # a replica after a fail-over: not writable yet
    # The driver's protocol state after the server cut a connection mid-operation
    # ("cannot switch to state ...; another operation is in progress").
    asyncpg.InternalClientError,
)
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def unavailable(e: BaseException) -> bool:
    if isinstance(e, _UNAVAILABLE):
        return True
    # "connection is closed", "pool is closing": the connection went away under us.
    return isinstance(e, asyncpg.InterfaceError) and "closed" in str(e)


class Engine:
    """The pool of one node. ``lazy`` connections commit without waiting for the WAL
    flush (``synchronous_commit = off``): for state that may be lost in a database crash
    at no cost but a repeat (\\Recent marks, notifications)."""

    def __init__(self, pool: asyncpg.Pool, lazy: asyncpg.Pool) -> None:
        self.pool = pool
        self.lazy = lazy
        # Connections handed out by connection(): reset in full when released.
        self._dirty: weakref.WeakSet[Any] = weakref.WeakSet()
        self.failures = 0  # outages seen (operations that raised StoreUnavailable)
        # timing(write, seconds) after every read and write (the store latency metrics),
        # as the SQLite engine reports it.
        self.timing: Callable[[bool, float], None] | None = None

    @classmethod
    async def connect(
        cls, dsn: str, *, password: str | None = None, size: int = 10,
        server_settings: dict[str, str] | None = None,
    ) -> Engine:
        settings = {"application_name": "postroom", **(server_settings or {})}
        common: dict[str, Any] = {
            "dsn": dsn, "password": password, "timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
        }
        dirty: weakref.WeakSet[Any] = weakref.WeakSet()

        async def reset(conn: asyncpg.Connection) -> None:
            # asyncpg has rolled back any open transaction already (see the docstring).
            if conn in dirty:
                dirty.discard(conn)
                await conn.execute(conn.get_reset_query())

        common["reset"] = reset
        try:
            pool = await asyncpg.create_pool(
                min_size=min(2, size), max_size=size, server_settings=settings, **common
            )
            lazy = await asyncpg.create_pool(
                min_size=1, max_size=max(2, size // 4),
                server_settings={**settings, "synchronous_commit": "off"}, **common,
            )
        except BaseException as e:
            if unavailable(e):
                raise StoreUnavailable(f"cannot connect to the database: {_reason(e)}") from None
            raise
        engine = cls(pool, lazy)
        engine._dirty = dirty
        return engine

    async def close(self) -> None:
        for pool in (self.pool, self.lazy):
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception as e:
                if not unavailable(e):
                    raise
                pool.terminate()

    async def _lost(self, e: BaseException) -> StoreUnavailable:
        self.failures += 1
        for pool in (self.pool, self.lazy):
            await pool.expire_connections()
        log.warning("database unavailable: %s", _reason(e))
        return StoreUnavailable("the database is unavailable")

    @contextlib.asynccontextmanager
    async def connection(self, *, lazy: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for work outside :meth:`read`/:meth:`write` (migrations)."""
        try:
            async with (self.lazy if lazy else self.pool).acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                # It may change session state: reset in full on release (the pool hands
                # the reset the connection itself, not this proxy).
                self._dirty.add(getattr(conn, "_con", None) or conn)
                yield conn
        except StoreUnavailable:
            raise
        except BaseException as e:
            if unavailable(e):
                raise await self._lost(e) from None
            raise

    async def read(self, fn: Fn[T], *, snapshot: bool = False) -> T:
        """Run a read; ``snapshot``: its statements see one state of the database."""
        if self.timing is None:
            return await self._read(fn, snapshot)
        started = time.perf_counter()
        try:
            return await self._read(fn, snapshot)
        finally:
            self.timing(False, time.perf_counter() - started)

    async def _read(self, fn: Fn[T], snapshot: bool) -> T:
        for attempt in (0, 1):
            try:
                async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    if not snapshot:
                        return await fn(conn)
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        return await fn(conn)
            except BaseException as e:
                if not unavailable(e):
                    raise
                lost = await self._lost(e)
                if attempt:
                    raise lost from None
        raise AssertionError("unreachable")

    async def write(self, fn: Fn[T], *, lazy: bool = False, transaction: bool = True) -> T:
        """Run ``fn`` in one transaction and commit; durable on return unless ``lazy``.

        ``fn`` may run more than once (deadlock retries): it must not have effects
        outside the transaction. ``transaction=False``: ``fn`` runs at most one
        statement that writes (after any reads), whose implicit transaction is the
        transaction (PostgreSQL commits it, durably, before answering): BEGIN and COMMIT
        would be two more round trips."""
        if self.timing is None:
            return await self._write(fn, lazy, transaction)
        started = time.perf_counter()
        try:
            return await self._write(fn, lazy, transaction)
        finally:
            self.timing(True, time.perf_counter() - started)

    async def _write(self, fn: Fn[T], lazy: bool, transaction: bool) -> T:
        pool = self.lazy if lazy else self.pool
        retries = 0
        reconnects = 0
        while True:
            begun = False
            try:
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    if not transaction:
                        begun = True  # the statement may commit from here on
                        return await fn(conn)
                    tx = conn.transaction()
                    await tx.start()
                    begun = True
                    try:
                        result = await fn(conn)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await tx.rollback()
                        raise
                    await tx.commit()
                    return result
            except _RETRY as e:
                retries += 1
                if retries > RETRIES:
                    raise
                log.debug("retrying a write after %s", type(e).__name__)
                await asyncio.sleep(random.uniform(0, 0.005 * retries))
            except BaseException as e:
                if not unavailable(e):
                    raise
                lost = await self._lost(e)
                if begun or reconnects:
                    raise lost from None
                reconnects += 1  # nothing was sent: one more try on a fresh connection


def _reason(e: BaseException) -> str:
    """A one-line cause without the DSN (which might hold a password)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
