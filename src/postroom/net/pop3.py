"""The POP3 shell: drives ``proto.pop3`` over a connection, against the store.

The maildrop is the user's INBOX, snapshotted at login and locked against a second POP3
session (``-ERR [IN-USE]``). Sizes are the stored sizes: delivery and APPEND store
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
import logging
import time
import uuid
from functools import partial

from postroom import logs
from postroom.config import Listener
from postroom.net.auth import MECHANISMS, AuthTracker
from postroom.net.connection import Connection, Interrupted
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
from postroom.store.api import FLAG_SEEN, FlagChange, MessageMeta, NotFound, Store, User

log = logging.getLogger("postroom.pop3")

# One store read fetches a batch of consecutive messages, bounded in count and bytes; with
# the next batch read in the background, a session holds at most twice READ_AHEAD_BYTES.
READ_AHEAD_MESSAGES = 64
READ_AHEAD_BYTES = 2 * 1024 * 1024


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


class Pop3Handler:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(b"-ERR [SYS/TEMP] " + reason.encode() + b"\r\n")

    async def serve(self, conn: Connection, listener: Listener) -> None:
        await Pop3Session(self.services, conn, listener).run()


class Pop3Session:
    def __init__(self, services: Services, conn: Connection, listener: Listener) -> None:
        self.services = services
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

    async def run(self) -> None:
        timeout = self.services.settings.limits.pop3_idle_timeout
        started = time.monotonic()
        try:
            while True:
                event = self.core.next_event()
                if isinstance(event, NeedData):
                    await self._flush()
                    try:
                        data = await self.conn.read(timeout)
                    except TimeoutError:
                        await self.conn.send(b"-ERR autologout: idle for too long\r\n")
                        return
                    except Interrupted:
                        # Server shutdown while idle: no UPDATE state, so nothing marked
                        # with DELE is removed (RFC 1939 section 6); say why, then close.
                        await self.conn.send(b"-ERR [SYS/TEMP] server shutting down\r\n")
                        return
                    self.core.receive_data(data)
                elif isinstance(event, Retrieve):
                    message = await self._message(event.index, seen=event.top_lines is None)
                    if message is None:
                        self.core.retrieve_failed()
                    else:
                        # Stored messages are CRLF with a final CRLF (deliver.normalize):
                        # the sizes given at login already rely on it.
                        self.conn.write(self.core.retrieved(message, crlf=True))
                        await self.conn.drain()
                elif isinstance(event, PassRequest):
                    user = await self.auth.verify_password(event.username, event.password)
                    await self._login(user, event.mechanism)
                elif isinstance(event, CredentialsRequest):
                    user = await self.services.directory.user_for_scram(event.username)
                    self._scram_user = user
                    creds = ScramCredentials.from_string(user.scram) if user and user.scram else None
                    self.core.credentials(creds)
                elif isinstance(event, Authenticated):
                    await self._login(self._scram_user, event.mechanism)
                elif isinstance(event, StartTls):
                    await self._flush()
                    if self.services.tls.context is None:
                        return
                    await self.conn.start_tls(self.services.tls.context)
                    self.core.tls_started()
                elif isinstance(event, Commit):
                    self.core.update_done(await self._commit(event.deleted))
                elif isinstance(event, Closed):
                    await self._flush()
                    return
        finally:
            await self._finish(time.monotonic() - started)

    async def _flush(self) -> None:
        failures = self.core.login_failures
        if failures > self._failures_seen:
            # Every failed login waits before its answer (same policy as SMTP AUTH).
            self._failures_seen = failures
            await self.auth.failed(None, "pop3")
        out = self.core.data_to_send()
        if out:
            await self.conn.send(out)

    async def _login(self, user: User | None, mechanism: str) -> None:
        if user is None:
            self.core.login_failed(LoginError.AUTH)
            return
        store = self.services.store
        if not await store.try_lock_maildrop(user.id):
            self.core.login_failed(LoginError.IN_USE)
            return
        inbox = await store.get_mailbox(user.id, "INBOX")
        if inbox is None:
            await store.unlock_maildrop(user.id)
            self.core.login_failed(LoginError.SYS_PERM, "no INBOX")
            return
        messages = await store.list_messages(inbox.id)
        self.drop = _Maildrop(user, inbox.id, messages, store)
        await self.auth.succeeded(user, mechanism)
        self.core.login_ok([(m.size, f"{m.id:x}") for m in messages])

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
            return
        drop.reader.close()
        try:
            await self._mark_seen(set())
        except NotFound:
            pass
        finally:
            await self.services.store.unlock_maildrop(drop.user.id)
            logs.event(
                log, "pop3_session", session=self.id, client=self.conn.peer_ip,
                user=drop.user.address, messages=len(drop.messages), duration=round(duration, 3),
            )
