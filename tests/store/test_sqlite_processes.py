"""Several processes on one SQLite database, as the worker processes of ``server.workers``
run: POP3 maildrop locks across processes (and released by SIGKILL), group commit across
processes under the engine's write lock, and checkpoints of other processes' commits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from postroom.store.sqlite import open_store
from postroom.store.sqlite.backend import DB_NAME

CHILD = Path(__file__).with_name("processes_child.py")


def _child(data: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(data), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def _setup(data: Path) -> None:
    async def run() -> None:
        store = open_store(data, fsync=False)
        await store.add_domain("example.test")
        await store.add_user("shared@example.test", "h", None)
        await store.close()

    asyncio.run(run())


def test_maildrop_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    _setup(tmp_path)
    child = _child(tmp_path, "lock", "7")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"

        async def attempts() -> list[bool]:
            store = open_store(tmp_path, fsync=False)
            try:
                out = [await store.try_lock_maildrop(7), await store.try_lock_maildrop(8)]
                child.kill()  # SIGKILL: the kernel drops the child's record lock
                child.wait()
                out.append(await store.try_lock_maildrop(7))
                out.append(await store.try_lock_maildrop(7))  # this process holds it now
                await store.unlock_maildrop(7)
                out.append(await store.try_lock_maildrop(7))
                return out
            finally:
                await store.close()

        assert asyncio.run(attempts()) == [False, True, True, False, True]
    finally:
        child.kill()
        child.wait()


def test_two_processes_share_group_commit_and_allocate_uids_in_order(tmp_path: Path) -> None:
    _setup(tmp_path)
    children = [_child(tmp_path, "deliver", "200", "10", tag) for tag in ("a", "b")]
    try:
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "start"
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        results = []
        for c in children:
            out, _ = c.communicate(timeout=120)
            assert c.returncode == 0
            _, commits, jobs = out.split()
            results.append((int(commits), int(jobs)))
    finally:
        for c in children:
            c.kill()
    assert sum(j for _, j in results) == 400
    # 20 concurrent deliveries in two processes: far fewer commits (fsyncs) than messages
    assert sum(c for c, _ in results) < 400 / 2, results

    async def read() -> tuple[list[int], list[bytes]]:
        store = open_store(tmp_path, fsync=False)
        try:
            user = await store.get_user("shared@example.test")
            inbox = await store.get_mailbox(user.id, "INBOX")
            msgs = await store.list_messages(inbox.id)
            blobs = await store.read_blobs([m.blob_id for m in msgs])
            return [m.uid for m in msgs], [blobs[m.blob_id].split(b"\r\n", 1)[0] for m in msgs]
        finally:
            await store.close()

    uids, subjects = asyncio.run(read())
    assert uids == list(range(1, 401))
    assert len(set(subjects)) == 400
    assert {s.split()[1] for s in subjects} == {b"a", b"b"}


def test_the_checkpointer_copies_what_other_processes_commit(tmp_path: Path) -> None:
    _setup(tmp_path)
    db = tmp_path / DB_NAME

    async def watch() -> int:
        store = open_store(tmp_path, fsync=False)  # the one process with a checkpointer
        try:
            before = os.path.getsize(db)
            child = _child(tmp_path, "bulk", "400", "10")
            assert child.stdout is not None and child.stdout.readline().strip() == "start"
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            out = await asyncio.get_running_loop().run_in_executor(None, child.communicate)
            assert child.returncode == 0 and out[0].startswith("done")
            deadline = time.monotonic() + 10
            while os.path.getsize(db) <= before + 400 * 2000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return os.path.getsize(db) - before
        finally:
            await store.close()

    # the child never checkpoints; the pages reached the database file all the same
    assert asyncio.run(watch()) > 400 * 2000
