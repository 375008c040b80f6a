"""What only the PostgreSQL backend promises: several stores (nodes) on one database see
one state and hear each other's changes; the schema is guarded; an outage is a temporary
error followed by recovery; message bytes may live in an S3 bucket without a dangling
reference after any crash."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from postroom.deliver import summarize
from postroom.store.api import (
    FLAG_SEEN,
    Delivery,
    FlagChange,
    MailboxChange,
    NewQueueEntry,
    OverQuota,
    QueueRecipient,
    RecipientOutcome,
    StoreUnavailable,
)
from postroom.store.postgres import PostgresStore, open_store
from postroom.store.postgres.schema import SchemaTooOld
from postroom.store.schema import MIGRATIONS, SchemaTooNew

MSG = b"From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"



def two_nodes(fn: Callable[[PostgresStore, PostgresStore], Awaitable[Any]], **kw: Any) -> Any:
    """Run ``fn(a, b)`` with two stores opened on one fresh database."""
    from support.postgres import drop_database, fresh_database

    url = fresh_database()

    async def main() -> Any:
        a = await open_store(url, **kw)
        b = await open_store(url, **kw)
        try:
            return await fn(a, b)
        finally:
            await a.close()
            await b.close()

    try:
        return asyncio.run(main())
    finally:
        drop_database(url)


async def _user(store: Any, address: str = "alice@example.test") -> Any:
    if await store.get_domain("example.test") is None:
        await store.add_domain("example.test")
    return await store.add_user(address, "hash", None)


def test_changes_reach_the_other_node_quickly() -> None:
    """A delivery on node A wakes a listener on node B (LISTEN/NOTIFY) within 100 ms."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        u = await _user(a)
        inbox = await b.get_mailbox(u.id, "INBOX")
        heard: list[tuple[MailboxChange, float]] = []
        got = asyncio.Event()

        def listener(change: MailboxChange) -> None:
            heard.append((change, time.monotonic()))
            got.set()

        b.changes.subscribe(inbox.id, listener)
        delays = []
        for _ in range(5):
            got.clear()
            sent = time.monotonic()
            await a.deliver(Delivery(data=MSG, summary=summarize(MSG), user_ids=(u.id,)))
            await asyncio.wait_for(got.wait(), 5)
            delays.append(heard[-1][1] - sent)
        assert all(c.mailbox_id == inbox.id and c.user_id == u.id for c, _ in heard)
        # The median, so one scheduling hiccup of a loaded machine does not fail the test.
        assert sorted(delays)[2] < 0.1, delays
        # A node does not hear its own changes twice.
        own: list[MailboxChange] = []
        a.changes.subscribe(inbox.id, own.append)
        await a.store_flags(inbox.id, [1], FlagChange("add", FLAG_SEEN))
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.2)
        assert len(own) == 1
        # The queue wakes on every node when an administrator changes it.
        woken = asyncio.Event()
        b.changes.subscribe_queue(woken.set)
        await a.queue_flush()
        await asyncio.wait_for(woken.wait(), 5)

    two_nodes(body)


