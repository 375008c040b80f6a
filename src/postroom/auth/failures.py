"""Authentication failures per client address and per user: penalty, block, lock.

The per-connection policy (``net/auth.py``: a growing delay before each failure's answer,
closing after ``limits.auth_failures``) does nothing against a client that opens a new
connection for every guess, nor against many connections at once. This module keeps what
outlives a connection, shared by SMTP AUTH, IMAP and POP3 (like Dovecot's auth penalty
and a fail2ban jail, without a firewall):

* **Per client address** (an IPv4 address, or the /64 of an IPv6 one: one host's range,
  as for the SMTP greeting pass). Failures within ``limits.auth_ip_window`` count. After
  :data:`FREE_FAILURES` of them (typos), every new attempt from that address first waits
  ``auth_delay x 2^(n - FREE_FAILURES)`` seconds (at most :data:`MAX_PENALTY`); the
  argon2 slots are given out in turn per address (``net/auth.py``), so whatever one
  address queues, another waits for about one verify. At ``limits.auth_ip_failures``
  failures the address is *blocked* for ``auth_ip_window``: its attempts are refused
  with a temporary failure without looking at the password (a right guess learns
  nothing).
* **Per user** (the name the client typed, normalized; unknown names too, so a lock
  reveals nothing about which users exist). At ``limits.auth_user_failures`` failures
  within ``limits.auth_user_window``, from whatever addresses, the user is *locked* for
  ``auth_user_window``: passwords that are not already remembered (the auth cache,
  ``limits.auth_cache_ttl``) are not checked and get a temporary failure, so a
  distributed guesser learns nothing and costs no argon2; a client that logged in
  recently with the right password (a phone, a laptop) keeps working. SCRAM has nothing
  remembered, so SCRAM logins of a locked user are refused too.

Thresholds are chosen so that one address alone is blocked long before it could lock a
user (10 < 30): locking a user takes several addresses, i.e. a distributed attack.

Everything here is pure bookkeeping with an injected clock (no I/O, no asyncio), behind
the small :class:`LoginGuard` interface, so a shared implementation (several serving
processes, several nodes: the store, or PostgreSQL) can replace :class:`MemoryLoginGuard`
without touching the shells. The memory one is per process; :class:`SharedLoginGuard`
wraps it so that every failure is also told to the other serving processes (the process
bus, or NOTIFY between PostgreSQL nodes: ``postroom.peers``), which count it too: the
thresholds hold for the whole server, a note's delay (well under a millisecond on the bus)
apart.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from postroom.config import Limits
    from postroom.peers import Peers

__all__ = [
    "FREE_FAILURES",
    "MAX_PENALTY",
    "GuardPolicy",
    "LoginGuard",
    "MemoryLoginGuard",
    "SharedLoginGuard",
    "client_key",
    "user_key",
]

# Failures an address may have before its attempts are delayed: a mistyped password or
# two, or a client retrying with an old password after a change, costs nothing.
FREE_FAILURES = 2
# The longest penalty before an attempt is checked (Dovecot's AUTH_PENALTY_MAX_SECS).
MAX_PENALTY = 15.0
# Addresses and user names remembered at most (least recently failed dropped first): a
# botnet of a million addresses must not grow the process without bound.
MAX_ENTRIES = 100_000
MAX_USER_KEY = 320  # RFC 5321 4.5.3.1: local part 64 + "@" + domain 255


@functools.lru_cache(maxsize=4096)
def client_key(ip: str) -> str:
    """What one client is: the address (IPv4), or its /64 (IPv6: one host's range; a
    host that gets a /64 can use any of its 2^64 addresses). Cached: every connection
    asks twice (the login guard, the argon2 slots), and a busy MX sees the same clients
    again and again; parsing the address is most of the session setup's own work."""
    ip = ip.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False).network_address) + "/64"
    return str(addr)


def user_key(username: str) -> str:
    """The name a failure is counted against: case-folded and bounded (not validated:
    names that are not addresses are counted too, as an attacker may send them)."""
    return username.strip().lower()[:MAX_USER_KEY]


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """The ``[limits]`` keys this guard follows (see docs/configuration.md)."""

    delay: float = 1.0  # limits.auth_delay: the penalty's unit
    ip_failures: int = 10  # 0: never block an address
    ip_window: float = 600.0
    user_failures: int = 30  # 0: never lock a user
    user_window: float = 900.0
    exempt: tuple[str, ...] = ()  # networks whose addresses are not tracked

    def penalty(self, failures: int) -> float:
        """Seconds an attempt from an address with ``failures`` recent failures waits."""
        if failures < FREE_FAILURES or self.delay <= 0:
            return 0.0
        return min(MAX_PENALTY, self.delay * 2 ** min(failures - FREE_FAILURES, 16))


