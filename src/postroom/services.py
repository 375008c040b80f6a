"""What every protocol handler receives from the wiring in ``app.py`` (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from postroom.auth.directory import Directory
from postroom.config import Settings
from postroom.net.listener import Shutdown
from postroom.store.api import Store
from postroom.tls import TlsContexts


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    tls: TlsContexts
    shutdown: Shutdown
    node: str = "local"
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