def test_one_state_for_both_nodes() -> None:
    """\\Recent, maildrop locks, quotas and the snapshot cache agree across nodes."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        u = await _user(a)
        inbox = await a.get_mailbox(u.id, "INBOX")
        for _ in range(70):  # enough for the snapshot cache to keep it
            await a.append(inbox.id, MSG, summarize(MSG))
        # \\Recent: the first session to see a message gets it, whichever node it is on.
        snap_a = await a.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        snap_b = await b.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        assert (snap_a.recent_from, snap_b.recent_from) == (1, 71)
        assert (await b.mailbox_status(inbox.id)).recent == 0
        # The snapshot cache of node B never serves a mailbox node A changed since.
        cached = await b.mailbox_snapshot(u.id, "INBOX")
        assert b.snapshots.hits >= 0 and len(b.snapshots) == 1
        await a.store_flags(inbox.id, [3], FlagChange("add", FLAG_SEEN))
        await a.expunge(inbox.id, [5])
        fresh = await b.mailbox_snapshot(u.id, "INBOX")
        assert 5 in cached.uids and 5 not in fresh.uids
        assert fresh.flags[list(fresh.uids).index(3)] & FLAG_SEEN
        assert fresh.highestmodseq > cached.highestmodseq
        # POP3: one session per maildrop across nodes; a dead node's lock goes with it.
        assert await a.try_lock_maildrop(u.id)
        assert not await b.try_lock_maildrop(u.id)
        await a.maildrops.close()  # the node's connection ends (as when it is killed)
        assert await b.try_lock_maildrop(u.id)
        await b.unlock_maildrop(u.id)
        # Quota: two nodes cannot both squeeze the last message in.
        used = (await a.get_quota(u.id)).messages_used
        await a.set_quota(u.address, None, used + 1)
        results = await asyncio.gather(
            a.append(inbox.id, MSG, b"S"), b.append(inbox.id, MSG, b"S"), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["OverQuota", "tuple"]

    two_nodes(body)


def test_concurrent_writers_on_two_nodes() -> None:
    """Deliveries, APPENDs, flag changes, copies and expunges on one user from two nodes
    at once: no error (deadlocks are avoided or retried), UIDs ascending without reuse,
    usage exact."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        users = [await _user(a, f"u{i}@example.test") for i in range(3)]
        ids = tuple(u.id for u in users)
        inbox = await a.get_mailbox(users[0].id, "INBOX")
        archive = await a.get_mailbox(users[0].id, "Archive")

        async def deliverer(store: PostgresStore, n: int) -> None:
            for i in range(n):
                order = ids if i % 2 else ids[::-1]
                await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=order,
                                             enforce_quota=True))

        async def appender(store: PostgresStore) -> None:
            for _ in range(15):
                await store.append(inbox.id, MSG, b"S")

        async def churn(store: PostgresStore) -> None:
            for _ in range(15):
                uids = [m.uid for m in await store.list_messages(inbox.id)][:3]
                if uids:
                    await store.store_flags(inbox.id, uids, FlagChange("add", FLAG_SEEN))
                    await store.copy_messages(inbox.id, uids[:1], archive.id)
                    await store.expunge(inbox.id, uids[1:2])

        await asyncio.gather(
            deliverer(a, 15), deliverer(b, 15), appender(a), appender(b), churn(a), churn(b)
        )
        for u in users:
            for name in ("INBOX", "Archive"):
                mb = await b.get_mailbox(u.id, name)
                msgs = await b.list_messages(mb.id)
                uids = [m.uid for m in msgs]
                assert uids == sorted(set(uids)) and (not uids or uids[-1] < mb.uidnext)
            quota = await b.get_quota(u.id)
            total = 0
            count = 0
            for mb in await b.list_mailboxes(u.id):
                msgs = await b.list_messages(mb.id)
                total += sum(m.size for m in msgs)
                count += len(msgs)
            assert (quota.storage_used, quota.messages_used) == (total, count)

    two_nodes(body)


