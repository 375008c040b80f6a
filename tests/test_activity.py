"""The recent delivery log buffer: bounded in memory, written in batches, bounded on disk."""

from __future__ import annotations

from typing import Any

from postroom import activity
from postroom.activity import DeliveryLog


def test_buffer_is_bounded_and_flushed(store_run: Any) -> None:
    async def body(store: Any) -> None:
        log = DeliveryLog(keep=5)
        for i in range(activity.MAX_PENDING + 3):
            log.record("in", f"q{i}", "a@x.test", "b@y.test", "accepted", "250")
        assert len(log.pending) == activity.MAX_PENDING and log.dropped == 3
        log.record("out", "long", "s" * 2000, "r@y.test", "deferred", "d" * 2000)
        assert len(log.pending[-1].sender) == activity.MAX_FIELD
        log.start(store)
        await log.stop()  # stops the task and flushes what is left
        assert log.pending == []
        entries = await store.list_delivery_log(100)
        assert len(entries) == 5 and entries[0].qid == "long"  # the table keeps the newest 5
        off = DeliveryLog(keep=0)
        off.record("in", "q", "a", "b", "accepted")
        assert off.pending == []

    store_run(body)
