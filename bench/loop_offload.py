"""Thread pool vs worker processes vs slices: what keeps the event loop responsive.

The question behind net/budget.py and net/offload.py (issue 9): where should CPU work that
grows with client input run? A probe coroutine sleeps 2 ms in a loop and records how late
it wakes up (the loop lag any other client would see) while ``--jobs`` MIME parses of a
10,000-part message (about 0.3 s of pure Python each, ``--concurrency`` at a time) run:

* ``inline``: on the event loop (what issue 9 found);
* ``threads``: ``run_in_executor`` on a thread pool (the GIL is shared with the loop; the
  server sets a 1 ms switch interval, as here);
* ``processes``: postroom's worker pool (``CpuPool``: forkserver, nice +10);
* ``slices``: the same amount of parsing cut into 200 messages of 50 parts, with
  ``budget.tick()`` between messages (what SEARCH/FETCH loops do).

Prints one line per mode: elapsed time, probe wake-ups, and their p50 / p99 / max lateness.
Run: ``.venv/bin/python bench/loop_offload.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import hostile  # noqa: E402

from postroom import deliver  # noqa: E402
from postroom.net import budget  # noqa: E402
from postroom.net.offload import CpuPool  # noqa: E402

BIG = hostile.many_parts("u@example.test", 10_000)
SMALL = [hostile.many_parts("u@example.test", 50) for _ in range(200)]


async def probe(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.002)
        lateness.append(time.perf_counter() - started - 0.002)


async def sliced() -> None:
    with budget.scope(0):
        for data in SMALL:
            await budget.tick()
            deliver.summarize(data)


async def run(mode: str, jobs: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lateness: list[float] = []
    pool = CpuPool(concurrency) if mode == "processes" else None
    threads = cf.ThreadPoolExecutor(concurrency) if mode == "threads" else None
    try:
        if pool is not None:
            await asyncio.gather(*(pool.run(len, b"") for _ in range(concurrency)))  # start
        task = loop.create_task(probe(stop, lateness))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                if mode == "inline":
                    deliver.summarize(BIG)
                elif mode == "threads":
                    await loop.run_in_executor(threads, deliver.summarize, BIG)
                elif mode == "processes":
                    assert pool is not None
                    await pool.run(deliver.summarize, BIG)
                else:
                    await sliced()

        await asyncio.gather(*(one() for _ in range(jobs)))
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    finally:
        if pool is not None:
            pool.close()
        if threads is not None:
            threads.shutdown()
    lateness.sort()
    n = len(lateness)
    p50 = lateness[n // 2] if n else elapsed
    p99 = lateness[min(n - 1, int(n * 0.99))] if n else elapsed
    worst = lateness[-1] if n else elapsed
    print(f"{mode:<9} {jobs} parses of 10,000 parts: {elapsed:.2f} s; probe {n} wake-ups, "
          f"late p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # as postroom serve does
    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for mode in ("inline", "threads", "processes", "slices"):
        asyncio.run(run(mode, args.jobs, args.concurrency))


if __name__ == "__main__":
    main()