def test_concurrent_stores_on_two_nodes_lose_no_change() -> None:
    """STORE reads without a lock and writes only if HIGHESTMODSEQ did not move
    (mail.store_flags_optimistic): 24 STOREs at once on one message from two nodes, each
    adding its own keyword while a delivery lands meanwhile, keep every keyword (no lost
    update), and each change gets its own modseq."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        user = await _user(a)
        inbox = await a.get_mailbox(user.id, "INBOX")
        _, uid = await a.append(inbox.id, MSG, b"S")
        before = (await a.mailbox_status(inbox.id)).highestmodseq

        async def add(i: int) -> int:
            store = a if i % 2 else b
            result = await store.store_flags(inbox.id, [uid], FlagChange("add", 0, (f"k{i}",)))
            assert [m.uid for m in result.changed] == [uid]
            return result.changed[0].modseq

        async def deliver() -> None:
            await b.deliver(Delivery(data=MSG, summary=b"S", user_ids=(user.id,)))

        modseqs = await asyncio.gather(*(add(i) for i in range(24)), deliver())
        stored = modseqs[:24]
        assert len(set(stored)) == 24 and min(stored) > before
        (m,) = await b.get_messages(inbox.id, [uid])
        assert sorted(m.keywords) == sorted(f"k{i}" for i in range(24))
        assert m.modseq == max(stored)
        assert (await b.mailbox_status(inbox.id)).highestmodseq >= max(stored)
        # Nothing to change: no write, the current state comes back as unchanged.
        again = await a.store_flags(inbox.id, [uid], FlagChange("add", 0, ("k3",)))
        assert not again.changed and [x.uid for x in again.unchanged] == [uid]
        assert (await a.mailbox_status(inbox.id)).highestmodseq == (
            await b.mailbox_status(inbox.id)).highestmodseq

    two_nodes(body)


def test_system_flag_stores_follow_the_python_rules() -> None:
    """A STORE without keywords runs server-side (postroom_store_flags): for random modes,
    masks, keyword rights and UNCHANGEDSINCE its outcome (changed, unchanged, failed, the
    stored flags and keywords, the modseq) is what store/rows.py's plan_flags says, and
    concurrent ones from two nodes lose no change."""
    import random

    from postroom.store.api import ALL_FLAGS
    from postroom.store.rows import plan_flags

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        user = await _user(a)
        inbox = await a.get_mailbox(user.id, "INBOX")
        uids = []
        for i in range(8):
            _, uid = await a.append(inbox.id, MSG, b"S", flags=i * 5 % 64,
                                    keywords=("$Junk", "work")[: i % 3])
            uids.append(uid)
        rng = random.Random(7)
        for _ in range(60):
            mode = rng.choice(("add", "remove", "replace"))
            change = FlagChange(mode, rng.randrange(64), (),
                                rng.choice((ALL_FLAGS, ALL_FLAGS & ~FLAG_SEEN)),
                                rng.random() < 0.7)
            picked = rng.sample(uids, rng.randint(1, 5))
            before = await a.get_messages(inbox.id, picked)
            since = rng.choice((None, max(m.modseq for m in before) - 1))
            unchanged, failed, updates = plan_flags(before, change, since)
            top = (await a.mailbox_status(inbox.id)).highestmodseq
            result = await (a if rng.random() < 0.5 else b).store_flags(
                inbox.id, picked, change, since)
            assert [m.uid for m in result.unchanged] == [m.uid for m in unchanged]
            assert result.failed_uids == failed
            assert [(m.uid, m.flags, m.keywords) for m in result.changed] == [
                (m.uid, f, k) for f, k, m in updates]
            after = (await a.mailbox_status(inbox.id)).highestmodseq
            assert after == top + (1 if updates else 0)
            assert all(m.modseq == after for m in result.changed)
            now = {m.uid: (m.flags, m.keywords) for m in await b.get_messages(inbox.id, picked)}
            for f, k, m in updates:
                assert now[m.uid] == (f, k)
        # Concurrent: each task sets its own flag on one message, from either node.
        target = uids[0]
        await a.store_flags(inbox.id, [target], FlagChange("replace", 0))
        bits = [1 << i for i in range(5)]  # every system flag (ALL_FLAGS)
        results = await asyncio.gather(*(
            (a if i % 2 else b).store_flags(inbox.id, [target], FlagChange("add", bit))
            for i, bit in enumerate(bits)))
        (m,) = await a.get_messages(inbox.id, [target])
        assert m.flags & ALL_FLAGS == ALL_FLAGS
        assert len({r.changed[0].modseq for r in results}) == len(bits)

    two_nodes(body)


def test_connection_lane_waits_hands_over_and_recovers() -> None:
    """The engine's free list in front of asyncpg's pool (engine.Lane): more callers than
    connections wait and are served; a waiter cancelled meanwhile leaks nothing; a failed
    statement hands its connection back to asyncpg; the lane never holds more than the
    pool's size, and every connection is accounted for at the end."""
    from support.postgres import drop_database, fresh_database

    url = fresh_database()

    async def main() -> None:
        store = await open_store(url, pool_size=2)
        engine = store.engine
        lane = engine.lanes[False]
        try:
            peak = 0

            async def slow(i: int) -> int:
                nonlocal peak
                peak = max(peak, lane.held)
                return int(await engine.read(lambda c: c.fetchval("SELECT $1::int FROM pg_sleep(0.02)", i)))

            tasks = [asyncio.create_task(slow(i)) for i in range(12)]
            await asyncio.sleep(0.005)
            tasks[-1].cancel()  # waiting for a connection when cancelled
            tasks[-2].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert done[:10] == list(range(10))
            assert all(isinstance(d, asyncio.CancelledError) for d in done[10:])
            assert peak <= 2 and lane.held <= 2
            with pytest.raises(Exception, match="syntax"):
                await engine.read(lambda c: c.fetchval("SELEC 1"))
            assert await engine.read(lambda c: c.fetchval("SELECT 7")) == 7
            results = await asyncio.gather(*(engine.write(
                lambda c: c.fetchval("SELECT 1"), transaction=False) for _ in range(8)))
            assert results == [1] * 8
            await asyncio.sleep(0.05)  # drops started by give() finish
            assert lane.held == len(lane.free) <= 2 and not lane.waiters
            # A connection is used at most MAX_USES times, then closed and replaced.
            from postroom.store.postgres import engine as engine_module

            old_max, engine_module.MAX_USES = engine_module.MAX_USES, 3
            try:
                pids = {await engine.read(lambda c: c.fetchval("SELECT pg_backend_pid()"))
                        for _ in range(12)}
            finally:
                engine_module.MAX_USES = old_max
            assert len(pids) >= 4 and all(n < 3 for n in lane.uses.values())
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        drop_database(url)


