"""Counting in memory, writing in batches: the shared part of the DMARC and TLS-RPT
recorders (``policy.reports``, ``policy.tls_reports``).

A result costs a dict update on the hot path; the counts go to the store every
``FLUSH_SECONDS``, early when ``MAX_PENDING`` distinct rows wait, and once more at
shutdown. A crash loses at most that many seconds of statistics, never mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any, Generic, TypeVar

FLUSH_SECONDS = 60.0
MAX_PENDING = 100_000  # distinct rows kept in memory before an early flush
DAY = 86400

Row = TypeVar("Row")


def day_start(ts: float) -> int:
    return int(ts) // DAY * DAY


class BatchRecorder(Generic[Row]):
    """Rows (frozen dataclasses with a ``count`` field) added up by key in memory and
    written with ``write(rows)`` in one store call."""

    def __init__(self, write: Callable[[Sequence[Row]], Awaitable[None]], log: logging.Logger, what: str) -> None:
        self._write = write
        self._log = log
        self._what = what
        self._pending: dict[Hashable, Row] = {}
        self._task: asyncio.Future[int] | None = None

    def count(self, key: Hashable, row: Row) -> None:
        known: Any = self._pending.get(key)
        self._pending[key] = row if known is None else replace(known, count=known.count + row.count)  # type: ignore[attr-defined]
        if len(self._pending) >= MAX_PENDING:
            self._spawn_flush()

    def _spawn_flush(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.flush())

    async def flush(self) -> int:
        rows, self._pending = list(self._pending.values()), {}
        if rows:
            try:
                await self._write(rows)
            except Exception:
                self._log.exception("%s not recorded rows=%d", self._what, len(rows))
                return 0
        return len(rows)

    async def run(self) -> None:
        """Flush every FLUSH_SECONDS until cancelled; flush once more on the way out."""
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())


async def run_daily(send: Callable[[], Awaitable[Any]], interval: float, log: logging.Logger, what: str) -> None:
    """Call ``send()`` once per ``interval``, the first time a minute after start (at
    most), until cancelled: the report loops of DMARC and TLS-RPT. A restart sends nothing
    twice, since a report leaves with its rows deleted."""
    await asyncio.sleep(min(60.0, interval))
    while True:
        try:
            await send()
        except Exception:
            log.exception("%s report run failed", what)
        await asyncio.sleep(interval)
