"""The SQLite engine's commit path: a write is flushed to disk, outside the cross-process
write lock, before its caller hears of it (see postroom.store.sqlite.engine)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sqlite3
from pathlib import Path

import pytest

from postroom.store.sqlite.engine import Engine


def _make(engine: Engine) -> None:
    async def go() -> None:
        await engine.write(lambda c: c.execute("CREATE TABLE t (v INTEGER)"))

    asyncio.run(go())


def test_a_write_is_flushed_after_the_lock_is_released_and_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "s.db"
    engine = Engine(db, fsync=True, checkpoint=False)
    try:
        _make(engine)
        events: list[str] = []
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            # Another writer (a worker process) can take the lock while this one flushes.
            probe = os.open(str(db) + ".writelock", os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe, fcntl.LOCK_UN)
                events.append(f"sync {Path(target).name} unlocked")
            except BlockingIOError:
                events.append(f"sync {Path(target).name} locked")
            finally:
                os.close(probe)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)

        async def go() -> None:
            await engine.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
            events.append("returned")

        asyncio.run(go())
        assert events == ["sync s.db-wal unlocked", "returned"]
        # SQLite's own commit leaves the flush to the engine...
        assert engine._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        engine.close()
    # ...and the row is there for a fresh connection.
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
    conn.close()


def test_a_failed_flush_is_the_callers_error_not_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(tmp_path / "s.db", fsync=True, checkpoint=False)
    try:
        _make(engine)

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "fdatasync", broken)

        async def go() -> None:
            with pytest.raises(sqlite3.OperationalError, match="not made durable"):
                await engine.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))

        asyncio.run(go())
    finally:
        monkeypatch.undo()
        engine.close()


def test_without_fsync_nothing_is_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(tmp_path / "s.db", fsync=False, checkpoint=False)
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    try:
        _make(engine)
        assert engine._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 0
    finally:
        engine.close()
    assert calls == []
