"""A private PostgreSQL server for tests and benchmarks: started in a temp folder on a free
loopback port, torn down after.

Where the binaries come from: Debian's ``postgresql`` package (``scripts/run-tests``
installs it when run as root) puts them in ``/usr/lib/postgresql/<version>/bin``;
``POSTROOM_PG_BIN`` names another folder. ``initdb`` refuses to run as root, so as root the
server runs as the unprivileged ``postgres`` account the package creates (``setpriv``), in
a folder that account owns; as any other user it simply runs as that user.

The server listens on 127.0.0.1 only, with ``trust`` authentication for the one superuser
``postroom`` (nothing but this machine's loopback reaches it, and it lives as long as the
test session). ``durable=False`` (tests) turns fsync off: a killed *server* still loses
nothing committed (the WAL is in the kernel's page cache), only a power cut would.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SUPERUSER = "postroom"


def find_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or None when none is installed."""
    env = os.environ.get("POSTROOM_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One PostgreSQL server: :meth:`start`, :meth:`url`, :meth:`restart`, :meth:`stop`."""

    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None) -> None:
        bindir = find_bin()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found: install the Debian package postgresql "
                "(scripts/run-tests does as root) or set POSTROOM_PG_BIN"
            )
        self.bin = bindir
        self.durable = durable
        self.settings = settings or {}
        self.root = Path(tempfile.mkdtemp(prefix="postroom-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam(os.environ.get("POSTROOM_PG_USER", "postgres"))
            self._owner = (pw.pw_uid, pw.pw_gid)
            os.chown(self.root, *self._owner)
        self.log_path = self.root / "server.log"

    def _cmd(self, *args: str) -> list[str]:
        if self._owner is None:
            return list(args)
        uid, gid = self._owner
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *args]

    def start(self, timeout: float = 60.0) -> PgCluster:
        if not self.data.exists():
            subprocess.run(
                self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                          "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"),
                check=True, capture_output=True, timeout=timeout,
            )
        self.port = self.port or free_port()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "300",
            "shared_buffers": "64MB",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
            **self.settings,
        }
        args = [str(self.bin / "postgres"), "-D", str(self.data)]
        for k, v in options.items():
            args += ["-c", f"{k}={v}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        if self._owner is not None:
            os.chown(self.log_path, *self._owner)
        self._log = log
        self.proc = subprocess.Popen(self._cmd(*args), stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log_path.read_text()[-2000:]}")

    def _ready(self) -> bool:
        r = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True,
        )
        return r.returncode == 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        r = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(dbname), "-c", sql],
            capture_output=True, text=True, timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        tpl = f" TEMPLATE {template}" if template else ""
        self.psql(f"CREATE DATABASE {name}{tpl}")
        return self.url(name)

    def kill(self) -> None:
        """SIGKILL the postmaster's whole process group (a crash, not a shutdown)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self._log.close()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT: roll back sessions, checkpoint) or
        ``immediate`` (SIGQUIT: no checkpoint; recovery at the next start)."""
        if self.proc is None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self.proc = None
        self._log.close()

    def restart(self, mode: str = "fast", down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, start again on the same port."""
        self.stop(mode)
        time.sleep(down)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# -- one server per test process, a fresh database per test -----------------------------

_shared: PgCluster | None = None
_counter = 0
TEMPLATE = "postroom_template"


def shared_cluster() -> PgCluster:
    """This process's test server (started on first use, destroyed at exit), with a
    template database migrated to the current schema."""
    global _shared
    if _shared is None:
        import atexit

        cluster = PgCluster().start()
        atexit.register(cluster.destroy)
        cluster.create_database(TEMPLATE)
        _migrate(cluster.url(TEMPLATE))
        _shared = cluster
    return _shared


def _migrate(url: str) -> None:
    import asyncio

    from postroom.store.postgres import open_store

    async def run() -> None:
        store = await open_store(url)
        await store.close()

    asyncio.run(run())


def fresh_database() -> str:
    """A new, empty, migrated database on the shared server; its URL."""
    global _counter
    cluster = shared_cluster()
    _counter += 1
    name = f"t{os.getpid()}_{_counter}"
    return cluster.create_database(name, TEMPLATE)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    if _shared is not None and _shared.proc is not None:
        _shared.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def with_store(fn: Any, **kw: Any) -> Any:
    """Run ``await fn(store, url)`` on a PostgresStore opened (``open_store(url, **kw)``)
    on a fresh database of the shared server, closed and dropped after."""
    import asyncio

    from postroom.store.postgres import open_store

    url = fresh_database()

    async def main() -> Any:
        store = await open_store(url, **kw)
        try:
            return await fn(store, url)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    finally:
        drop_database(url)
