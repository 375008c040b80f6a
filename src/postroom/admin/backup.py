"""``postroom backup`` and ``restore``: a consistent copy of a running server's data folder.

What a backup holds (a folder, ``MANIFEST.json`` listing every file with its SHA-256):

* ``postroom.sqlite3``: the database (accounts, mailboxes, messages, the queue), copied
  with SQLite's online backup API in **one step**, i.e. inside one read transaction: the
  copy is the database as of one instant, while the server goes on delivering (WAL mode
  lets a reader and the writer work side by side). A copy in several steps would restart
  whenever the server commits between two steps, and on a busy server never end. The
  copy is checked (``PRAGMA integrity_check``) and converted to a single file
  (``journal_mode=DELETE``): nothing else is needed to open it.
* every other file of the data folder, copied after the database: the server secret
  (``server.key``: SCRAM's fake salts and ids), the TLS files kept there (``tls/``; ACME
  certificates and DKIM keys when those features keep theirs there), and
  ``delivered.journal`` (deliveries the remote accepted whose record may be newer than
  the copy: replayed at the next start, they stop the restored queue from sending those
  messages again). Files are found by walking the folder, so whatever later versions keep
  there is included; only SQLite's own files, temporary files and the lock are left out.
* ``config/``: the configuration file, and ``tls.cert``/``tls.key`` when they live outside
  the data folder, for reference: restore does not write them back (their paths belong
  to the machine), it names them.

Interrupted backups: the backup is written to ``DEST.partial`` and renamed to ``DEST``
only when complete, so a ``DEST`` is always whole. Running the same command again
continues: files already copied (same size and time) are kept; the database copy starts
over, because a consistent snapshot cannot outlive the process that read it.

Restore verifies every checksum first and changes nothing if one is wrong; it refuses
while a server (or an import or backup) uses the data folder (``postroom.datadir``), writes
the copy next to it, then swaps it in with two renames, keeping the folder it replaces as
``DATA.replaced-TIMESTAMP``. Run as root, it gives the files to the data folder's owner
(or ``server.user``).

Only the embedded SQLite store is covered; a PostgreSQL deployment backs up its database
with PostgreSQL's tools.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from postroom import __version__, datadir
from postroom.admin.progress import Progress
from postroom.admin.service import AdminError
from postroom.config import Settings
from postroom.store.sqlite import bodies
from postroom.store.sqlite.backend import DB_NAME
from postroom.store.sqlite.fsync import fsync_dir  # any path: a file or a folder
from postroom.store.sqlite.schema import MIGRATIONS

MANIFEST = "MANIFEST.json"
FORMAT = 1
SKIP_NAMES = {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal", datadir.LOCK_NAME}
COPY_CHUNK = 1024 * 1024
MIB = 1024 * 1024
COUNTED_TABLES = ("domains", "users", "aliases", "mailboxes", "messages", "blobs", "queue")


@dataclass
class BackupReport:
    destination: str
    database_octets: int
    files: list[str]
    external: list[str]
    counts: dict[str, int]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "database_octets": self.database_octets,
                "files": self.files, "external": self.external, "counts": self.counts,
                "seconds": round(self.seconds, 3)}


@dataclass
class RestoreReport:
    data_dir: str
    replaced: str | None
    counts: dict[str, int]
    external: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "replaced": self.replaced, "counts": self.counts,
                "external": self.external}


# -- small file helpers ------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_file(src: Path, dst: Path) -> str:
    """Copy with mode and times, fsync it; return the SHA-256 of what was written."""
    with open(src, "rb") as f:
        return copy_open_file(f, dst)


def copy_open_file(f: BinaryIO, dst: Path) -> str:
    """Copy the open file ``f`` to ``dst`` with its mode and times, fsync it; the SHA-256."""
    h = hashlib.sha256()
    st = os.fstat(f.fileno())
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return h.hexdigest()


def data_files(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(regular files to back up, relative; symbolic links found, left out)."""
    files: list[Path] = []
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(data_dir, followlinks=False):
        base = Path(dirpath)
        for d in list(dirnames):
            if (base / d).is_symlink():
                links.append((base / d).relative_to(data_dir))
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(data_dir)
            if base == data_dir and name in SKIP_NAMES:
                continue
            if base == data_dir / bodies.DIR_NAME and name == bodies.LOCK_NAME:
                continue
            if name.endswith(".tmp"):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                links.append(rel)
            elif stat.S_ISREG(st.st_mode):
                files.append(rel)
    return files, links


