"""Full garbage collections on a timer (gc_pacing.py): none started by the allocator,
one per period from the loop, and the collector as it was afterwards."""

from __future__ import annotations

import asyncio
import gc

from postroom import gc_pacing


def _promote_many() -> None:
    """Containers that live long enough to reach the oldest generation, then die: what
    makes the default thresholds start full collections."""
    keep = []
    for _ in range(400):
        junk = [[] for _ in range(1000)]
        for a, b in zip(junk, junk[1:], strict=False):
            a.append(b)
            b.append(a)
        keep.append(junk)
    keep.clear()


def test_full_collections_run_on_the_timer_only() -> None:
    full: list[str] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append("full")

    before = gc.get_threshold()

    async def main() -> None:
        task = asyncio.ensure_future(gc_pacing.run(every=0.2))
        await asyncio.sleep(0.01)
        assert gc.get_threshold()[2] > 1_000_000 and gc.get_freeze_count() > 0
        full.clear()
        _promote_many()
        assert full == []  # no full collection from the allocations themselves
        await asyncio.sleep(0.3)
        assert full, "no full collection on the timer"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    gc.callbacks.append(seen)
    try:
        _promote_many()
        assert full, "the default thresholds start full collections (the test's premise)"
        asyncio.run(main())
    finally:
        gc.callbacks.remove(seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
