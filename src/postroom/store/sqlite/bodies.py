"""Large message bodies in append-only segment files beside the database (``bodies/``).

Why: a body stored in SQLite is written twice, once to the WAL at commit and once into
the database at checkpoint, as a chain of 4 KiB overflow pages that SQLite builds, copies
and reads back. For a 100 KB message that was ~18% of the server's CPU per accepted
message (docs/performance.md). A body of ``FILE_MIN`` octets or more is instead written
once, by the writer thread, into the current segment of its process, and the ``blobs`` row
holds ``data = ''`` and ``location = '<segment>@<offset>'`` (the size is the row's).

Durability (a 250 is only sent after fsync, nothing lost under kill -9): the writer appends
the bodies of a batch with one ``pwritev`` and one ``fdatasync`` *before* the batch's
transaction commits (see ``Engine._spill``), outside the cross-process write lock. A row
therefore never points at octets that are not on disk; a crash between the two leaves only
unreferenced octets, which the sweep reclaims. A new segment's directory entry is fsynced
before anything refers to it. A process never appends to a segment it did not create, and
a restarted process starts a new one, so a torn tail is never reused.

Space: segments are never rewritten in place. :func:`sweep` (run by the process that
checkpoints, every ``SWEEP_INTERVAL``) deletes a segment no row refers to any more, and
moves the live bodies of a mostly dead one (under half its octets referenced) back into
the database, after which the next sweep deletes it. It only touches segments idle for
``GRACE`` (a writer starts a new segment after ``ROLL_IDLE`` without writing, well within
it), and the writer holds a shared ``flock`` on the segment it appends to, which the sweep
needs exclusively to delete one: a segment still being appended to is never deleted,
even when the clock jumps. A reader holding a snapshot
older than one sweep interval could find a compacted segment gone: it gets a clear error
(:class:`BodyMissing`), not wrong octets. ``postroom backup`` holds a shared lock on
``bodies/.lock`` while it copies, and the sweep deletes nothing while it is held.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from postroom.store.api import StoreError
from postroom.store.sqlite.fsync import fsync_dir

log = logging.getLogger(__name__)

DIR_NAME = "bodies"
LOCK_NAME = ".lock"
# Bodies from this size on go to a segment: below it the double write is a few pages and
# a segment's extra fdatasync per batch would cost more than it saves.
FILE_MIN = 32 * 1024
# A segment is closed (and a new one started) at this size.
SEGMENT_BYTES = 64 * 1024 * 1024
# A writer idle this long starts a new segment at its next write, so the sweep can treat
# any segment untouched for GRACE as closed.
ROLL_IDLE = 600.0
GRACE = 3600.0
SWEEP_INTERVAL = 900.0
# Live bodies of a mostly dead segment move back into the database in transactions of
# about this many octets (a long transaction would hold the write lock).
COMPACT_CHUNK = 8 * 1024 * 1024

_IOV_MAX = 512  # buffers per pwritev (Linux allows 1024)
_NAME = re.compile(r"[0-9a-f]{1,16}-[0-9]{1,10}-[0-9a-f]{6}\.seg")


class BodyMissing(StoreError):
    """A message's body file or its octets are not there (see the module docstring)."""


def segment_name(location: str) -> str:
    return location.rpartition("@")[0]


@dataclass
class SweepReport:
    deleted: list[str]
    compacted: list[str]
    moved: int  # bodies moved back into the database
    skipped_for_backup: bool = False


