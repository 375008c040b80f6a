"""The PostgreSQL backend: several postroom nodes on one database.

What differs from SQLite, and why:

* **Connections, and a writer task for deliveries.** Writes run on a pool of connections,
  each in its own transaction (``engine.py``); deliveries are group-committed by one task
  per process that writes every delivery queued meanwhile in one transaction
  (``batch.py``): deliveries to one user hold its rows until COMMIT, so PostgreSQL's own
  sharing of WAL flushes could not batch them.
* **Address lookups are cached** and dropped on any account change on any node
  (``lookups.py``: triggers NOTIFY at the commit).
* **Changes travel between nodes** by LISTEN/NOTIFY (``notify.py``): a commit here wakes
  this node's IMAP sessions at once and the other nodes' after one notification.
* **\\Recent is claimed on the mailbox row** (one ``UPDATE ... RETURNING`` committed
  without waiting for the WAL flush), so two nodes never both call a message recent.
* **POP3 maildrop locks are advisory locks** (``locks.py``) that die with the node.
* **Message bytes** live in ``blobs.data`` (bytea, stored uncompressed out of line), or
  with ``blob_store = "s3"`` in an object store (``postroom.store.s3``): the object is
  written before the row that references it and deleted after the row is gone.

Where things are: this class holds accounts, mailboxes, the queue and the rest; the IMAP
message paths (delivery, APPEND, FETCH/SEARCH/SELECT reads, EXPUNGE, COPY/MOVE, change
tracking) are its mixin in ``messages.py``, STORE in ``flags.py``, the SQL in ``mail.py``.

Caches keep the same exact keys as on SQLite: the mailbox snapshot cache is keyed by
(id, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) read from the database, which every node bumps
in the transaction of every change, so a snapshot cached on node A is never served after
node B changed the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from postroom.message import search_texts_of
from postroom.store import api
from postroom.store.api import (
    MAILBOXES,
    METADATA,
    SUBSCRIPTIONS,
    AddressLookup,
    Alias,
    ApiToken,
    AppPassword,
    Delivery,
    DeliveryLogEntry,
    Domain,
    ImportedMessage,
    Mailbox,
    MailboxStatus,
    Quota,
    QueuedMessage,
    QueueStats,
    RecipientOutcome,
    SendAsGrant,
    SharedMailbox,
    StoreUnavailable,
    User,
    WebSession,
)
from postroom.store.changes import LocalChangeHub
from postroom.store.postgres import accounts, authdata, imports, mail, queue, sharing, tlsdata, web
from postroom.store.postgres.batch import DeliveryBatcher
from postroom.store.postgres.engine import Engine, Fn, T
from postroom.store.postgres.locks import MaildropLocks
from postroom.store.postgres.lookups import LookupCache
from postroom.store.postgres.messages import MessagePaths
from postroom.store.postgres.notify import NotifyPeers, Relay
from postroom.store.postgres.schema import migrate
from postroom.store.s3 import S3Blobs
from postroom.store.sqlite.snapshots import SnapshotCache
from postroom.waits import wait_event

log = logging.getLogger(__name__)

# How often the blob collector looks for garbage and orphans (blob store only), and how
# old an unreferenced object must be before it counts as an orphan: longer than any
# write transaction can take between the PUT and the COMMIT.
COLLECT_INTERVAL = 60.0
SWEEP_INTERVAL = 6 * 3600.0
ORPHAN_GRACE = 3600.0
SWEEP_LOCK = 0x706F7374626C6F62  # advisory lock: one node sweeps at a time


class PostgresStore(MessagePaths):
    """Implements :class:`postroom.store.api.Store` on a PostgreSQL database (the message
    paths in ``messages.py``)."""

    def __init__(
        self,
        engine: Engine,
        connect: Any,
        *,
        blobs: S3Blobs | None = None,
        blob_min_size: int = 0,
    ) -> None:
        self.engine = engine
        self.changes = LocalChangeHub()
        self.relay = Relay(connect, self.changes)
        self.peers = NotifyPeers(self.relay)  # services.peers of this node's processes
        self.maildrops = MaildropLocks(connect)
        self.blobs = blobs
        self.blob_min_size = blob_min_size
        self.snapshots = SnapshotCache()
        self.batcher = DeliveryBatcher(engine)
        self.lookups = LookupCache(self.relay)
        self._collector: asyncio.Task[None] | None = None
        self._collect = asyncio.Event()

    async def start(self) -> None:
        await self.relay.start()
        if self.blobs is not None:
            self._collector = asyncio.create_task(self._collect_loop(), name="blob-collector")

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(BaseException):
                await self._collector
        await self.batcher.close()
        await self.relay.close()
        await self.maildrops.close()
        await self.engine.close()
        if self.blobs is not None:
            self.blobs.close()

    # -- changes and garbage -------------------------------------------------------------
    async def _publish_mailbox(self, mailbox_id: int) -> None:
        mb = await self.get_mailbox_by_id(mailbox_id)
        if mb is not None:
            self._publish(mb.id, mb.user_id, mb.highestmodseq)

    async def collect_garbage(self) -> int:
        """Delete the objects of blobs that are gone (``blob_garbage``), then their rows."""
        if self.blobs is None:
            return 0
        total = 0
        while True:
            rows = await self.engine.read(
                lambda c: c.fetch("SELECT location FROM blob_garbage ORDER BY since LIMIT 500")
            )
            names = [r[0] for r in rows]
            if not names:
                return total
            await self.blobs.delete(names)
            await self.engine.write(_forget_garbage(names))
            total += len(names)

    async def sweep_orphans(self, grace: float = ORPHAN_GRACE) -> int:
        """Delete objects older than ``grace`` seconds that no row references (a write
        interrupted between its PUT and its COMMIT). One node at a time."""
        if self.blobs is None:
            return 0
        async with self.engine.connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK):
                return 0
            try:
                names = await self.blobs.listing(time.time() - grace)
                orphans: list[str] = []
                for i in range(0, len(names), 1000):
                    part = names[i:i + 1000]
                    known = {r[0] for r in await conn.fetch(
                        "SELECT location FROM blobs WHERE location = ANY($1::text[]) UNION "
                        "SELECT location FROM blob_garbage WHERE location = ANY($1::text[])", part)}
                    orphans.extend(n for n in part if n not in known)
                if orphans:
                    await self.blobs.delete(orphans)
                    log.info("blob store: %d orphaned objects deleted", len(orphans))
                return len(orphans)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)

    async def _collect_loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await wait_event(self._collect, COLLECT_INTERVAL)
            self._collect.clear()
            try:
                await self.collect_garbage()
                if time.monotonic() - last_sweep > SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    await self.sweep_orphans()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("blob collection failed")

    # -- accounts ------------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        return await self._accounts_write(lambda c: accounts.add_domain(c, name))

    async def remove_domain(self, name: str) -> None:
        await self._accounts_write(lambda c: accounts.remove_domain(c, name))

    async def list_domains(self) -> list[Domain]:
        return await self.engine.read(accounts.list_domains)

    async def get_domain(self, name: str) -> Domain | None:
        return await self.engine.read(lambda c: accounts.get_domain(c, name))

    async def add_user(self, address: str, password_hash: str, scram: str | None) -> User:
        return await self._accounts_write(lambda c: accounts.add_user(c, address, password_hash, scram))

    async def remove_user(self, address: str) -> None:
        self._garbage(await self._accounts_write(lambda c: accounts.remove_user(c, address)))

    async def set_password(self, address: str, password_hash: str, scram: str | None) -> None:
        await self._accounts_write(lambda c: accounts.set_password(c, address, password_hash, scram))

    async def set_user_admin(self, address: str, admin: bool) -> None:
        await self._accounts_write(lambda c: accounts.set_user_admin(c, address, admin))

    async def get_user(self, address: str) -> User | None:
        return await self.engine.read(lambda c: accounts.get_user(c, address))

    async def get_user_by_id(self, user_id: int) -> User | None:
        return await self.engine.read(lambda c: accounts.get_user_by_id(c, user_id))

    async def list_users(self, domain: str | None = None) -> list[User]:
        return await self.engine.read(lambda c: accounts.list_users(c, domain))

    async def add_alias(self, source: str, targets: Sequence[str]) -> list[Alias]:
        wanted = list(targets)
        return await self._accounts_write(lambda c: accounts.add_alias(c, source, wanted))

    async def remove_alias(self, source: str, target: str | None = None) -> int:
        return await self._accounts_write(lambda c: accounts.remove_alias(c, source, target))

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return await self.engine.read(lambda c: accounts.list_aliases(c, domain))

    async def alias_targets(self, source: str) -> list[str]:
        return await self.engine.read(lambda c: accounts.alias_targets(c, source))

    async def lookup_address(self, address: str) -> AddressLookup:
        """Cached per node, dropped on any account change anywhere (``lookups.py``)."""
        found = self.lookups.get(address)
        if found is not None:
            return found
        generation = self.lookups.generation
        found = await self.engine.read(lambda c: accounts.lookup_address(c, address))
        self.lookups.put(address, generation, found)
        return found

    async def _accounts_write(self, fn: Fn[T]) -> T:
        """An account write: this process's lookup cache is dropped at once (the other
        processes' when the database's trigger notification reaches them)."""
        try:
            return await self.engine.write(fn)
        finally:
            self.lookups.clear()

    async def add_sendas(self, user: str, address: str) -> SendAsGrant:
        return await self.engine.write(lambda c: accounts.add_sendas(c, user, address))

    async def remove_sendas(self, user: str, address: str) -> None:
        await self.engine.write(lambda c: accounts.remove_sendas(c, user, address))

    async def list_sendas(self, user: str | None = None) -> list[SendAsGrant]:
        return await self.engine.read(lambda c: accounts.list_sendas(c, user))

    # -- mailboxes -----------------------------------------------------------------------
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        return await self.engine.read(lambda c: accounts.list_mailboxes(c, user_id))

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        return await self.engine.read(lambda c: accounts.get_mailbox(c, user_id, name))

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self.engine.read(lambda c: accounts.get_mailbox_by_id(c, mailbox_id))

    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None, *,
        max_mailboxes: int | None = None,
    ) -> Mailbox:
        created = await self.engine.write(
            lambda c: accounts.create_mailbox(c, user_id, name, special_use, max_mailboxes)
        )
        self._publish(created.id, user_id, 0, MAILBOXES)
        return created

    async def delete_mailbox(self, user_id: int, name: str) -> None:
        mailbox_id, garbage = await self.engine.write(
            lambda c: accounts.delete_mailbox(c, user_id, name)
        )
        self._garbage(garbage)
        # Sessions that have it selected learn it is gone (their re-read finds nothing).
        self._publish(mailbox_id, user_id, 0)
        self._publish(mailbox_id, user_id, 0, MAILBOXES)

    async def rename_mailbox(
        self, user_id: int, old: str, new: str, *, max_mailboxes: int | None = None
    ) -> None:
        touched = await self.engine.write(
            lambda c: accounts.rename_mailbox(c, user_id, old, new, max_mailboxes)
        )
        for mailbox_id in touched:
            await self._publish_mailbox(mailbox_id)
        self._publish(0, user_id, 0, MAILBOXES)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        return await self.engine.read(lambda c: accounts.list_subscriptions(c, user_id))

    async def set_subscribed(
        self, user_id: int, name: str, subscribed: bool, *, max_subscriptions: int | None = None
    ) -> None:
        await self.engine.write(
            lambda c: accounts.set_subscribed(c, user_id, name, subscribed, max_subscriptions)
        )
        self._publish(0, user_id, 0, SUBSCRIPTIONS)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        return await self.engine.read(lambda c: accounts.mailbox_status(c, mailbox_id))

    # -- quota ---------------------------------------------------------------------------
    async def get_quota(self, user_id: int) -> Quota:
        return await self.engine.read(lambda c: mail.get_quota(c, user_id))

    async def set_quota(self, address: str, storage: int | None, messages: int | None) -> Quota:
        return await self.engine.write(lambda c: mail.set_quota(c, address, storage, messages))

    async def list_quotas(self) -> dict[int, Quota]:
        return await self.engine.read(mail.list_quotas)

    # -- ACL -----------------------------------------------------------------------------
    async def get_acl(self, mailbox_id: int) -> list[tuple[str, str]]:
        return await self.engine.read(lambda c: sharing.get_acl(c, mailbox_id))

    async def set_acl(self, mailbox_id: int, identifier: str, rights: str) -> None:
        owner = await self.engine.write(lambda c: sharing.set_acl(c, mailbox_id, identifier, rights))
        self._publish(mailbox_id, owner, 0, MAILBOXES)

    async def shared_mailboxes(self, user_id: int, identifiers: Sequence[str]) -> list[SharedMailbox]:
        wanted = list(identifiers)
        return await self.engine.read(lambda c: sharing.shared_mailboxes(c, user_id, wanted))

    async def acl_rights(self, mailbox_id: int, identifiers: Sequence[str]) -> str:
        wanted = list(identifiers)
        return await self.engine.read(lambda c: sharing.acl_rights(c, mailbox_id, wanted))

    # -- METADATA ------------------------------------------------------------------------
    async def get_metadata(self, user_id: int, mailbox_id: int) -> dict[str, bytes]:
        return await self.engine.read(lambda c: sharing.get_metadata(c, user_id, mailbox_id))

    async def set_metadata(
        self,
        user_id: int,
        mailbox_id: int,
        entries: Sequence[tuple[str, bytes | None]],
        max_entries: int,
        per_user: tuple[int, int] | None = None,
    ) -> None:
        items = list(entries)
        owner = await self.engine.write(
            lambda c: sharing.set_metadata(c, user_id, mailbox_id, items, max_entries, per_user)
        )
        self._publish(mailbox_id, owner, 0, METADATA)

    # -- URLAUTH -------------------------------------------------------------------------
    async def urlauth_key(self, mailbox_id: int, *, create: bool = True) -> bytes | None:
        found = await self.engine.read(lambda c: sharing.find_urlauth_key(c, mailbox_id))
        if found is not None or not create:
            return found
        return await self.engine.write(lambda c: sharing.urlauth_key(c, mailbox_id))

    async def reset_urlauth_keys(self, user_id: int, mailbox_id: int | None = None) -> None:
        await self.engine.write(lambda c: sharing.reset_urlauth_keys(c, user_id, mailbox_id))

    # -- migration -------------------------------------------------------------------------
    async def import_messages(
        self, mailbox_id: int, origin: str, messages: Sequence[ImportedMessage]
    ) -> list[int]:
        if not messages:
            return []
        batch = list(messages)
        texts = [search_texts_of(m.message.summary, m.message.data) for m in batch]
        blobs = [await self._blob_in(m.message.data, m.message.summary) for m in batch]
        uids, user_id, modseq = await self._write_with_blobs(
            blobs, lambda c: imports.import_messages(c, mailbox_id, origin, batch, blobs, texts)
        )
        unused = [b.location for b, uid in zip(blobs, uids, strict=True) if not uid and b.location]
        if unused and self.blobs is not None:  # imported before: the copies are not needed
            with contextlib.suppress(Exception):
                await self.blobs.delete(unused)
        if any(uids):
            self._publish(mailbox_id, user_id, modseq)
        return uids

    async def imported_keys(self, user_id: int, origin: str) -> set[str]:
        return await self.engine.read(lambda c: imports.imported_keys(c, user_id, origin))

    # -- queue ---------------------------------------------------------------------------
    async def queue_due(
        self, now: int, limit: int, lease_seconds: int, owner: str
    ) -> list[QueuedMessage]:
        return await self.engine.write(
            lambda c: queue.lease_due(c, now, limit, lease_seconds, owner)
        )

    async def queue_release_leases(self, owner: str) -> int:
        return await self.engine.write(lambda c: queue.release_leases(c, owner), transaction=False)

    async def queue_renew_leases(self, owner: str, qids: Sequence[str], until: int) -> int:
        wanted = list(qids)
        return await self.engine.write(
            lambda c: queue.renew_leases(c, owner, wanted, until), transaction=False
        )

    async def queue_get(self, qid: str) -> QueuedMessage | None:
        return await self.engine.read(lambda c: queue.get(c, qid), snapshot=True)

    async def queue_list(self) -> list[QueuedMessage]:
        return await self.engine.read(queue.list_all, snapshot=True)

    async def queue_record(
        self,
        qid: str,
        outcomes: Sequence[RecipientOutcome],
        next_attempt: int | None,
        last_error: str | None,
        delay_warned: bool | None = None,
        *,
        final: bool = True,
    ) -> bool:
        wanted = list(outcomes)
        done, garbage = await self.engine.write(
            lambda c: queue.record(c, qid, wanted, next_attempt, last_error, delay_warned, final),
            transaction=False,
        )
        self._garbage(garbage)
        return done

    async def queue_delete(self, qid: str) -> bool:
        done, garbage = await self.engine.write(lambda c: queue.delete(c, qid))
        self._garbage(garbage)
        return done

    async def queue_hold(self, qid: str, held: bool) -> bool:
        done = await self.engine.write(lambda c: queue.hold(c, qid, held))
        self._publish_queue(everywhere=True)
        return done

    async def queue_flush(self, qid: str | None = None, domain: str | None = None) -> int:
        n = await self.engine.write(lambda c: queue.flush(c, qid, domain))
        self._publish_queue(everywhere=True)
        return n

    async def queue_next_due(self) -> int | None:
        return await self.engine.read(queue.next_due)

    # -- mail authentication ------------------------------------------------------------
    async def dkim_key_add(self, key: api.DkimKey) -> None:
        await self.engine.write(lambda c: authdata.dkim_key_add(c, key))

    async def dkim_keys(self, domain: str | None = None) -> list[api.DkimKey]:
        return await self.engine.read(lambda c: authdata.dkim_keys(c, domain))

    async def dkim_key_update(
        self, domain: str, selector: str, *, active_from: int | None = None, retire_at: int | None = None
    ) -> None:
        await self.engine.write(
            lambda c: authdata.dkim_key_update(c, domain, selector, active_from, retire_at)
        )

    async def dkim_key_remove(self, domain: str, selector: str) -> None:
        await self.engine.write(lambda c: authdata.dkim_key_remove(c, domain, selector))

    async def dmarc_add(self, rows: Sequence[api.DmarcRow]) -> None:
        items = list(rows)
        if items:
            await self.engine.write(lambda c: authdata.dmarc_add(c, items))

    async def dmarc_pending(self, before: int) -> list[api.DmarcRow]:
        return await self.engine.read(lambda c: authdata.dmarc_pending(c, before))

    async def dmarc_delete(
        self, policy_domain: str, period: int, *, report: Delivery | None = None
    ) -> int:
        return await self._delete_and_report(
            lambda c: authdata.dmarc_delete(c, policy_domain, period), report
        )

    async def tlsrpt_add(self, rows: Sequence[api.TlsResultRow]) -> None:
        items = list(rows)
        if items:
            await self.engine.write(lambda c: tlsdata.tlsrpt_add(c, items))

    async def tlsrpt_pending(self, before: int) -> list[api.TlsResultRow]:
        return await self.engine.read(lambda c: tlsdata.tlsrpt_pending(c, before))

    async def tlsrpt_delete(
        self, policy_domain: str, period: int, *, report: Delivery | None = None
    ) -> int:
        return await self._delete_and_report(
            lambda c: tlsdata.tlsrpt_delete(c, policy_domain, period), report
        )

    async def tls_report_add(self, report: api.TlsReport) -> int | None:
        return await self.engine.write(lambda c: tlsdata.tls_report_add(c, report))

    async def tls_reports(self, *, limit: int = 100, domain: str | None = None) -> list[api.TlsReport]:
        return await self.engine.read(lambda c: tlsdata.tls_reports(c, limit, domain))

    async def sts_policy(self, domain: str) -> api.StsPolicyRow | None:
        return await self.engine.read(lambda c: tlsdata.sts_policy(c, domain))

    async def sts_policy_put(self, row: api.StsPolicyRow) -> None:
        await self.engine.write(lambda c: tlsdata.sts_policy_put(c, row))

    async def sts_policies_prune(self, now: int) -> int:
        return await self.engine.write(lambda c: tlsdata.sts_policies_prune(c, now))

    async def _delete_and_report(self, delete: Any, report: Delivery | None) -> int:
        """Delete a day's report rows and queue the report in the same transaction: two
        nodes racing send it once (the loser deletes nothing and queues nothing)."""
        blob = await self._blob_in(report.data, report.summary) if report is not None else None

        async def job(c: asyncpg.Connection) -> tuple[int, list[tuple[int, int, int]], str | None]:
            deleted = await delete(c)
            if report is None or blob is None or not deleted:
                return deleted, [], None
            blob_id, placed, _ = await mail.deliver(c, report, blob)
            qid = await queue.add(c, blob_id, report.queue) if report.queue is not None else None
            return deleted, placed, qid

        deleted, placed, qid = await self._write_with_blobs([blob] if blob else [], job)
        if blob is not None and blob.location and not (placed or qid) and self.blobs is not None:
            with contextlib.suppress(Exception):
                await self.blobs.delete([blob.location])
        for mailbox_id, user_id, _uid in placed:
            self._publish(mailbox_id, user_id, 0)
        if qid is not None:
            self._publish_queue(everywhere=False)
        return deleted

    # -- POP3 --------------------------------------------------------------------------
    async def try_lock_maildrop(self, user_id: int) -> bool:
        return await self.maildrops.try_lock(user_id)

    async def unlock_maildrop(self, user_id: int) -> None:
        await self.maildrops.unlock(user_id)

    # -- the HTTP service (postgres/web.py) ----------------------------------------------
    async def queue_stats(self) -> QueueStats:
        return await self.engine.read(web.queue_stats)

    async def add_api_token(self, name: str, digest: str) -> ApiToken:
        return await self.engine.write(lambda c: web.add_api_token(c, name, digest))

    async def list_api_tokens(self) -> list[ApiToken]:
        return await self.engine.read(web.list_api_tokens)

    async def remove_api_token(self, name: str) -> bool:
        return await self.engine.write(lambda c: web.remove_api_token(c, name))

    async def find_api_token(self, digest: str) -> ApiToken | None:
        return await self.engine.read(lambda c: web.find_api_token(c, digest))

    async def add_app_password(self, user_id: int, name: str, digest: str) -> AppPassword:
        return await self.engine.write(lambda c: web.add_app_password(c, user_id, name, digest))

    async def list_app_passwords(self, user_id: int) -> list[AppPassword]:
        return await self.engine.read(lambda c: web.list_app_passwords(c, user_id))

    async def remove_app_password(self, user_id: int, password_id: int) -> bool:
        return await self.engine.write(lambda c: web.remove_app_password(c, user_id, password_id))

    async def find_app_password(self, user_id: int, digest: str) -> AppPassword | None:
        return await self.engine.read(lambda c: web.find_app_password(c, user_id, digest))

    async def add_web_session(self, digest: str, user_id: int, expires: int) -> None:
        await self.engine.write(lambda c: web.add_web_session(c, digest, user_id, expires))

    async def get_web_session(self, digest: str) -> WebSession | None:
        return await self.engine.read(lambda c: web.get_web_session(c, digest))

    async def remove_web_sessions(
        self, *, digest: str | None = None, user_id: int | None = None
    ) -> int:
        return await self.engine.write(lambda c: web.remove_web_sessions(c, digest, user_id))

    async def append_delivery_log(self, entries: Sequence[DeliveryLogEntry], keep: int) -> None:
        # Lost on a database crash at worst, like the SQLite log's buffer: no WAL wait.
        await self.engine.write(lambda c: web.append_delivery_log(c, entries, keep), lazy=True)

    async def list_delivery_log(self, limit: int, before_id: int | None = None) -> list[DeliveryLogEntry]:
        return await self.engine.read(lambda c: web.list_delivery_log(c, limit, before_id))


def _forget_garbage(names: list[str]) -> Any:
    async def job(c: asyncpg.Connection) -> None:
        await c.execute("DELETE FROM blob_garbage WHERE location = ANY($1::text[])", names)

    return job


async def open_store(
    url: str,
    *,
    password: str | None = None,
    pool_size: int = 10,
    auto_migrate: bool = True,
    blobs: S3Blobs | None = None,
    blob_min_size: int = 0,
) -> PostgresStore:
    """Connect, check (and with ``auto_migrate`` apply) the schema, start listening.

    StoreUnavailable when the database cannot be reached; SchemaTooNew / SchemaTooOld
    when the schema does not match this postroom."""
    import asyncpg as driver

    engine = await Engine.connect(url, password=password, size=pool_size)
    try:
        async with engine.connection() as conn:
            await migrate(conn, apply=auto_migrate)
        if blobs is not None:
            await blobs.ensure_bucket()

        async def connect() -> asyncpg.Connection:
            return await driver.connect(
                url, password=password, timeout=10,
                server_settings={"application_name": "postroom", "synchronous_commit": "off"},
            )

        store = PostgresStore(engine, connect, blobs=blobs, blob_min_size=blob_min_size)
        await store.start()
        return store
    except BaseException:
        await engine.close()
        raise


_: type[api.Store] = PostgresStore  # static check that the class satisfies the contract
