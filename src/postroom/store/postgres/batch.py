"""Group commit of deliveries on PostgreSQL: the deliveries that arrive while one batch is
being committed go into the next batch, one transaction for all of them.

Why, when PostgreSQL already shares a WAL flush among commits that wait together: it
shares nothing when the deliveries go to the same user. Each delivery locks its users'
rows (the quota) and its mailboxes' rows (the UIDs) until its COMMIT returns, so 20
sessions delivering to one busy mailbox ran one after the other, each with its own WAL
flush and its own five round trips. Measured with ``bench/pg_statements.py`` (one node,
20 SMTP sessions to one user, fsync on): 0.9 WAL flushes, 7 transactions and 20
statements per message before; with the batch one transaction, flush and handful of
statements serve every delivery in it, and the database's CPU per message fell with
them (docs/scaling.md has the figures). This is what the SQLite backend's writer thread
does (``store/sqlite/engine.py``).

How a batch runs: ``mail.deliver_many`` plans every delivery as if it ran alone, in
arrival order (each quota check counts the deliveries before it), and writes them all
with three to five statements; the queue entries are one more. A failure that is not an
outage (a user deleted meanwhile, a constraint) would sink the whole batch, so the batch
is then run again one delivery per transaction, and each caller gets its own outcome:
no SAVEPOINT round trips on the common path. An outage fails the whole batch with
:class:`StoreUnavailable` (nothing is retried after the transaction began, as in
``Engine.write``).

Durability is unchanged: a caller's future is resolved only after COMMIT returned, and
SMTP answers 250 only then. A caller that is cancelled while its delivery is in a batch
does not take it out: the message may be stored without the 250 (a duplicate when the
client sends it again, never a loss), as with SQLite's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

import asyncpg

from postroom.store.api import Delivery, StoreUnavailable
from postroom.store.postgres import mail, queue
from postroom.store.postgres.engine import Engine
from postroom.store.postgres.mail import BlobIn, Delivered

log = logging.getLogger(__name__)

# How many deliveries and how many message octets one transaction may carry: bigger
# batches only make the first delivery of the batch wait longer.
MAX_BATCH = 64
MAX_BATCH_BYTES = 16 << 20

# One delivery's outcome: (blob id, [(mailbox, user, uid)], users over quota, qid).
Outcome = tuple[int, list[tuple[int, int, int]], tuple[int, ...], str | None]


@dataclass(slots=True)
class _Job:
    delivery: Delivery
    blob: BlobIn
    future: asyncio.Future[Outcome] = field(repr=False)


async def _write(conn: asyncpg.Connection, jobs: list[_Job]) -> list[Outcome]:
    done: list[Delivered] = await mail.deliver_many(conn, [(j.delivery, j.blob) for j in jobs])
    entries = [(d[0], j.delivery.queue) for j, d in zip(jobs, done, strict=True)
               if j.delivery.queue is not None]
    await queue.add_many(conn, entries)
    return [(*d, j.delivery.queue.qid if j.delivery.queue is not None else None)
            for j, d in zip(jobs, done, strict=True)]


class DeliveryBatcher:
    """One writer task per process that commits the deliveries queued meanwhile together."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: deque[_Job] = deque()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for tests and the bench)
        self.deliveries = 0

    async def deliver(self, delivery: Delivery, blob: BlobIn) -> Outcome:
        """Store one delivery; returns once its batch has committed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(delivery, blob, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pg-delivery-batcher")
        return await future

    async def close(self) -> None:
        """Let the queued deliveries finish (they were promised nothing yet, but their
        callers wait)."""
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            self._task.cancel()

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        size = 0
        while self._jobs and len(batch) < MAX_BATCH:
            job = self._jobs[0]
            if batch and size + job.blob.size > MAX_BATCH_BYTES:
                break
            batch.append(self._jobs.popleft())
            size += job.blob.size
        return batch

    async def _run(self) -> None:
        while self._jobs:
            batch = self._take()
            try:
                await self._commit(batch)
            except BaseException as e:  # noqa: BLE001 - every waiter hears of it
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes = await self.engine.write(lambda c: _write(c, batch))
        except StoreUnavailable:
            raise
        except Exception:
            if len(batch) == 1:
                raise
            # One delivery sank the batch: each alone, so each gets its own outcome.
            for job in batch:
                try:
                    alone = await self.engine.write(lambda c, j=job: _write(c, [j]))  # type: ignore[misc]
                except StoreUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001 - this caller's own failure
                    if not job.future.done():
                        job.future.set_exception(e)
                else:
                    self._resolve(job, alone[0])
                    self.batches += 1
                    self.deliveries += 1
            return
        self.batches += 1
        self.deliveries += len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            self._resolve(job, outcome)

    @staticmethod
    def _resolve(job: _Job, outcome: Outcome) -> None:
        if not job.future.done():  # the caller may have been cancelled
            job.future.set_result(outcome)
