"""The worker-process pool (net/offload.py): results, errors, deadlines enforced by a kill.

Jobs are stdlib functions so that the worker processes can import them by name.
"""

from __future__ import annotations

import asyncio
import operator
import os
import time
from collections.abc import Iterator

import pytest

from postroom.net import budget
from postroom.net.budget import BudgetExceeded
from postroom.net.offload import NICE, CpuPool


@pytest.fixture(scope="module")
def pool() -> Iterator[CpuPool]:
    p = CpuPool(1)
    try:
        yield p
    finally:
        p.close()


def test_result_and_exception_come_back(pool: CpuPool) -> None:
    async def main() -> None:
        assert await pool.run(operator.add, 2, 3) == 5
        assert await pool.run(bytes.upper, b"x" * 1_000_000) == b"X" * 1_000_000
        with pytest.raises(ValueError):
            await pool.run(int, "not a number")
        assert await pool.run(os.getpid) != os.getpid()  # it really ran elsewhere

    asyncio.run(main())


def test_workers_run_at_lower_priority(pool: CpuPool) -> None:
    async def main() -> int:
        await pool.run(operator.add, 1, 1)
        proc = pool._all[0].proc
        assert proc is not None
        return os.getpriority(os.PRIO_PROCESS, proc.pid)

    assert asyncio.run(main()) >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)


def test_a_job_past_the_deadline_is_killed_and_the_worker_replaced(pool: CpuPool) -> None:
    async def main() -> float:
        # The worker up first: a job still queued at its deadline (a worker process
        # starting on a loaded machine) fails without a kill, which is another test.
        assert await pool.run(operator.add, 1, 1) == 2
        killed = pool.killed
        started = time.monotonic()
        with budget.scope(0.3), pytest.raises(BudgetExceeded):
            await pool.run(time.sleep, 60)
        elapsed = time.monotonic() - started
        assert pool.killed == killed + 1
        assert await pool.run(operator.mul, 6, 7) == 42  # a fresh worker
        return elapsed

    assert asyncio.run(main()) < 10.0


def test_a_job_queued_past_its_deadline_fails_without_waiting_for_the_worker(pool: CpuPool) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        busy = loop.create_task(pool.run(time.sleep, 1.5))  # no budget: occupies the worker
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with budget.scope(0.2), pytest.raises(BudgetExceeded):
            await pool.run(operator.add, 1, 2)
        waited = time.monotonic() - started
        await busy
        return waited

    assert asyncio.run(main()) < 1.2  # it gave up at its deadline (plus a grace), not at 1.5 s


def test_no_workers_runs_on_a_thread_and_checks_the_deadline_after() -> None:
    p = CpuPool(0)

    async def main() -> None:
        assert await p.run(operator.add, 2, 3) == 5
        with budget.scope(0.05), pytest.raises(BudgetExceeded):
            await p.run(time.sleep, 0.2)

    try:
        asyncio.run(main())
    finally:
        p.close()
