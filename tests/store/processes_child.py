"""Child process for tests/store/test_sqlite_processes.py: another process on one database.

Modes (the data folder is the first argument):
* ``lock USER_ID``: take the POP3 maildrop lock of the user, print ``locked``, wait forever;
* ``deliver COUNT WRITERS TAG``: deliver COUNT messages to ``shared@example.test`` from
  WRITERS concurrent tasks (fsync on), print ``done COMMITS JOBS``;
* ``bulk COUNT``: the same without a checkpointer of its own (as a worker process runs),
  print ``done``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from postroom.store.api import Delivery
from postroom.store.sqlite.backend import DB_NAME, SQLiteStore


async def main(data: Path, mode: str, args: list[str]) -> None:
    store = SQLiteStore(data / DB_NAME, fsync=True, checkpoint=mode != "bulk")
    try:
        if mode == "lock":
            assert await store.try_lock_maildrop(int(args[0]))
            print("locked", flush=True)
            await asyncio.sleep(3600)
        user = await store.get_user("shared@example.test")
        assert user is not None
        count = int(args[0])
        writers = int(args[1]) if len(args) > 1 else 10
        tag = args[2] if len(args) > 2 else "x"
        per = count // writers

        async def writer(w: int) -> None:
            for i in range(per):
                data = f"Subject: {tag} {w} {i}\r\n\r\n".encode() + b"x" * 2000 + b"\r\n"
                await store.deliver(Delivery(data=data, summary=b"", user_ids=(user.id,)))

        print("start", flush=True)
        sys.stdin.readline()  # both children start together
        await asyncio.gather(*(writer(w) for w in range(writers)))
        print(f"done {store.engine.commits} {store.engine.jobs}", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    started = time.monotonic()
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
