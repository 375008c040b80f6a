"""The one place mail authentication moves CPU work off the event loop.

RSA-2048 signing (about 1-2 ms), and hashing the body of a large message, would stall every
other session while they run. :func:`run_cpu` runs such work on a thread (``hashlib`` and
``cryptography`` release the GIL for the heavy part). Small work runs inline: a thread hop
costs more than an Ed25519 signature or the hash of a 5 KB body. When the generic "run off
the loop with a budget" mechanism lands in ``postroom.net``, this function calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INLINE_BYTES = 64 * 1024  # bodies up to this size are hashed on the loop (tens of µs)


async def run_cpu(fn: Callable[..., T], /, *args: object) -> T:
    return await asyncio.to_thread(fn, *args)


async def maybe_offload(size: int, fn: Callable[..., T], /, *args: object) -> T:
    """``fn(*args)`` inline when ``size`` (bytes it will hash) is small, else off the loop."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await run_cpu(fn, *args)