def test_close_ends_a_statement_that_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's shutdown does not wait for, nor fail on, a statement still running: after
    CLOSE_TIMEOUT the pool is terminated and close() returns."""
    from support.postgres import drop_database, fresh_database

    from postroom.store.postgres import engine as engine_module

    monkeypatch.setattr(engine_module, "CLOSE_TIMEOUT", 0.5)
    url = fresh_database()

    async def main() -> float:
        store = await open_store(url)
        busy = asyncio.create_task(store.engine.read(lambda c: c.fetchval("SELECT pg_sleep(30)")))
        await asyncio.sleep(0.3)  # the statement runs
        started = time.monotonic()
        await store.close()
        took = time.monotonic() - started
        busy.cancel()
        with contextlib.suppress(BaseException):
            await busy
        return took

    try:
        assert asyncio.run(main()) < 10
    finally:
        drop_database(url)


def test_address_lookups_are_cached_and_dropped_on_any_change() -> None:
    """Node A answers a repeated lookup from its cache, and forgets it as soon as node B
    (or any SQL session) changes a domain, user or alias; deliveries, which update the
    users' usage, keep the cache."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        alice = await _user(a)
        # The triggers' notifications of those writes may still drop the cache once.
        deadline = time.monotonic() + 5
        found = await a.lookup_address("alice@example.test")
        while (again := await a.lookup_address("alice@example.test")) is not found:
            assert time.monotonic() < deadline, "lookups are not cached"
            found = again
            await asyncio.sleep(0.05)
        assert found.user is not None and found.user.id == alice.id
        assert (await a.lookup_address("nobody@example.test")).user is None

        async def soon(check: Callable[[], Awaitable[bool]]) -> None:
            deadline = time.monotonic() + 5
            while not await check():
                assert time.monotonic() < deadline, "the change did not reach node A"
                await asyncio.sleep(0.01)

        await b.add_alias("nobody@example.test", ["alice@example.test"])
        await soon(lambda: _targets(a, "nobody@example.test", ("alice@example.test",)))
        await b.deliver(Delivery(data=MSG, summary=b"S", user_ids=(alice.id,)))
        cached = await a.lookup_address("alice@example.test")
        await asyncio.sleep(0.3)  # a delivery's notification has arrived by now: no drop
        assert await a.lookup_address("alice@example.test") is cached
        await b.engine.write(lambda c: c.execute(
            "UPDATE users SET disabled = 1 WHERE address = 'alice@example.test'"))
        await soon(lambda: _disabled(a, "alice@example.test"))
        assert not (await a.lookup_address("x@other.test")).domain_is_local
        await b.add_domain("other.test")
        await soon(lambda: _local(a, "x@other.test"))

    two_nodes(body)


async def _targets(store: PostgresStore, address: str, want: tuple[str, ...]) -> bool:
    return (await store.lookup_address(address)).alias_targets == want


async def _disabled(store: PostgresStore, address: str) -> bool:
    user = (await store.lookup_address(address)).user
    return user is not None and bool(user.disabled)


async def _local(store: PostgresStore, address: str) -> bool:
    return (await store.lookup_address(address)).domain_is_local


