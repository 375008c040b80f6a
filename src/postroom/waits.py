"""Waiting for an :class:`asyncio.Event` with a time limit, without losing a cancellation.

Why not ``asyncio.wait_for(event.wait(), t)``: on Python 3.11, when the event is set in the
same turn of the loop as the waiting task is cancelled, ``wait_for`` returns the inner
result and the cancellation is gone (CPython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout``). A background loop that waits that way carries on after its owner
cancelled it, and an owner that then awaits the task (the PostgreSQL store's blob
collector at ``close()``: one wake-up, then a 60 s wait, forever) hangs. With
``asyncio.timeout`` the task keeps the cancellation and gets it at its next ``await``.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set, False when ``timeout`` seconds passed first."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
