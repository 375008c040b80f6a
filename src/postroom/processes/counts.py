"""Connection counts shared by the worker processes, so the limits stay server-wide.

``limits.connections_total`` and ``limits.connections_per_ip`` are limits of the server,
not of a process: with 4 workers, a client must not get 4 x 50 connections. Each worker
publishes its own counts in shared memory (one row per worker: its total and a table of
per-address buckets) and checks a new connection against its exact local counts plus the
other rows. Why a row per worker and no lock: a row has one writer, so every update is a
plain aligned store and a check is a few reads; a worker killed by SIGKILL cannot leave
a count behind, because the supervisor zeroes a dead worker's row before it restarts it.

Exactness: two workers accepting at the same instant may both see room for one more
(an overshoot of at most one per other worker, for an instant). Addresses of other
workers are counted in ``BUCKETS`` hash buckets, so two addresses that share a bucket
count together there: a client can be refused early only when it collides with another
address that holds many connections in another worker (one chance in 65,536 per pair).
"""

from __future__ import annotations

import mmap
import os
import zlib

BUCKETS = 65536
_ROW = 8 + 4 * BUCKETS  # int64 total, then int32 per bucket


def _bucket(ip: str) -> int:
    # Not hash(): it differs between processes (PYTHONHASHSEED).
    return zlib.crc32(ip.encode()) & (BUCKETS - 1)


class SharedCounts:
    """A worker's view (``index`` 1..rows) or the supervisor's (``index`` 0)."""

    def __init__(self, fd: int, rows: int, index: int) -> None:
        self.fd = fd
        self.rows = rows
        self.index = index
        self._map = mmap.mmap(fd, rows * _ROW)
        self._totals = [memoryview(self._map)[r * _ROW : r * _ROW + 8].cast("q") for r in range(rows)]
        self._buckets = [
            memoryview(self._map)[r * _ROW + 8 : (r + 1) * _ROW].cast("i") for r in range(rows)
        ]

    @classmethod
    def create(cls, rows: int) -> SharedCounts:
        """The supervisor's: anonymous shared memory, zeroed, to pass to the workers."""
        fd = os.memfd_create("postroom-connections")
        os.ftruncate(fd, rows * _ROW)
        return cls(fd, rows, 0)

    def others_total(self) -> int:
        mine = self.index - 1
        return sum(t[0] for r, t in enumerate(self._totals) if r != mine)

    def others_from(self, ip: str) -> int:
        mine, b = self.index - 1, _bucket(ip)
        return sum(row[b] for r, row in enumerate(self._buckets) if r != mine)

    def add(self, ip: str, delta: int) -> None:
        """This worker's counts change by ``delta`` connections from ``ip``."""
        r = self.index - 1
        self._totals[r][0] += delta
        self._buckets[r][_bucket(ip)] += delta

    def clear(self, index: int) -> None:
        """Zero the row of worker ``index`` (it exited; only the supervisor calls this)."""
        r = index - 1
        self._totals[r][0] = 0
        self._map[r * _ROW + 8 : (r + 1) * _ROW] = bytes(_ROW - 8)

    def close(self) -> None:
        for views in (self._totals, self._buckets):
            for v in views:
                v.release()
        self._map.close()
