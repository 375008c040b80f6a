"""The embedded backend: SQLite in WAL mode in the data folder, message bytes inside it
(bodies of 32 KiB and more beside it, in append-only body files: ``bodies.py``).

Why message bytes live in SQLite rather than in one file per message: a delivery then is
one transaction, made durable by one fsync of the WAL that it shares with every other
delivery in the same group commit. A file per message needs its own fsync plus a directory
fsync (measured in bench/store_deliver.py: see docs/architecture.md), and a crash between
the file and the row needs a recovery pass. Reading a 5 KB blob from SQLite is as fast as
reading a small file.

\\Recent marks (RFC 3501 2.3.2) live in memory, in one place (see ``recent.py``).

Several processes may open one database at once (the worker processes of
``server.workers``, the CLI): writes are serialised by the engine's cross-process lock,
changes travel through the hub's relay (``changes.py``), \\Recent claims go to the one
:class:`RecentMarks` the supervisor keeps, and POP3 maildrop locks are record locks the
kernel drops with a dead process (``maildrop.py``).
"""

from __future__ import annotations

import dataclasses
import asyncio
import os
import sqlite3
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from postroom.store import api
from postroom.store.api import (
    AddressLookup,
    Alias,
    ApiToken,
    AppPassword,
    DeliveryLogEntry,
    Changes,
    Delivery,
    DeliveryResult,
    Domain,
    FlagChange,
    ImportedMessage,
    Mailbox,
    MailboxChange,
    MailboxSnapshot,
    MailboxStatus,
    MessageContent,
    MessageMeta,
    NewMessage,
    NotFound,
    Quota,
    QueuedMessage,
    QueueStats,
    RecipientOutcome,
    SharedMailbox,
    SendAsGrant,
    StoreResult,
    User,
    WebSession,
)
from postroom.message import search_texts_of
from postroom.store.api import ALL_FLAGS, MAILBOXES, METADATA, SUBSCRIPTIONS
from postroom.store.changes import ChangeRelay, LocalChangeHub
from postroom.store.sqlite import accounts, authdata, imports, mail, queue, sharing, tlsdata, web
from postroom.store.sqlite.bodies import FILE_MIN
from postroom.store.sqlite.engine import Engine, Spill
from postroom.store.sqlite.fsync import fsync_dir
from postroom.store.sqlite.maildrop import MaildropLocks
from postroom.store.sqlite.recent import RecentClaims, RecentMarks
from postroom.store.sqlite.schema import migrate
from postroom.store.sqlite.snapshots import SnapshotCache

DB_NAME = "postroom.sqlite3"
# read_messages of at most this many messages runs on the caller's thread (a client
# opening a message: a point read, Engine.lookup), reading at most INLINE_BYTES of each
# message there; more, or bigger, goes to a reader thread.
INLINE_MESSAGES = 4
INLINE_BYTES = 128 * 1024
# A header-only read of a message up to this size reads the whole message in one SELECT.
HEADER_INLINE_BYTES = 16 * 1024


def _spill(data: bytes) -> tuple[Spill, ...]:
    """A large body goes to a body file (``bodies.py``); a small one stays in its row."""
    return (Spill(data),) if len(data) >= FILE_MIN else ()


