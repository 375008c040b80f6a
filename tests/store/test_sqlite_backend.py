"""What only the SQLite backend promises: \\Recent marks kept in memory and persisted in
the background, and migration 3 (``message_search``) backfilling existing messages."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from postroom.deliver import summarize
from postroom.store.api import Delivery
from postroom.store.sqlite import open_store
from postroom.store.schema import statements
from postroom.store.sqlite.schema import MIGRATIONS, current_version


async def _user_and_inbox(store: Any) -> tuple[Any, Any]:
    """A user a@example.test in a fresh store, and its INBOX."""
    await store.add_domain("example.test")
    u = await store.add_user("a@example.test", "h", None)
    return u, await store.get_mailbox(u.id, "INBOX")

MSG = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\nSubject: Hello\r\n\r\nhi\r\n"


def test_recent_marks_are_claimed_in_memory_and_persisted(tmp_path: Path) -> None:
    async def first() -> tuple[int, int]:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _user_and_inbox(store)
            for _ in range(3):
                await store.append(inbox.id, MSG, b"S")
            # Claiming never waits for the writer: with the writer thread held up, SELECT's
            # snapshot (and a later claim) still complete.
            gate = threading.Event()
            store.engine.submit(lambda c: gate.wait(10))
            try:
                snap = await asyncio.wait_for(
                    store.mailbox_snapshot(u.id, "INBOX", claim_recent=True), 5)
                assert snap.recent_from == 1
                assert await asyncio.wait_for(store.claim_recent(inbox.id, 4), 5) == 4
            finally:
                gate.set()
            for _ in range(200):  # bounded wait for the background write
                row = await store.engine.read(
                    lambda c: c.execute("SELECT recent_uid FROM mailboxes WHERE id=?",
                                        (inbox.id,)).fetchone())
                if row[0] == 4:
                    break
                await asyncio.sleep(0.01)
            assert row[0] == 4
            await store.append(inbox.id, MSG, b"S")
            assert await store.claim_recent(inbox.id, 5) == 4  # from memory, no read
            return u.id, inbox.id
        finally:
            await store.close()  # flushes the marks not written yet

    user_id, inbox_id = asyncio.run(first())

    async def second() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            snap = await store.mailbox_snapshot(user_id, "INBOX", claim_recent=True)
            assert (snap.recent_from, snap.uidnext) == (5, 5)
            assert (await store.mailbox_status(inbox_id)).recent == 0
        finally:
            await store.close()

    asyncio.run(second())


def test_migration_3_backfills_search_texts(tmp_path: Path) -> None:
    """A database written by the version before ``message_search`` existed."""
    path = tmp_path / "postroom.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS[:2]:
        assert isinstance(step.sqlite, str)
        for statement in statements(step.sqlite):
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES('schema_version', '2')")
    conn.execute("INSERT INTO domains VALUES(1, 'example.test', 0)")
    conn.execute("INSERT INTO users(id, domain_id, address, password_hash, created) "
                 "VALUES(1, 1, 'a@example.test', 'h', 0)")
    conn.execute("INSERT INTO mailboxes(id, user_id, name, uidvalidity, uidnext) "
                 "VALUES(1, 1, 'INBOX', 1, 4), (2, 1, 'Archive', 2, 2)")
    other = b"From: Bob <bob@example.org>\r\nSubject: Lunch\r\n\r\nx\r\n"
    conn.execute("INSERT INTO blobs VALUES(1, ?, 2, ?, ?)", (len(MSG), summarize(MSG), MSG))
    conn.execute("INSERT INTO blobs VALUES(2, ?, 1, ?, ?)", (len(other), b"[99]", other))
    conn.execute("INSERT INTO blobs VALUES(3, ?, 1, ?, ?)", (len(other), b"", other))
    for mailbox_id, uid, blob_id in ((1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 1)):
        conn.execute("INSERT INTO messages(mailbox_id, uid, blob_id, size, internaldate, modseq) "
                     "VALUES(?, ?, ?, 10, 0, 1)", (mailbox_id, uid, blob_id))
    conn.close()

    async def check() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            assert await store.engine.read(current_version) == len(MIGRATIONS)
            assert await store.search_envelope(1, [("from", "jürgen"), ("from", "BOB"),
                                                   ("subject", "lunch")]) == [[1], [2, 3], [2, 3]]
            assert await store.search_envelope(2, [("subject", "hello")]) == [[1]]
            # and new deliveries get their row as before
            d = await store.deliver(Delivery(data=other, summary=summarize(other), user_ids=(1,)))
            assert await store.search_envelope(1, [("from", "bob")]) == [[2, 3, d.placed[0][1]]]
        finally:
            await store.close()

    asyncio.run(check())


def test_header_only_reads_stop_at_the_body(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _user_and_inbox(store)
            big = b"Subject: big\r\n\r\n" + b"y" * 100_000 + b"\r\n"
            await store.append(inbox.id, big, summarize(big))
            await store.append(inbox.id, big, b"[99]")  # unknown format: read it all
            a, b = await store.read_messages(inbox.id, [1, 2], data=True, header_only=True)
            assert a.data == b"Subject: big\r\n\r\n"
            assert b.data == big
        finally:
            await store.close()

    asyncio.run(main())


def test_small_reads_run_inline_and_big_bodies_still_arrive_whole(tmp_path: Path) -> None:
    """read_messages of a few messages is a point read on the loop's thread, but never
    reads more than INLINE_BYTES of a message there: bigger bodies come from a reader
    thread, and the caller cannot tell the difference."""
    from postroom.store.sqlite import backend

    async def main() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _user_and_inbox(store)
            small = b"Subject: small\r\n\r\nx\r\n"
            big = b"Subject: big\r\n\r\n" + b"y" * (backend.INLINE_BYTES + 10) + b"\r\n"
            for data in (small, big, small):
                await store.append(inbox.id, data, summarize(data))
            threads: list[str] = []
            real = store.engine._run_read

            def spy(fn):  # type: ignore[no-untyped-def]
                threads.append(threading.current_thread().name)
                return real(fn)

            store.engine._run_read = spy  # type: ignore[method-assign]
            got = await store.read_messages(inbox.id, [1, 3], data=True, summary=True)
            assert [c.data for c in got] == [small, small] and threads == []
            got = await store.read_messages(inbox.id, [1, 2, 3, 9], data=True)
            assert [c.meta.uid for c in got] == [1, 2, 3] and [c.data for c in got] == [small, big, small]
            assert len(threads) == 1  # only the big body went to a reader thread
            got = await store.read_messages(inbox.id, [1, 2, 3, 4, 5], data=True)
            assert [c.data for c in got] == [small, big, small] and len(threads) == 2
        finally:
            await store.close()

    asyncio.run(main())


def test_snapshot_cache_is_never_stale(tmp_path: Path) -> None:
    """Every kind of change to a mailbox's messages must miss the snapshot cache: after
    each one, the cached snapshot equals a fresh scan (cache emptied)."""
    from postroom.store.api import FlagChange

    async def main() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _user_and_inbox(store)
            archive = await store.get_mailbox(u.id, "Archive")
            for _ in range(100):  # above MIN_MESSAGES, so the snapshot is cached
                await store.deliver(Delivery(data=MSG, summary=summarize(MSG), user_ids=(u.id,)))

            async def check(name: str = "INBOX") -> None:
                cached = await store.mailbox_snapshot(u.id, name)
                again = await store.mailbox_snapshot(u.id, name)
                store.snapshots = type(store.snapshots)()  # a fresh, empty cache
                fresh = await store.mailbox_snapshot(u.id, name)
                for snap in (cached, again):
                    assert snap is not None and fresh is not None
                    assert (snap.id, snap.uidnext, snap.highestmodseq) == \
                        (fresh.id, fresh.uidnext, fresh.highestmodseq)
                    assert list(snap.uids) == list(fresh.uids)
                    assert snap.flags == fresh.flags and snap.keywords == fresh.keywords

            await check()
            assert store.snapshots.hits >= 0 and len(store.snapshots) == 1
            hits = store.snapshots.hits
            await store.mailbox_snapshot(u.id, "INBOX")
            assert store.snapshots.hits == hits + 1  # unchanged mailbox: served from the cache
            # Callers get their own UID array: changing it leaves the cache intact.
            mine = await store.mailbox_snapshot(u.id, "INBOX")
            mine.uids.append(99999)
            await check()

            await store.store_flags(inbox.id, [3, 4], FlagChange("add", 1))
            await check()
            await store.store_flags(inbox.id, [5], FlagChange("add", 0, ("$Label1",)))
            await check()
            await store.append(inbox.id, MSG, summarize(MSG))
            await check()
            await store.expunge(inbox.id, [1, 2])
            await check()
            await store.copy_messages(inbox.id, [6, 7], archive.id)
            await check()
            await store.move_messages(inbox.id, [8, 9], archive.id)
            await check()
            await check("Archive")
            await store.deliver(Delivery(data=MSG, summary=summarize(MSG), user_ids=(u.id,)))
            await check()
            await store.rename_mailbox(u.id, "INBOX", "Old")
            await check()
            await check("Old")
        finally:
            await store.close()

    asyncio.run(main())


def test_a_failing_write_undoes_only_itself_alone_or_in_a_batch(tmp_path: Path) -> None:
    """Group commit: a job that raises is rolled back (its SAVEPOINT in a batch, the whole
    transaction when it is alone) and the other jobs of its batch still commit."""

    def insert_then(name: str, fail: bool):  # type: ignore[no-untyped-def]
        def job(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO domains(name, created) VALUES(?, 0)", (name,))
            if fail:
                raise ValueError(name)
            return name

        return job

    async def run() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            # alone in its transaction
            with pytest.raises(ValueError, match="alone.test"):
                await store.engine.write(insert_then("alone.test", True))
            assert await store.get_domain("alone.test") is None
            # in one batch with others: hold the writer so the four queue up together
            gate = threading.Event()
            store.engine.submit(lambda c: gate.wait(10))
            jobs = [
                asyncio.ensure_future(store.engine.write(insert_then(f"b{i}.test", i == 2)))
                for i in range(4)
            ]
            await asyncio.sleep(0.05)
            commits = store.engine.commits
            gate.set()
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert [type(r).__name__ for r in results] == ["str", "str", "ValueError", "str"]
            assert store.engine.commits - commits <= 2  # the gate's batch, then theirs
            names = {d.name for d in await store.list_domains()}
            assert names == {"b0.test", "b1.test", "b3.test"}
            # and the writer goes on
            assert await store.engine.write(insert_then("after.test", False)) == "after.test"
        finally:
            await store.close()

    asyncio.run(run())
