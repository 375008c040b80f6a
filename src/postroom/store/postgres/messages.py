"""The IMAP message paths of the PostgreSQL backend: delivery, APPEND, the reads FETCH,
SEARCH and SELECT make, STORE, EXPUNGE, COPY/MOVE and change tracking, with the message
bytes they move (the row or the blob store) and the change notifications they publish.

A mixin of :class:`~postroom.store.postgres.backend.PostgresStore`, kept apart because
these are the paths an IMAP command reaches and the ones measured for round trips
(``bench/pg_statements.py``): each command's work is one statement or one server-side
function call where it can be (``mail.py``: STORE of system flags, APPEND and EXPUNGE
are one call each; a STORE naming keywords is two statements, a compare-and-set), never
a transaction of several round trips on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from postroom.message import search_texts_of
from postroom.store import api
from postroom.store.api import (
    ALL_FLAGS,
    Changes,
    Delivery,
    DeliveryResult,
    FlagChange,
    MailboxChange,
    MailboxSnapshot,
    MessageContent,
    MessageMeta,
    NewMessage,
    NotFound,
    StoreResult,
    StoreUnavailable,
)
from postroom.store.changes import LocalChangeHub
from postroom.store.postgres import flags, mail
from postroom.store.postgres.batch import DeliveryBatcher
from postroom.store.postgres.engine import Engine
from postroom.store.postgres.mail import BlobIn, Stored
from postroom.store.postgres.notify import Relay
from postroom.store.s3 import S3Blobs
from postroom.store.sqlite.snapshots import SnapshotCache


class MessagePaths:
    """What :class:`PostgresStore` does with messages (see the module docstring)."""

    # Set by PostgresStore.__init__.
    engine: Engine
    changes: LocalChangeHub
    relay: Relay
    blobs: S3Blobs | None
    blob_min_size: int
    snapshots: SnapshotCache
    batcher: DeliveryBatcher
    _collect: asyncio.Event

    # -- changes -------------------------------------------------------------------------
    def _publish(self, mailbox_id: int, user_id: int, modseq: int, kind: str = api.MESSAGES) -> None:
        change = MailboxChange(mailbox_id=mailbox_id, user_id=user_id, modseq=modseq, kind=kind)
        self.changes.publish(change)
        self.relay.send_change(change)

    def _publish_queue(self, everywhere: bool) -> None:
        """Wake the queue here; ``everywhere``: an administrator changed the queue, and
        every node's worker should look (a delivery is this node's worker's to send)."""
        self.changes.publish_queue()
        if everywhere:
            self.relay.send_queue()

    # -- message bytes -------------------------------------------------------------------
    async def _blob_in(self, data: bytes, summary: bytes) -> BlobIn:
        if self.blobs is not None and len(data) >= self.blob_min_size:
            return BlobIn(len(data), summary, b"", await self.blobs.put(data))
        return BlobIn(len(data), summary, data)

    async def _write_with_blobs(
        self, blobs: Sequence[BlobIn], job: Any, *, transaction: bool = True
    ) -> Any:
        """Run a write that inserts rows referencing ``blobs``. When it certainly did not
        commit (it raised before COMMIT was sent) their objects are deleted now; when the
        outcome is unknown (the database went away) they are left to the orphan sweep,
        which deletes only objects no row references."""
        try:
            return await self.engine.write(job, transaction=transaction)
        except StoreUnavailable:
            raise
        except BaseException:
            names = [b.location for b in blobs if b.location]
            if names and self.blobs is not None:
                with contextlib.suppress(Exception):
                    await self.blobs.delete(names)
            raise

    async def _resolve(self, stored: dict[int, Stored], heads: dict[int, int] | None = None) -> dict[int, bytes]:
        """Bytes of each blob: from the row, or from the blob store (``heads``: only the
        first N octets of those blobs are needed)."""
        out: dict[int, bytes] = {}
        remote: dict[int, tuple[str, int | None]] = {}
        for key, (data, location) in stored.items():
            if location is None:
                out[key] = data
            else:
                remote[key] = (location, (heads or {}).get(key))
        if remote:
            if self.blobs is None:
                raise StoreUnavailable("message bytes are in a blob store that is not configured")
            out.update(await self.blobs.get_many(remote))
        return out

    def _garbage(self, names: Sequence[str]) -> None:
        if names:
            self._collect.set()

    # -- SELECT --------------------------------------------------------------------------
    async def mailbox_snapshot(
        self, user_id: int, name: str, *, claim_recent: bool = False
    ) -> MailboxSnapshot | None:
        found = await self.engine.read(lambda c: mail.snapshot_rows(c, user_id, name, self.snapshots))
        if found is None:
            return None
        (mailbox_id, owner, real_name, validity, uidnext, modseq, recent), uids, flags, kws = found
        uids, kws = array("I", uids), dict(kws)  # the cache keeps the originals
        recent_from = min(recent, uidnext)  # not claiming: the first unclaimed UID
        if claim_recent:
            recent_from = await self.claim_recent(mailbox_id, uidnext)
        return MailboxSnapshot(
            id=mailbox_id, user_id=owner, name=real_name, uidvalidity=validity, uidnext=uidnext,
            highestmodseq=modseq, recent_from=recent_from, uids=uids, flags=flags, keywords=kws,
        )

    # -- messages ------------------------------------------------------------------------
    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        """Group-committed with the deliveries that arrive meanwhile (``batch.py``)."""
        blob = await self._blob_in(delivery.data, delivery.summary)
        try:
            blob_id, placed, over, qid = await self.batcher.deliver(delivery, blob)
        except StoreUnavailable:
            raise
        except Exception:  # not a cancellation: the batch may still commit that one
            if blob.location and self.blobs is not None:
                with contextlib.suppress(Exception):  # the row was never written
                    await self.blobs.delete([blob.location])
            raise
        if blob_id == 0 and blob.location and self.blobs is not None:
            with contextlib.suppress(Exception):  # nobody references it
                await self.blobs.delete([blob.location])
        for mailbox_id, user_id, _uid in placed:
            self._publish(mailbox_id, user_id, 0)
        if qid is not None:
            self._publish_queue(everywhere=False)
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
        validity, uids = await self.append_many(
            mailbox_id, [NewMessage(data, summary, flags, tuple(keywords), internaldate)]
        )
        return validity, uids[0]

    async def append_many(
        self, mailbox_id: int, messages: Sequence[NewMessage], *, enforce_quota: bool = True
    ) -> tuple[int, list[int]]:
        items = list(messages)
        if not items:
            raise ValueError("append_many needs at least one message")
        texts = [search_texts_of(m.summary, m.data) for m in items]
        blobs = [await self._blob_in(m.data, m.summary) for m in items]
        validity, uids, user_id, modseq = await self._write_with_blobs(
            blobs, lambda c: mail.append_many(c, mailbox_id, items, blobs, texts, enforce_quota),
            transaction=False,  # one statement (postroom_append)
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
        rows = await self.engine.read(
            lambda c: mail.read_messages(c, mailbox_id, uids, summary, data, header_only)
        )
        bodies: dict[int, bytes] = {}
        if data:
            stored = {m.uid: st for m, _, st, _ in rows if st is not None}
            heads = {m.uid: e for m, _, _, e in rows if e is not None}
            bodies = await self._resolve(stored, heads if header_only else None)
            if header_only:  # cut at the header end (the read may have fetched more)
                bodies = {u: b[:heads[u]] if u in heads else b for u, b in bodies.items()}
        return [MessageContent(m, s, bodies.get(m.uid) if data else None) for m, s, _, _ in rows]

    async def read_blob(self, blob_id: int) -> bytes:
        found = await self.read_blobs([blob_id])
        if blob_id not in found:
            raise NotFound("message is gone")
        return found[blob_id]

    async def read_blobs(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        stored = await self.engine.read(lambda c: mail.read_stored(c, blob_ids))
        return await self._resolve(stored)

    async def read_summaries(self, blob_ids: Sequence[int]) -> dict[int, bytes]:
        return await self.engine.read(lambda c: mail.read_summaries(c, blob_ids))

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        change: FlagChange,
        unchangedsince: int | None = None,
    ) -> StoreResult:
        # System flags only (what clients set all the time): one call (postroom_store_flags).
        # Keywords: two statements, each its own transaction (store_flags_optimistic); when
        # another writer changed the mailbox between them, the locked transaction.
        done: tuple[StoreResult, int, int] | None
        if not change.keywords:
            done = await self.engine.write(
                lambda c: flags.store_system_flags(c, mailbox_id, uids, change, unchangedsince),
                transaction=False,
            )
        else:
            done = await self.engine.write(
                lambda c: flags.store_flags_optimistic(c, mailbox_id, uids, change, unchangedsince),
                transaction=False,
            )
        if done is None:
            done = await self.engine.write(
                lambda c: flags.store_flags(c, mailbox_id, uids, change, unchangedsince)
            )
        result, user_id, modseq = done
        if result.changed:
            self._publish(mailbox_id, user_id, modseq)
        return result

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        gone, user_id, modseq, garbage = await self.engine.write(
            lambda c: mail.expunge(c, mailbox_id, uids), transaction=False  # one statement
        )
        self._garbage(garbage)
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
        pairs, dst, _ = await self.engine.write(
            lambda c: mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, False,
                                         flag_mask, keywords)
        )
        if pairs:
            self._publish(dst_mailbox_id, *dst)
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
            lambda c: mail.copy_messages(c, src_mailbox_id, uids, dst_mailbox_id, True,
                                         flag_mask, keywords)
        )
        if pairs:
            self._publish(dst_mailbox_id, *dst)
            self._publish(src_mailbox_id, *src)
        return pairs

    async def changes_since(
        self, mailbox_id: int, modseq: int, *, claim_above: int | None = None, claim: bool = True
    ) -> Changes:
        if claim_above is None:
            return await self.engine.read(lambda c: mail.changes_since(c, mailbox_id, modseq))
        if not claim:  # EXAMINE: the mark is read, nothing is written
            return await self.engine.read(
                lambda c: mail.changes_since(c, mailbox_id, modseq, claim_above, False))
        # May write the claim: not retried once sent (a lost answer's claim stands).
        return await self.engine.write(
            lambda c: mail.changes_since(c, mailbox_id, modseq, claim_above, True),
            transaction=False,
        )

    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]:
        return await self.engine.read(lambda c: mail.vanished_since(c, mailbox_id, modseq))

    async def claim_recent(
        self, mailbox_id: int, upto: int | None = None, *, claim: bool = True
    ) -> int:
        if not claim:
            return await self.engine.read(lambda c: mail.recent_mark(c, mailbox_id, upto))
        return await self.engine.write(
            lambda c: mail.claim_recent(c, mailbox_id, upto), lazy=True, transaction=False
        )

    async def search_envelope(
        self, mailbox_id: int, keys: Sequence[tuple[str, str]]
    ) -> list[list[int]]:
        if not keys:
            return []
        wanted = list(keys)
        return await self.engine.read(lambda c: mail.search_envelope(c, mailbox_id, wanted))
