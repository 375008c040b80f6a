"""A real ``postroom serve`` in a subprocess, on free loopback ports, for end-to-end tests.

Ports are chosen by the kernel (the config says port 0) and read back from the server's
``listening ROLE HOST:PORT`` lines, so parallel test runs never collide.

The store is SQLite in the server's data folder, or with ``backend="postgresql"`` (the
default when ``POSTROOM_E2E_BACKEND=postgresql``) a fresh database on this test
process's private PostgreSQL server (``support.postgres``), so that the same end-to-end
tests prove both backends.

Worker processes: a server runs as one process (``[server] workers = 1``) unless the
test asks for ``workers`` (tests/e2e/test_workers_*.py do), which keeps the suite quick;
``POSTROOM_TEST_WORKERS=N`` makes N the default for every server of the run, to run the
whole end-to-end suite on the multi-process model.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from postroom import config as config_file
from postroom.admin.service import AdminService
from postroom.store.open import open_store
from postroom.tls import write_self_signed

ALL_ROLES = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
DEFAULT_WORKERS = int(os.environ.get("POSTROOM_TEST_WORKERS") or 1)
PASSWORD = "correct horse battery"


class Server:
    def __init__(
        self,
        root: Path,
        roles: tuple[str, ...] = ALL_ROLES,
        extra: str = "",
        fsync: bool = False,
        hostname: str = "mail.example.test",
        backend: str | None = None,
        database: str = "",
        hosts: dict[str, str] | None = None,
        workers: int | str | None = None,  # a number or "auto"
        fixed_ports: dict[str, int] | None = None,
        tls: str | None = None,
    ) -> None:
        """``database``: a PostgreSQL URL to share with other servers (several nodes);
        default a fresh database of its own. ``fixed_ports``: roles that listen on a
        given port instead of a free one (a peer must know it before we start); ``tls``:
        the body of [tls] instead of the test certificate (e.g. ``acme = true``)."""
        self.root = root
        self.backend = backend or os.environ.get("POSTROOM_E2E_BACKEND", "sqlite")
        self.roles = roles
        self.hostname = hostname
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.cert = root / "cert.pem"
        self.key = root / "key.pem"
        if not self.cert.exists():
            write_self_signed(self.cert, self.key, hostname)
        self.config = root / "postroom.toml"
        # ``hosts``: a listening address other than 127.0.0.1 for some roles ("[::1]"), for
        # tests that need clients from two addresses (the per-address login rules).
        fixed = fixed_ports or {}
        listeners = "".join(
            f'[[listener]]\naddress = "{(hosts or {}).get(r, "127.0.0.1")}:{fixed.get(r, 0)}"\nrole = "{r}"\n'
            for r in roles
        )
        # ``extra`` holds TOML tables only; the fast auth delay keeps tests quick unless
        # the test brings its own [limits].
        limits = "" if "[limits]" in extra else '[limits]\nauth_delay = "10ms"\n'
        # Likewise no early-talker wait (on by default: 1 s per new client address) unless
        # the test brings its own [smtp]; Postfix in the benchmarks has none either.
        if "[smtp]" not in extra:
            limits += '[smtp]\ngreeting_delay = "0s"\n'
        n = workers or DEFAULT_WORKERS
        workers_line = f"workers = {n if isinstance(n, int) else repr(n)}\n"
        if "[server]" not in extra:
            limits += "[server]\n" + workers_line
        elif "workers" not in extra:  # a test that brings [server] (user, group)
            extra = extra.replace("[server]\n", "[server]\n" + workers_line, 1)
        # Inbound SPF/DKIM/DMARC checks need DNS: off unless the test brings its own
        # [auth_checks] (the tests in tests/e2e/test_mail_auth.py serve records locally).
        if "[auth_checks]" not in extra:
            limits += "[auth_checks]\nenabled = false\n"
        self.database = ""
        if self.backend == "postgresql" and "[store]" not in extra:
            from support.postgres import fresh_database

            # A server made again on the same folder (a restart) finds its database again.
            remembered = root / "database.url"
            if not database and remembered.exists():
                database = remembered.read_text()
            self.database = database or fresh_database()
            remembered.write_text(self.database)
            limits += f'[store]\nbackend = "postgresql"\nurl = "{self.database}"\n'
        elif self.backend not in ("sqlite", "postgresql"):  # or the test brings its [store]
            raise ValueError(f"unknown backend {self.backend!r}")
        tls_body = tls if tls is not None else f'cert = "{self.cert}"\nkey = "{self.key}"'
        self.config.write_text(
            f'hostname = "{hostname}"\ndata_dir = "data"\nfsync = {str(fsync).lower()}\n'
            f'[tls]\n{tls_body}\n{limits}{extra}\n{listeners}'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = root / "server.log"

    # -- accounts, through the same store the server uses ------------------------------
    def admin(self, fn: Any) -> Any:
        settings = config_file.load(self.config)

        async def run() -> Any:
            store = await open_store(settings)
            try:
                return await fn(AdminService(store), store)
            finally:
                await store.close()

        return asyncio.run(run())

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        domain = address.rpartition("@")[2]

        async def fn(admin: AdminService, store: Any) -> None:
            if await store.get_domain(domain) is None:
                await admin.domain_add(domain)
            await admin.user_add(address, password)

        self.admin(fn)

    def messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of a mailbox, in UID order, byte for byte."""

        async def fn(admin: AdminService, store: Any) -> list[bytes]:
            user = await store.get_user(address)
            mb = await store.get_mailbox(user.id, mailbox)
            msgs = await store.list_messages(mb.id)
            blobs = await store.read_blobs([m.blob_id for m in msgs])
            return [blobs[m.blob_id] for m in msgs]

        return self.admin(fn)

    def queue(self) -> list[Any]:
        return self.admin(lambda admin, store: store.queue_list())

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``postroom -c CONFIG ARGS...`` as a user would run it (works while serving)."""
        return subprocess.run(
            [sys.executable, "-m", "postroom", "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {})),
        )

    # -- process ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> Server:
        """Run ``postroom serve``; ``env`` adds environment variables (e.g. :func:`faketime`)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postroom", "-c", str(self.config), "serve"],
            stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        self.ports = {}
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            m = re.match(r"listening (\S+) (\S+):(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(3))
            if line.strip() == "ready":
                return self
        raise RuntimeError("server did not become ready")

    def __enter__(self) -> Server:
        """``with Server(...).start() as srv:`` stops it however the block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.check_hostname = False
        return ctx


def faketime(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock moved by ``offset`` ("-2d",
    "+90m"): libfaketime (Debian package ``faketime``, installed by scripts/run-tests).
    Monotonic clocks stay real, so timeouts and asyncio behave (``time.sleep`` needs the
    work-around in ``faketime_site/sitecustomize.py``). For tests of what happens on another
    day (DMARC reports cover whole UTC days)."""
    import glob

    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not libs:
        raise RuntimeError("libfaketime is missing: install the Debian package faketime")
    site = str(Path(__file__).with_name("faketime_site"))
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH", "")) if p)
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": path}
