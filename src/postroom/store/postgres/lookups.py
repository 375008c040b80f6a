"""A node's cache of address lookups (``Store.lookup_address``), exact across nodes.

Every RCPT resolves its address (and an alias its targets) with one read; with the
database on another machine that read is a round trip, and the node's and the database's
CPU for it were about a tenth of an SMTP delivery's (``bench/pg_statements.py``). The
answers change only when an administrator changes a domain, a user or an alias, so they
are cached here and dropped whenever any of those tables changes anywhere:

* the database tells every node: triggers on ``domains``, ``aliases`` and ``users``
  (migration 16) NOTIFY ``a`` on the node's channel when such a transaction commits,
  whichever node, CLI or SQL session made it. Deliveries, which update the users' usage
  columns, do not fire it (the trigger ignores updates that change the usage);
* this process drops the cache itself right after its own account writes, so its own
  next lookup never waits for the notification;
* while the LISTEN connection is down (notifications would be missed) the cache is not
  used, and it is dropped when the connection is back;
* a read that raced with a drop (started before, finished after) is not stored: each
  drop starts a new generation.

The cost of exactness is the notification's latency: another node's lookups may answer
from the old state for the few milliseconds between that commit and the notification's
arrival, the same bound as IMAP IDLE wake-ups across nodes.
"""

from __future__ import annotations

from postroom.store.api import AddressLookup
from postroom.store.postgres.notify import Relay

MAX_ENTRIES = 50_000  # then dropped wholesale: a flood of unknown addresses stays bounded


class LookupCache:
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._entries: dict[str, AddressLookup] = {}
        self.generation = 0
        relay.subscribe_accounts(self.clear)

    def get(self, address: str) -> AddressLookup | None:
        return self._entries.get(address) if self._relay.connected else None

    def put(self, address: str, generation: int, found: AddressLookup) -> None:
        if generation != self.generation or not self._relay.connected:
            return  # dropped meanwhile: the read may predate the change
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[address] = found

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
