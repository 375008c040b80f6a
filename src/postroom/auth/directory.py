"""Who is who: recipient resolution, authentication, and who may send as whom.

The two questions every protocol asks (as in Stalwart's directory): "authenticate this
user" and "is this recipient ours, and where does its mail go". Everything is answered from
the Store, so the CLI's changes are seen at once by the running server.

Recipient resolution order for ``local+tag@domain`` (first match wins):
1. an alias with exactly that source; 2. a user with exactly that address;
3. the same two for the address without ``+tag`` (plus-addressing);
4. for ``postmaster@domain`` (any case) and the bare ``postmaster``: the configured
   postmaster address (``smtp.postmaster``; by default the first user created, i.e. the
   one ``postroom init`` made), because RFC 5321 4.5.1 says every domain MUST accept
   mail to its postmaster, whether or not anybody thought of an alias;
5. the domain's catch-all alias ``@domain``.
Aliases expand recursively (to users, other aliases and external addresses) up to
``MAX_ALIAS_DEPTH`` levels; a loop or an unknown local target is skipped.

Who may send as whom (submission, :meth:`Directory.may_send_as`): a user owns their own
address and its ``+tag`` forms, every alias that reaches them (not catch-alls), and what an
administrator granted with ``postroom user sendas add`` (an address or a whole ``@domain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from postroom.address import AddressError, base_address, normalize_address
from postroom.auth import passwords
from postroom.store.api import AddressLookup, Store, User

MAX_ALIAS_DEPTH = 8
POSTMASTER = "postmaster"
MAX_EXPANSION = 1000


# Password verifications at once (each holds 32 MiB; net/auth.py admits as many).
VERIFY_THREADS = 4
# argon2 runs two lanes (threads) per verify, at this nice(2) increment: a login flood
# takes CPU from idle time first, not from the event loop.
VERIFY_NICE = 10


def _lower_priority() -> None:
    try:  # Linux: a thread id is a process id for setpriority(2)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + VERIFY_NICE))
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True, slots=True)
class Resolution:
    kind: str  # "local" (deliverable here and/or forwarded) | "unknown" | "remote"
    user_ids: tuple[int, ...] = ()
    external: tuple[str, ...] = ()


REMOTE = Resolution("remote")
UNKNOWN = Resolution("unknown")


class AuthCache:
    """Recently verified (password hash, password) pairs, like Dovecot's auth cache.

    Keyed by an HMAC of the stored hash and the password under a per-process random key,
    so the cache never holds a password or anything usable offline, and a password change
    (a new stored hash) invalidates the entry at once. Only successes are cached: every
    failed guess still pays the full argon2 price.
    """

    def __init__(self, ttl: float = 300.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._key = os.urandom(32)
        self._entries: dict[bytes, float] = {}

    def _digest(self, hashed: str, password: str) -> bytes:
        msg = hashed.encode() + b"\x00" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def hit(self, hashed: str, password: str) -> bool:
        if self.ttl <= 0:
            return False
        expires = self._entries.get(self._digest(hashed, password))
        return expires is not None and expires > time.monotonic()

    def remember(self, hashed: str, password: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v > now}
            if len(self._entries) >= self.size:
                self._entries.clear()
        self._entries[self._digest(hashed, password)] = time.monotonic() + self.ttl


class Directory:
    def __init__(self, store: Store, auth_cache_ttl: float = 300.0, postmaster: str = "") -> None:
        self.store = store
        self.auth_cache = AuthCache(auth_cache_ttl)
        self._verify_threads: ThreadPoolExecutor | None = None
        self.postmaster = postmaster  # "" = the first user created

    def _verifiers(self) -> ThreadPoolExecutor:
        """Threads for argon2 (C code that releases the GIL), at a lower scheduling
        priority than the event loop's thread: a login flood then takes CPU from idle
        time rather than from every other connection (issue 9)."""
        if self._verify_threads is None:
            self._verify_threads = ThreadPoolExecutor(
                VERIFY_THREADS, thread_name_prefix="argon2", initializer=_lower_priority)
        return self._verify_threads

    async def resolve(self, address: str) -> Resolution:
        """Where mail for ``address`` goes. ``address`` may be un-normalised; the bare
        ``postmaster`` (RFC 5321 4.1.1.3 ``<Postmaster>``) is the configured postmaster."""
        users: dict[int, None] = {}
        external: dict[str, None] = {}
        if address.lower() == POSTMASTER:
            if not await self._postmaster(0, set(), users, external):
                return UNKNOWN
            return Resolution("local", tuple(users), tuple(external))
        try:
            addr = normalize_address(address)
        except AddressError:
            # Not an address we could ever host (e.g. quoted local part): it can still be
            # a remote one, which the caller refuses unless the sender is authenticated.
            domain = address.rpartition("@")[2].lower().rstrip(".")
            info = await self.store.lookup_address("x@" + domain) if domain else None
            return UNKNOWN if info is not None and info.domain_is_local else REMOTE
        found = await self._expand(addr, 0, set(), users, external)
        if found is None:
            return REMOTE
        if not found or (not users and not external):
            return UNKNOWN
        return Resolution("local", tuple(users), tuple(external))

    async def _expand(
        self,
        addr: str,
        depth: int,
        seen: set[str],
        users: dict[int, None],
        external: dict[str, None],
    ) -> bool | None:
        """Add where ``addr`` goes to ``users``/``external``. None = not a local domain."""
        if addr in seen or depth > MAX_ALIAS_DEPTH or len(seen) > MAX_EXPANSION:
            return False
        seen.add(addr)
        info = await self.store.lookup_address(addr)
        if not info.domain_is_local:
            return None
        candidates: list[tuple[str, AddressLookup | None]] = [(addr, info)]
        base = base_address(addr)
        if base is not None:
            candidates.append((base, None))
        for candidate, known in candidates:
            info_c = known if known is not None else await self.store.lookup_address(candidate)
            if info_c.alias_targets:
                await self._targets(info_c.alias_targets, depth, seen, users, external)
                return True
            if info_c.user is not None and not info_c.user.disabled:
                users[info_c.user.id] = None
                return True
        if addr.partition("@")[0] == POSTMASTER and await self._postmaster(depth, seen, users, external):
            return True
        catch_all = await self.store.lookup_address("@" + addr.rpartition("@")[2])
        if catch_all.alias_targets:
            await self._targets(catch_all.alias_targets, depth, seen, users, external)
            return True
        return False

    async def _postmaster(
        self, depth: int, seen: set[str], users: dict[int, None], external: dict[str, None]
    ) -> bool:
        """Expand the configured postmaster (RFC 5321 4.5.1); False if there is none."""
        target = self.postmaster
        if not target:
            # Default: the first user created (``postroom init --user`` makes it). Only
            # mail to a postmaster without its own alias pays for this listing.
            first = min(await self.store.list_users(), key=lambda u: u.id, default=None)
            if first is None:
                return False
            target = first.address
        if target in seen:
            return False  # postmaster = "postmaster@..." with no user or alias behind it
        found = await self._expand(target, depth + 1, seen, users, external)
        if found is None:
            external[target] = None  # a postmaster elsewhere: forwarded
            return True
        return found

    async def _targets(
        self,
        targets: tuple[str, ...],
        depth: int,
        seen: set[str],
        users: dict[int, None],
        external: dict[str, None],
    ) -> None:
        for target in targets:
            local = await self._expand(target, depth + 1, seen, users, external)
            if local is None:
                external[target] = None

    async def authenticate(
        self, username: str, password: str,
        slot: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        *, app_passwords: bool = True,
    ) -> User | None:
        """The user when ``password`` is right; None otherwise.

        A failed attempt always costs one argon2 verify, also for unknown users (against a
        dummy hash), so its timing does not reveal whether the user exists. A successful
        one is remembered for a while (see :class:`AuthCache`): mail clients log in on
        every connection, and argon2 is deliberately expensive. ``slot``: entered around
        the verify only (the shell bounds how many run at once; a remembered login never
        waits for one, however many wrong passwords are being checked).

        ``app_passwords``: also accept one of the user's app passwords (per-device
        passwords for IMAP/POP3/SMTP; the web login passes False so that a device's
        password can never change the account). They are generated secrets, looked up by
        digest (see ``passwords.secret_digest``), so they need no argon2 and no cache.
        """
        try:
            address = normalize_address(username)
        except AddressError:
            address = None
        user = await self.store.get_user(address) if address else None
        usable = user is not None and not user.disabled
        if usable and user is not None and app_passwords:
            digest = passwords.app_password_digest(password)
            if digest is not None and await self.store.find_app_password(user.id, digest):
                return user
        hashed = user.password_hash if usable and user is not None else None
        if hashed is not None and self.auth_cache.hit(hashed, password):
            return user
        async with slot() if slot is not None else contextlib.nullcontext():
            ok = await asyncio.get_running_loop().run_in_executor(
                self._verifiers(), passwords.verify_password, hashed, password
            )
        if ok and usable and hashed is not None:
            self.auth_cache.remember(hashed, password)
        return user if ok and usable else None

    async def user_for_scram(self, username: str) -> User | None:
        try:
            address = normalize_address(username)
        except AddressError:
            return None
        user = await self.store.get_user(address)
        if user is None or user.disabled or not user.scram:
            return None
        return user

    async def may_send_as(self, user: User, sender: str) -> bool:
        """May ``user`` use ``sender`` as envelope sender or ``From:`` address?

        Yes for the user's own address and its ``+tag`` forms, an alias that reaches the
        user, and what a send-as grant allows (the address, or its ``@domain``). The null
        sender is allowed (MDNs and some auto-replies use it, RFC 8098 3.1); callers that
        check a ``From:`` field never pass it. Catch-all aliases do not count: being the
        target of ``@domain`` must not let a user send as everybody in the domain.
        """
        if sender == "":
            return True
        try:
            addr = normalize_address(sender)
        except AddressError:
            return False
        if addr == user.address or base_address(addr) == user.address:
            return True
        domain = "@" + addr.rpartition("@")[2]
        base = base_address(addr)
        for grant in await self.store.list_sendas(user.address):
            if grant.address in (addr, base, domain):
                return True
        for candidate in (addr, base_address(addr)):
            if candidate is None:
                continue
            info = await self.store.lookup_address(candidate)
            if not info.domain_is_local:
                return False
            if info.alias_targets:
                users: dict[int, None] = {}
                await self._targets(info.alias_targets, 0, set(), users, {})
                return user.id in users
        return False