class LoginGuard(Protocol):
    """What the shells ask (``net/auth.py``); one implementation per deployment shape."""

    def key_for(self, ip: str) -> str | None:
        """The tracking key of a client address; None when it is exempt."""
        ...

    def admission(self, key: str) -> float | None:
        """None when the address is blocked; otherwise the seconds to wait before its
        next attempt is checked (0 for a clean address)."""
        ...

    def user_locked(self, username: str) -> bool:
        """True while new passwords of ``username`` are not checked."""
        ...

    def record_failure(self, key: str | None, username: str | None) -> tuple[bool, bool]:
        """Count one failed login; (address now blocked, user now locked): True only
        for the failure that started the block or lock, so the caller logs it once."""
        ...


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    until: float = 0.0  # blocked (address) or locked (user) until then


class _Counter:
    """Failures per key within a window, and a hold of one window at the threshold."""

    def __init__(self, threshold: int, window: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.window = window
        self.clock = clock
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def _current(self, key: str) -> tuple[_Record | None, float]:
        now = self.clock()
        rec = self.records.get(key)
        if rec is None:
            return None, now
        horizon = now - self.window
        while rec.failures and rec.failures[0] <= horizon:
            rec.failures.popleft()
        if rec.until and rec.until <= now:
            rec.until = 0.0
        if not rec.failures and not rec.until:
            del self.records[key]
            return None, now
        return rec, now

    def held(self, key: str) -> bool:
        rec, _ = self._current(key)
        return rec is not None and rec.until > 0

    def count(self, key: str) -> int:
        rec, _ = self._current(key)
        return 0 if rec is None else len(rec.failures)

    def add(self, key: str) -> bool:
        """Count a failure; True when it starts a hold."""
        rec, now = self._current(key)
        if rec is None:
            rec = self.records[key] = _Record()
            while len(self.records) > MAX_ENTRIES:
                self.records.popitem(last=False)
        else:
            self.records.move_to_end(key)
        if rec.until:
            return False  # held: the hold is fixed, refused attempts do not extend it
        rec.failures.append(now)
        if self.threshold and len(rec.failures) >= self.threshold:
            rec.failures.clear()
            rec.until = now + self.window
            return True
        return False


class MemoryLoginGuard:
    """:class:`LoginGuard` in this process's memory (see the module docstring)."""

    def __init__(self, policy: GuardPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in policy.exempt)
        self._addresses = _Counter(policy.ip_failures, policy.ip_window, clock)
        self._users = _Counter(policy.user_failures, policy.user_window, clock)

    @classmethod
    def from_limits(cls, limits: Limits) -> MemoryLoginGuard:
        """Built from the ``[limits]`` settings."""
        return cls(GuardPolicy(
            delay=limits.auth_delay,
            ip_failures=limits.auth_ip_failures,
            ip_window=limits.auth_ip_window,
            user_failures=limits.auth_user_failures,
            user_window=limits.auth_user_window,
            exempt=limits.auth_exempt,
        ))

    def key_for(self, ip: str) -> str | None:
        if self._exempt:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                addr = None
            if addr is not None and _within(addr, self._exempt):
                return None
        return client_key(ip)

    def admission(self, key: str) -> float | None:
        if self._addresses.held(key):
            return None
        return self.policy.penalty(self._addresses.count(key))

    def user_locked(self, username: str) -> bool:
        return self._users.held(user_key(username))

    def record_failure(self, key: str | None, username: str | None) -> tuple[bool, bool]:
        blocked = key is not None and self._addresses.add(key)
        locked = bool(username) and self._users.add(user_key(username or ""))
        return blocked, locked


def _within(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


FAILURE_TOPIC = "login_failure"


class SharedLoginGuard:
    """:class:`MemoryLoginGuard` whose failures every serving process counts.

    Each failure is recorded here and published to the peers; a failure heard from a peer
    is recorded the same way (not published again). Decisions stay local and synchronous
    (no round trip on the login path); what is shared is the counting. Lost notes (a
    process restarting) cost a few more guesses, never a wrong lock."""

    def __init__(self, inner: MemoryLoginGuard, peers: Peers) -> None:
        self.inner = inner
        self.peers = peers
        peers.subscribe(FAILURE_TOPIC, self._heard)

    def key_for(self, ip: str) -> str | None:
        return self.inner.key_for(ip)

    def admission(self, key: str) -> float | None:
        return self.inner.admission(key)

    def user_locked(self, username: str) -> bool:
        return self.inner.user_locked(username)

    def record_failure(self, key: str | None, username: str | None) -> tuple[bool, bool]:
        result = self.inner.record_failure(key, username)
        if self.peers.has_others():
            self.peers.publish(FAILURE_TOPIC, json.dumps([key, username]))
        return result

    def _heard(self, value: str) -> None:
        try:
            key, username = json.loads(value)
        except (ValueError, TypeError):
            return
        if (key is None or isinstance(key, str)) and (username is None or isinstance(username, str)):
            self.inner.record_failure(key, username)
