"""Message bytes on an S3-compatible object store (MinIO, Ceph RGW, Garage, AWS S3 ...).

For sites whose mail outgrows the database: with ``store.blob_store = "s3"`` the
PostgreSQL backend keeps each message's bytes (from ``store.s3_min_size`` octets up) as
one object and only the row (size, parse summary, object name) in the database.

The order that keeps a crash harmless (the issue's rule: an orphan, never a dangling
reference):

1. *write*: the object is stored (``put``) before the transaction that inserts the row
   referencing it; a crash in between leaves an object nobody references;
2. *delete*: the transaction that drops a blob's last reference lists its object in
   ``blob_garbage``; only after that commit is the object deleted (:meth:`collect`), and
   the garbage row after the object; a crash in between deletes it again later;
3. *orphans* (step 1 interrupted): :meth:`sweep` lists the bucket and deletes objects
   older than a grace period that no row references nor is listed as garbage.

Object names are random (``<prefix><32 hex>``), never reused: a name is never written
twice, so no reader can see an object change.

Client: the ``minio`` package (MinIO's own S3 SDK, Apache-2.0): small (urllib3 and a
signing library), maintained, and speaks SigV4 to any S3 implementation. It is
synchronous, so calls run on a small thread pool, like SQLite's readers; an object store
call is a network round trip, so the thread hop costs little next to it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from postroom.store.api import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint: str  # "http://127.0.0.1:9000" or "https://s3.example.org"
    bucket: str
    access_key: str
    secret_key: str = ""
    region: str = "us-east-1"
    prefix: str = "postroom/"


class S3Blobs:
    """The object store behind the ``blobs`` table (see the module docstring)."""

    def __init__(self, settings: S3Settings, *, threads: int = 16) -> None:
        import urllib3
        from minio import Minio

        url = urlsplit(settings.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"not an http(s) URL: {settings.endpoint!r}")
        http = urllib3.PoolManager(
            maxsize=threads, timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                  status_forcelist=(500, 502, 503, 504)),
        )
        self.settings = settings
        self.client = Minio(
            url.netloc, access_key=settings.access_key, secret_key=settings.secret_key,
            secure=url.scheme == "https", region=settings.region, http_client=http,
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")
        self.puts = 0  # observed by tests
        self.deletes = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args))
        except StoreUnavailable:
            raise
        except Exception as e:
            if _missing(e):
                raise
            log.warning("blob store unavailable: %s", type(e).__name__)
            raise StoreUnavailable("the message store is unavailable") from e

    async def ensure_bucket(self) -> None:
        def make() -> None:
            if not self.client.bucket_exists(self.settings.bucket):
                self.client.make_bucket(self.settings.bucket)

        await self._run(make)

    def new_name(self) -> str:
        return self.settings.prefix + os.urandom(16).hex()

    async def put(self, data: bytes) -> str:
        """Store ``data`` as a new object; its name (durable once this returns: an S3
        PUT is acknowledged after the object is stored)."""
        name = self.new_name()
        await self._run(
            self.client.put_object, self.settings.bucket, name, io.BytesIO(data), len(data)
        )
        self.puts += 1
        return name

    async def get(self, name: str, length: int | None = None) -> bytes:
        """The object's bytes, or its first ``length`` octets."""

        def read() -> bytes:
            response = self.client.get_object(self.settings.bucket, name, 0, length or 0)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return bytes(await self._run(read))

    async def get_many(self, wanted: dict[int, tuple[str, int | None]]) -> dict[int, bytes]:
        """{key: (name, length or None)} read concurrently."""
        keys = list(wanted)
        found = await asyncio.gather(*(self.get(*wanted[k]) for k in keys))
        return dict(zip(keys, found, strict=True))

    async def delete(self, names: Sequence[str]) -> None:
        """Delete objects; one that is gone already counts as deleted."""

        def remove(name: str) -> None:
            try:
                self.client.remove_object(self.settings.bucket, name)
            except Exception as e:
                if not _missing(e):
                    raise

        await asyncio.gather(*(self._run(remove, n) for n in names))
        self.deletes += len(names)

    async def listing(self, older_than: float) -> list[str]:
        """Names of the objects under our prefix last written before ``older_than``."""

        def walk() -> list[str]:
            out = []
            for obj in self.client.list_objects(
                self.settings.bucket, prefix=self.settings.prefix, recursive=True
            ):
                modified = obj.last_modified.timestamp() if obj.last_modified else time.time()
                if modified < older_than:
                    out.append(obj.object_name)
            return out

        return list(await self._run(walk))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _missing(e: Exception) -> bool:
    return getattr(e, "code", None) in ("NoSuchKey", "NoSuchObject")
