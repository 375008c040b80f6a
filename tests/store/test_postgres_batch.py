"""Group commit of deliveries on PostgreSQL (store/postgres/batch.py): concurrent
deliveries share one transaction, yet each gets the outcome it would have had alone; one
that fails does not sink the others. And pooled connections go back without asyncpg's
reset round trip, except those that may carry session state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from postroom.store.api import Delivery, NewQueueEntry, NotFound, QueueRecipient
from postroom.store.postgres import PostgresStore

MSG = b"From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


def run(fn: Any) -> Any:
    """``fn(store, url)`` on a store of a fresh database."""
    from support.postgres import with_store

    return with_store(fn)


async def _users(store: PostgresStore, *names: str) -> list[Any]:
    await store.add_domain("example.test")
    return [await store.add_user(f"{n}@example.test", "hash", None) for n in names]


def test_concurrent_deliveries_share_a_commit_with_their_own_outcomes() -> None:
    """12 deliveries at once to a user who has room for 5 more messages and to one
    without a limit, plus queue entries: one or two transactions, the first 5 (in
    arrival order) placed with ascending UIDs, the rest told that user is over quota,
    usage exact, every queue entry there."""

    async def body(store: PostgresStore, url: str) -> None:
        full, free = await _users(store, "full", "free")
        await store.set_quota(full.address, None, 5)
        before = store.batcher.batches
        entries = [NewQueueEntry(qid=f"B{i}", sender="", recipients=(
            QueueRecipient(f"x{i}@remote.test"), QueueRecipient(f"y{i}@remote.test")))
            for i in range(12)]
        results = await asyncio.gather(*(
            store.deliver(Delivery(data=MSG + b"x" * i, summary=b"S", user_ids=(full.id, free.id),
                                   enforce_quota=True, queue=entries[i]))
            for i in range(12)))
        assert store.batcher.batches - before <= 2  # not one transaction per delivery
        inbox = await store.get_mailbox(full.id, "INBOX")
        other = await store.get_mailbox(free.id, "INBOX")
        placed_full = [dict(r.placed).get(inbox.id) for r in results]
        assert [u is not None for u in placed_full] == [True] * 5 + [False] * 7
        assert [r.over_quota for r in results] == [()] * 5 + [(full.id,)] * 7
        uids = [dict(r.placed)[other.id] for r in results]
        assert uids == sorted(uids) and len(set(uids)) == 12
        assert placed_full[:5] == sorted(placed_full[:5])  # type: ignore[type-var]
        for user, count in ((full, 5), (free, 12)):
            q = await store.get_quota(user.id)
            sizes = [len(MSG) + i for i in range(count)]
            assert (q.messages_used, q.storage_used) == (count, sum(sizes))
        # Each message's bytes are its own (the blob ids follow the input order).
        got = await store.read_messages(other.id, uids, data=True)
        assert [c.data for c in got] == [MSG + b"x" * i for i in range(12)]
        queued = {m.qid: m for m in await store.queue_list()}
        assert sorted(queued) == sorted(r.queued for r in results)
        for i in range(12):
            m = queued[f"B{i}"]
            assert [r.address for r in m.recipients] == [f"x{i}@remote.test", f"y{i}@remote.test"]
            assert await store.read_blob(m.blob_id) == MSG + b"x" * i

    run(body)


def test_one_failing_delivery_does_not_sink_the_batch() -> None:
    async def body(store: PostgresStore, url: str) -> None:
        (alice,) = await _users(store, "alice")

        async def one(i: int) -> Any:
            users = (alice.id,) if i != 3 else (alice.id + 999,)  # 3: no such user
            return await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=users))

        results = await asyncio.gather(*(one(i) for i in range(8)), return_exceptions=True)
        assert isinstance(results[3], NotFound)
        ok = [r for i, r in enumerate(results) if i != 3]
        assert all(len(r.placed) == 1 for r in ok)  # type: ignore[union-attr]
        inbox = await store.get_mailbox(alice.id, "INBOX")
        assert len(await store.list_messages(inbox.id)) == 7
        assert (await store.get_quota(alice.id)).messages_used == 7

    run(body)


def test_pooled_connections_keep_no_session_state() -> None:
    """A session advisory lock taken on a connection from ``Engine.connection`` is gone
    once the connection is back in the pool (the full reset runs for those); reads and
    writes skip the reset and leave nothing behind either."""

    async def body(store: PostgresStore, url: str) -> None:
        import asyncpg

        async with store.engine.connection() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock(4242)")
        other = await asyncpg.connect(url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock(4242)")
        finally:
            await other.close()
        # A failed write leaves no transaction open on its connection.
        with pytest.raises(ZeroDivisionError):
            async def fails(c: Any) -> None:
                await c.execute("SELECT 1")
                raise ZeroDivisionError
            await store.engine.write(fails)
        async def clean(c: Any) -> bool:
            return not c.is_in_transaction() and await c.fetchval("SELECT 1") == 1

        for _ in range(12):  # every pooled connection in turn
            assert await store.engine.read(clean)

    run(body)
