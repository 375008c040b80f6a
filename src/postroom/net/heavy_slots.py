"""The heavy-command slots of one event loop: oldest command first, a fair share per owner.

Theory of operation
-------------------
:mod:`postroom.net.budget` lets at most ``size`` heavy commands run slices on one event
loop at a time. Which ones? A plain FIFO semaphore got it wrong under load (issue 9,
``bench/loop_lag.py``): a command gives its slot back whenever it waits for something
else (its client reading a big FETCH response, a worker process parsing an APPEND or
threading a mailbox), and then queued again *at the back*, behind every command that
arrived meanwhile. Fourteen clients of one user repeating expensive SEARCHes kept the
slots, and FETCH, THREAD and APPEND of the same user got no answer in 30 s.

So a free slot goes to the waiting command that ranks first by:

1. **how many slots its owner holds** (fewest first): an owner is a user once logged in,
   otherwise a client address (the shells pass it to :func:`budget.scope`). One user
   alone may take every slot (nothing is left idle), but as soon as another owner waits,
   the next slot goes to it;
2. **when the command started** (oldest first, a ticket taken when its budget is made):
   a command that gave its slot back while it waited for a worker or for its client is
   older than the ones that took the slot meanwhile, so it gets it back first.

A holder also checks at the end of each slice (:meth:`HeavySlots.should_yield`) whether a
waiter ranks before it (counting its own slot as given back); if so it hands its slot
over and waits in turn. So no command waits behind younger ones, and no owner keeps more
than its share while others wait. Every waiting command is therefore served within the
time the older commands take (each bounded by ``limits.command_time``), or reaches its own
deadline while waiting and ends with the protocol's temporary failure (``NO [LIMIT]``).

Ranking is a linear scan of the waiters: it runs once per slice (every few ms) or per
release, and the waiters are at most the number of connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["HeavySlots"]


@dataclass(eq=False, slots=True)
class _Waiter:
    ticket: int
    owner: Hashable
    future: asyncio.Future[None] = field(repr=False)


class HeavySlots:
    """``size`` slots handed out oldest command first, fewest-held owner first."""

    __slots__ = ("size", "_held", "_by_owner", "_waiters")

    def __init__(self, size: int) -> None:
        self.size = size
        self._held = 0
        self._by_owner: dict[Hashable, int] = {}
        self._waiters: list[_Waiter] = []

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def held_by(self, owner: Hashable) -> int:
        return self._by_owner.get(owner, 0)

    def try_acquire(self, owner: Hashable) -> bool:
        """Take a slot if one is free and nobody waits (no await: the common case)."""
        if self._held < self.size and not self._waiters:
            self._take(owner)
            return True
        return False

    async def acquire(self, ticket: int, owner: Hashable) -> None:
        """Wait for a slot (cancel the wait, e.g. with a timeout, to give up)."""
        if self.try_acquire(owner):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(ticket, owner, fut)
        self._waiters.append(waiter)
        self._grant()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(owner)  # granted just as we gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, owner: Hashable) -> None:
        """Give back a slot held for ``owner``; the best waiter gets it."""
        left = self._by_owner[owner] - 1
        if left:
            self._by_owner[owner] = left
        else:
            del self._by_owner[owner]
        self._held -= 1
        self._grant()

    def should_yield(self, ticket: int, owner: Hashable) -> bool:
        """Whether a holder (``ticket``, ``owner``) should hand its slot to a waiter that
        ranks before it, counting the holder's own slot as given back."""
        if not self._waiters:
            return False
        mine = (self._by_owner.get(owner, 1) - 1, ticket)
        for w in self._waiters:
            held = self._by_owner.get(w.owner, 0)
            if w.owner == owner:
                held -= 1
            if (held, w.ticket) < mine and not w.future.done():
                return True
        return False

    def _take(self, owner: Hashable) -> None:
        self._held += 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1

    def _grant(self) -> None:
        while self._held < self.size and self._waiters:
            best = min(self._waiters, key=lambda w: (self._by_owner.get(w.owner, 0), w.ticket))
            self._waiters.remove(best)
            if best.future.done():  # cancelled: its acquire() is unwinding
                continue
            self._take(best.owner)
            best.future.set_result(None)
