"""Connection.read timeouts with one re-armed timer per connection: every read still
times out at its own deadline, a shorter timeout after a longer one is not late, and a
closed connection keeps no timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from postroom.net.connection import Connection


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(key, default)

    def close(self) -> None:
        pass


async def _idle(conn: Connection) -> None:
    await asyncio.sleep(3600)


def _conn() -> Connection:
    conn = Connection(_idle)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    return conn


def test_reads_time_out_at_their_own_deadline() -> None:
    async def main() -> None:
        conn = _conn()
        loop = asyncio.get_running_loop()
        # data within the timeout: no error, and the timer is kept for the next read
        loop.call_later(0.02, conn.data_received, b"a\r\n")
        assert await conn.read(0.5) == b"a\r\n"
        timer = conn._timer
        assert timer is not None
        loop.call_later(0.02, conn.data_received, b"b\r\n")
        assert await conn.read(0.5) == b"b\r\n"
        # a long timeout armed the timer far away; a shorter one must not wait for it
        loop.call_later(0.01, conn.data_received, b"c\r\n")
        assert await conn.read(60) == b"c\r\n"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.read(0.1)
        assert 0.09 <= time.monotonic() - started < 2
        # a read after the timer fired early for an earlier read still gets its full time
        loop.call_later(0.15, conn.data_received, b"d\r\n")
        assert await conn.read(0.3) == b"d\r\n"
        # no timeout: waits for data as long as it takes
        loop.call_later(0.05, conn.data_received, b"e\r\n")
        assert await conn.read(None) == b"e\r\n"
        conn.connection_lost(None)
        assert conn._timer is None
        assert conn.task is not None
        conn.task.cancel()

    asyncio.run(main())
