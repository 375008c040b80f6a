"""Large bodies in body files (store/sqlite/bodies.py): written once, read back whole by
every read path, never referenced before they are on disk, and their space reclaimed."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from postroom.deliver import summarize
from postroom.store.api import Delivery, NewMessage, StoreError
from postroom.store.sqlite import bodies, open_store
from postroom.store.sqlite.backend import DB_NAME


def _message(n: int, size: int) -> bytes:
    head = f"From: a@example.test\r\nSubject: body {n}\r\nMessage-ID: <{n}@example.test>\r\n\r\n"
    line = f"line of message {n} ".encode().ljust(76, b"x") + b"\r\n"
    return head.encode() + line * (size // len(line))


async def _setup(store: Any) -> tuple[Any, Any]:
    await store.add_domain("example.test")
    u = await store.add_user("a@example.test", "h", None)
    return u, await store.get_mailbox(u.id, "INBOX")


def _rows(tmp_path: Path) -> list[tuple[int, int, str | None, int]]:
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        return c.execute("SELECT id, size, location, length(data) FROM blobs ORDER BY id").fetchall()


def _segments(tmp_path: Path) -> list[str]:
    folder = tmp_path / bodies.DIR_NAME
    return sorted(p.name for p in folder.glob("*.seg")) if folder.is_dir() else []


def test_large_bodies_go_to_a_file_and_every_read_path_returns_them(tmp_path: Path) -> None:
    big, small = _message(1, 100_000), _message(2, 2_000)
    other = [_message(n, 40_000 + n) for n in range(3, 7)]

    async def run() -> None:
        store = open_store(tmp_path, fsync=True)
        try:
            u, inbox = await _setup(store)
            await store.deliver(Delivery(data=big, summary=summarize(big), user_ids=(u.id,)))
            await store.deliver(Delivery(data=small, summary=summarize(small), user_ids=(u.id,)))
            await store.append(inbox.id, other[0], summarize(other[0]))
            await store.append_many(inbox.id, [NewMessage(m, summarize(m)) for m in other[1:]] +
                                    [NewMessage(small, summarize(small))])
            want = [big, small, *other, small]
            metas = await store.list_messages(inbox.id)
            assert [m.size for m in metas] == [len(m) for m in want]
            uids = [m.uid for m in metas]
            # one by one (the point read on the loop's thread) and all at once (a reader)
            for uid, data in zip(uids, want, strict=True):
                (c,) = await store.read_messages(inbox.id, [uid], data=True)
                assert c.data == data
                (h,) = await store.read_messages(inbox.id, [uid], data=True, header_only=True)
                assert h.data is not None and data.startswith(h.data)
                if len(data) >= bodies.FILE_MIN:  # small ones come whole (one statement)
                    assert h.data.endswith(b"\r\n\r\n") and len(h.data) < 200
            many = await store.read_messages(inbox.id, uids, data=True, summary=True)
            assert [c.data for c in many] == want
            blobs = await store.read_blobs([m.blob_id for m in metas])
            assert [blobs[m.blob_id] for m in metas] == want
        finally:
            await store.close()

    asyncio.run(run())
    rows = _rows(tmp_path)
    filed = [r for r in rows if r[2] is not None]
    assert len(filed) == 5 and all(r[3] == 0 and r[1] >= bodies.FILE_MIN for r in filed)
    assert all(r[2] is None and r[3] == r[1] for r in rows if r[1] < bodies.FILE_MIN)
    (segment,) = _segments(tmp_path)  # one process, one segment
    assert (tmp_path / bodies.DIR_NAME / segment).stat().st_size == sum(r[1] for r in filed)


def test_a_body_that_cannot_be_written_fails_its_delivery_only(tmp_path: Path) -> None:
    big, small = _message(1, 60_000), _message(2, 1_000)
    (tmp_path / bodies.DIR_NAME).write_bytes(b"not a folder")  # every segment write fails

    async def run() -> None:
        store = open_store(tmp_path, fsync=True)
        try:
            u, inbox = await _setup(store)
            results = await asyncio.gather(
                store.deliver(Delivery(data=big, summary=summarize(big), user_ids=(u.id,))),
                store.deliver(Delivery(data=small, summary=summarize(small), user_ids=(u.id,))),
                return_exceptions=True,
            )
            assert isinstance(results[0], sqlite3.OperationalError)
            assert "message body not stored" in str(results[0])
            assert not isinstance(results[1], BaseException)
            metas = await store.list_messages(inbox.id)
            assert [m.size for m in metas] == [len(small)]  # nothing refers to the lost body
        finally:
            await store.close()

    asyncio.run(run())
    assert [r[1] for r in _rows(tmp_path)] == [len(small)]


def test_sweep_deletes_dead_segments_and_compacts_sparse_ones(tmp_path: Path) -> None:
    msgs = [_message(n, 50_000) for n in range(8)]

    async def fill() -> tuple[int, int]:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _setup(store)
            for m in msgs[:4]:  # segment A: all four will go
                await store.deliver(Delivery(data=m, summary=summarize(m), user_ids=(u.id,)))
            return u.id, inbox.id
        finally:
            await store.close()

    async def more(inbox_id: int, user_id: int) -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            for m in msgs[4:]:  # segment B: one of four stays
                await store.deliver(Delivery(data=m, summary=summarize(m), user_ids=(user_id,)))
            uids = [m.uid for m in await store.list_messages(inbox_id)]
            await store.expunge(inbox_id, uids[:7])
        finally:
            await store.close()

    async def sweep_and_read(inbox_id: int, grace: float) -> tuple[bodies.SweepReport, list[bytes]]:
        store = open_store(tmp_path, fsync=False)
        try:
            report = store.engine.sweep_bodies(grace=grace)
            found = await store.read_messages(
                inbox_id, [m.uid for m in await store.list_messages(inbox_id)], data=True)
            return report, [c.data for c in found if c.data is not None]
        finally:
            await store.close()

    user_id, inbox_id = asyncio.run(fill())
    asyncio.run(more(inbox_id, user_id))
    a, b = _segments(tmp_path)
    report, left = asyncio.run(sweep_and_read(inbox_id, grace=3600))
    assert report.deleted == report.compacted == [] and left == [msgs[7]]  # too young
    report, left = asyncio.run(sweep_and_read(inbox_id, grace=0))
    assert report.deleted == [a] and report.compacted == [b] and report.moved == 1
    assert left == [msgs[7]]  # now read from the database
    assert _segments(tmp_path) == [b]
    assert [r[2] for r in _rows(tmp_path)] == [None]
    report, left = asyncio.run(sweep_and_read(inbox_id, grace=0))
    assert report.deleted == [b] and _segments(tmp_path) == [] and left == [msgs[7]]


def test_sweep_deletes_nothing_while_a_backup_holds_the_lock(tmp_path: Path) -> None:
    m = _message(1, 50_000)

    async def fill_and_drop() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _setup(store)
            await store.deliver(Delivery(data=m, summary=summarize(m), user_ids=(u.id,)))
            await store.expunge(inbox.id, [1])
        finally:
            await store.close()

    asyncio.run(fill_and_drop())
    store = open_store(tmp_path, fsync=False)
    try:
        held = bodies.backup_lock(tmp_path)
        assert held is not None
        try:
            report = store.engine.sweep_bodies(grace=0)
            assert report.skipped_for_backup and report.deleted == [] and len(_segments(tmp_path)) == 1
        finally:
            os.close(held)
        assert len(store.engine.sweep_bodies(grace=0).deleted) == 1
    finally:
        store.close_sync()


def test_a_missing_or_short_body_file_is_a_clear_error(tmp_path: Path) -> None:
    m = _message(1, 50_000)

    async def run() -> None:
        store = open_store(tmp_path, fsync=False)
        try:
            u, inbox = await _setup(store)
            await store.deliver(Delivery(data=m, summary=summarize(m), user_ids=(u.id,)))
            (segment,) = _segments(tmp_path)
            path = tmp_path / bodies.DIR_NAME / segment
            os.truncate(path, 1000)
            with pytest.raises(StoreError, match="short"):
                await store.read_messages(inbox.id, [1], data=True)
            path.unlink()
            with pytest.raises(StoreError, match="gone"):
                await store.read_blobs([1])
        finally:
            await store.close()

    asyncio.run(run())


def test_locations_are_checked_before_a_file_is_opened(tmp_path: Path) -> None:
    files = bodies.BodyFiles(tmp_path, fsync=False)
    (tmp_path / "secret").write_bytes(b"x" * 10)
    for bad in ("../secret@0", "secret@0", "0-1-abcdef.seg@-1", "0-1-abcdef.seg"):
        with pytest.raises(StoreError, match="bad body location"):
            files.read(bad, 5)


def test_bodies_that_arrive_while_the_writer_waits_for_the_lock_join_the_next_batch(
    tmp_path: Path,
) -> None:
    """The writer writes a batch's bodies before it takes the cross-process lock; jobs
    with bodies gathered once it holds the lock go to the next batch (their octets are
    not on disk yet). Here another process's lock holds the writer up meanwhile."""
    msgs = [_message(n, 40_000 if n % 2 else 1_000) for n in range(12)]

    async def run() -> None:
        store = open_store(tmp_path, fsync=True)
        try:
            u, inbox = await _setup(store)
            lock = os.open(str(tmp_path / DB_NAME) + ".writelock", os.O_RDWR)
            fcntl.flock(lock, fcntl.LOCK_EX)  # as another process's writer would
            try:
                first = asyncio.ensure_future(store.deliver(
                    Delivery(data=msgs[1], summary=summarize(msgs[1]), user_ids=(u.id,))))
                await asyncio.sleep(0.2)  # the writer has the first job, waits for the lock
                rest = [asyncio.ensure_future(store.deliver(
                    Delivery(data=m, summary=summarize(m), user_ids=(u.id,)))) for m in msgs[2:]]
                await asyncio.sleep(0.1)
                assert not first.done()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
                os.close(lock)
            await asyncio.wait_for(asyncio.gather(first, *rest), 30)
            found = await store.read_messages(
                inbox.id, [m.uid for m in await store.list_messages(inbox.id)], data=True)
            assert sorted(c.data for c in found) == sorted(msgs[1:])  # type: ignore[type-var]
        finally:
            await store.close()

    asyncio.run(run())
    assert sum(1 for r in _rows(tmp_path) if r[2] is not None) == 6