# -- backup ----------------------------------------------------------------------------
def _copy_database(db: Path, target: Path, progress: Progress) -> tuple[int, dict[str, int], int]:
    """Online backup of ``db`` into ``target``; (size, row counts, schema version)."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(f"{target}{suffix}")
        except FileNotFoundError:
            pass
    src = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        pages, page_size = (src.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        progress.phase("database", max(1, pages * page_size // MIB), unit="MiB")
        dst = sqlite3.connect(target, isolation_level=None)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                try:
                    size = os.path.getsize(target)
                except OSError:
                    continue
                progress.set(size // MIB, size)

        watcher = threading.Thread(target=watch, name="backup-progress", daemon=True)
        watcher.start()
        try:
            # pages=-1: everything in one step, one read transaction, one instant.
            src.backup(dst, pages=-1)
        finally:
            done.set()
            watcher.join()
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            raise AdminError(f"the copy fails SQLite's integrity check: {check[:3]}")
        counts = {t: dst.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED_TABLES}
        row = dst.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        dst.close()
    finally:
        src.close()
    os.chmod(target, 0o600)  # password hashes, DKIM private keys: as secret as the server
    fsync_dir(target)
    size = os.path.getsize(target)
    progress.set(size // MIB, size)
    progress.finish(f"database: {size // MIB} MiB copied and checked")
    return size, counts, version


def _copy_files(data_dir: Path, partial: Path, progress: Progress) -> list[dict[str, Any]]:
    files, links = data_files(data_dir)
    for link in links:
        progress.note(f"{link}: a symbolic link, not followed: left out")
    entries: list[dict[str, Any]] = []
    progress.phase("files", len(files), unit="files")
    for rel in files:
        src, dst = data_dir / rel, partial / "data" / rel
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(src)
        try:
            have = os.stat(dst)
            same = have.st_size == st.st_size and have.st_mtime_ns == st.st_mtime_ns
        except FileNotFoundError:
            same = False
        digest = sha256_file(dst) if same else copy_file(src, dst)
        entries.append({"path": str(Path("data") / rel), "size": os.path.getsize(dst),
                        "sha256": digest, "mode": stat.S_IMODE(st.st_mode)})
        progress.advance(1, st.st_size)
    progress.finish(f"files: {len(files)} copied")
    return entries


def _backup_sync(settings: Settings, destination: Path, progress: Progress) -> BackupReport:
    started = time.monotonic()
    data_dir = settings.data_dir
    db = data_dir / DB_NAME
    if not db.is_file():
        raise AdminError(f"{db}: no database to back up")
    destination = destination.absolute()
    if destination.exists():
        raise AdminError(f"{destination} already exists: choose a new name for each backup")
    if destination == data_dir or data_dir in destination.parents:
        raise AdminError("the backup cannot be written inside the data folder")
    partial = destination.with_name(destination.name + ".partial")
    try:
        partial.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise AdminError(f"{partial}: {e.strerror}") from None
    # Held until the files are copied: the body files the database copy refers to
    # (``bodies/``) are not deleted by the server's sweep meanwhile.
    held = bodies.backup_lock(data_dir)
    try:
        size, counts, version = _copy_database(db, partial / DB_NAME, progress)
        entries = _copy_files(data_dir, partial, progress)
    finally:
        if held is not None:
            os.close(held)

    external: list[dict[str, Any]] = []
    config_dir = partial / "config"
    config_dir.mkdir(mode=0o700, exist_ok=True)
    originals = [("postroom.toml", settings.path)]
    for label, path in (("tls.cert", settings.tls_cert), ("tls.key", settings.tls_key)):
        if path is not None and data_dir not in Path(os.path.abspath(path)).parents:
            originals.append((f"{label}-{path.name}", path))
    for name, original in originals:
        try:
            digest = copy_file(original, config_dir / name)
        except OSError as e:
            progress.note(f"{original}: {e.strerror}: not included")
            continue
        external.append({"path": f"config/{name}", "original": str(original),
                         "size": os.path.getsize(config_dir / name), "sha256": digest})

    manifest = {
        "format": FORMAT,
        "postroom": __version__,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": settings.hostname,
        "schema_version": version,
        "database": {"path": DB_NAME, "size": size, "sha256": sha256_file(partial / DB_NAME)},
        "files": entries,
        "external": external,
        "counts": counts,
    }
    tmp = partial / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_dir(tmp)
    os.replace(tmp, partial / MANIFEST)
    for dirpath, _dirs, _files in os.walk(partial):
        fsync_dir(Path(dirpath))
    os.rename(partial, destination)
    fsync_dir(destination.parent)
    return BackupReport(
        destination=str(destination), database_octets=size,
        files=[e["path"] for e in entries], external=[e["original"] for e in external],
        counts=counts, seconds=time.monotonic() - started,
    )


async def backup(settings: Settings, destination: Path, progress: Progress | None = None) -> BackupReport:
    """Back up the data folder of ``settings`` (the server may be running) to ``destination``."""
    progress = progress or Progress()
    _sqlite_only(settings, "backup")
    if not settings.data_dir.is_dir():
        raise AdminError(f"{settings.data_dir}: data folder missing")
    lock = datadir.lock_shared(settings.data_dir)
    try:
        return await asyncio.to_thread(_backup_sync, settings, destination, progress)
    finally:
        datadir.unlock(lock)


def _sqlite_only(settings: Settings, what: str) -> None:
    """A PostgreSQL database is backed up with PostgreSQL's tools, which do it better
    (consistent online dumps, point-in-time recovery, replicas)."""
    if settings.store.backend != "sqlite":
        raise AdminError(
            f"`postroom {what}` copies an SQLite data folder; this server's store is PostgreSQL: "
            "use pg_dump / pg_basebackup (or the managed service's snapshots), and copy each "
            "node's data folder (server.key, tls/) as files (docs/scaling.md)"
        )


# -- restore ---------------------------------------------------------------------------
def open_backup_file(source: Path, rel: Path) -> BinaryIO:
    """Open the regular file ``source/rel`` for reading, refusing symbolic links and others.

    A backup never contains a symbolic link (backup leaves them out), so one found there was
    put there by someone else: followed, a link named like a blob or ``server.key`` would
    copy any file the restoring user can read (``/etc/shadow`` when run as root) into the
    data folder, where the server's user reads it, and a linked folder would pull in a whole
    tree. Each folder on the way is opened with ``O_NOFOLLOW`` relative to the previous one,
    so no component can be a link, not even one swapped in while the restore runs. A FIFO or
    device is refused too: opening a FIFO would wait for a writer forever.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.parts[:-1]:
            try:
                fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=dir_fd)
            except OSError as e:
                raise _refusal(source, rel, e) from None
            os.close(dir_fd)
            dir_fd = fd
        try:
            fd = os.open(rel.parts[-1], flags | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            raise _refusal(source, rel, e) from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AdminError(f"{source / rel}: not a regular file: a backup holds only regular "
                         "files, refusing it")
    os.set_blocking(fd, True)
    return open(fd, "rb")


def _refusal(source: Path, rel: Path, e: OSError) -> Exception:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return AdminError(f"{source / rel}: a symbolic link on the way: a backup never contains "
                          "one, refusing it")
    if e.errno == errno.ENOENT:
        return FileNotFoundError(e.errno, e.strerror, str(source / rel))
    return AdminError(f"{source / rel}: {e.strerror}")


def read_manifest(source: Path) -> dict[str, Any]:
    try:
        with open_backup_file(source, Path(MANIFEST)) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise AdminError(f"{source}: not a postroom backup (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise AdminError(f"{source / MANIFEST}: unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AdminError(f"{source / MANIFEST}: unknown backup format")
    return manifest


def _safe_relative(path: str) -> Path:
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise AdminError(f"{MANIFEST}: refusing the path {path!r}")
    return rel


def verify(source: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Check every checksum of the backup at ``source``; return its manifest."""
    progress = progress or Progress()
    manifest = read_manifest(source)
    items = [manifest["database"], *manifest.get("files", []), *manifest.get("external", [])]
    total = sum(int(i["size"]) for i in items)
    progress.phase("verify", max(1, total // MIB), unit="MiB")
    done = 0
    for item in items:
        rel = _safe_relative(item["path"])
        path = source / rel
        try:
            with open_backup_file(source, rel) as f:
                if os.fstat(f.fileno()).st_size != int(item["size"]):
                    raise AdminError(f"{path}: wrong size: the backup is damaged")
                h = hashlib.sha256()
                while chunk := f.read(COPY_CHUNK):
                    h.update(chunk)
            if h.hexdigest() != item["sha256"]:
                raise AdminError(f"{path}: wrong checksum: the backup is damaged")
        except FileNotFoundError:
            raise AdminError(f"{path}: missing: the backup is incomplete") from None
        done += int(item["size"])
        progress.set(done // MIB, done)
    if int(manifest.get("schema_version", 0)) > len(MIGRATIONS):
        raise AdminError("the backup comes from a newer postroom (database schema "
                         f"{manifest['schema_version']}): upgrade postroom first")
    progress.finish(f"verify: {len(items)} files, checksums match")
    return manifest


def _owner(settings: Settings, data_dir: Path) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    if data_dir.exists():
        st = os.stat(data_dir)
        return st.st_uid, st.st_gid
    if settings.server.user:
        from postroom.privileges import account

        return account(settings.server.user, settings.server.group)
    return None


def _restore_sync(settings: Settings, source: Path, force: bool, progress: Progress) -> RestoreReport:
    manifest = verify(source, progress)
    data_dir = settings.data_dir.absolute()
    lock = None
    if data_dir.exists():
        lock = datadir.lock_exclusive(data_dir)
    try:
        empty = not data_dir.exists() or all(p.name == datadir.LOCK_NAME for p in data_dir.iterdir())
        if not empty and not force:
            raise AdminError(f"{data_dir} is not empty: --force replaces it (the current one "
                             "is kept next to it)")
        owner = _owner(settings, data_dir)
        staging = data_dir.with_name(f".{data_dir.name}.restoring")
        if staging.exists():
            shutil.rmtree(staging)  # left by an interrupted restore
        staging.mkdir(mode=0o700, parents=True)
        items = [(manifest["database"], Path(DB_NAME))]
        for entry in manifest.get("files", []):
            rel = _safe_relative(entry["path"])
            items.append((entry, Path(*rel.parts[1:]) if rel.parts[0] == "data" else rel))
        progress.phase("restore", len(items), unit="files")
        for entry, target in items:
            dst = staging / target
            dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open_backup_file(source, _safe_relative(entry["path"])) as f:
                digest = copy_open_file(f, dst)
            if digest != entry["sha256"]:
                raise AdminError(f"{entry['path']}: changed while restoring: nothing replaced")
            if "mode" in entry:
                os.chmod(dst, int(entry["mode"]) & 0o777)
            progress.advance(1, int(entry["size"]))
        if owner is not None:
            for dirpath, dirnames, filenames in os.walk(staging):
                for name in [*dirnames, *filenames, ""]:
                    os.chown(os.path.join(dirpath, name) if name else dirpath, *owner,
                             follow_symlinks=False)
        for dirpath, _dirs, _files in os.walk(staging):
            fsync_dir(Path(dirpath))
        replaced = None
        if data_dir.exists() and empty:
            (data_dir / datadir.LOCK_NAME).unlink(missing_ok=True)
            data_dir.rmdir()
        elif data_dir.exists():
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            replaced = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}")
            os.rename(data_dir, replaced)
        os.rename(staging, data_dir)
        fsync_dir(data_dir.parent)
        progress.finish(f"restore: {len(items)} files into {data_dir}")
    finally:
        if lock is not None:
            datadir.unlock(lock)
    return RestoreReport(
        data_dir=str(data_dir), replaced=str(replaced) if replaced else None,
        counts=dict(manifest.get("counts", {})),
        external=[{"file": str(source / e["path"]), "original": e["original"]}
                  for e in manifest.get("external", [])],
    )


async def restore(
    settings: Settings, source: Path, *, force: bool = False, progress: Progress | None = None
) -> RestoreReport:
    """Replace the data folder of ``settings`` with the backup at ``source`` (server stopped)."""
    _sqlite_only(settings, "restore")
    return await asyncio.to_thread(_restore_sync, settings, source.absolute(), force,
                                   progress or Progress())
