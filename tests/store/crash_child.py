"""Child process for the store crash test: deliver numbered messages forever, print acks.

Each message's body carries its number and a padding whose SHA-256 is in the Subject, so
the parent can tell a complete message from a partial one. An ack line is printed (and
flushed) only after ``Store.deliver`` returned, i.e. after the commit was durable.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from postroom.store.api import Delivery
from postroom.store.sqlite import open_store


def make_message(n: int) -> bytes:
    pad = (b"%08d" % n) * (200 + n % 700)
    digest = hashlib.sha256(pad).hexdigest()
    return b"Subject: %d %s\r\n\r\n" % (n, digest.encode()) + pad + b"\r\n"


async def main(data_dir: Path, start: int, writers: int) -> None:
    store = open_store(data_dir, fsync=True)
    user = await store.get_user("crash@example.test")
    if user is None:
        if await store.get_domain("example.test") is None:
            await store.add_domain("example.test")
        user = await store.add_user("crash@example.test", "h", None)
    print("ready", flush=True)
    counter = iter(range(start, 10**9))

    async def writer() -> None:
        while True:
            n = next(counter)
            await store.deliver(Delivery(data=make_message(n), summary=b"s", user_ids=(user.id,)))
            os.write(1, b"ack %d\n" % n)

    await asyncio.gather(*(writer() for _ in range(writers)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
