"""Argon2 slots given out in turn per client address (net/auth.py FairSlots)."""

from __future__ import annotations

import asyncio

from postroom.net.auth import FairSlots


def test_a_free_slot_goes_to_the_next_address_not_the_longest_queue() -> None:
    async def run() -> list[str]:
        slots = FairSlots(1)
        order: list[str] = []
        await slots.acquire("flood")  # held

        async def one(key: str) -> None:
            await slots.acquire(key)
            order.append(key)
            await asyncio.sleep(0)
            slots.release()

        tasks = [asyncio.create_task(one("flood")) for _ in range(20)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("good")))
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(run())
    assert order.index("good") <= 1, order  # not behind the 20 queued guesses
    assert len(order) == 21


def test_work_conserving_and_cancelled_waiters_leave_no_trace() -> None:
    async def run() -> None:
        slots = FairSlots(2)
        await slots.acquire("a")
        await slots.acquire("a")  # one address alone may use every slot
        waiter = asyncio.create_task(slots.acquire("b"))
        await asyncio.sleep(0)
        assert slots.waiting("b") == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert slots.waiting("b") == 0
        slots.release()
        slots.release()
        await asyncio.wait_for(slots.acquire("c"), 1)
        await asyncio.wait_for(slots.acquire("c"), 1)  # both slots came back

    asyncio.run(run())
