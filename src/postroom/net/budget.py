"""Per-command time budgets, and slices: no command holds the event loop for long.

Theory of operation
-------------------
One asyncio event loop serves every connection of every protocol. A command whose cost
grows with what the client sends or with the size of its mailbox (SEARCH over bodies,
SORT and THREAD, FETCH of many messages, LIST of many mailboxes, the MIME parse of a big
message) would keep every other client waiting for as long as it runs, unless it gives
the loop back now and then. Issue 9 measured 90 s of total silence for one LIST.

Each protocol shell runs every command inside :func:`scope`, which makes a
:class:`Budget` the *current* one (a context variable, so code deep in a handler finds
it without being passed it). Then:

* **Slices.** A loop whose length the client controls calls ``await tick()`` once per
  item (message, mailbox, search key). ``tick`` costs a clock read until the command has
  run :data:`SLICE` seconds since it last gave the loop back; then it yields
  (``await asyncio.sleep(0)``) and every other ready connection runs before it goes on.
* **Heavy slots.** A command that needs a second slice is *heavy*. At most
  :data:`HEAVY_SLOTS` heavy commands run slices at a time (per event loop; the oldest
  command first, with a fair share per user: :mod:`postroom.net.heavy_slots`); the
  others wait for a slot without using the loop at all. So however many
  clients send expensive commands at once, a NOOP waits at most about
  ``HEAVY_SLOTS * SLICE`` for them, plus whatever light work is queued. A slot is
  released when the command ends, waits for the client (:meth:`Budget.paused`) or hands
  its work to a worker process (:mod:`postroom.net.offload`), and handed over at the end
  of a slice when an older command (or one of a user holding fewer slots) waits.
* **Deadline.** A budget ends ``limits.command_time`` (wall clock) after the command
  started. Past it, ``tick`` (and the offload) raise :class:`BudgetExceeded`, which each
  shell answers with its protocol's temporary failure: IMAP ``NO [LIMIT]`` (RFC 5530),
  SMTP ``451 4.3.0`` (RFC 3463: "other or undefined mail system status", temporary),
  POP3 ``-ERR [SYS/TEMP]`` (RFC 3206). Time spent waiting for the client (a slow reader of
  a big FETCH) or in a fixed-cost step whose concurrency is bounded elsewhere (an argon2
  verify) is not counted: the shell wraps those in :meth:`Budget.paused`.

Why a wall-clock deadline rather than CPU time: the loop's CPU time cannot be charged to
one coroutine (other sessions run between its slices), and what the budget must bound is
how long a command may keep its resources (a snapshot, memory, a heavy slot, a worker)
and the client waiting. Waiting for a heavy slot counts, so under a flood of expensive
commands the latecomers get ``NO [LIMIT]`` instead of an ever longer queue.

Why slices *and* worker processes (``bench/loop_offload.py`` measures the three ways on
the machine at hand): pure-Python work in a thread still holds the GIL, and the loop
thread gets it back only at switch intervals, in a convoy (on the 2-core development
machine: p99 tick delay 70-140 ms while two threads scanned MIME, against 8-30 ms with
worker processes). Slicing needs no copy of the data and costs nothing when the work is
small, so it is the default; work that cannot be cut (one regex or C call over 50 MB, a
THREAD of a whole mailbox) goes to a worker process.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from typing import Generic, TypeVar

from postroom.net.heavy_slots import HeavySlots

__all__ = [
    "HEAVY_SLOTS",
    "SLICE",
    "Budget",
    "BudgetExceeded",
    "PerLoop",
    "check",
    "current",
    "heavy",
    "paused",
    "scope",
    "tick",
]

# Longest stretch a command runs on the loop before it yields to the others. Small enough
# that HEAVY_SLOTS of them stay far below the 50 ms a client would notice; large enough
# that the yield (tens of microseconds) costs under 1 %.
SLICE = 0.005
# Heavy commands running slices at the same time, per event loop.
HEAVY_SLOTS = 2

_CURRENT: ContextVar[Budget | None] = ContextVar("postroom_budget", default=None)
T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``make()`` per running event loop, dropped with the loop. asyncio primitives
    (a ``Semaphore``, our slot queues) bind to the first loop that waits on them, so a
    module-level one breaks as soon as a second loop (a test, a restarted runner)
    contends for it."""

    __slots__ = ("_make", "_by_loop")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None:
            found = self._by_loop[loop] = self._make()
        return found


_GATES: PerLoop[HeavySlots] = PerLoop(lambda: HeavySlots(HEAVY_SLOTS))
# Commands' start order: the heavy slots go to the oldest waiting command first.
_TICKETS = itertools.count()


