"""Full garbage collections on a timer, so that they stop the event loop rarely.

Why: CPython's cyclic garbage collector stops the whole process (it holds the GIL) for a
time that grows with the number of container objects alive. A serving process under
load holds a few hundred thousand of them at any moment, mostly the working data of
commands in progress (a whole-mailbox SEARCH keeps 12,000 ``MessageMeta``, SORT and
THREAD their candidates, LIST its ``Mailbox`` rows) that live across many slices and so
are promoted to the oldest generation. The default thresholds then start a *full*
collection every second or so, and each took 70-180 ms (up to 660 ms on the loaded
development machine): ``bench/loop_lag.py --trace`` counted 29-32 full collections in
30 s of hostile load, and they were the NOOP latency's p99 (issue 9; see
docs/performance.md, "Event-loop lag under hostile load").

So each serving process:

* **freezes** what exists once it has started (``gc.freeze``: modules, functions,
  settings, compiled patterns), which never becomes garbage: no collection walks it again;
* keeps the automatic young collections (generations 0 and 1: cheap, they free most
  cyclic garbage, which dies young) but turns off the automatic full ones (a third
  threshold that is never reached);
* runs a full collection itself every :data:`FULL_EVERY` seconds, from the event loop
  between two callbacks: the same pause, at most twice a minute instead of every second.
  Cyclic garbage that survived two young collections waits at most that long (objects
  without cycles are freed at once by reference counting, as always).
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["FULL_EVERY", "run"]

# Seconds between two full collections.
FULL_EVERY = 30.0
# A third threshold no count reaches: no automatic full collection (gc.set_threshold).
_NEVER = 1 << 30


async def run(every: float = FULL_EVERY) -> None:
    """Pace the full collections of this process until cancelled (then restore)."""
    if not gc.isenabled():
        return  # someone turned the collector off on purpose: leave it so
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(first, second, _NEVER)
    try:
        while True:
            await asyncio.sleep(every)
            if gc.get_count()[2]:  # young collections ran since the last full one
                gc.collect(2)
    finally:
        gc.set_threshold(first, second, third)
        gc.unfreeze()
