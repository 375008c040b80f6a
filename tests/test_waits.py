"""wait_event keeps a cancellation that arrives as the event is set (see waits.py)."""

from __future__ import annotations

import asyncio

from postroom.waits import wait_event


def test_set_and_timeout() -> None:
    async def main() -> tuple[bool, bool]:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, event.set)
        first = await wait_event(event, 5)
        return first, await wait_event(asyncio.Event(), 0.01)

    assert asyncio.run(main()) == (True, False)


def test_cancel_in_the_same_turn_as_the_set_is_kept() -> None:
    """The blob collector's loop, reduced: woken by its event, then cancelled before it
    runs again. It must end (asyncio.wait_for on 3.11 lets it loop on instead)."""

    async def main() -> bool:
        event = asyncio.Event()

        async def loop() -> None:
            while True:
                await wait_event(event, 60)
                event.clear()

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the loop waits on the event
        event.set()
        task.cancel()  # same turn: the task has not run since the set
        done, _ = await asyncio.wait({task}, timeout=5)
        return bool(done) and task.cancelled()

    assert asyncio.run(main())