class BodyFiles:
    """The ``bodies/`` folder of one database: appends (writer thread) and reads (any thread)."""

    def __init__(self, folder: Path, *, fsync: bool = True) -> None:
        self.folder = folder
        self.fsync = fsync
        self._fd: int | None = None
        self._name = ""
        self._offset = 0
        self._last_write = 0.0
        self._made = False
        self._lock = threading.Lock()  # appends come from the writer thread, tests may call too

    @property
    def current(self) -> str | None:
        """The segment this process appends to (the sweep leaves it alone)."""
        return self._name if self._fd is not None else None

    # -- writing (the writer thread) --------------------------------------------------
    def append(self, bodies: Sequence[bytes]) -> list[str]:
        """Write ``bodies`` to the current segment, durably; their locations, in order."""
        total = sum(len(b) for b in bodies)
        with self._lock:
            now = time.monotonic()
            if (self._fd is None or self._offset + total > SEGMENT_BYTES and self._offset
                    or now - self._last_write > ROLL_IDLE):
                self._roll()
            assert self._fd is not None
            start = self._offset
            try:
                at = start
                for i in range(0, len(bodies), _IOV_MAX):  # a MULTIAPPEND may bring more
                    part = list(bodies[i : i + _IOV_MAX])
                    size = sum(len(b) for b in part)
                    written = os.pwritev(self._fd, part, at)
                    if written != size:  # a regular file writes all or fails (ENOSPC)
                        raise OSError(errno.EIO, f"short write to {self._name}: {written} of {size}")
                    at += size
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError:
                # After a failed write or flush the file's state is unknown (Linux may
                # have dropped the dirty pages): nothing refers to this batch, and later
                # batches go to a new segment.
                os.close(self._fd)
                self._fd = None
                raise
            self._offset = start + total
            self._last_write = now
            out = []
            for b in bodies:
                out.append(f"{self._name}@{start}")
                start += len(b)
            return out

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # Run as root (a CLI command that bounces a message), files go to the data
        # folder's owner, or the server (its own user) could not read them.
        owner = os.stat(self.folder.parent) if os.geteuid() == 0 else None
        if not self._made:
            if not self.folder.is_dir():
                self.folder.mkdir(mode=0o700, exist_ok=True)
                if owner is not None:
                    os.chown(self.folder, owner.st_uid, owner.st_gid)
                if self.fsync:
                    fsync_dir(self.folder.parent)
            self._made = True
        name = f"{int(time.time() * 1000):x}-{os.getpid()}-{secrets.token_hex(3)}.seg"
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        # Held while this is the segment appended to: the sweep never deletes it, whatever
        # the clocks say (the lock goes with the descriptor, or with the process).
        fcntl.flock(fd, fcntl.LOCK_SH)
        if owner is not None:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        if self.fsync:  # the new name must be on disk before any row refers to it
            fsync_dir(self.folder)
        self._fd, self._name, self._offset = fd, name, 0

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- reading (any thread) -----------------------------------------------------------
    def read(self, location: str, size: int, limit: int | None = None) -> bytes:
        """The body at ``location`` (``size`` octets), or its first ``limit`` octets."""
        name, _, offset = location.rpartition("@")
        if not _NAME.fullmatch(name) or not offset.isdigit():
            raise BodyMissing(f"bad body location {location!r}")
        want = size if limit is None else min(size, limit)
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BodyMissing(f"message body file {name} is gone") from None
        try:
            data = os.pread(fd, want, int(offset))
        finally:
            os.close(fd)
        if len(data) != want:
            raise BodyMissing(f"message body at {location} is short: {len(data)} of {want}")
        return data

    # -- space (the checkpointing process) ----------------------------------------------
    def segments(self) -> list[tuple[str, int, float]]:
        """(name, size, mtime) of every segment file."""
        out = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        for e in entries:
            if _NAME.fullmatch(e.name):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                out.append((e.name, st.st_size, st.st_mtime))
        return out


def live_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    """Octets each segment still holds for some row (the partial index on location)."""
    live: dict[str, int] = {}
    for location, size in conn.execute(
        "SELECT location, size FROM blobs WHERE location IS NOT NULL"
    ):
        name = segment_name(location)
        live[name] = live.get(name, 0) + size
    return live


def sweep(
    files: BodyFiles,
    conn: sqlite3.Connection,
    write_lock_fd: int,
    *,
    grace: float = GRACE,
    now: float | None = None,
) -> SweepReport:
    """Delete unreferenced segments and compact mostly dead ones (module docstring).

    ``conn``: a read-write connection of its own (the checkpointer's); the compaction's
    writes take the cross-process write lock ``write_lock_fd`` like any writer.
    """
    now = time.time() if now is None else now
    report = SweepReport([], [], 0)
    conn.execute("BEGIN")
    try:
        live = live_bytes(conn)
    finally:
        conn.execute("COMMIT")
    idle = [(n, s) for n, s, m in files.segments() if m <= now - grace and n != files.current]
    dead = [n for n, _ in idle if n not in live]
    sparse = [n for n, s in idle if n in live and live[n] * 2 < s]
    if dead:
        lock = _try_exclusive(files.folder / LOCK_NAME)
        if lock is None:
            report.skipped_for_backup = True
        else:
            try:
                for name in dead:
                    if _unlink_unused(files.folder / name):
                        report.deleted.append(name)
            finally:
                os.close(lock)
    for name in sparse:
        report.moved += _compact(files, conn, write_lock_fd, name)
        report.compacted.append(name)
    return report


def _compact(files: BodyFiles, conn: sqlite3.Connection, write_lock_fd: int, name: str) -> int:
    """Move the live bodies of segment ``name`` into the database; how many moved."""
    rows = conn.execute(
        "SELECT id, location, size FROM blobs WHERE location >= ? AND location < ?",
        (name + "@", name + "A"),  # "A" sorts right after "@": every "<name>@<offset>"
    ).fetchall()
    moved = 0
    chunks: list[list[tuple[int, str, int]]] = [[]]
    octets = 0
    for row in rows:
        if octets >= COMPACT_CHUNK:
            chunks.append([])
            octets = 0
        chunks[-1].append(row)
        octets += row[2]
    for chunk in chunks:
        if not chunk:
            continue
        updates = [(files.read(loc, size), bid, loc) for bid, loc, size in chunk]
        fcntl.flock(write_lock_fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.executemany(
                    "UPDATE blobs SET data=?, location=NULL WHERE id=? AND location=?", updates
                )
                moved += cur.rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            fcntl.flock(write_lock_fd, fcntl.LOCK_UN)
    return moved


def backup_lock(data_dir: Path) -> int | None:
    """A shared lock on ``bodies/.lock`` (``postroom backup`` holds it while it copies, so
    the sweep deletes no segment the copied database may refer to); None without bodies."""
    folder = data_dir / DIR_NAME
    if not folder.is_dir():
        return None
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _unlink_unused(path: Path) -> bool:
    """Delete a segment unless a writer still appends to it (it holds a shared lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _try_exclusive(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
