"""Shared test fixtures: store backends and helpers to run async test bodies."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# POSTROOM_SLOW=1 turns every soak/fuzz test into its long version: crash tests kill more
# often, scale tests open more sessions, and property tests without their own example
# count run ten times as many examples.
SLOW = os.environ.get("POSTROOM_SLOW") == "1"
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "slow", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("slow" if SLOW else "default")


# "postgresql-s3": PostgreSQL with every message's bytes in an S3 bucket (support/s3.py).
BACKENDS = ("sqlite", "postgresql", "postgresql-s3")


def store_backends() -> list[str]:
    """Backends the store contract suite runs on: POSTROOM_TEST_BACKENDS=sqlite,postgresql
    ("postgres" is accepted for "postgresql"; "postgresql-s3" adds the S3 blob store).
    scripts/run-tests sets all three."""
    wanted = os.environ.get("POSTROOM_TEST_BACKENDS", "sqlite").split(",")
    out = []
    for name in (b.strip() for b in wanted):
        name = "postgresql" if name == "postgres" else name
        if name and name not in BACKENDS:
            raise pytest.UsageError(f"POSTROOM_TEST_BACKENDS: unknown backend {name!r}")
        if name:
            out.append(name)
    return out


async def open_test_store(backend: str, tmp_path: Path, url: str = "") -> Any:
    if backend == "sqlite":
        from postroom.store.sqlite import open_store

        return open_store(tmp_path / "data", fsync=False)
    if backend == "postgresql":
        from postroom.store.postgres import open_store as open_pg

        return await open_pg(url)
    if backend == "postgresql-s3":
        from support.s3 import fresh_blobs

        from postroom.store.postgres import open_store as open_pg

        return await open_pg(url, blobs=fresh_blobs())
    raise pytest.UsageError(f"unknown store backend {backend!r}")


@pytest.fixture(params=store_backends())
def store_run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Callable[[Any], Awaitable[Any]]], Any]:
    """``store_run(async_fn)`` runs ``async_fn(store)`` on a fresh store of each backend
    (on PostgreSQL: a fresh database on this test process's private server)."""

    def run(fn: Callable[[Any], Awaitable[Any]]) -> Any:
        url = ""
        if request.param.startswith("postgresql"):
            from support.postgres import fresh_database

            url = fresh_database()

        async def main() -> Any:
            store = await open_test_store(request.param, tmp_path, url)
            try:
                return await fn(store)
            finally:
                await store.close()

        try:
            return asyncio.run(main())
        finally:
            if url:
                from support.postgres import drop_database

                drop_database(url)

    return run
