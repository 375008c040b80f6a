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

Why a free list in front of asyncpg's pool (:class:`Lane`): an acquire with a timeout and
a release through asyncpg's pool start two asyncio tasks (``wait_for``, ``shield``) and
cost about 30 µs of the node's CPU, once per statement: after the IMAP commands became
one statement each (``messages.py``), that was a tenth of a PostgreSQL node's CPU per
command. A connection that finished its work cleanly goes on a list (or straight to a
waiting caller) and the next read or write takes it from there; anything unusual (an
error, a cancellation, an outage) hands it back to asyncpg's pool, which does its full
clean-up.

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
import collections
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
MAX_USES = 50_000  # reads/writes on one connection before it is closed (asyncpg's max_queries)
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0  # no single statement of ours takes this long
CLOSE_TIMEOUT = 10.0  # close(): waiting for the connections in use

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


class Lane:
    """A free list of clean connections in front of an asyncpg pool (see the module
    docstring). At most ``size`` connections are out of the pool at once (the pool's own
    maximum); callers beyond that wait for one to be given back. A connection is given
    back with :meth:`give` only when it is idle and outside any transaction; otherwise
    :meth:`drop` returns it to asyncpg, which cleans it up or closes it. After an outage
    (:meth:`expire`) connections taken before it are dropped, never reused. After
    ``MAX_USES`` reads and writes a connection is closed and the pool opens a new one, as
    asyncpg's ``max_queries`` does on release (a database backend's caches only grow)."""

    __slots__ = ("_tasks", "epoch", "free", "held", "pool", "size", "uses", "waiters")

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self.pool = pool
        self.size = size
        self.free: list[Any] = []  # clean connections of this epoch, last used first
        self.held = 0  # connections out of asyncpg's pool (in use or in ``free``)
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.epoch = 0  # bumped by expire(): older connections are not reused
        self._tasks: set[asyncio.Task[None]] = set()  # drops started by give()
        # Uses of each connection since it left the pool: after MAX_USES it goes back, to
        # be closed and replaced as asyncpg's max_queries does (a backend's caches grow).
        self.uses: dict[Any, int] = {}

    async def take(self) -> Any:
        """A connection: from the free list, else a new one from the pool, else the next
        one given back (``ACQUIRE_TIMEOUT`` in all: TimeoutError)."""
        while self.free:
            conn = self.free.pop()
            if not conn.is_closed():
                return conn
            self._drop_later(conn)  # the server closed it while idle: asyncpg replaces it
        async with asyncio.timeout(ACQUIRE_TIMEOUT):
            while True:
                while self.free:
                    conn = self.free.pop()
                    if not conn.is_closed():
                        return conn
                    self._drop_later(conn)
                if self.held < self.size:
                    self.held += 1
                    try:
                        return await self.pool.acquire()
                    except BaseException:
                        self.held -= 1
                        self._wake()
                        raise
                waiter = asyncio.get_running_loop().create_future()
                self.waiters.append(waiter)
                try:
                    conn = await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                        self.give(waiter.result(), self.epoch)  # handed over as we left
                    elif waiter in self.waiters:
                        self.waiters.remove(waiter)
                    raise
                if conn is not None:
                    return conn
                # None: a connection went back to the pool; try again from the top.

    def give(self, conn: Any, epoch: int) -> None:
        """Hand back a connection that is idle and outside any transaction."""
        used = self.uses[conn] = self.uses.get(conn, 0) + 1
        if epoch != self.epoch or conn.is_closed() or conn.is_in_transaction():
            self._drop_later(conn)
            return
        if used >= MAX_USES:
            self._drop_later(conn, close=True)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.free.append(conn)

    def _drop_later(self, conn: Any, *, close: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self.drop(conn, close=close))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drop(self, conn: Any, *, close: bool = False) -> None:
        """Return a connection to asyncpg's pool (its full clean-up, or closing it);
        ``close``: closed first, so the pool opens a new one in its place."""
        self.held -= 1
        self.uses.pop(conn, None)
        if close:
            with contextlib.suppress(Exception):  # closed or not, it goes back below
                await conn.close(timeout=CONNECT_TIMEOUT)
        try:
            await self.pool.release(conn)
        except Exception as e:  # it is closed or terminated then: nothing left to do
            log.debug("releasing a connection: %s", _reason(e))
        finally:
            self._wake()

    def _wake(self) -> None:
        """A place in the pool freed up: the first waiter tries again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def expire(self) -> None:
        """After an outage: no connection taken before now is reused; the idle ones go
        back to the pool, which closes them (``expire_connections``)."""
        self.epoch += 1
        await self.pool.expire_connections()
        idle, self.free = self.free, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await self.drop(conn)

    async def drain(self) -> None:
        """Give every idle connection back to the pool (before closing it)."""
        idle, self.free = self.free, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await self.drop(conn)


class Engine:
    """The pool of one node. ``lazy`` connections commit without waiting for the WAL
    flush (``synchronous_commit = off``): for state that may be lost in a database crash
    at no cost but a repeat (\\Recent marks, notifications)."""

    def __init__(self, pool: asyncpg.Pool, lazy: asyncpg.Pool) -> None:
        self.pool = pool
        self.lazy = lazy
        self.lanes = {False: Lane(pool, pool.get_max_size()), True: Lane(lazy, lazy.get_max_size())}
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
        for lane in self.lanes.values():
            await lane.drain()
        for pool in (self.pool, self.lazy):
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                # A connection still out (a statement that does not end): a shutdown ends
                # it rather than failing. asyncpg's close() terminates the pool when it is
                # cancelled; terminate() again is then a no-op.
                log.warning("database pool: connections still busy at close, terminated")
                pool.terminate()
            except Exception as e:
                if not unavailable(e):
                    raise
                pool.terminate()

    async def _lost(self, e: BaseException) -> StoreUnavailable:
        self.failures += 1
        for lane in self.lanes.values():
            await lane.expire()
        log.warning("database unavailable: %s", _reason(e))
        return StoreUnavailable("the database is unavailable")

    @contextlib.asynccontextmanager
    async def connection(self, *, lazy: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for work outside :meth:`read`/:meth:`write` (migrations)."""
        lane = self.lanes[lazy]
        try:
            conn = await lane.take()  # counted by the lane, which would otherwise wait for it
            try:
                # It may change session state: reset in full on release (the pool hands
                # the reset the connection itself, not this proxy).
                self._dirty.add(getattr(conn, "_con", None) or conn)
                yield conn
            finally:
                await _dropped(lane, conn)  # never reused as it is: asyncpg resets it
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
        lane = self.lanes[False]
        for attempt in (0, 1):
            try:
                epoch = lane.epoch
                conn = await lane.take()
                try:
                    if not snapshot:
                        result = await fn(conn)
                    else:
                        async with conn.transaction(isolation="repeatable_read", readonly=True):
                            result = await fn(conn)
                except BaseException:
                    await _dropped(lane, conn)
                    raise
                lane.give(conn, epoch)
                return result
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
        lane = self.lanes[lazy]
        retries = 0
        reconnects = 0
        while True:
            begun = False
            try:
                epoch = lane.epoch
                conn = await lane.take()
                try:
                    if not transaction:
                        begun = True  # the statement may commit from here on
                        result = await fn(conn)
                    else:
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
                except BaseException:
                    await _dropped(lane, conn)
                    raise
                lane.give(conn, epoch)
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


async def _dropped(lane: Lane, conn: Any) -> None:
    """After a failure: the connection goes back to asyncpg (which rolls back, waits for a
    cancelled query, or closes it), shielded from the caller's own cancellation."""
    with contextlib.suppress(Exception):
        await asyncio.shield(lane.drop(conn))


def _reason(e: BaseException) -> str:
    """A one-line cause without the DSN (which might hold a password)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
