"""SIGKILL a process that delivers in a loop, 20 times: acknowledged deliveries survive whole."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from postroom.store.sqlite import open_store

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = int(os.environ.get("POSTROOM_CRASH_ROUNDS", "20"))


def _run_child(data_dir: Path, start: int, kill_after: float) -> set[int]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(start), "8"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"ready\n", line
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    out = proc.stdout.read()
    proc.wait()
    return {int(m) for m in re.findall(rb"ack (\d+)", out)}


def _check(data_dir: Path) -> dict[int, int]:
    async def read() -> dict[int, int]:
        store = open_store(data_dir, fsync=True)
        try:
            user = await store.get_user("crash@example.test")
            inbox = await store.get_mailbox(user.id, "INBOX")
            msgs = await store.list_messages(inbox.id)
            blobs = await store.read_blobs([m.blob_id for m in msgs])
            found: dict[int, int] = {}
            for m in msgs:
                data = blobs[m.blob_id]
                assert len(data) == m.size
                head, _, body = data.partition(b"\r\n\r\n")
                _, n, digest = head.split(b" ")
                pad = body[:-2]
                assert hashlib.sha256(pad).hexdigest().encode() == digest, "partial message visible"
                found[int(n)] = found.get(int(n), 0) + 1
            uids = [m.uid for m in msgs]
            assert uids == sorted(set(uids))
            return found
        finally:
            await store.close()

    return asyncio.run(read())


def test_sigkill_during_deliveries(tmp_path: Path) -> None:
    rng = random.Random(1234)
    acked: set[int] = set()
    start = 0
    for _ in range(ROUNDS):
        acked |= _run_child(tmp_path, start, rng.uniform(0.05, 0.4))
        start += 1_000_000  # each round numbers its messages apart
        found = _check(tmp_path)
        missing = acked - set(found)
        assert not missing, f"acknowledged deliveries lost: {sorted(missing)[:10]}"
        assert all(v == 1 for v in found.values())
    assert len(acked) > ROUNDS, "the child should have acknowledged deliveries"
