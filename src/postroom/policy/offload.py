"""The one place mail authentication moves CPU work off the event loop.

RSA-2048 signing (about 1-2 ms), and hashing the body of a large message, would stall every
other session while they run. :func:`run_cpu` runs such work on a thread (``hashlib`` and
``cryptography`` release the GIL for the heavy part). Small work runs inline: a thread hop
costs more than an Ed25519 signature or the hash of a 5 KB body.

The generic mechanism (``postroom.net.budget`` / ``postroom.net.offload``) is used this
far: the work counts against the command's time budget, checked when it comes back (past
it the SMTP shell answers ``451 4.3.0``). It stays on a thread rather than in a worker
process: its arguments (private keys, closures over parsed headers) do not pickle, and
the heavy part is C code that releases the GIL anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from postroom.net import budget

T = TypeVar("T")

INLINE_BYTES = 64 * 1024  # bodies up to this size are hashed on the loop (tens of µs)


async def run_cpu(fn: Callable[..., T], /, *args: object) -> T:
    result = await asyncio.to_thread(fn, *args)
    budget.check()  # the command's deadline (net/budget.py); nothing outside a command
    return result


async def maybe_offload(size: int, fn: Callable[..., T], /, *args: object) -> T:
    """``fn(*args)`` inline when ``size`` (bytes it will hash) is small, else off the loop."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await run_cpu(fn, *args)
