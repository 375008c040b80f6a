"""What every protocol handler receives from the wiring in ``app.py`` (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from postroom.auth.directory import Directory
from postroom.config import Settings
from postroom.net.listener import Shutdown
from postroom.peers import LocalPeers, Peers
from postroom.store.api import Store
from postroom.tls import TlsContexts


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    tls: TlsContexts
    shutdown: Shutdown
    secret: bytes = b""  # stable per data folder: SCRAM fake salts, id generation
    node: str = "local"
    peers: Peers = field(default_factory=LocalPeers)  # the other serving processes
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


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
