"""Worker processes for CPU work that cannot be cut into slices, under the command's deadline.

Theory of operation
-------------------
Most long work yields to the event loop in slices (:mod:`postroom.net.budget`). Some
cannot: one MIME parse of a 10,000-part message (about 0.3 s of Python), THREAD over a
whole mailbox, decoding a 50 MB text part for SEARCH. Such a job is a plain function of
picklable arguments (bytes, tuples, strings) that returns picklable results, and
:meth:`CpuPool.run` runs it in a worker process:

* **Processes, not threads.** A thread running Python holds the GIL; the loop thread gets
  it back only at switch intervals and behind the other threads (measured in
  ``bench/loop_offload.py``: tick delays of 70-140 ms at p99 with two MIME parses in
  threads, 8-30 ms with two worker processes, on the loaded 2-core development machine).
  Workers also run at a lower priority (``nice`` +10), so on a busy machine the serving
  process wins the CPU. C code that releases the GIL (argon2, zlib, sqlite3) stays on
  threads: no copy needed.
* **One job per worker at a time.** ``workers`` threads each own one worker process and
  talk to it over a pipe: send the call, wait for the answer with the job's deadline as
  timeout. The loop only awaits a future. Jobs beyond ``workers`` queue in FIFO order.
* **Deadlines are enforced by killing.** The deadline is that of the current command's
  budget (``limits.command_time``). A worker still busy at the deadline is killed
  (SIGKILL) and replaced at its next job; the caller gets
  :class:`~postroom.net.budget.BudgetExceeded`, answered like any other budget overrun. A
  job still queued at its deadline never starts. So no client input can occupy a worker
  for longer than one command's budget.
* **Started on first use** through multiprocessing's *forkserver* (forking the threaded
  server itself would be unsafe), which preloads the modules jobs need, so a replaced
  worker starts in milliseconds. A server that never needs a worker never starts one.

Copying costs: arguments and results are pickled (bytes cost one copy; frozen dataclass
trees are slow to pickle, so jobs take and return bytes or plain tuples). Only work worth
more than a millisecond or so is sent: callers decide with size thresholds.

``workers = 0`` runs jobs on a thread instead (no kill, deadline checked afterwards): for
environments where child processes are not allowed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from postroom.net.budget import BudgetExceeded, current

log = logging.getLogger(__name__)

T = TypeVar("T")

# Workers' scheduling priority relative to the server (nice(2) increment).
NICE = 10
# Modules the forkserver imports once, so that each new worker starts with them loaded.
PRELOAD = ("postroom.deliver", "postroom.message", "postroom.net.imap.jobs")
# The loop side waits this much past the deadline for the worker thread's own answer.
_GRACE = 0.25


class OffloadError(Exception):
    """The worker process died or its answer could not be read (a bug, or out of memory)."""


def _serve(conn: Connection) -> None:
    """A worker process: run calls from ``conn`` until the server closes the pipe."""
    try:
        os.nice(NICE)
    except OSError:
        pass
    # ^C on a terminal reaches the whole process group; the server decides when we end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            conn.send((False, OffloadError(f"{type(exc).__name__}: {exc}")))


class _Worker:
    """One worker process and its pipe; used by one dispatch thread at a time."""

    __slots__ = ("conn", "pool", "proc")

    def __init__(self, pool: CpuPool) -> None:
        self.pool = pool
        self.proc: Any = None
        self.conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = self.pool.context()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child,), name="postroom-cpu", daemon=True)
        proc.start()
        child.close()
        self.proc, self.conn = proc, parent
        self.pool.started += 1
        return parent

    def kill(self) -> None:
        proc, conn = self.proc, self.conn
        self.proc = self.conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.kill()
            proc.join(5)

    def call(self, fn: Callable[..., T], args: tuple[Any, ...], deadline: float,
             limit: float) -> T:
        if time.monotonic() >= deadline:
            raise BudgetExceeded(limit)  # queued past its deadline: never started
        conn = self.conn
        if conn is None or self.proc is None or not self.proc.is_alive():
            self.kill()
            conn = self._start()
        try:
            conn.send((fn, args))
            wait = deadline - time.monotonic()
            if not conn.poll(None if math.isinf(wait) else max(0.0, wait)):
                self.kill()
                self.pool.killed += 1
                raise BudgetExceeded(limit)
            ok, value = conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise OffloadError(f"worker process failed: {exc!r}") from None
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


class CpuPool:
    """``workers`` worker processes for :meth:`run` (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.jobs = 0  # observed by tests and benchmarks
        self.killed = 0
        self.started = 0
        self._closed = False
        self._lock = threading.Lock()
        self._ctx: Any = None
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all = [_Worker(self) for _ in range(workers)]
        for w in self._all:
            self._idle.put(w)
        self._threads = ThreadPoolExecutor(max(1, workers), thread_name_prefix="cpu-pool")

    def context(self) -> Any:
        with self._lock:
            if self._ctx is None:
                import multiprocessing

                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(PRELOAD))
                self._ctx = ctx
            return self._ctx

    def _dispatch(self, fn: Callable[..., T], args: tuple[Any, ...], deadline: float,
                  limit: float) -> T:
        if self._closed:
            raise OffloadError("the worker pool is closed")
        if self.workers == 0:
            result = fn(*args)
            if time.monotonic() >= deadline:
                raise BudgetExceeded(limit)
            return result
        worker = self._idle.get()
        try:
            return worker.call(fn, args, deadline, limit)
        finally:
            self._idle.put(worker)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker, under the current command's deadline.

        Raises :class:`BudgetExceeded` when the deadline passes first, and whatever
        ``fn`` raised. The command's heavy slot is released meanwhile (the loop is free).
        """
        budget = current()
        deadline, limit = math.inf, 0.0
        if budget is not None:
            budget.release()
            deadline, limit = budget.due, budget.limit
        self.jobs += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, self._dispatch, fn, args, deadline, limit)
        if math.isinf(deadline):
            return await future
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + _GRACE):
                return await future
        except TimeoutError:
            raise BudgetExceeded(limit) from None

    def close(self) -> None:
        """Stop every worker; jobs still running fail with :class:`OffloadError`."""
        self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        for w in self._all:
            try:
                w.kill()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                log.debug("worker kill failed", exc_info=True)
