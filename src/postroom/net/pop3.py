"""The POP3 shell: drives ``proto.pop3`` over a connection, against the store.

The maildrop is the user's INBOX, snapshotted at login and locked for the session (RFC 1939
exclusive access). A new login of the same user *takes over*: the older session is ended
without entering the UPDATE state, so its DELE marks are dropped (as for any connection
that ends without QUIT), and the new one locks and snapshots the maildrop. Why: a phone
that changes networks loses its connection silently and reconnects at once; refusing it
with ``-ERR [IN-USE]`` until the dead session times out (10 minutes) locks the user out,
and the dead session can never send QUIT anyway. An older session that is already in its
UPDATE state (QUIT received) finishes it first; the new snapshot then follows its
deletions. Only when the older session does not end within ``TAKEOVER_GRACE`` +
``TAKEOVER_WAIT`` seconds does the new login get ``-ERR [IN-USE]``. With worker processes
(``server.workers``), or on another PostgreSQL node, the older session may run in another
process: the new one asks every other process to end it (a ``postroom.peers`` note, by
NOTIFY on PostgreSQL) and waits for the lock as long.

Timeouts: before login a client has ``limits.login_timeout`` in total from connecting;
after it, ``limits.pop3_idle_timeout`` of silence, and each command line must be whole
within that time of the previous answer (``net/deadline.py``: trickling does not help).

Sizes are the stored sizes: delivery and APPEND store
messages with CRLF line endings and a final CRLF, which is exactly what RETR sends before
byte-stuffing (RFC 1939 section 11), so LIST/STAT need no message reads (and the core
is told it need not re-check line ends). The UIDL of a message is its store id, which
survives restarts, flag changes and IMAP MOVE and is never given to another message.

Deletions happen only at QUIT, in one atomic expunge (IMAP sessions see them as EXPUNGE).
Messages downloaded with RETR get ``\\Seen`` in one write when the session ends, rather
than one fsync per RETR; TOP is a peek and sets nothing (fetchmail's keep mode uses
``TOP n 99999999`` precisely so that mail stays unread on the server, as Dovecot allows).
RETR reads ahead: one store read fetches the next messages too (bounded by bytes), which
matters for clients that download thousands of messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from functools import partial

from postroom import logs
from postroom.config import Listener
from postroom.net import budget
from postroom.net.auth import MECHANISMS, TEXT_REFUSED, AuthTracker, LoginRefused
from postroom.net.budget import BudgetExceeded
from postroom.net.connection import Connection, Interrupted
from postroom.net.deadline import RecordDeadline
from postroom.proto.pop3.events import (
    Authenticated,
    Closed,
    Commit,
    CredentialsRequest,
    LoginError,
    NeedData,
    PassRequest,
    Retrieve,
    StartTls,
)
from postroom.proto.pop3.server import Pop3Server, Pop3Settings
from postroom.proto.sasl import ScramCredentials, server_mechanism, urandom_nonce
from postroom.services import Services
from postroom.store.api import (
    FLAG_SEEN,
    FlagChange,
    MessageMeta,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    User,
)
from postroom.waits import wait_event

log = logging.getLogger("postroom.pop3")

# One store read fetches a batch of consecutive messages, bounded in count and bytes; with
# the next batch read in the background, a session holds at most twice READ_AHEAD_BYTES.
READ_AHEAD_MESSAGES = 64
READ_AHEAD_BYTES = 2 * 1024 * 1024
# A new login asks the older session of the same user to end (an idle one does at once),
# cuts its connection after TAKEOVER_GRACE seconds (a dead peer's output can block it),
# and waits at most TAKEOVER_WAIT more (a QUIT being committed finishes first).
TAKEOVER_GRACE = 1.0
TAKEOVER_WAIT = 5.0
TAKEN_OVER = b"-ERR [IN-USE] session ended: the same user logged in again\r\n"
UNAVAILABLE = b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n"


class _ReadAhead:
    """Message bytes for RETR/TOP, read from the store a batch at a time.

    Clients download in order, one message after the other, and a store read costs a
    thread hop: so one read fetches the next ``READ_AHEAD_MESSAGES`` messages, and once
    half of a batch has been served the following batch is read in the background. A
    client that reads in order then never waits for the store (with poplib-style clients
    the read runs while the client is busy parsing). Random access still works: a miss
    reads a batch starting at the message asked for.
    """

    def __init__(self, store: Store, messages: list[MessageMeta]) -> None:
        self.store = store
        self.messages = messages
        self.cache: dict[int, bytes] = {}
        self.end = 0  # end of the batch in ``cache``
        self.next: tuple[int, int, asyncio.Task[dict[int, bytes]]] | None = None

    def _batch_end(self, start: int) -> int:
        end, total = start, 0
        stop = min(start + READ_AHEAD_MESSAGES, len(self.messages))
        while end < stop:
            size = self.messages[end].size
            if end > start and total + size > READ_AHEAD_BYTES:
                break
            total += size
            end += 1
        return end

    async def _read(self, start: int, end: int) -> dict[int, bytes]:
        metas = self.messages[start:end]
        # Several messages may share a blob (IMAP COPY within the mailbox): key by index.
        blobs = await self.store.read_blobs(list({m.blob_id for m in metas}))
        return {start + i: blobs[m.blob_id] for i, m in enumerate(metas) if m.blob_id in blobs}

    async def get(self, index: int) -> bytes | None:
        """The stored bytes of snapshot message ``index``; None if it has gone meanwhile."""
        data = self.cache.pop(index, None)
        if data is None:
            ahead = self.next
            if ahead is not None and ahead[0] <= index < ahead[1]:
                self.next = None
                self.cache, self.end = await ahead[2], ahead[1]
            else:
                self.end = self._batch_end(index)
                self.cache = await self._read(index, self.end)
                if ahead is not None and ahead[0] != self.end:
                    self._cancel()  # the client went elsewhere
            data = self.cache.pop(index, None)
        if (
            self.next is None
            and self.end < len(self.messages)
            and len(self.cache) <= READ_AHEAD_MESSAGES // 2
        ):
            start, end = self.end, self._batch_end(self.end)
            task = asyncio.get_running_loop().create_task(self._read(start, end))
            task.add_done_callback(_retrieve_exception)
            self.next = (start, end, task)
        return data

    def _cancel(self) -> None:
        if self.next is not None:
            self.next[2].cancel()
            self.next = None

    def close(self) -> None:
        self._cancel()
        self.cache.clear()


def _retrieve_exception(task: asyncio.Task[dict[int, bytes]]) -> None:
    """A background read nobody awaits (session over) must not log "never retrieved"."""
    if not task.cancelled():
        task.exception()


class _Maildrop:
    def __init__(
        self, user: User, mailbox_id: int, messages: list[MessageMeta], store: Store
    ) -> None:
        self.user = user
        self.mailbox_id = mailbox_id
        self.messages = messages
        self.reader = _ReadAhead(store, messages)
        self.retrieved: set[int] = set()


TAKEOVER_TOPIC = "pop3.takeover"  # a login elsewhere wants this user's maildrop


class Pop3Handler:
    def __init__(self, services: Services) -> None:
        self.services = services
        # user id -> the session holding that user's maildrop lock (for take-over).
        self.holders: dict[int, Pop3Session] = {}
        self._takeovers: set[asyncio.Task[None]] = set()
        services.peers.subscribe(TAKEOVER_TOPIC, self._take_over_for_another_process)

    def _take_over_for_another_process(self, user_id: str) -> None:
        holder = self.holders.get(int(user_id))
        if holder is not None and not holder.taken_over:
            task = asyncio.ensure_future(holder.take_over())
            self._takeovers.add(task)
            task.add_done_callback(self._takeovers.discard)

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(b"-ERR [SYS/TEMP] " + reason.encode() + b"\r\n")

    async def serve(self, conn: Connection, listener: Listener) -> None:
        await Pop3Session(self.services, conn, listener, self.holders).run()


class Pop3Session:
    def __init__(
        self,
        services: Services,
        conn: Connection,
        listener: Listener,
        holders: dict[int, Pop3Session] | None = None,
    ) -> None:
        self.services = services
        self.holders = holders if holders is not None else {}
        self.taken_over = False
        self.released = asyncio.Event()
        self._locked: int | None = None  # the user id whose maildrop lock we hold
        self.conn = conn
        self.listener = listener
        self.id = uuid.uuid4().hex[:12]
        self.auth = AuthTracker(services, "pop3", conn.peer_ip, self.id)
        settings = services.settings
        self.core = Pop3Server(
            Pop3Settings(
                mechanisms=MECHANISMS,
                tls_available=services.tls.available and not listener.implicit_tls,
                plaintext_without_tls=settings.pop3.allow_plaintext_auth,
                max_login_failures=settings.limits.auth_failures,
            ),
            tls_active=conn.tls is not None,
            sasl_factory=partial(server_mechanism, nonce_source=urandom_nonce, secret=services.secret),
        )
        self.drop: _Maildrop | None = None
        self._scram_user: User | None = None
        self._failures_seen = 0
        self._refused = ""  # why the guard refused the last login (auth/failures.py)

    async def run(self) -> None:
        limits = self.services.settings.limits
        metrics = self.services.metrics
        started = time.monotonic()
        record = RecordDeadline(limits.pop3_idle_timeout, limits.min_data_rate)
        login_by = started + limits.login_timeout
        try:
            while True:
                event = self.core.next_event()
                if isinstance(event, NeedData):
                    if await self._flush():
                        record.done()  # an answer ends the command line it answers
                    now = time.monotonic()
                    timeout = record.read_timeout(now)
                    # Which deadline a timeout means is decided now: timers may fire early.
                    login_bound = self.drop is None and login_by - now <= timeout
                    if login_bound:
                        timeout = login_by - now
                    try:
                        if timeout <= 0:
                            raise TimeoutError()
                        data = await self.conn.read(timeout)
                    except TimeoutError:
                        if login_bound:
                            text = b"-ERR disconnected: no login within the time allowed\r\n"
                        elif self.core.buffered:
                            text = b"-ERR disconnected: command not received in time\r\n"
                        else:
                            text = b"-ERR autologout: idle for too long\r\n"
                        await self.conn.send(text)
                        return
                    except Interrupted:
                        # Server shutdown or a take-over while idle: no UPDATE state, so
                        # nothing marked with DELE is removed (RFC 1939 section 6); say
                        # why (without waiting on a peer that may be gone), then close.
                        shutdown = b"-ERR [SYS/TEMP] server shutting down\r\n"
                        self.conn.write(TAKEN_OVER if self.taken_over else shutdown)
                        return
                    record.received(len(data))
                    self.core.receive_data(data)
                    continue
                record.done()
                if isinstance(event, Retrieve):
                    metrics.command("pop3", "retr" if event.top_lines is None else "top")
                    try:
                        with budget.scope(self.services.settings.limits.command_time, self.auth.owner):
                            message = await self._message(event.index, seen=event.top_lines is None)
                    except BudgetExceeded:
                        message = None  # -ERR [SYS/TEMP], like a failed read
                    if message is None:
                        self.core.retrieve_failed()
                    else:
                        # Stored messages are CRLF with a final CRLF (deliver.normalize):
                        # the sizes given at login already rely on it.
                        self.conn.write(self.core.retrieved(message, crlf=True))
                        await self.conn.drain()
                elif isinstance(event, PassRequest):
                    metrics.command("pop3", "pass" if event.mechanism == "USER" else "auth")
                    await self._budgeted_login(event.username, event.password, event.mechanism)
                elif isinstance(event, CredentialsRequest):
                    metrics.command("pop3", "auth")
                    try:
                        await self.auth.admit_scram(event.username)
                        user = await self.services.directory.user_for_scram(event.username)
                    except LoginRefused as e:
                        # No credentials: the exchange fails like an unknown user's
                        # (the core's SCRAM answers -ERR [AUTH] at its end).
                        self._refused = e.reason
                        user = None
                    self._scram_user = user
                    creds = ScramCredentials.from_string(user.scram) if user and user.scram else None
                    self.core.credentials(creds)
                elif isinstance(event, Authenticated):
                    await self._budgeted_login(None, None, event.mechanism)
                elif isinstance(event, StartTls):
                    metrics.command("pop3", "stls")
                    await self._flush()
                    if self.services.tls.context is None:
                        return
                    await self.conn.start_tls(self.services.tls.context)
                    self.core.tls_started()
                elif isinstance(event, Commit):
                    metrics.command("pop3", "quit")
                    self.core.update_done(await self._commit(event.deleted))
                elif isinstance(event, Closed):
                    await self._flush()
                    return
        except StoreUnavailable:
            # A database restart: say so (RFC 3206 SYS/TEMP: try again later) and close;
            # nothing marked for deletion is removed (no UPDATE state was reached).
            logs.event(log, "store_unavailable", logging.WARNING, session=self.id)
            with contextlib.suppress(OSError, ConnectionError):
                await self._flush()
                await self.conn.send(UNAVAILABLE)
        finally:
            await self._finish(time.monotonic() - started)

    async def _flush(self) -> bool:
        """Write what the core queued; True when there was something."""
        failures = self.core.login_failures
        if failures > self._failures_seen:
            # Every failed login waits before its answer (same policy as SMTP AUTH).
            self._failures_seen = failures
            await self.auth.failed(None, "pop3", self._refused)
            self._refused = ""
        out = self.core.data_to_send()
        if out:
            await self.conn.send(out)
        return bool(out)

    async def _lock(self, user: User) -> bool:
        """Lock ``user``'s maildrop, taking it over from an older session of theirs."""
        store = self.services.store
        if await store.try_lock_maildrop(user.id):
            return True
        holder = self.holders.get(user.id)
        if holder is self:
            return False
        if holder is None:
            return await self._lock_from_another_process(user)
        await holder.take_over()
        if not await store.try_lock_maildrop(user.id):
            return False
        logs.event(
            log, "pop3_takeover", session=self.id, client=self.conn.peer_ip,
            user=user.address, previous=holder.id, previous_client=holder.conn.peer_ip,
        )
        return True

    async def _lock_from_another_process(self, user: User) -> bool:
        """The lock is held by another worker process: ask the others to end their session
        of this user (see the module docstring) and wait, bounded, for the lock."""
        peers = self.services.peers
        if not peers.has_others():
            return False
        peers.publish(TAKEOVER_TOPIC, str(user.id))
        deadline = time.monotonic() + TAKEOVER_GRACE + TAKEOVER_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if await self.services.store.try_lock_maildrop(user.id):
                logs.event(
                    log, "pop3_takeover", session=self.id, client=self.conn.peer_ip,
                    user=user.address, previous="another process",
                )
                return True
        return False

    async def take_over(self) -> None:
        """End this session for a new login of the same user, without UPDATE; wait
        (bounded) until it has released the maildrop lock."""
        self.taken_over = True
        self.conn.interrupt()  # an idle session says why and ends at once
        if not await wait_event(self.released, TAKEOVER_GRACE):
            # Stuck writing to a peer that is gone (or committing a QUIT, which cutting
            # the connection does not stop): abort, which wakes any write, and wait.
            self.conn.abort()
            await wait_event(self.released, TAKEOVER_WAIT)

    async def _budgeted_login(self, username: str | None, password: str | None,
                              mechanism: str) -> None:
        """USER/PASS or AUTH PLAIN/LOGIN (``password`` given) or SCRAM (already verified)
        under the command budget: past it (a login flood keeps every verify slot busy, or
        the maildrop is huge and the server loaded) ``-ERR [SYS/TEMP]`` (RFC 3206)."""
        try:
            with budget.scope(self.services.settings.limits.command_time, self.auth.owner):
                if password is not None:
                    assert username is not None
                    user = await self.auth.verify_password(username, password)
                else:
                    user = self._scram_user
                await self._login(user, mechanism)
        except BudgetExceeded:
            self.core.login_failed(LoginError.SYS_TEMP, "Server busy, try again later")
        except LoginRefused as e:
            # Blocked address or locked user (auth/failures.py): the password was not
            # checked. RFC 3206 SYS/TEMP: try later; counted (and delayed) as a failure.
            self._refused = e.reason
            self.core.login_failed(LoginError.SYS_TEMP, TEXT_REFUSED, counted=True)

    async def _login(self, user: User | None, mechanism: str) -> None:
        if user is None:
            self.core.login_failed(LoginError.AUTH)
            return
        store = self.services.store
        if not await self._lock(user):
            self.core.login_failed(LoginError.IN_USE)
            return
        self.holders[user.id] = self
        self._locked = user.id
        inbox = await store.get_mailbox(user.id, "INBOX")
        if inbox is None:
            await self._unlock()
            self.core.login_failed(LoginError.SYS_PERM, "no INBOX")
            return
        try:
            messages = await store.list_messages(inbox.id)
            maildrop: list[tuple[int, str]] = []
            for m in messages:  # in slices: a maildrop may hold 100,000 messages
                await budget.tick()
                maildrop.append((m.size, f"{m.id:x}"))
        except BaseException:
            await self._unlock()
            raise
        self.drop = _Maildrop(user, inbox.id, messages, store)
        await self.auth.succeeded(user, mechanism)
        self.core.login_ok(maildrop)

    async def _message(self, index: int, seen: bool) -> bytes | None:
        """The stored bytes of a snapshot message; ``seen``: RETR (TOP is only a peek)."""
        drop = self.drop
        assert drop is not None
        data = await drop.reader.get(index)
        if data is not None and seen:
            drop.retrieved.add(index)
        return data

    async def _commit(self, deleted: tuple[int, ...]) -> bool:
        drop = self.drop
        assert drop is not None
        uids = [drop.messages[i].uid for i in deleted]
        try:
            if uids:
                await self.services.store.expunge(drop.mailbox_id, uids)
            await self._mark_seen(set(deleted))
        except (NotFound, OSError) as e:
            logs.event(log, "pop3_update_failed", logging.ERROR, session=self.id, error=str(e))
            return False
        logs.event(log, "pop3_update", session=self.id, user=drop.user.address, deleted=len(uids))
        return True

    async def _mark_seen(self, skip: set[int]) -> None:
        drop = self.drop
        if drop is None:
            return
        uids = [
            drop.messages[i].uid
            for i in drop.retrieved
            if i not in skip and not drop.messages[i].flags & FLAG_SEEN
        ]
        drop.retrieved.clear()
        if uids:
            await self.services.store.store_flags(drop.mailbox_id, uids, FlagChange("add", FLAG_SEEN))

    async def _finish(self, duration: float) -> None:
        drop = self.drop
        if drop is None:
            await self._unlock()
            return
        drop.reader.close()
        try:
            await self._mark_seen(set())
        except (NotFound, StoreUnavailable):
            pass
        finally:
            await self._unlock()
            logs.event(
                log, "pop3_session", session=self.id, client=self.conn.peer_ip,
                user=drop.user.address, messages=len(drop.messages), duration=round(duration, 3),
                taken_over=self.taken_over,
            )

    async def _unlock(self) -> None:
        """Release the maildrop lock, if this session holds it, and tell a waiting login."""
        user_id = self._locked
        if user_id is not None:
            self._locked = None
            if self.holders.get(user_id) is self:
                del self.holders[user_id]
            try:
                await self.services.store.unlock_maildrop(user_id)
            except StoreError as e:  # the database is gone: its lock went with the session
                logs.event(log, "pop3_unlock_failed", logging.WARNING, session=self.id, error=str(e))
        self.released.set()
