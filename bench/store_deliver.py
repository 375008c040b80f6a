#!/usr/bin/env python3
"""Deliveries per second into the embedded store, fsync on, with 1, 20 and 100 writers.

Prints, measured in the same run on the same disk:
* the raw fsync rate (create + write 5 KB + fsync + close, one file at a time), i.e. what
  one durable write per message would reach;
* Store.deliver() rate for each writer count, with the ratio against that raw rate (group
  commit should let 20 writers reach several times the single-fsync rate);
* for comparison with the design choice, a "file per message" variant (blob written to its
  own file, fsync, rename, directory fsync, then the metadata row committed) at 20 writers;
* the same 20 writers split over 2 processes on one database (as ``server.workers = 2``
  runs): the engine's cross-process write lock must keep group commit, so the rate and
  the deliveries per commit should stay close to the one-process figure.

Each figure is the median of --runs runs. Usage: bench/store_deliver.py [--n 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from postroom.store.api import Delivery  # noqa: E402
from postroom.store.sqlite import open_store  # noqa: E402

BODY = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 64  # ~5 KB


def raw_fsync_rate(folder: Path, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        p = folder / f"raw{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, BODY)
        os.fsync(fd)
        os.close(fd)
    dt = time.perf_counter() - t
    for i in range(n):
        (folder / f"raw{i}").unlink()
    return n / dt


async def store_rate(folder: Path, writers: int, n: int) -> tuple[float, float]:
    store = open_store(folder, fsync=True)
    try:
        if await store.get_domain("bench.test") is None:
            await store.add_domain("bench.test")
        user = await store.get_user("u@bench.test") or await store.add_user("u@bench.test", "h", None)
        per = n // writers
        commits0 = store.engine.commits

        async def writer() -> None:
            for _ in range(per):
                await store.deliver(Delivery(data=BODY, summary=b"{}", user_ids=(user.id,)))

        t = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        dt = time.perf_counter() - t
        commits = store.engine.commits - commits0
        return per * writers / dt, per * writers / max(commits, 1)
    finally:
        await store.close()


async def file_per_message_rate(folder: Path, writers: int, n: int) -> float:
    """The alternative design: blob files + metadata rows (still group-committed)."""
    blobs = folder / "blobs"
    blobs.mkdir(exist_ok=True)
    store = open_store(folder, fsync=True)
    loop = asyncio.get_running_loop()
    counter = iter(range(10**9))

    def write_file(i: int) -> None:
        tmp = blobs / f"{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, BODY)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, blobs / f"{i}")
        dfd = os.open(blobs, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)

    try:
        if await store.get_domain("bench.test") is None:
            await store.add_domain("bench.test")
        user = await store.get_user("u@bench.test") or await store.add_user("u@bench.test", "h", None)
        per = n // writers

        async def writer() -> None:
            for _ in range(per):
                i = next(counter)
                await loop.run_in_executor(None, write_file, i)
                await store.deliver(Delivery(data=b"", summary=b"{}", user_ids=(user.id,)))

        t = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return per * writers / (time.perf_counter() - t)
    finally:
        await store.close()


async def child(folder: Path, writers: int, n: int) -> None:
    """One of the processes of the multi-process figure: wait for "go", deliver, report."""
    store = open_store(folder, fsync=True)
    try:
        user = await store.get_user("u@bench.test")
        assert user is not None
        per = n // writers

        async def writer() -> None:
            for _ in range(per):
                await store.deliver(Delivery(data=BODY, summary=b"{}", user_ids=(user.id,)))

        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        commits0 = store.engine.commits
        await asyncio.gather(*(writer() for _ in range(writers)))
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        print(f"{time.time() - dt:.6f} {time.time():.6f} {per * writers} {store.engine.commits - commits0} {cpu:.6f}", flush=True)
    finally:
        await store.close()


def processes_rate(folder: Path, processes: int, writers: int, n: int) -> tuple[float, float]:
    """(deliveries/s, deliveries per commit) of ``writers`` writers in each of ``processes``
    processes on one database."""

    async def setup() -> None:
        store = open_store(folder, fsync=True)
        await store.add_domain("bench.test")
        await store.add_user("u@bench.test", "h", None)
        await store.close()

    asyncio.run(setup())
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(folder), str(writers), str(n // processes),
             "--size", str(round(len(BODY) / 1024))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    rows = [p.communicate()[0].split() for p in procs]
    start = min(float(r[0]) for r in rows)
    end = max(float(r[1]) for r in rows)
    jobs = sum(int(r[2]) for r in rows)
    commits = sum(int(r[3]) for r in rows)
    return jobs / (end - start), jobs / max(commits, 1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        global BODY
        size = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 5
        BODY = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size * 1024 // 78)
        asyncio.run(child(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="deliveries per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temp folder)")
    ap.add_argument("--size", type=int, default=5, help="message size in KB (default 5)")
    args = ap.parse_args()
    BODY = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * (args.size * 1024 // 78)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="postroom-bench-"))
    raw: list[float] = []
    results: dict[int, list[float]] = {1: [], 20: [], 100: []}
    batch: dict[int, list[float]] = {1: [], 20: [], 100: []}
    files: list[float] = []
    split: list[tuple[float, float]] = []
    for run in range(args.runs):
        raw.append(raw_fsync_rate(base, min(args.n, 1000)))
        for writers in results:
            n = args.n if writers > 1 else min(args.n, 500)
            folder = base / f"s{run}-{writers}"
            folder.mkdir()
            rate, per_commit = asyncio.run(store_rate(folder, writers, n))
            results[writers].append(rate)
            batch[writers].append(per_commit)
        folder = base / f"f{run}"
        folder.mkdir()
        files.append(asyncio.run(file_per_message_rate(folder, 20, args.n)))
        folder = base / f"p{run}"
        folder.mkdir()
        split.append(processes_rate(folder, 2, 10, args.n))
    fs = statistics.median(raw)
    print(f"raw fsync rate (file create+write+fsync, {args.size} KB): {fs:,.0f}/s  median of {args.runs}")
    for writers, rates in results.items():
        r = statistics.median(rates)
        print(
            f"store.deliver {args.size} KB, {writers:3d} writers: {r:,.0f} deliveries/s  "
            f"ratio to raw fsync {r / fs:.1f}x  (~{statistics.median(batch[writers]):.1f} deliveries per commit)"
        )
    pr = statistics.median(r for r, _ in split)
    print(
        f"store.deliver {args.size} KB, 20 writers in 2 processes: {pr:,.0f} deliveries/s  "
        f"ratio to raw fsync {pr / fs:.1f}x  (~{statistics.median(b for _, b in split):.1f} deliveries per commit)"
    )
    fr = statistics.median(files)
    print(f"file-per-message variant, 20 writers: {fr:,.0f}/s  (blobs in SQLite are {statistics.median(results[20]) / fr:.1f}x faster)")


if __name__ == "__main__":
    main()