def test_queue_entries_are_leased_by_one_node() -> None:
    """Two nodes scanning the queue at the same moment never lease the same entry
    (FOR UPDATE SKIP LOCKED)."""

    async def body(a: PostgresStore, b: PostgresStore) -> None:
        for i in range(60):
            entry = NewQueueEntry(qid=f"Q{i}", sender="", recipients=(QueueRecipient("x@remote.test"),))
            await a.deliver(Delivery(data=MSG, summary=b"", queue=entry))
        now = int(time.time()) + 1
        got: dict[str, list[str]] = {"a": [], "b": []}

        async def scan(store: PostgresStore, name: str) -> None:
            for _ in range(10):
                got[name] += [m.qid for m in await store.queue_due(now, 4, 300, name)]

        await asyncio.gather(scan(a, "a"), scan(b, "b"))
        assert not set(got["a"]) & set(got["b"])
        assert sorted(got["a"] + got["b"]) == sorted(f"Q{i}" for i in range(60))

    two_nodes(body)


def test_schema_versions_are_guarded() -> None:
    from support.postgres import drop_database, fresh_database, shared_cluster

    url = fresh_database()
    db = url.rsplit("/", 1)[1]
    cluster = shared_cluster()
    try:
        async def opens(**kw: Any) -> None:
            store = await open_store(url, **kw)
            await store.close()

        cluster.psql(f"UPDATE meta SET value = '{len(MIGRATIONS) + 1}' WHERE key = 'schema_version'", db)
        with pytest.raises(SchemaTooNew, match="newer than this postroom"):
            asyncio.run(opens())
        cluster.psql(f"UPDATE meta SET value = '{len(MIGRATIONS) - 1}' WHERE key = 'schema_version'", db)
        with pytest.raises(SchemaTooOld, match="postroom migrate"):
            asyncio.run(opens(auto_migrate=False))
    finally:
        drop_database(url)


def test_several_nodes_migrate_an_empty_database_at_once() -> None:
    from support.postgres import drop_database, shared_cluster

    cluster = shared_cluster()
    url = cluster.create_database(f"empty{int(time.time() * 1000) % 10**9}")
    try:
        async def main() -> None:
            stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
            for store in stores:
                await store.close()

        asyncio.run(main())
        assert cluster.psql("SELECT value FROM meta WHERE key = 'schema_version'",
                            url.rsplit("/", 1)[1]).strip() == str(len(MIGRATIONS))
    finally:
        drop_database(url)


def test_an_outage_is_temporary() -> None:
    """PostgreSQL stops: calls raise StoreUnavailable (never hang, never pretend); it
    starts again: the same store works again by itself, and listeners that may have
    missed changes are woken."""
    from support.postgres import PgCluster

    cluster = PgCluster().start()
    try:
        cluster.create_database("outage")
        url = cluster.url("outage")

        async def main() -> None:
            store = await open_store(url)
            other = await open_store(url)
            try:
                u = await _user(store)
                inbox = await store.get_mailbox(u.id, "INBOX")
                woken = asyncio.Event()
                other.changes.subscribe(inbox.id, lambda _c: woken.set())
                cluster.stop("immediate")
                for call in (
                    lambda: store.get_user(u.address),
                    lambda: store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,))),
                    lambda: store.list_messages(inbox.id),
                ):
                    with pytest.raises(StoreUnavailable):
                        await asyncio.wait_for(call(), 30)
                await asyncio.to_thread(cluster.start)
                deadline = time.monotonic() + 30
                while True:
                    try:
                        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,)))
                        break
                    except StoreUnavailable:
                        assert time.monotonic() < deadline, "no recovery"
                        await asyncio.sleep(0.2)
                assert r.placed == [(inbox.id, 1)]
                await asyncio.wait_for(woken.wait(), 30)  # the relay reconnected
                assert other.relay.reconnects >= 1
            finally:
                await store.close()
                await other.close()

        asyncio.run(main())
    finally:
        cluster.destroy()


# -- the S3 blob store --------------------------------------------------------------------


def s3_store(fn: Callable[[PostgresStore], Awaitable[Any]], min_size: int = 0) -> Any:
    from support.postgres import with_store
    from support.s3 import fresh_blobs

    return with_store(lambda store, _url: fn(store), blobs=fresh_blobs(), blob_min_size=min_size)


async def _objects(store: PostgresStore) -> set[str]:
    assert store.blobs is not None
    return set(await store.blobs.listing(time.time() + 3600))


