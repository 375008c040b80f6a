"""The recent delivery log: what the admin UI shows as "recent deliveries".

What is recorded (decided for the admin UI, kept small): one entry per message SMTP
accepts or refuses at end of data (direction "in": sender, recipients, the reply), and one
per recipient outcome of every outbound attempt (direction "out": delivered, deferred,
failed, expired, with the remote reply). Not recorded: refused RCPTs, connections, logins
(the logs have those), message contents.

Why a buffer flushed once a second, not a write per message: a write per message would
join the same group commits as deliveries and queue records, and waiting for it would
delay the 250. Recording is an append to an in-memory list on the event loop; a
background task writes whatever piled up in one store write (which also forgets all but
the newest ``logging.delivery_log`` entries, so the table is bounded). A crash loses at
most the last second of log lines, never mail. At most ``MAX_PENDING`` entries wait in
memory; past that the oldest unwritten ones are dropped (and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time

from postroom.store.api import DeliveryLogEntry, Store

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
MAX_PENDING = 10_000
MAX_FIELD = 500  # characters kept of a sender, recipient list or remote reply


class DeliveryLog:
    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self.pending: list[DeliveryLogEntry] = []
        self.dropped = 0
        self._store: Store | None = None
        self._task: asyncio.Task[None] | None = None

    def record(
        self, direction: str, qid: str, sender: str, recipient: str, result: str, detail: str = ""
    ) -> None:
        """Note one entry (cheap: no I/O). Written by the next flush."""
        if self.keep <= 0:
            return
        if len(self.pending) >= MAX_PENDING:
            del self.pending[0]
            self.dropped += 1
        self.pending.append(
            DeliveryLogEntry(
                time=int(time.time()), direction=direction, qid=qid, sender=sender[:MAX_FIELD],
                recipient=recipient[:MAX_FIELD], result=result, detail=detail[:MAX_FIELD],
            )
        )

    def start(self, store: Store) -> None:
        self._store = store
        self._task = asyncio.create_task(self._run(), name="delivery-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if not self.pending or self._store is None:
            return
        batch, self.pending = self.pending, []
        try:
            await self._store.append_delivery_log(batch, self.keep)
        except Exception as e:  # a log line is not worth a crash; say so once per batch
            log.warning("event=delivery_log_write_failed entries=%d error=%s", len(batch), e)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()