class BudgetExceeded(Exception):
    """The command ran past its deadline; the shell answers with a temporary failure."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"command exceeded its time budget of {limit:g} s")
        self.limit = limit


def _gate() -> HeavySlots:
    return _GATES.get()


class Budget:
    """One command's deadline and slice clock (see the module docstring).

    ``limit`` is in seconds; 0 means no deadline (slices still apply). ``owner`` is who
    the heavy slots are shared between (a user, a client address); None: the command is
    an owner of its own.
    """

    __slots__ = ("_clock", "_paused", "_slot", "_yield_at", "deadline", "limit", "owner",
                 "ticket")

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic,
                 owner: Hashable | None = None) -> None:
        now = clock()
        self.limit = limit
        self.deadline = now + limit if limit > 0 else math.inf
        self.ticket = next(_TICKETS)
        # Not ``self``: a budget referring to itself would be a cycle for the collector.
        self.owner: Hashable = ("command", self.ticket) if owner is None else owner
        self._clock = clock
        self._yield_at = now + SLICE
        self._slot: HeavySlots | None = None
        self._paused = 0

    @property
    def due(self) -> float:
        """The deadline that applies now: none (``math.inf``) while paused."""
        return math.inf if self._paused else self.deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (``math.inf`` without one), never negative."""
        return max(0.0, self.due - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self.due

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` when past the deadline (for synchronous code)."""
        if not self._paused and self._clock() >= self.deadline:
            raise BudgetExceeded(self.limit)

    async def tick(self) -> None:
        """Call once per item of a long loop: yields every SLICE, raises past the deadline.

        While :meth:`paused` (work done on the side while the command waits for its
        client, e.g. updates pushed during IDLE) it only yields: no deadline, no slot.
        """
        now = self._clock()
        if self._paused:
            if now >= self._yield_at:
                await asyncio.sleep(0)
                self._yield_at = self._clock() + SLICE
            return
        if now >= self.deadline:
            raise BudgetExceeded(self.limit)
        if now < self._yield_at:
            return
        slot = self._slot
        if slot is None:
            await self._acquire(now)
        elif slot.should_yield(self.ticket, self.owner):
            # An older command (one that gave its slot back to wait for a worker or its
            # client) or another user's waits: hand the slot over, wait in turn.
            self.release()
            await self._acquire(now)
        await asyncio.sleep(0)
        self._yield_at = self._clock() + SLICE

    async def heavy(self) -> None:
        """Take a heavy slot now (if not held), before work that is known to be long:
        the whole-mailbox reads of SEARCH, SORT and THREAD then also run two at a time,
        not only their slices (they build Python objects on the store's threads, which
        share the GIL with the loop)."""
        if self._slot is None and not self._paused:
            now = self._clock()
            if now >= self.deadline:
                raise BudgetExceeded(self.limit)
            await self._acquire(now)
            self._yield_at = self._clock() + SLICE

    async def _acquire(self, now: float) -> None:
        gate = _gate()
        if gate.try_acquire(self.owner):  # the usual case: a slot is free, nobody waits
            self._slot = gate
            return
        try:
            async with asyncio.timeout(None if math.isinf(self.deadline) else self.deadline - now):
                await gate.acquire(self.ticket, self.owner)
        except TimeoutError:
            raise BudgetExceeded(self.limit) from None
        self._slot = gate

    def release(self) -> None:
        """Give back the heavy slot, if held (the next tick takes one again)."""
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.release(self.owner)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count, and the heavy slot is free meanwhile (and is
        not taken again inside: see :meth:`tick`)."""
        self.release()
        started = self._clock()
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            now = self._clock()
            if not self._paused:  # the outermost pause: nested ones are inside it
                self.deadline += now - started
            self._yield_at = now + SLICE


class scope:  # noqa: N801  (used like the function it was: ``with budget.scope(t) as b``)
    """Run one command under a new budget of ``limit`` seconds (0: no deadline), for
    ``owner`` (the logged-in user, else the client address: the heavy slots are shared
    fairly between owners; None: the command alone).

    A class rather than a ``@contextmanager`` generator: it runs around every command of
    every protocol, and the generator machinery cost more than the budget itself."""

    __slots__ = ("budget", "_token")

    def __init__(self, limit: float, owner: Hashable | None = None) -> None:
        self.budget = Budget(limit, owner=owner)
        self._token: Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        self._token = _CURRENT.set(self.budget)
        return self.budget

    def __exit__(self, *exc: object) -> None:
        self.budget.release()
        assert self._token is not None
        _CURRENT.reset(self._token)


def current() -> Budget | None:
    """The budget of the command being executed, None outside any :func:`scope`."""
    return _CURRENT.get()


async def tick() -> None:
    """:meth:`Budget.tick` of the current budget; nothing outside a command."""
    budget = _CURRENT.get()
    if budget is not None:
        await budget.tick()


async def heavy() -> None:
    """:meth:`Budget.heavy` of the current budget; nothing outside a command."""
    budget = _CURRENT.get()
    if budget is not None:
        await budget.heavy()


def check() -> None:
    """:meth:`Budget.check` of the current budget; nothing outside a command."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.check()


class _NotPaused:
    """What :func:`paused` returns outside a command: nothing to do (the common case: a
    session waiting for its next command)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOT_PAUSED = _NotPaused()


def paused() -> AbstractContextManager[None]:
    """:meth:`Budget.paused` of the current budget; nothing outside a command."""
    budget = _CURRENT.get()
    if budget is None:
        return _NOT_PAUSED
    return budget.paused()
