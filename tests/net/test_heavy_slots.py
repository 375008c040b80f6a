"""The heavy-command slots (net/heavy_slots.py) through real budgets on a real event loop:
no heavy command starves while others of the same user keep the slots (issue 9: THREAD,
FETCH 1:* and APPEND waited behind SEARCHes), and another user gets a slot at the next
slice end. Each test runs for well under a second."""

from __future__ import annotations

import asyncio
import time

from postroom.net import budget
from postroom.net.budget import HEAVY_SLOTS
from postroom.net.heavy_slots import HeavySlots


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # work on the loop, as a slice of a real command does
        pass


async def _hog(owner: str, seconds: float, done: list[str], name: str) -> None:
    """A long heavy command: slices of work until ``seconds`` have passed."""
    with budget.scope(30.0, owner):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await budget.tick()
            _spin(0.001)
    done.append(name)


async def _stop(tasks: list[asyncio.Future[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_command_that_gave_its_slot_back_is_not_starved_by_younger_ones() -> None:
    """The victim starts first, takes a slot, gives it back to wait (for a worker process
    or its client), then needs it again while hogs of the same user hold both slots for
    a long time: it gets one back at the next slice end, not after them."""

    async def main() -> float:
        done: list[str] = []

        async def victim() -> float:
            with budget.scope(30.0, "user") as b:
                await b.heavy()
                with budget.paused():  # waiting for a worker: the slot is free meanwhile
                    await asyncio.sleep(0.05)
                started = time.monotonic()
                for _ in range(20):  # the rest of its work: a few slices
                    await budget.tick()
                    _spin(0.001)
                return time.monotonic() - started

        task = asyncio.ensure_future(victim())
        await asyncio.sleep(0.01)  # the victim holds a slot, then pauses
        hogs = [asyncio.ensure_future(_hog("user", 1.0, done, f"hog{i}")) for i in range(4)]
        took = await task
        assert done == []  # it finished while the hogs still ran
        await _stop(hogs)
        return took

    took = asyncio.run(main())
    assert took < 0.4, f"waited {took:.2f} s behind younger commands"


def test_another_user_gets_a_slot_while_one_user_holds_them_all() -> None:
    async def main() -> float:
        done: list[str] = []
        hogs = [asyncio.ensure_future(_hog("alice", 1.0, done, f"a{i}"))
                for i in range(HEAVY_SLOTS + 2)]
        await asyncio.sleep(0.05)  # alice holds every slot, more of hers wait
        started = time.monotonic()
        await _hog("bob", 0.02, done, "bob")
        took = time.monotonic() - started
        assert done == ["bob"]
        await _stop(hogs)
        return took

    took = asyncio.run(main())
    assert took < 0.4, f"bob waited {took:.2f} s"


def test_slots_rank_by_owner_share_then_age() -> None:
    async def main() -> list[str]:
        slots = HeavySlots(2)
        order: list[str] = []
        assert slots.try_acquire("a") and slots.try_acquire("a")
        assert slots.should_yield(5, "a") is False  # nobody waits

        async def wait(name: str, ticket: int, owner: str) -> None:
            await slots.acquire(ticket, owner)
            order.append(name)

        tasks = [asyncio.ensure_future(wait("a-old", 1, "a")),
                 asyncio.ensure_future(wait("a-new", 9, "a")),
                 asyncio.ensure_future(wait("b", 7, "b"))]
        await asyncio.sleep(0)
        # b holds nothing: it ranks before a holder of "a" (which holds two); an older
        # command of "a" ranks before a younger holder of "a"
        assert slots.should_yield(8, "a") is True
        assert slots.held_by("a") == 2 and slots.waiting == 3
        slots.release("a")
        await asyncio.sleep(0)
        slots.release("a")
        await asyncio.sleep(0)
        slots.release("b")
        await asyncio.sleep(0)
        slots.release("a")
        await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["b", "a-old", "a-new"]


def test_a_cancelled_wait_passes_its_slot_on() -> None:
    async def main() -> None:
        slots = HeavySlots(1)
        assert slots.try_acquire("x")
        waiter = asyncio.ensure_future(slots.acquire(1, "y"))
        second = asyncio.ensure_future(slots.acquire(2, "z"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        slots.release("x")
        await second  # the cancelled one did not keep it
        assert slots.held == 1 and slots.held_by("z") == 1 and slots.waiting == 0

    asyncio.run(main())
