"""A private S3-compatible server for tests: moto's standalone server on a free loopback port.

Why moto and not MinIO: MinIO is not installable from PyPI, Debian or npm (the package
registries these tests may use), and moto's server (``moto[server]``, PyPI) is a real HTTP
server speaking the S3 REST API with SigV4 signatures, so postroom's S3 client talks to it
exactly as to MinIO or AWS: PUT, ranged GET, DELETE, LIST. One server per test process,
started on first use, stopped at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.postgres import free_port

ACCESS_KEY = "postroom-test"
SECRET_KEY = "postroom-test-secret"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(f"/tmp/postroom-moto-{os.getpid()}-{self.port}.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> S3Server:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log,
            env=dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.log.unlink(missing_ok=True)


_shared: S3Server | None = None
_buckets = 0


def shared_server() -> S3Server:
    global _shared
    if _shared is None:
        _shared = S3Server().start()
        atexit.register(_shared.stop)
    return _shared


def fresh_bucket() -> tuple[str, str]:
    """(endpoint, a bucket name not used before in this process)."""
    global _buckets
    server = shared_server()
    _buckets += 1
    return server.endpoint, f"postroom-{os.getpid()}-{_buckets}"


def fresh_blobs() -> Any:
    """An S3 blob store (postroom.store.s3.S3Blobs) on a fresh bucket of the shared server."""
    from postroom.store.s3 import S3Blobs, S3Settings

    endpoint, bucket = fresh_bucket()
    return S3Blobs(S3Settings(endpoint, bucket, ACCESS_KEY, SECRET_KEY))
