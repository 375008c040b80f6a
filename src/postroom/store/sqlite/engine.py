"""SQLite connections: one writer thread with group commit, and a pool of reader threads.

Why one writer thread: SQLite allows one writer at a time anyway, and a dedicated thread
lets us batch. The thread takes every write job queued while the previous commit was being
fsynced, runs each inside its own SAVEPOINT (so one failing job does not undo the others),
and commits them together: one fsync of the WAL for the whole batch. Under 20 concurrent
writers this turns the disk's fsync rate into a batch rate rather than a message rate.

Why readers on threads: sqlite3 calls block, and the event loop must never block. Each
reader thread owns its connection (WAL lets readers run while the writer commits).

Why checkpoints on their own thread: SQLite's automatic checkpoint runs inside the commit
that crosses the threshold, so one unlucky batch of deliveries would also wait for the WAL
to be copied into the database and the database fsynced. Here the writer never
checkpoints (``wal_autocheckpoint=0``); a checkpointer thread copies PASSIVE-ly (never
blocking the writer) shortly after commits, and only if the WAL still grows past
``WAL_RESTART_FRAMES`` under sustained load does it force a RESTART, holding the write
lock between two batches, which bounds the WAL file.

Several processes on one database (the worker processes of ``server.workers``, the CLI):
every writer takes an ``flock`` on ``<database>.writelock`` around each batch, gathered
once the lock is held, so group commit holds across processes: while one process
fsyncs, the others' jobs queue up and each commits them together when its turn comes. In
saturation that is the same number of fsyncs per second, each carrying as many jobs, as
one writer would manage. The lock covers the batch's statements and its COMMIT, not the
fsync: the writer fdatasyncs the WAL itself once the lock is released (SQLite's own
commit runs with ``synchronous=NORMAL``, see :func:`connect`), and only then wakes the
batch's callers. So one process's flush overlaps the next process's commit, which on a
disk with a 2-3 ms flush is most of the time the lock was held for. Only one process runs the checkpointer (``checkpoint=True``,
the supervisor); its PASSIVE checkpoints copy what every process committed.

Callers see two coroutines: :meth:`Engine.write` and :meth:`Engine.read`, each taking a
plain function of a ``sqlite3.Connection``.

Large message bodies (``bodies.py``): a write job may carry :class:`Spill` objects. The
writer appends their octets to its process's body segment with one ``fdatasync`` for the
whole batch, before it takes the write lock, and sets each spill's ``location`` for the
job to store in its row. So a row that names a body file commits only after those octets
are on disk, and the flush does not lengthen the time the lock is held. Jobs with spills
that arrive while the writer waits for the lock wait for the next batch (their octets
would otherwise need a second flush under the lock).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from postroom.store.api import StoreError
from postroom.store.sqlite import bodies as body_files

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many jobs one commit may carry; bigger batches only add latency to the first job.
MAX_BATCH = 512
BUSY_TIMEOUT_MS = 30_000
# Checkpoint at most this often (each checkpoint fsyncs the database file).
CHECKPOINT_INTERVAL = 0.25
# How often the checkpointer looks for commits made by other processes.
CHECKPOINT_POLL = 1.0
# A WAL this long (in pages of 4 KiB: ~400 MB) makes the writer checkpoint with RESTART.
WAL_RESTART_FRAMES = 100_000


def connect(
    path: Path, *, fsync: bool, readonly: bool = False, own_sync: bool = False
) -> sqlite3.Connection:
    """One connection. ``own_sync``: the caller makes each commit durable itself with
    :func:`os.fdatasync` on the WAL after COMMIT (the writer, see ``Engine._sync``), so
    SQLite's commit does not fsync; otherwise FULL, where SQLite fsyncs the WAL at every
    commit. Either way a commit is on disk before anyone is told it happened."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode still syncs the WAL before each checkpoint, the database after
    # it, and the WAL header when the WAL is reused, so the file never goes corrupt; it
    # only leaves the commit's own frames to the page cache, which own_sync flushes.
    level = ("NORMAL" if own_sync else "FULL") if fsync else "OFF"
    conn.execute("PRAGMA synchronous=" + level)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-16000")  # 16 MB per connection
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