def test_append_writes_more_buffers_than_one_pwritev_takes(tmp_path: Path) -> None:
    files = bodies.BodyFiles(tmp_path / bodies.DIR_NAME, fsync=True)
    try:
        parts = [bytes([n % 251]) * (n % 7 + 1) for n in range(1300)]
        locations = files.append(parts)
        assert [files.read(loc, len(p)) for loc, p in zip(locations, parts, strict=True)] == parts
        assert len(set(map(bodies.segment_name, locations))) == 1
    finally:
        files.close()


def test_the_sweep_never_deletes_a_segment_a_writer_still_appends_to(tmp_path: Path) -> None:
    """Whatever the clocks say: the writer's shared lock on its segment keeps it."""
    store = open_store(tmp_path, fsync=False)
    writer = bodies.BodyFiles(tmp_path / bodies.DIR_NAME, fsync=False)  # another process's
    try:
        writer.append([b"x" * 100])  # no row names it: dead, and idle for grace=0
        assert store.engine.sweep_bodies(grace=0).deleted == []
        assert _segments(tmp_path) == [writer.current]
        writer.close()  # the writer moved on (or died)
        assert len(store.engine.sweep_bodies(grace=0).deleted) == 1
        assert _segments(tmp_path) == []
    finally:
        writer.close()
        store.close_sync()


def test_body_files_belong_to_the_data_folders_owner(tmp_path: Path) -> None:
    """A CLI command run as root (``postroom queue bounce``) may write a body: the file
    must stay readable by the server's own user."""
    data = tmp_path / "data"
    data.mkdir()
    nobody = (65534, 65534)
    if os.geteuid() == 0:
        os.chown(data, *nobody)
    files = bodies.BodyFiles(data / bodies.DIR_NAME, fsync=False)
    try:
        (location,) = files.append([b"y" * 10])
        segment = data / bodies.DIR_NAME / bodies.segment_name(location)
        want = nobody if os.geteuid() == 0 else (os.getuid(), os.getgid())
        for path in (segment, segment.parent):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == want, path
        assert oct(segment.stat().st_mode & 0o777) == "0o600"
    finally:
        files.close()
