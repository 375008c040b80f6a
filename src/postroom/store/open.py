"""Opening the configured store: the one place that knows which backends exist.

``postroom serve``, the CLI and the admin tools call :func:`open_store` with the settings;
everything else receives the opened :class:`~postroom.store.api.Store`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from postroom.config import Settings
from postroom.peers import Peers
from postroom.store.api import Store


def node_name(settings: Settings) -> str:
    """This node's name among the nodes that share a database (queue leases are held
    under it): ``server.node_name``, else the host name and the data folder, which is
    unique on one machine and stable across restarts."""
    if settings.server.node_name:
        return settings.server.node_name
    return f"{socket.gethostname()}:{settings.data_dir.resolve()}"


def node_peers(store: Store) -> Peers | None:
    """How the serving processes of several nodes tell each other small notes
    (``postroom.peers``), when the backend has a way: PostgreSQL's NOTIFY. None: SQLite,
    whose processes are one server's and talk over the process bus."""
    peers: Peers | None = getattr(store, "peers", None)
    return peers


async def open_store(
    settings: Settings, *, auto_migrate: bool | None = None,
    timing: Callable[[bool, float], None] | None = None,
) -> Store:
    """Open (creating and migrating as allowed) the store the settings name.

    ``auto_migrate`` overrides ``store.auto_migrate`` (``postroom migrate`` passes True).
    Raises :class:`~postroom.store.api.StoreUnavailable` when PostgreSQL cannot be
    reached and :class:`~postroom.store.schema.SchemaTooNew` (or ``SchemaTooOld``) when
    the database's schema does not fit this postroom. ``timing(write, seconds)`` is told
    the duration of every store read and write (metrics)."""
    cfg = settings.store
    if cfg.backend == "sqlite":
        from postroom.store.sqlite import open_store as open_sqlite

        return open_sqlite(settings.data_dir, fsync=settings.fsync, timing=timing)
    from postroom.store.postgres import open_store as open_pg

    blobs = None
    if cfg.blob_store == "s3":
        from postroom.store.s3 import S3Blobs, S3Settings

        blobs = S3Blobs(S3Settings(
            endpoint=cfg.s3_endpoint, bucket=cfg.s3_bucket, access_key=cfg.s3_access_key,
            secret_key=cfg.s3_secret_key(settings.path.parent), region=cfg.s3_region,
            prefix=cfg.s3_prefix,
        ))
    store = await open_pg(
        cfg.url,
        password=cfg.password(settings.path.parent),
        pool_size=cfg.pool_size,
        auto_migrate=cfg.auto_migrate if auto_migrate is None else auto_migrate,
        blobs=blobs,
        blob_min_size=cfg.s3_min_size,
    )
    store.engine.timing = timing
    return store


async def migrate(settings: Settings) -> tuple[int, int]:
    """Bring the configured database's schema up to date: (version before, after)."""
    cfg = settings.store
    if cfg.backend == "sqlite":
        from postroom.store.sqlite.engine import Engine
        from postroom.store.sqlite.schema import current_version
        from postroom.store.sqlite.schema import migrate as migrate_sqlite

        path = settings.data_dir / "postroom.sqlite3"
        engine = Engine(path, fsync=settings.fsync, readers=1)
        try:
            before = engine.run_sync(current_version)
            return before, engine.run_sync(migrate_sqlite)
        finally:
            engine.close()
    from postroom.store.postgres.engine import Engine as PgEngine
    from postroom.store.postgres.schema import migrate as migrate_pg

    engine_pg = await PgEngine.connect(cfg.url, password=cfg.password(settings.path.parent), size=2)
    try:
        async with engine_pg.connection() as conn:
            return await migrate_pg(conn, apply=True)
    finally:
        await engine_pg.close()


async def schema_status(settings: Settings) -> tuple[int, int]:
    """(the database's schema version, the version this postroom knows), changing nothing."""
    from postroom.store.schema import MIGRATIONS

    cfg = settings.store
    if cfg.backend == "sqlite":
        import sqlite3

        from postroom.store.sqlite.schema import current_version

        path = settings.data_dir / "postroom.sqlite3"
        if not path.exists():
            return 0, len(MIGRATIONS)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return current_version(conn), len(MIGRATIONS)
        finally:
            conn.close()
    from postroom.store.postgres.engine import Engine as PgEngine
    from postroom.store.postgres.schema import current_version as pg_version

    engine = await PgEngine.connect(cfg.url, password=cfg.password(settings.path.parent), size=2)
    try:
        async with engine.connection() as conn:
            return await pg_version(conn), len(MIGRATIONS)
    finally:
        await engine.close()
