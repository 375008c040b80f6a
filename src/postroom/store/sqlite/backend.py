"""The embedded backend: SQLite in WAL mode in the data folder, message bytes inside it.

Why message bytes live in SQLite rather than in one file per message: a delivery then is
one transaction, made durable by one fsync of the WAL that it shares with every other
delivery in the same group commit. A file per message needs its own fsync plus a directory
fsync (measured in bench/store_deliver.py: see docs/architecture.md), and a crash between
the file and the row needs a recovery pass. Reading a 5 KB blob from SQLite is as fast as
reading a small file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from postroom.store import api
from postroom.store.api import (
    AddressLookup,
    Alias,
    Changes,
    Delivery,
    DeliveryResult,
    Domain,
    FlagChange,
    Mailbox,
    MailboxChange,
    MailboxStatus,
    MessageMeta,
    NotFound,
    QueuedMessage,
    RecipientOutcome,
    StoreResult,
    User,
)
from postroom.store.changes import LocalChangeHub
from postroom.store.sqlite import accounts, mail, queue
from postroom.store.sqlite.engine import Engine, fsync_dir
from postroom.store.sqlite.schema import migrate

DB_NAME = "postroom.sqlite3"


class SQLiteStore:
    """Implements :class:`postroom.store.api.Store` on one SQLite file."""

    def __init__(self, path: Path, *, fsync: bool = True, readers: int = 4) -> None:
        created = not path.exists()
        self.engine = Engine(path, fsync=fsync, readers=readers)
        self.engine.run_sync(migrate)
        if created and fsync:
            fsync_dir(path.parent)  # the new database and WAL files' directory entries
        self.changes = LocalChangeHub()
        self._maildrop_locks: set[int] = set()

    @classmethod
    def open(cls, data_dir: Path, *, fsync: bool = True) -> SQLiteStore:
        return cls(data_dir / DB_NAME, fsync=fsync)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)

    def close_sync(self) -> None:
        self.engine.close()

    def _publish(self, mailbox_id: int, user_id: int, modseq: int) -> None:
        self.changes.publish(MailboxChange(mailbox_id=mailbox_id, user_id=user_id, modseq=modseq))

    async def _publish_mailbox(self, mailbox_id: int) -> None:
        if not self.changes.listener_count(mailbox_id):
            return  # nobody has it selected: skip the read
        mb = await self.get_mailbox_by_id(mailbox_id)
        if mb is not None:
            self._publish(mb.id, mb.user_id, mb.highestmodseq)

    # -- accounts ------------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        return await self.engine.write(lambda c: accounts.add_domain(c, name))

    async def remove_domain(self, name: str) -> None:
        await self.engine.write(lambda c: accounts.remove_domain(c, name))

    async def list_domains(self) -> list[Domain]:
        return await self.engine.read(accounts.list_domains)

    async def get_domain(self, name: str) -> Domain | None:
        return await self.engine.read(lambda c: accounts.get_domain(c, name))

    async def add_user(self, address: str, password_hash: str, scram: str | None) -> User:
        return await self.engine.write(lambda c: accounts.add_user(c, address, password_hash, scram))

    async def remove_user(self, address: str) -> None:
        await self.engine.write(lambda c: accounts.remove_user(c, address))

    async def set_password(self, address: str, password_hash: str, scram: str | None) -> None:
        await self.engine.write(lambda c: accounts.set_password(c, address, password_hash, scram))

    async def get_user(self, address: str) -> User | None:
        return await self.engine.read(lambda c: accounts.get_user(c, address))

    async def get_user_by_id(self, user_id: int) -> User | None:
        return await self.engine.read(lambda c: accounts.get_user_by_id(c, user_id))

    async def list_users(self, domain: str | None = None) -> list[User]:
        return await self.engine.read(lambda c: accounts.list_users(c, domain))

    async def add_alias(self, source: str, targets: Sequence[str]) -> list[Alias]:
        return await self.engine.write(lambda c: accounts.add_alias(c, source, targets))

    async def remove_alias(self, source: str, target: str | None = None) -> int:
        return await self.engine.write(lambda c: accounts.remove_alias(c, source, target))

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return await self.engine.read(lambda c: accounts.list_aliases(c, domain))

    async def alias_targets(self, source: str) -> list[str]:
        return await self.engine.read(lambda c: accounts.alias_targets(c, source))

    async def lookup_address(self, address: str) -> AddressLookup:
        return await self.engine.read(lambda c: accounts.lookup_address(c, address))

    # -- mailboxes -----------------------------------------------------------------------
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        return await self.engine.read(lambda c: accounts.list_mailboxes(c, user_id))

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        return await self.engine.read(lambda c: accounts.get_mailbox(c, user_id, name))

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self.engine.read(lambda c: accounts.get_mailbox_by_id(c, mailbox_id))

    async def create_mailbox(self, user_id: int, name: str, special_use: str | None = None) -> Mailbox:
        return await self.engine.write(
            lambda c: accounts.create_mailbox(c, user_id, name, special_use)
        )

    async def delete_mailbox(self, user_id: int, name: str) -> None:
        mailbox_id = await self.engine.write(lambda c: accounts.delete_mailbox(c, user_id, name))
        # Sessions that have it selected learn it is gone (their re-read finds nothing).
        self._publish(mailbox_id, user_id, 0)

    async def rename_mailbox(self, user_id: int, old: str, new: str) -> None:
        touched = await self.engine.write(lambda c: accounts.rename_mailbox(c, user_id, old, new))
        for mailbox_id in touched:
            await self._publish_mailbox(mailbox_id)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        return await self.engine.read(lambda c: accounts.list_subscriptions(c, user_id))

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None:
        await self.engine.write(lambda c: accounts.set_subscribed(c, user_id, name, subscribed))

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        return await self.engine.read(lambda c: accounts.mailbox_status(c, mailbox_id))

    # -- messages ------------------------------------------------------------------------
    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        def job(c: object) -> tuple[int, list[tuple[int, int, int]], str | None]:
            blob_id, placed = mail.deliver(c, delivery)  # type: ignore[arg-type]
            qid = None
            if delivery.queue is not None:
                qid = queue.add(c, blob_id, delivery.queue)  # type: ignore[arg-type]
            return blob_id, placed, qid

        blob_id, placed, qid = await self.engine.write(job)
        for mailbox_id, user_id, _uid in placed:
            self._publish(mailbox_id, user_id, 0)
        if qid is not None:
            self.changes.publish_queue()
        return DeliveryResult(
            blob_id=blob_id, placed=[(m, u) for m, _, u in placed], queued=qid
        )

    async def append(
        self,
        mailbox_id: int,
        data: bytes,
        summary: bytes,
        flags: int = 0,
        keywords: Iterable[str] = (),
        internaldate: int | None = None,
    ) -> tuple[int, int]:
        kw = tuple(keywords)
        result = await self.engine.write(
            lambda c: mail.append(c, mailbox_id, data, summary, flags, kw, internaldate)
        )
        await self._publish_mailbox(mailbox_id)
        return result

    async def list_messages(self, mailbox_id: int) -> list[MessageMeta]:
        return await self.engine.read(lambda c: mail.list_messages(c, mailbox_id))

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        return await self.engine.read(lambda c: mail.get_messages(c, mailbox_id, uids))

    async def read_blob(self, blob_id: int) -> bytes:
        found = await self.read_blobs([blob_id])
        if blob_id not in found:
            raise NotFound("message is gone")
        return found[blob_id]

    async def read_blobs(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        return await self.engine.read(lambda c: mail.read_column(c, "data", blob_ids))

    async def read_summaries(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        return await self.engine.read(lambda c: mail.read_column(c, "summary", blob_ids))

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        change: FlagChange,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        result = await self.engine.write(
            lambda c: mail.store_flags(c, mailbox_id, uids, change, unchangedsince)
        )
        if result.changed:
            await self._publish_mailbox(mailbox_id)
        return result

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        gone = await self.engine.write(lambda c: mail.expunge(c, mailbox_id, uids))
        if gone:
            await self._publish_mailbox(mailbox_id)
        return gone

    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        pairs = await self.engine.write(
            lambda c: mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, move=False)
        )
        if pairs:
            await self._publish_mailbox(dst_mailbox_id)
        return pairs

    async def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        pairs = await self.engine.write(
            lambda c: mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, move=True)
        )
        if pairs:
            await self._publish_mailbox(dst_mailbox_id)
            await self._publish_mailbox(src_mailbox_id)
        return pairs

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        return await self.engine.read(lambda c: mail.changes_since(c, mailbox_id, modseq))

    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]:
        return await self.engine.read(lambda c: mail.vanished_since(c, mailbox_id, modseq))

    async def claim_recent(self, mailbox_id: int) -> int:
        return await self.engine.write(lambda c: mail.claim_recent(c, mailbox_id))

    # -- queue ---------------------------------------------------------------------------
    async def queue_due(
        self, now: int, limit: int, lease_seconds: int, owner: str
    ) -> list[QueuedMessage]:
        return await self.engine.write(
            lambda c: queue.lease_due(c, now, limit, lease_seconds, owner)
        )

    async def queue_release_leases(self, owner: str) -> int:
        return await self.engine.write(lambda c: queue.release_leases(c, owner))

    async def queue_get(self, qid: str) -> QueuedMessage | None:
        return await self.engine.read(lambda c: queue.get(c, qid))

    async def queue_list(self) -> list[QueuedMessage]:
        return await self.engine.read(queue.list_all)

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
        return await self.engine.write(
            lambda c: queue.record(c, qid, outcomes, next_attempt, last_error, delay_warned, final)
        )

    async def queue_delete(self, qid: str) -> bool:
        return await self.engine.write(lambda c: queue.delete(c, qid))

    async def queue_hold(self, qid: str, held: bool) -> bool:
        done = await self.engine.write(lambda c: queue.hold(c, qid, held))
        self.changes.publish_queue()
        return done

    async def queue_flush(self, qid: str | None = None, domain: str | None = None) -> int:
        n = await self.engine.write(lambda c: queue.flush(c, qid, domain))
        self.changes.publish_queue()
        return n

    async def queue_next_due(self) -> int | None:
        return await self.engine.read(queue.next_due)

    # -- POP3 --------------------------------------------------------------------------
    def try_lock_maildrop(self, user_id: int) -> bool:
        if user_id in self._maildrop_locks:
            return False
        self._maildrop_locks.add(user_id)
        return True

    def unlock_maildrop(self, user_id: int) -> None:
        self._maildrop_locks.discard(user_id)


def open_store(data_dir: Path, *, fsync: bool = True) -> SQLiteStore:
    """Open (creating and migrating if needed) the embedded store in ``data_dir``."""
    os.makedirs(data_dir, exist_ok=True)
    return SQLiteStore.open(data_dir, fsync=fsync)


_: type[api.Store] = SQLiteStore  # static check that the class satisfies the contract
