"""Changes between the nodes of one database: LISTEN/NOTIFY on one channel.

Every node (and every CLI process) keeps one dedicated connection that LISTENs on the
channel ``postroom`` and also sends this process's notifications. What travels, one line
per item, several lines per notification (at most ~7,900 octets each):

* ``c MAILBOX USER MODSEQ KIND``: a commit changed a mailbox (``MailboxChange``); the
  other nodes wake their IMAP sessions that have it selected or NOTIFY on its owner;
* ``q``: the queue changed by an administrator (flush, hold, delete): every node scans;
* ``n TOPIC VALUE``: a note between nodes (``postroom.peers``, e.g. greeting passes);
* ``a``: domains, users or aliases changed (sent by the database's triggers at the
  commit, migration 16): address lookup caches are dropped (``lookups.py``).

Why after the commit and not inside the writing transaction: PostgreSQL serialises the
commits of transactions that NOTIFY (a global lock held until the commit's WAL flush),
which would undo group commit for deliveries. So changes are queued here after the commit
and sent in batches, with ``synchronous_commit = off`` (a notification needs no flush):
while one batch is being sent the next one collects, as the SQLite writer batches commits.
The cost: a node that dies between a commit and the send loses that notification; the
other nodes' IDLE clients then learn of the change at their next command or change.

A notification also reaches the connection that sent it; it is recognised by the sending
backend's process id and ignored (this process already woke its own listeners).

The connection is re-established after any failure, with a growing pause (0.2 s to 5 s).
Notifications sent while it was down are lost, so after reconnecting every listener of
this process is woken once (:meth:`LocalChangeHub.wake_all`): each re-reads what changed
since its own last known state, which covers whatever it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from postroom.store.api import MailboxChange
from postroom.store.changes import LocalChangeHub
from postroom.store.postgres.engine import unavailable
from postroom.waits import wait_event

log = logging.getLogger(__name__)

CHANNEL = "postroom"
MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8000 octets per notification
RETRY_MIN, RETRY_MAX = 0.2, 5.0

Connect = Callable[[], Awaitable[asyncpg.Connection]]
NoteHandler = Callable[[str], None]


def pack(lines: list[str]) -> list[str]:
    """Join lines into payloads of at most MAX_PAYLOAD octets."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if current and size + n > MAX_PAYLOAD:
            payloads.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        payloads.append("\n".join(current))
    return payloads


class Relay:
    """The node's LISTEN/NOTIFY connection (see the module docstring)."""

    def __init__(self, connect: Connect, hub: LocalChangeHub) -> None:
        self._connect = connect
        self.hub = hub
        self._pending: list[str] = []
        self._wanted = asyncio.Event()
        self._ready = asyncio.Event()  # connected and listening
        self._lost = asyncio.Event()
        self._closed = False
        self._conn: asyncpg.Connection | None = None
        self._pid = 0
        self._task: asyncio.Task[None] | None = None
        self._notes: dict[str, list[NoteHandler]] = {}
        self._accounts: list[Callable[[], None]] = []
        self.received = 0  # notifications from other processes (tests, metrics)
        self.reconnects = 0

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-relay")
        await wait_event(self._ready, timeout)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    # -- sending ---------------------------------------------------------------------------
    def send_change(self, change: MailboxChange) -> None:
        self._send(f"c {change.mailbox_id} {change.user_id} {change.modseq} {change.kind}")

    def send_queue(self) -> None:
        self._send("q")

    def send_note(self, topic: str, value: str) -> None:
        if " " in topic or "\n" in topic + value:
            raise ValueError("a note's topic has no space and neither part a line break")
        self._send(f"n {topic} {value}")

    def subscribe_note(self, topic: str, handler: NoteHandler) -> None:
        self._notes.setdefault(topic, []).append(handler)

    def subscribe_accounts(self, handler: Callable[[], None]) -> None:
        """``handler()`` when accounts changed anywhere, or may have (a reconnect)."""
        self._accounts.append(handler)

    def _accounts_changed(self) -> None:
        for handler in tuple(self._accounts):
            handler()

    def _send(self, line: str) -> None:
        if self._closed:
            return
        self._pending.append(line)
        self._wanted.set()

    # -- the connection --------------------------------------------------------------------
    async def _run(self) -> None:
        pause = RETRY_MIN
        first = True
        while not self._closed:
            try:
                conn = await self._connect()
            except Exception as e:
                if not unavailable(e):
                    log.exception("notification connection failed")
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            self._conn = conn
            self._lost.clear()
            conn.add_termination_listener(lambda _c: self._lost.set())
            try:
                self._pid = conn.get_server_pid()
                await conn.add_listener(CHANNEL, self._on_notify)
                self._ready.set()
                pause = RETRY_MIN
                if not first:
                    self.reconnects += 1
                    log.info("notification connection re-established")
                    self.hub.wake_all()  # what was sent meanwhile is lost: re-read it
                    self._accounts_changed()
                first = False
                await self._send_loop(conn)
            except Exception as e:
                if not unavailable(e):
                    log.exception("notification connection failed")
            finally:
                self._ready.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
                if not conn.is_closed():
                    conn.terminate()
            if not self._closed:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)

    async def _send_loop(self, conn: asyncpg.Connection) -> None:
        while not self._closed or self._pending:
            if not self._pending:
                lost = asyncio.ensure_future(self._lost.wait())
                wanted = asyncio.ensure_future(self._wanted.wait())
                try:
                    await asyncio.wait({lost, wanted}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    wanted.cancel()
                if self._lost.is_set():
                    return
                self._wanted.clear()
                continue
            lines, self._pending = self._pending, []
            try:
                await conn.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, pack(lines)
                )
            except BaseException:
                self._pending[:0] = lines  # keep them for the next connection
                raise

    def _on_notify(self, _conn: object, pid: int, _channel: str, payload: str) -> None:
        if payload == "a":  # from a trigger (any backend): drop the lookup caches
            self._accounts_changed()
            return
        if pid == self._pid:
            return  # our own: this process woke its listeners already
        self.received += 1
        for line in payload.split("\n"):
            try:
                self._dispatch(line)
            except Exception:  # a malformed line must not stop the others
                log.exception("bad notification line %r", line[:100])

    def _dispatch(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "c":
            mailbox_id, user_id, modseq, what = rest.split(" ")
            self.hub.receive(MailboxChange(int(mailbox_id), int(user_id), int(modseq), what))
        elif kind == "q":
            self.hub.receive_queue()
        elif kind == "n":
            topic, _, value = rest.partition(" ")
            for handler in tuple(self._notes.get(topic, ())):
                handler(value)

    async def close(self, timeout: float = 2.0) -> None:
        """Send what is pending (bounded), then close."""
        self._closed = True
        self._wanted.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task


class NotifyPeers:
    """``postroom.peers`` between the nodes of one database (and the worker processes
    of each): a note travels as an ``n`` line on the node's LISTEN/NOTIFY connection,
    so SMTP greeting passes and POP3 take-overs reach every serving process."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def publish(self, topic: str, value: str) -> None:
        self._relay.send_note(topic, value)

    def subscribe(self, topic: str, handler: NoteHandler) -> None:
        self._relay.subscribe_note(topic, handler)

    def has_others(self) -> bool:
        # Other nodes may exist whenever the database is shared; a note nobody answers
        # costs a bounded wait (a POP3 take-over) or nothing (a greeting pass).
        return True
