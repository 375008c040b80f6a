"""What every protocol handler receives from the wiring in ``app.py`` (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from postroom.activity import DeliveryLog
from postroom.auth.directory import Directory
from postroom.auth.failures import LoginGuard
from postroom.config import Settings
from postroom.metrics import Metrics
from postroom.net.budget import check
from postroom.net.listener import OtherCounts, Shutdown
from postroom.net.offload import CpuPool
from postroom.peers import LocalPeers, Peers
from postroom.policy.disk import FreeSpaceGuard
from postroom.policy.dns import Resolver
from postroom.store.api import Store
from postroom.tls import TlsContexts

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    tls: TlsContexts
    shutdown: Shutdown
    secret: bytes = b""  # stable per data folder: SCRAM fake salts, id generation
    resolver: Resolver | None = None  # the one DNS resolver (queue and auth checks)
    signer: Any = None  # policy.signing.Signer: DKIM signing and ARC sealing
    auth_checker: Any = None  # policy.inbound.AuthChecker (None: no inbound checks)
    dmarc_reports: Any = None  # policy.reports.DmarcRecorder (None: not recorded)
    tls_results: Any = None  # policy.tls_reports.TlsRecorder: outbound TLS (None: not recorded)
    tls_inbox: Any = None  # policy.tls_reports.TlsReportInbox: reports we receive (None: off)
    node: str = "local"
    peers: Peers = field(default_factory=LocalPeers)  # the other serving processes
    # IMAP sessions per (user, address) in the other worker processes (None: one process)
    user_ip_counts: OtherCounts | None = None
    counters: dict[str, int] = field(default_factory=dict)
    # Worker processes for work that cannot be sliced (net/offload.py); None: run inline
    # (unit tests that build Services by hand).
    cpu: CpuPool | None = None
    # Room for new mail in the data folder (limits.min_free_space); threshold 0: no guard.
    free_space: FreeSpaceGuard = field(default_factory=lambda: FreeSpaceGuard(Path("."), 0))
    # Failed logins per client address and per user across connections (auth/failures.py);
    # None: only the per-connection rules (unit tests that build Services by hand).
    login_guard: LoginGuard | None = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
    metrics: Metrics = field(default_factory=Metrics)
    delivery_log: DeliveryLog = field(default_factory=DeliveryLog)
    # Where each listener role actually listens, once bound (autoconfig answers with these).
    bound: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    ready: bool = False  # every listener bound and the queue started (/readyz)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process under the current command's deadline
        (:meth:`CpuPool.run`), or inline when no pool was wired."""
        if self.cpu is None:
            result = fn(*args)
            check()
            return result
        return await self.cpu.run(fn, *args)


def load_secret(data_dir: Path) -> bytes:
    """The data folder's server secret (32 random bytes, created once, mode 0600)."""
    import os

    path = data_dir / "server.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = os.urandom(32)
    tmp = path.with_name("server.key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return secret