class SQLiteStore:
    """Implements :class:`postroom.store.api.Store` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        readers: int = 4,
        checkpoint: bool = True,
        relay: ChangeRelay | None = None,
        recent: RecentClaims | None = None,
    ) -> None:
        """``checkpoint``: this process runs the WAL checkpointer (one per database);
        ``relay``: carries changes to the other processes that share the database;
        ``recent``: where \\Recent is claimed, when not in this process's memory."""
        created = not path.exists()
        self.engine = Engine(path, fsync=fsync, readers=readers, checkpoint=checkpoint)
        self.engine.run_sync(migrate)
        if created and fsync:
            fsync_dir(path.parent)  # the new database and WAL files' directory entries
        self.changes = LocalChangeHub(relay)
        self.maildrops = MaildropLocks(Path(str(path) + ".maildrops"))
        self.recent_marks = RecentMarks(self.engine)  # authoritative when ``recent`` is None
        self.recent: RecentClaims = recent if recent is not None else self.recent_marks
        self.snapshots = SnapshotCache()

    @classmethod
    def open(cls, data_dir: Path, *, fsync: bool = True) -> SQLiteStore:
        return cls(data_dir / DB_NAME, fsync=fsync)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close_sync)

    def close_sync(self) -> None:
        self.engine.close()
        self.maildrops.close()

    def _publish(self, mailbox_id: int, user_id: int, modseq: int, kind: str = api.MESSAGES) -> None:
        self.changes.publish(
            MailboxChange(mailbox_id=mailbox_id, user_id=user_id, modseq=modseq, kind=kind)
        )

    # -- \\Recent ----------------------------------------------------------------------
    async def _recent_mark(self, mailbox_id: int, uidvalidity: int, stored: int) -> int:
        """The first UID nobody has claimed, without claiming (EXAMINE): the stored mark
        or the one in memory (store/sqlite/recent.py), whichever is higher."""
        known = await self.recent.known(mailbox_id)
        if known is not None and known[0] == uidvalidity and known[1] > stored:
            return known[1]
        return stored

    async def _publish_mailbox(self, mailbox_id: int) -> None:
        if not self.changes.may_have_listeners(mailbox_id):
            return  # nobody listens, here or in another process: skip the read
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
        return await self.engine.lookup(lambda c: accounts.get_domain(c, name))

    async def add_user(self, address: str, password_hash: str, scram: str | None) -> User:
        return await self.engine.write(lambda c: accounts.add_user(c, address, password_hash, scram))

    async def remove_user(self, address: str) -> None:
        await self.engine.write(lambda c: accounts.remove_user(c, address))

    async def set_password(self, address: str, password_hash: str, scram: str | None) -> None:
        await self.engine.write(lambda c: accounts.set_password(c, address, password_hash, scram))

    async def get_user(self, address: str) -> User | None:
        return await self.engine.lookup(lambda c: accounts.get_user(c, address))

    async def get_user_by_id(self, user_id: int) -> User | None:
        return await self.engine.lookup(lambda c: accounts.get_user_by_id(c, user_id))

    async def list_users(self, domain: str | None = None) -> list[User]:
        return await self.engine.read(lambda c: accounts.list_users(c, domain))

    async def add_alias(self, source: str, targets: Sequence[str]) -> list[Alias]:
        return await self.engine.write(lambda c: accounts.add_alias(c, source, targets))

    async def remove_alias(self, source: str, target: str | None = None) -> int:
        return await self.engine.write(lambda c: accounts.remove_alias(c, source, target))

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return await self.engine.read(lambda c: accounts.list_aliases(c, domain))

    async def alias_targets(self, source: str) -> list[str]:
        return await self.engine.lookup(lambda c: accounts.alias_targets(c, source))

    async def lookup_address(self, address: str) -> AddressLookup:
        # one statement (its own snapshot): no BEGIN/COMMIT around it
        return await self.engine.lookup(lambda c: accounts.lookup_address(c, address), snapshot=False)

    async def add_sendas(self, user: str, address: str) -> SendAsGrant:
        return await self.engine.write(lambda c: accounts.add_sendas(c, user, address))

    async def remove_sendas(self, user: str, address: str) -> None:
        await self.engine.write(lambda c: accounts.remove_sendas(c, user, address))

    async def list_sendas(self, user: str | None = None) -> list[SendAsGrant]:
        if user is not None:  # a user's few grants, at MAIL FROM on submission
            return await self.engine.lookup(lambda c: accounts.list_sendas(c, user))
        return await self.engine.read(lambda c: accounts.list_sendas(c, user))

    async def set_user_admin(self, address: str, admin: bool) -> None:
        await self.engine.write(lambda c: accounts.set_user_admin(c, address, admin))

    # -- mailboxes -----------------------------------------------------------------------
    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        return await self.engine.read(lambda c: accounts.list_mailboxes(c, user_id))

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        return await self.engine.lookup(lambda c: accounts.get_mailbox(c, user_id, name))

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self.engine.lookup(lambda c: accounts.get_mailbox_by_id(c, mailbox_id))

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
        mailbox_id = await self.engine.write(lambda c: accounts.delete_mailbox(c, user_id, name))
        self.recent.forget(mailbox_id)
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
        known = await self.recent.known(mailbox_id)
        return await self.engine.read(lambda c: accounts.mailbox_status(c, mailbox_id, known))

    async def mailbox_snapshot(
        self, user_id: int, name: str, *, claim_recent: bool = False
    ) -> MailboxSnapshot | None:
        found = await self.engine.read(lambda c: mail.snapshot_rows(c, user_id, name, self.snapshots))
        if found is None:
            return None
        (mailbox_id, owner, real_name, validity, uidnext, modseq, stored), uids, flags, kws = found
        uids, kws = array("I", uids), dict(kws)  # the cache keeps the originals
        if claim_recent:
            recent_from = await self.recent.claim(mailbox_id, validity, stored, uidnext)
        else:
            recent_from = min(await self._recent_mark(mailbox_id, validity, stored), uidnext)
        return MailboxSnapshot(
            id=mailbox_id, user_id=owner, name=real_name, uidvalidity=validity, uidnext=uidnext,
            highestmodseq=modseq, recent_from=recent_from, uids=uids, flags=flags, keywords=kws,
        )

    # -- messages ------------------------------------------------------------------------
    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        spill = _spill(delivery.data)

        def job(c: object) -> tuple[int, list[tuple[int, int, int]], str | None, tuple[int, ...]]:
            location = spill[0].location if spill else None
            blob_id, placed, over = mail.deliver_checked(c, delivery, location)  # type: ignore[arg-type]
            qid = None
            if delivery.queue is not None:
                qid = queue.add(c, blob_id, delivery.queue)  # type: ignore[arg-type]
            return blob_id, placed, qid, over

        blob_id, placed, qid, over = await self.engine.write(job, spill)
        for mailbox_id, user_id, _uid in placed:
            self._publish(mailbox_id, user_id, 0)
        if qid is not None:
            self.changes.publish_queue()
        return DeliveryResult(
            blob_id=blob_id, placed=[(m, u) for m, _, u in placed], queued=qid, over_quota=over
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
        spill = _spill(data)
        # The search texts are derived on the writer thread, as for deliver(): not on the
        # caller's event loop (they decode the stored summary).
        validity, uids, user_id, modseq = await self.engine.write(
            lambda c: mail.append_many(
                c, mailbox_id, [NewMessage(data, summary, flags, kw, internaldate)],
                [search_texts_of(summary, data)], True, [s.location for s in spill] or None,
            ),
            spill,
        )
        uid = uids[0]
        self._publish(mailbox_id, user_id, modseq)
        return validity, uid

    async def append_many(
        self, mailbox_id: int, messages: Sequence[NewMessage], *, enforce_quota: bool = True
    ) -> tuple[int, list[int]]:
        items = list(messages)
        if not items:
            raise ValueError("append_many needs at least one message")
        texts = [search_texts_of(m.summary, m.data) for m in items]
        spills = [_spill(m.data) for m in items]
        validity, uids, user_id, modseq = await self.engine.write(
            lambda c: mail.append_many(c, mailbox_id, items, texts, enforce_quota,
                                       [s[0].location if s else None for s in spills]),
            tuple(s for one in spills for s in one),
        )
        self._publish(mailbox_id, user_id, modseq)
        return validity, uids

    async def list_messages(self, mailbox_id: int) -> list[MessageMeta]:
        return await self.engine.read(lambda c: mail.list_messages(c, mailbox_id))

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageMeta]:
        return await self.engine.read(lambda c: mail.get_messages(c, mailbox_id, uids))

    async def read_messages(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        *,
        summary: bool = False,
        data: bool = False,
        header_only: bool = False,
    ) -> list[MessageContent]:
        files = self.engine.bodies
        if len(uids) > INLINE_MESSAGES:
            return await self.engine.read(
                lambda c: mail.read_messages(c, files, mailbox_id, uids, summary, data, header_only)
            )
        # A few messages (a client opening one): a point read on this thread (see
        # Engine.lookup), one SELECT, bytes only up to a limit per message. For the header
        # block of a small message the whole message is read in that same statement (it
        # costs less than a transaction and incremental blob I/O); bigger ones are read
        # again in a second step: their header block inline, their body on a reader thread.
        limit = HEADER_INLINE_BYTES if header_only else INLINE_BYTES
        found = await self.engine.lookup(
            lambda c: mail.read_messages(c, files, mailbox_id, uids, summary, data, False,
                                         limit if data else None),
            snapshot=False,
        )
        big = [c.meta.uid for c in found if data and c.data is None]
        if not big:
            return found
        if header_only:
            rest = {c.meta.uid: c for c in await self.engine.lookup(
                lambda c: mail.read_messages(c, files, mailbox_id, big, summary, True, True)
            )}
        else:
            rest = {c.meta.uid: c for c in await self.engine.read(
                lambda c: mail.read_messages(c, files, mailbox_id, big, summary, True, False)
            )}
        return [rest.get(c.meta.uid, c) for c in found if c.data is not None or c.meta.uid in rest]

    async def read_blob(self, blob_id: int) -> bytes:
        found = await self.read_blobs([blob_id])
        if blob_id not in found:
            raise NotFound("message is gone")
        return found[blob_id]

    async def read_blobs(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        files = self.engine.bodies
        return await self.engine.read(lambda c: mail.read_data(c, files, blob_ids))

    async def read_summaries(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        return await self.engine.read(lambda c: mail.read_column(c, "summary", blob_ids))

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        change: FlagChange,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        # The change is published with the mailbox's owner and new HIGHESTMODSEQ read in
        # the same transaction: no second read after the commit.
        result, (user_id, modseq) = await self.engine.write(
            lambda c: (mail.store_flags(c, mailbox_id, uids, change, unchangedsince),
                       mail.user_of(c, mailbox_id))
        )
        if result.changed:
            self._publish(mailbox_id, user_id, modseq)
        return result

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        gone, (user_id, modseq) = await self.engine.write(
            lambda c: (mail.expunge(c, mailbox_id, uids), mail.user_of(c, mailbox_id))
        )
        if gone:
            self._publish(mailbox_id, user_id, modseq)
        return gone

    async def copy_messages(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        *,
        flag_mask: int = ALL_FLAGS,
        keywords: bool = True,
    ) -> list[tuple[int, int]]:
        pairs, (user_id, modseq) = await self.engine.write(
            lambda c: (mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, False,
                                          flag_mask, keywords),
                       mail.user_of(c, dst_mailbox_id))
        )
        if pairs:
            self._publish(dst_mailbox_id, user_id, modseq)
        return pairs

    async def move_messages(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        *,
        flag_mask: int = ALL_FLAGS,
        keywords: bool = True,
    ) -> list[tuple[int, int]]:
        pairs, dst, src = await self.engine.write(
            lambda c: (mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, True,
                                          flag_mask, keywords),
                       mail.user_of(c, dst_mailbox_id), mail.user_of(c, src_mailbox_id))
        )
        if pairs:
            self._publish(dst_mailbox_id, *dst)
            self._publish(src_mailbox_id, *src)
        return pairs

    async def changes_since(
        self, mailbox_id: int, modseq: int, *, claim_above: int | None = None, claim: bool = True
    ) -> Changes:
        changes = await self.engine.read(lambda c: mail.changes_since(c, mailbox_id, modseq))
        if claim_above is not None and any(m.uid > claim_above for m in changes.changed):
            # In-process calls cost no round trip: the claim stays its own call.
            mark = await self.claim_recent(mailbox_id, changes.uidnext, claim=claim)
            changes = dataclasses.replace(changes, recent_from=mark)
        return changes

    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]:
        return await self.engine.read(lambda c: mail.vanished_since(c, mailbox_id, modseq))

    async def claim_recent(
        self, mailbox_id: int, upto: int | None = None, *, claim: bool = True
    ) -> int:
        if upto is not None and claim:
            mark = await self.recent.claim_known(mailbox_id, upto)
            if mark is not None:  # no read: the mark in memory is at least the column's
                return mark
        if upto is not None and not claim:
            known = await self.recent.known(mailbox_id)
            if known is not None:  # the mark in memory is at least the column's
                return min(known[1], upto)
        validity, stored, uidnext = await self.engine.read(
            lambda c: mail.recent_mark(c, mailbox_id)
        )
        end = uidnext if upto is None else upto
        if not claim:
            return min(await self._recent_mark(mailbox_id, validity, stored), end)
        return await self.recent.claim(mailbox_id, validity, stored, end)

    async def search_envelope(
        self, mailbox_id: int, keys: Sequence[tuple[str, str]]
    ) -> list[list[int]]:
        if not keys:
            return []
        wanted = list(keys)
        return await self.engine.read(lambda c: mail.search_envelope(c, mailbox_id, wanted))

    # -- quota ---------------------------------------------------------------------------
    async def get_quota(self, user_id: int) -> Quota:
        # at every RCPT; one statement, its own snapshot
        return await self.engine.lookup(lambda c: mail.get_quota(c, user_id), snapshot=False)

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

    async def shared_mailboxes(
        self, user_id: int, identifiers: Sequence[str]
    ) -> list[SharedMailbox]:
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
        uids, user_id, modseq = await self.engine.write(
            lambda c: imports.import_messages(c, mailbox_id, origin, batch, texts)
        )
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
        return await self.engine.write(lambda c: queue.release_leases(c, owner))

    async def queue_renew_leases(self, owner: str, qids: Sequence[str], until: int) -> int:
        wanted = list(qids)
        return await self.engine.write(lambda c: queue.renew_leases(c, owner, wanted, until))

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

    # -- mail authentication ------------------------------------------------------------
    async def dkim_key_add(self, key: api.DkimKey) -> None:
        await self.engine.write(lambda c: authdata.dkim_key_add(c, key))

    async def dkim_keys(self, domain: str | None = None) -> list[api.DkimKey]:
        return await self.engine.read(lambda c: authdata.dkim_keys(c, domain))

    async def dkim_key_update(
        self, domain: str, selector: str, *, active_from: int | None = None, retire_at: int | None = None
    ) -> None:
        await self.engine.write(lambda c: authdata.dkim_key_update(c, domain, selector, active_from, retire_at))

    async def dkim_key_remove(self, domain: str, selector: str) -> None:
        await self.engine.write(lambda c: authdata.dkim_key_remove(c, domain, selector))

    async def dmarc_add(self, rows: Sequence[api.DmarcRow]) -> None:
        rows = list(rows)
        await self.engine.write(lambda c: authdata.dmarc_add(c, rows))

    async def dmarc_pending(self, before: int) -> list[api.DmarcRow]:
        return await self.engine.read(lambda c: authdata.dmarc_pending(c, before))

    async def dmarc_delete(
        self, policy_domain: str, period: int, *, report: Delivery | None = None
    ) -> int:
        return await self._delete_and_report(
            lambda c: authdata.dmarc_delete(c, policy_domain, period), report
        )

    async def _delete_and_report(
        self, delete: Callable[[sqlite3.Connection], int], report: Delivery | None
    ) -> int:
        """Delete a report's rows and, when there were some, deliver ``report`` in the
        same transaction (DMARC and TLS-RPT reports: sent once, never lost)."""

        def job(c: object) -> tuple[int, list[tuple[int, int, int]], str | None]:
            deleted = delete(c)  # type: ignore[arg-type]
            if report is None or not deleted:
                return deleted, [], None
            blob_id, placed = mail.deliver(c, report)  # type: ignore[arg-type]
            qid = queue.add(c, blob_id, report.queue) if report.queue is not None else None  # type: ignore[arg-type]
            return deleted, placed, qid

        deleted, placed, qid = await self.engine.write(job)
        for mailbox_id, user_id, _uid in placed:
            self._publish(mailbox_id, user_id, 0)
        if qid is not None:
            self.changes.publish_queue()
        return deleted

    async def tlsrpt_add(self, rows: Sequence[api.TlsResultRow]) -> None:
        rows = list(rows)
        await self.engine.write(lambda c: tlsdata.tlsrpt_add(c, rows))

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

    async def queue_stats(self) -> QueueStats:
        return await self.engine.read(web.queue_stats)

    # -- credentials of the HTTP service -------------------------------------------------
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
        await self.engine.write(lambda c: web.append_delivery_log(c, entries, keep))

    async def list_delivery_log(self, limit: int, before_id: int | None = None) -> list[DeliveryLogEntry]:
        return await self.engine.read(lambda c: web.list_delivery_log(c, limit, before_id))

    # -- POP3 --------------------------------------------------------------------------
    async def try_lock_maildrop(self, user_id: int) -> bool:
        return self.maildrops.try_lock(user_id)

    async def unlock_maildrop(self, user_id: int) -> None:
        self.maildrops.unlock(user_id)


def open_store(
    data_dir: Path, *, fsync: bool = True, timing: Callable[[bool, float], None] | None = None
) -> SQLiteStore:
    """Open (creating and migrating if needed) the embedded store in ``data_dir``.
    ``timing(write, seconds)`` is told the duration of every read and write (metrics)."""
    os.makedirs(data_dir, exist_ok=True)
    store = SQLiteStore.open(data_dir, fsync=fsync)
    store.engine.timing = timing
    return store


_: type[api.Store] = SQLiteStore  # static check that the class satisfies the contract
