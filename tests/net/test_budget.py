"""The per-command budget (net/budget.py): slices, heavy slots, deadlines, pauses."""

from __future__ import annotations

import asyncio
import time

import pytest

from postroom.net import budget
from postroom.net.budget import HEAVY_SLOTS, SLICE, Budget, BudgetExceeded


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tick_is_free_within_a_slice_then_yields() -> None:
    clock = Clock()

    async def main() -> list[str]:
        b = Budget(10.0, clock)
        order: list[str] = []

        async def other() -> None:
            order.append("other")

        task = asyncio.get_running_loop().create_task(other())
        await b.tick()  # inside the first slice: no yield, the other task has not run
        order.append("tick 1")
        clock.now += SLICE  # the slice is used up: the next tick lets the other task run
        await b.tick()
        order.append("tick 2")
        await task
        b.release()
        return order

    assert asyncio.run(main()) == ["tick 1", "other", "tick 2"]


def test_deadline_raises_on_the_next_tick_and_check() -> None:
    clock = Clock()

    async def main() -> None:
        b = Budget(2.0, clock)
        await b.tick()
        clock.now += 1.9
        b.check()
        assert not b.expired() and b.remaining() == pytest.approx(0.1)
        clock.now += 0.2
        assert b.expired() and b.remaining() == 0.0
        with pytest.raises(BudgetExceeded) as info:
            await b.tick()
        assert info.value.limit == 2.0 and "2 s" in str(info.value)
        with pytest.raises(BudgetExceeded):
            b.check()

    asyncio.run(main())


def test_no_limit_means_no_deadline() -> None:
    clock = Clock()
    b = Budget(0, clock)
    clock.now += 1e9
    b.check()
    assert b.remaining() == float("inf")


def test_paused_time_does_not_count_and_frees_the_slot() -> None:
    clock = Clock()

    async def main() -> None:
        b = Budget(1.0, clock)
        clock.now += SLICE
        await b.tick()  # heavy now: holds a slot
        assert b._slot is not None
        with b.paused():
            assert b._slot is None  # a slow client must not hold a heavy slot
            clock.now += 100.0  # waiting for the client
        clock.now += 0.5
        await b.tick()  # 0.5 s of work counted, not 100.5
        b.check()
        b.release()

    asyncio.run(main())


def test_at_most_heavy_slots_commands_run_slices_at_once() -> None:
    """However many heavy commands run, only HEAVY_SLOTS of them interleave slices."""

    async def main() -> int:
        running = 0
        most = 0

        async def heavy() -> None:
            nonlocal running, most
            with budget.scope(30.0) as b:
                started = False
                for _ in range(200):
                    await budget.tick()
                    if b._slot is not None and not started:
                        started = True
                        running += 1
                        most = max(most, running)
                    busy = time.monotonic() + 0.0005
                    while time.monotonic() < busy:  # work on the loop
                        pass
                if started:
                    running -= 1

        await asyncio.gather(*(heavy() for _ in range(6)))
        return most

    most = asyncio.run(main())
    assert 1 <= most <= HEAVY_SLOTS


def test_waiting_for_a_slot_counts_against_the_deadline() -> None:
    async def main() -> None:
        holders = [Budget(30.0) for _ in range(HEAVY_SLOTS)]
        for h in holders:
            h._yield_at = 0  # due: take a slot
            await h.tick()
            assert h._slot is not None
        late = Budget(0.05)
        late._yield_at = 0
        started = time.monotonic()
        with pytest.raises(BudgetExceeded):
            await late.tick()  # every slot is held: it waits until its deadline
        assert 0.04 <= time.monotonic() - started < 2.0
        for h in holders:
            h.release()

    asyncio.run(main())


def test_scope_sets_the_current_budget() -> None:
    async def main() -> None:
        assert budget.current() is None
        await budget.tick()  # outside any command: nothing happens
        budget.check()
        with budget.paused():
            pass
        with budget.scope(5.0) as b:
            assert budget.current() is b
            with budget.scope(1.0) as inner:
                assert budget.current() is inner
            assert budget.current() is b
        assert budget.current() is None

    asyncio.run(main())


def test_work_done_while_paused_is_never_cut_and_takes_no_slot() -> None:
    """Updates pushed while a command waits for its client (IDLE, NOTIFY) run inside the
    pause: past the command's deadline they still run, and they never take a heavy slot
    that the waiting command would then keep."""
    clock = Clock()

    async def main() -> None:
        b = Budget(1.0, clock)
        with b.paused():
            clock.now += 100.0
            clock.now += SLICE
            await b.tick()  # no BudgetExceeded, and only a yield
            await b.heavy()
            b.check()
            assert b._slot is None and b.remaining() == float("inf") and b.due == float("inf")
            with b.paused():  # nested: counted once
                clock.now += 10.0
        assert b.deadline == pytest.approx(1000.0 + 1.0 + 100.0 + SLICE + 10.0)
        b.check()

    asyncio.run(main())


def test_per_loop_semaphore_is_one_per_event_loop() -> None:
    """A module-level asyncio.Semaphore binds to the first loop that waits on it; the
    argon2 slots and heavy-command gate must keep working in a second loop (tests run
    many, and a contended wait in the second one used to raise RuntimeError)."""
    sem: budget.PerLoop[asyncio.Semaphore] = budget.PerLoop(lambda: asyncio.Semaphore(1))

    async def contend() -> int:
        s = sem.get()
        order: list[int] = []

        async def hold(n: int) -> None:
            async with s:
                order.append(n)
                await asyncio.sleep(0.01)

        await asyncio.gather(hold(1), hold(2))
        assert sem.get() is s
        return len(order)

    assert asyncio.run(contend()) == 2
    assert asyncio.run(contend()) == 2