class Spill:
    """A message body the writer puts in a body file before the job that refers to it
    runs; the job reads ``location`` (``bodies.py``)."""

    __slots__ = ("data", "location")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.location: str | None = None


class _Job:
    __slots__ = ("error", "fn", "future", "result", "spills")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any] | None,
        spills: tuple[Spill, ...] = (),
    ):
        self.fn = fn
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        self.spills = spills


def _resolve(jobs: list[_Job]) -> None:
    for job in jobs:
        assert job.future is not None
        if job.future.done():  # the caller was cancelled; the write happened anyway
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


class Engine:
    """Owns the writer thread and reader pool for one database file."""

    def __init__(
        self, path: Path, *, fsync: bool = True, readers: int = 4, checkpoint: bool = True
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.bodies = body_files.BodyFiles(path.parent / body_files.DIR_NAME, fsync=fsync)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer_conn = connect(path, fsync=fsync, own_sync=True)
        # Descriptors for the fdatasync after each commit (see _sync), opened on first use.
        self._wal_path = str(path) + "-wal"
        self._wal_fd: int | None = None
        self._db_fd: int | None = None
        self._writer_conn.execute("PRAGMA wal_autocheckpoint=0")
        self._writer_conn.execute("PRAGMA journal_size_limit=67108864")
        # Writers of every process that opens this database take this lock around each
        # batch (see _writer_loop); kept open for the life of the engine.
        self._lock_fd = os.open(str(path) + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._checkpoint_wanted = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
            )
        self._thread = threading.Thread(target=self._writer_loop, name="sqlite-writer", daemon=True)
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-read")
        self._closed = False
        self.commits = 0  # observed by tests and the benchmark
        self.jobs = 0
        # timing(write, seconds) after every awaited read and write (the store latency
        # metric; set by the wiring, see postroom.metrics). Called on the event loop.
        self.timing: Callable[[bool, float], None] | None = None
        self._thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()

    # ---------------------------------------------------------------------------------
    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a write on the caller's thread (migrations at start-up, before any loop)."""
        conn = self._writer_conn
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        if self.fsync:
            os.fdatasync(self._sync_fd())
        return result

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], spills: tuple[Spill, ...] = ()
    ) -> T:
        """Run ``fn`` in the next group commit; ``spills``: bodies written to a body file
        first (their ``location`` set before ``fn`` runs)."""
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, spills))
        if self.timing is None:
            return await future
        started = time.perf_counter()
        try:
            return await future
        finally:
            self.timing(True, time.perf_counter() - started)

    def submit(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue a write nobody waits for: it joins the next group commit, and an error
        is only logged. For state that may lag (e.g. \\Recent marks, see backend.py)."""
        if not self._closed:
            self._queue.put(_Job(fn, None))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        if self.timing is None:
            return await loop.run_in_executor(self._readers, self._run_read, fn)
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._readers, self._run_read, fn)
        finally:
            self.timing(False, time.perf_counter() - started)

    async def lookup(self, fn: Callable[[sqlite3.Connection], T], *, snapshot: bool = True) -> T:
        """A point read by key (an address, a user id) on the calling thread.

        Why: the per-RCPT and per-login lookups are a few indexed rows of small tables that
        SQLite's page cache holds; they take 10-30 us, whereas a hop to a reader thread and
        back costs several times that in futex wake-ups and GIL hand-offs (and, on a busy
        virtual machine, far more: see docs/performance.md). The connection never waits
        for a lock (``busy_timeout=0``): in the rare moments a WAL reader cannot start at
        once (a checkpoint restarting the WAL, recovery after a crash), the read goes to a
        reader thread like any other. Only for reads that touch a handful of rows.
        ``snapshot=False``: ``fn`` runs a single statement, which is its own read
        transaction, so the BEGIN and COMMIT around it are skipped.
        """
        if self._closed:
            raise RuntimeError("store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "inline", None)
        if conn is None:  # one per thread that calls (the event loop's)
            conn = self._local.inline = connect(self.path, fsync=self.fsync, readonly=True)
            conn.execute("PRAGMA busy_timeout=0")
            with self._reader_lock:
                self._reader_conns.append(conn)
        if snapshot:
            try:
                conn.execute("BEGIN")
            except sqlite3.OperationalError:  # busy: let a reader thread wait for it
                return await self.read(fn)
        try:
            return fn(conn)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
        finally:
            if snapshot:
                conn.execute("COMMIT")
        return await self.read(fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, fsync=self.fsync, readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        # One read transaction so multi-statement reads see one snapshot.
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    # ---------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        conn = self._writer_conn
        deferred: list[_Job] = []  # jobs with bodies that came while waiting for the lock
        stop = False
        while True:
            if deferred:
                batch, deferred = deferred, []
            elif stop:
                return
            else:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
            if not stop:
                stop = self._gather(batch, None)
            if any(job.spills for job in batch):
                self._spill(batch)
            # The cross-process write lock. While another process commits, this one's
            # jobs keep queueing and join this batch once the lock is held, so group
            # commit holds across processes (one fsync per lock holder, not per job).
            # flock wakes a waiter the moment the lock is free, unlike SQLite's own busy
            # handler, which sleeps 1, 2, 5, 10... ms between tries.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if not stop:
                    stop = self._gather(batch, deferred)
                committed = self._run_batch(conn, batch)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            # The fsync runs after the lock is released, so another process's writer
            # commits its batch while this one waits for the disk, and the two flushes
            # overlap (or one covers both) instead of queueing one behind the other.
            if committed and self.fsync:
                self._sync(batch)
            self._post(batch)

    def _gather(self, batch: list[_Job], deferred: list[_Job] | None) -> bool:
        """Add the jobs queued now to ``batch`` (those with bodies to ``deferred`` when
        given); True when the queue said stop."""
        while len(batch) + (len(deferred) if deferred is not None else 0) < MAX_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            if deferred is not None and nxt.spills:
                deferred.append(nxt)
            else:
                batch.append(nxt)
        return False

    def _spill(self, batch: list[_Job]) -> None:
        """Write the batch's bodies to the body file, durably, before its transaction.
        If that fails, the jobs with bodies fail (their callers answer 451) and the others
        go on."""
        spills = [s for job in batch for s in job.spills]
        try:
            locations = self.bodies.append([s.data for s in spills])
        except Exception as e:  # noqa: BLE001 - OSError mostly; the writer must live on
            log.error("writing message bodies to %s failed: %s", self.bodies.folder, e)
            error = sqlite3.OperationalError(f"message body not stored: {e}")
            for job in batch:
                if job.spills:
                    job.error = error
            return
        for spill, location in zip(spills, locations, strict=True):
            spill.location = location

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> bool:
        """Run and commit ``batch``; False if nothing was committed. Jobs that already
        failed (their bodies could not be written) are left out."""
        if any(job.error is not None for job in batch):
            batch = [job for job in batch if job.error is None]
            if not batch:
                return False
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            for job in batch:
                job.error = e
            return False
        if len(batch) == 1:
            # Alone in its transaction: a failure rolls the transaction back, no SAVEPOINT
            # needed (two statements less, each a GIL hand-off on a busy process).
            job = batch[0]
            try:
                job.result = job.fn(conn)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                job.error = e
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # SQLite may have rolled back already (e.g. disk full)
                    pass
                return False
        else:
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    job.error = e
                    conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.error("commit failed: %s", e)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for job in batch:
                job.error = e
            return False
        self.commits += 1
        self.jobs += len(batch)
        if self._checkpointer is not None:
            self._checkpoint_wanted.set()
        return True

    def _sync(self, batch: list[_Job]) -> None:
        """Make the batch just committed durable before any of its callers hears of it.

        fdatasync of the WAL flushes every frame written to it so far: this batch's, and
        those of any commit before it, whichever process wrote them (a commit appends to
        the WAL under the write lock, so everything before this batch's frames is in the
        file already). If it fails, the batch's callers get the error instead of their
        result (an SMTP client then hears 451 and retries), as with a failed COMMIT.
        """
        try:
            os.fdatasync(self._sync_fd())
        except OSError as e:
            log.error("fdatasync of the WAL failed: %s", e)
            error = sqlite3.OperationalError(f"commit not made durable: {e}")
            for job in batch:
                if job.error is None:
                    job.error = error

    def _sync_fd(self) -> int:
        """The WAL's descriptor, reopened if the file was replaced.

        SQLite deletes the WAL only when the last connection to the database closes,
        after a checkpoint that fsyncs the database; the writer's connection is open, so
        the file stays, but the check is two cheap syscalls. With no WAL at all, the
        database file is what holds the commit."""
        try:
            ino = os.stat(self._wal_path).st_ino
        except FileNotFoundError:
            if self._db_fd is None:
                self._db_fd = os.open(str(self.path), os.O_RDONLY | os.O_CLOEXEC)
            return self._db_fd
        fd = self._wal_fd
        if fd is None or os.fstat(fd).st_ino != ino:
            if fd is not None:
                os.close(fd)
            fd = self._wal_fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    @staticmethod
    def _post(batch: list[_Job]) -> None:
        # Group the wake-ups per loop: one thread-safe call per batch, not per job.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in batch:
            if job.future is None:  # submitted without a waiter
                if job.error is not None:
                    log.error("background write failed: %s", job.error)
                continue
            by_loop.setdefault(job.future.get_loop(), []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, jobs)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path, fsync=self.fsync)
        lock_fd = os.open(str(self.path) + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        seen = -1
        next_sweep = time.monotonic() + body_files.SWEEP_INTERVAL
        try:
            while True:
                # This process's commits wake the checkpointer; other processes' commits
                # (worker processes, the CLI) are noticed by polling data_version.
                if self._checkpoint_wanted.wait(CHECKPOINT_POLL):
                    if not self._closed:
                        time.sleep(CHECKPOINT_INTERVAL)  # let more commits join this checkpoint
                    self._checkpoint_wanted.clear()
                # close() sets _closed before it sets the event, so a close that happened
                # during the sleep is seen here even though clear() ate its wake-up.
                if self._closed:
                    return
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + body_files.SWEEP_INTERVAL
                    self._sweep(conn, lock_fd)
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version == seen:  # nobody committed since the last checkpoint
                        continue
                    seen = version
                    _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames > WAL_RESTART_FRAMES:
                        # Readers always pinned part of the WAL: copy it all and start the
                        # WAL over, between two batches of any process's writer.
                        # (Its own descriptor: flock on the writer's would not exclude
                        # the writer thread, as both would share one open file.)
                        fcntl.flock(lock_fd, fcntl.LOCK_EX)
                        try:
                            conn.execute("PRAGMA wal_checkpoint(RESTART)")
                        finally:
                            fcntl.flock(lock_fd, fcntl.LOCK_UN)
                except sqlite3.Error as e:
                    log.warning("checkpoint failed: %s", e)
        finally:
            os.close(lock_fd)
            conn.close()

    def _sweep(self, conn: sqlite3.Connection, lock_fd: int, grace: float = body_files.GRACE) -> None:
        try:
            report = body_files.sweep(self.bodies, conn, lock_fd, grace=grace)
        except (sqlite3.Error, OSError, StoreError) as e:
            log.warning("sweep of %s failed: %s", self.bodies.folder, e)
            return
        if report.deleted or report.compacted:
            log.info("body files: %d deleted, %d compacted (%d bodies moved into the database)",
                     len(report.deleted), len(report.compacted), report.moved)

    def sweep_bodies(self, grace: float = body_files.GRACE) -> body_files.SweepReport:
        """One sweep now, on the calling thread with its own connection (tests, tools)."""
        conn = connect(self.path, fsync=self.fsync)
        lock_fd = os.open(str(self.path) + ".writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            return body_files.sweep(self.bodies, conn, lock_fd, grace=grace)
        finally:
            os.close(lock_fd)
            conn.close()

    # ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self._checkpointer is not None:
            self._checkpoint_wanted.set()
            self._checkpointer.join()
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for c in self._reader_conns:
                c.close()
        if self._checkpointer is not None:  # the one process that checkpoints
            try:
                self._writer_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
        self._writer_conn.close()
        self.bodies.close()
        os.close(self._lock_fd)
        for fd in (self._wal_fd, self._db_fd):
            if fd is not None:
                os.close(fd)