async def _collected(store: PostgresStore) -> None:
    """Collect the garbage: here, or by the store's own collector, which the write that
    made it has woken (a race either may win); then the bucket is empty."""
    deadline = time.monotonic() + 10
    while await store.collect_garbage() == 0 and await _objects(store):
        assert time.monotonic() < deadline, "garbage never collected"
        await asyncio.sleep(0.05)
    assert await _objects(store) == set()


def test_s3_objects_written_before_and_deleted_after_their_rows() -> None:
    async def body(store: PostgresStore) -> None:
        u = await _user(store)
        other = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(u.id, "INBOX")
        big = b"Subject: big\r\n\r\n" + b"y" * 50_000 + b"\r\n"
        r = await store.deliver(Delivery(data=big, summary=summarize(big), user_ids=(u.id, other.id)))
        (name,) = await _objects(store)
        assert await store.read_blob(r.blob_id) == big
        row = await store.engine.read(lambda c: c.fetchrow(
            "SELECT octet_length(data), location FROM blobs WHERE id = $1", r.blob_id))
        assert tuple(row) == (0, name)  # the bytes are only in the bucket
        # FETCH BODY[HEADER] reads a range of the object, not all of it.
        (m,) = await store.read_messages(inbox.id, [1], data=True, header_only=True)
        assert m.data == b"Subject: big\r\n\r\n"
        # One copy gone: the object stays. The last: listed as garbage, then collected.
        await store.expunge(inbox.id, [1])
        assert await _objects(store) == {name}
        await store.expunge((await store.get_mailbox(other.id, "INBOX")).id, [1])
        garbage = await store.engine.read(lambda c: c.fetch("SELECT location FROM blob_garbage"))
        assert [g[0] for g in garbage] == [name]
        await _collected(store)
        assert await _objects(store) == set()
        assert not await store.engine.read(lambda c: c.fetch("SELECT 1 FROM blob_garbage"))

    s3_store(body)


def test_s3_relayed_message_object_collected_after_its_last_recipient() -> None:
    """The queue's record (a server-side function) lists the object of a message only the
    queue held as garbage in the transaction that removes the entry."""

    async def body(store: PostgresStore) -> None:
        entry = NewQueueEntry(qid="QS", sender="", recipients=(QueueRecipient("x@remote.test"),))
        await store.deliver(Delivery(data=MSG, summary=b"", queue=entry))
        (name,) = await _objects(store)
        (q,) = await store.queue_due(int(time.time()) + 1, 10, 300, "n")
        assert await store.queue_record(
            "QS", [RecipientOutcome(q.recipients[0].id, "delivered", "2.0.0", "250 ok")], None, None)
        garbage = await store.engine.read(lambda c: c.fetch("SELECT location FROM blob_garbage"))
        assert [g[0] for g in garbage] == [name]
        await _collected(store)

    s3_store(body)


def test_s3_crash_leaves_orphans_never_dangling_rows() -> None:
    async def body(store: PostgresStore) -> None:
        assert store.blobs is not None
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        kept = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,)))
        # A node dies between its PUT and its COMMIT: an object no row references.
        orphan = await store.blobs.put(b"never committed")
        # A write that fails inside its transaction deletes its object at once.
        await store.set_quota(u.address, None, 1)
        before = await _objects(store)
        with pytest.raises(OverQuota):
            await store.append(inbox.id, MSG, b"S")
        assert await _objects(store) == before
        # The sweep leaves young objects alone (their transaction may still commit) ...
        assert await store.sweep_orphans(grace=3600) == 0
        # ... and deletes old unreferenced ones, never a referenced one.
        assert await store.sweep_orphans(grace=0) == 1
        assert orphan not in await _objects(store)
        assert await store.read_blob(kept.blob_id) == MSG

    s3_store(body)


def test_s3_small_messages_stay_in_the_database() -> None:
    async def body(store: PostgresStore) -> None:
        u = await _user(store)
        small = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,)))
        big_data = MSG + b"z" * 2000
        big = await store.deliver(Delivery(data=big_data, summary=b"S", user_ids=(u.id,)))
        assert len(await _objects(store)) == 1
        assert await store.read_blobs([small.blob_id, big.blob_id]) == {
            small.blob_id: MSG, big.blob_id: big_data}

    s3_store(body, min_size=1024)
