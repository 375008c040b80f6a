"""Authentication shared by SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH.

One policy for every protocol (issue: "delayed and counted like SMTP AUTH"):
* a failed attempt is answered only after a delay that doubles with each failure on the
  connection (``limits.auth_delay``, 1 s by default: 1, 2, 4 s ...);
* after ``limits.auth_failures`` failures the connection is closed;
* every attempt is logged with the user name and result, never the password or SASL data;
* across connections, failures are counted per client address and per user name
  (``services.login_guard``, auth/failures.py): a penalty before each attempt of an address
  that keeps failing, then a block; a lock of a user guessed at from many addresses. A
  refused attempt raises :class:`LoginRefused` (the shells answer with their temporary
  failure) and counts as a failure like a wrong password.

SASL steps that need I/O (SCRAM credentials, password verification) are resolved here, so
the protocol cores and mechanisms stay free of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any

from postroom import logs
from postroom.auth.failures import LoginGuard
from postroom.net import budget
from postroom.net.budget import BudgetExceeded
from postroom.proto.sasl import (
    Failure,
    NeedCredentials,
    ScramCredentials,
    ServerMechanism,
    Success,
    VerifyPassword,
    server_mechanism,
    urandom_nonce,
)
from postroom.services import Services
from postroom.store.api import User

log = logging.getLogger("postroom.auth")

# Mechanisms offered, strongest first (clients often pick the first they know).
MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
# argon2 holds 32 MiB and keeps two cores busy per verify: cap how many run at once so a
# login flood can neither exhaust memory nor starve the event loop of CPU (one per core,
# at most 4). Waiters are served first come, first served; since each client address has
# at most one attempt past its turn (:data:`_TURNS`), that is one address at a time, in
# turn: a flooding address delays another address's login by one verify at most.
_VERIFY_SLOTS = budget.LoopSemaphore(max(1, min(4, os.cpu_count() or 1)))
# What a client refused by the guard is told (with its protocol's temporary failure).
TEXT_REFUSED = "Too many failed logins, try again later"


class LoginRefused(Exception):
    """A login refused without checking the password: the client address is blocked or
    the user locked (auth/failures.py). Shells answer with their temporary failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "address" | "user"


class KeyedTurns:
    """One attempt at a time per key (a client address), FIFO, per event loop.

    Why: without it 50 parallel connections of one address put 50 guesses in the argon2
    queue at once, ahead of everybody else, and all pass the penalty check before the
    first failure is counted. With it an address's attempts are checked one after the
    other, each after its penalty, and a block stops the ones still in line."""

    __slots__ = ("_by_loop",)

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, list[Any]]] = weakref.WeakKeyDictionary()

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        locks = self._by_loop.get(loop)
        if locks is None:
            locks = self._by_loop[loop] = {}
        entry = locks.get(key)
        if entry is None:
            entry = locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            await _wait_within_budget(entry[0])
            try:
                yield
            finally:
                entry[0].release()
        finally:
            entry[1] -= 1
            if not entry[1]:
                locks.pop(key, None)

    def waiting(self, key: str) -> int:
        """Attempts of ``key`` holding or waiting for their turn (tests, logs)."""
        try:
            locks = self._by_loop.get(asyncio.get_running_loop()) or {}
        except RuntimeError:
            return 0
        entry = locks.get(key)
        return 0 if entry is None else int(entry[1])


_TURNS = KeyedTurns()


async def _wait_within_budget(lock: asyncio.Lock | asyncio.Semaphore) -> None:
    """Acquire ``lock``; the wait counts against the current command's budget (a login
    flood ends in temporary failures, not an ever longer queue)."""
    b = budget.current()
    if b is not None and lock.locked() and b.due < math.inf:
        try:
            async with asyncio.timeout(b.remaining()):
                await lock.acquire()
        except TimeoutError:
            raise BudgetExceeded(b.limit) from None
    else:
        await lock.acquire()


@contextlib.asynccontextmanager
async def _verify_slot() -> AsyncIterator[None]:
    """One of the argon2 slots, waited for within the command's budget; the verify itself
    runs with the budget paused (see :meth:`AuthTracker.verify_password`)."""
    slots = _VERIFY_SLOTS.get()
    await _wait_within_budget(slots)
    try:
        with budget.paused():
            yield
    finally:
        slots.release()


class AuthTracker:
    """Per-connection authentication state: failures, delays, the logged-in user; the
    per-address and per-user rules of ``services.login_guard`` (auth/failures.py)."""

    def __init__(self, services: Services, protocol: str, client_ip: str, session: str) -> None:
        self.services = services
        self.protocol = protocol
        self.client_ip = client_ip
        self.session = session
        self.failures = 0
        self.user: User | None = None
        self._mech: ServerMechanism | None = None
        self.guard: LoginGuard | None = services.login_guard
        self.key = self.guard.key_for(client_ip) if self.guard is not None else None
        self.attempted: str | None = None  # the user name of the attempt under way

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.services.settings.limits.auth_failures

    def mechanism(self, name: str) -> ServerMechanism:
        return server_mechanism(name, nonce_source=urandom_nonce, secret=self.services.secret)

    async def _admit(self) -> None:
        """Refuse a blocked address; make a penalized one wait before it is checked (the
        wait is a fixed cost, like the verify: not counted against the budget)."""
        if self.guard is None or self.key is None:
            return
        delay = self.guard.admission(self.key)
        if delay is None:
            raise LoginRefused("address")
        if delay > 0:
            with budget.paused():
                await asyncio.sleep(delay)
            if self.guard.admission(self.key) is None:  # blocked meanwhile
                raise LoginRefused("address")

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self.key is None:
            yield
            return
        async with _TURNS.turn(self.key):
            yield

    def _new_password_slot(self, username: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The argon2 slot, for a password that is not remembered: refused while the user
        is locked (a remembered login never gets here)."""
        if self.guard is not None and self.guard.user_locked(username):
            raise LoginRefused("user")
        return _verify_slot()

    async def verify_password(self, username: str, password: str) -> User | None:
        """The user when the password is right. Raises :class:`LoginRefused` for a
        blocked address or (unless the password is remembered) a locked user.

        Waiting for the address's turn and a verify slot counts against the command's
        budget (a login flood ends in temporary failures, not an ever longer queue); the
        penalty and the verify itself do not: their cost is fixed and bounded.
        """
        self.attempted = username
        async with self._turn():
            await self._admit()
            return await self.services.directory.authenticate(
                username, password, lambda: self._new_password_slot(username))

    async def resolve(self, step: object) -> object:
        """Resolve the I/O steps of a mechanism; return a Challenge, Success or Failure.

        A ``Success`` leaves the authenticated user in :attr:`user`.
        """
        mech_user: User | None = None
        while True:
            if isinstance(step, NeedCredentials):
                await self.admit_scram(step.username)
                mech_user = await self.services.directory.user_for_scram(step.username)
                creds = None
                if mech_user is not None and mech_user.scram:
                    try:
                        creds = ScramCredentials.from_string(mech_user.scram)
                    except ValueError:
                        creds = None
                assert self._mech is not None
                step = self._mech.provide_credentials(creds)
            elif isinstance(step, VerifyPassword):
                mech_user = await self.verify_password(step.username, step.password)
                assert self._mech is not None
                step = self._mech.password_verified(mech_user is not None)
            elif isinstance(step, Success):
                user = mech_user or await self.services.directory.user_for_scram(step.username)
                if user is None:
                    return Failure("user vanished")
                self.user = user
                return step
            else:
                return step

    async def admit_scram(self, username: str) -> None:
        """Before SCRAM credentials are handed out: the address rules, and the user lock
        (nothing is remembered for SCRAM, so a locked user's SCRAM login is refused)."""
        self.attempted = username
        await self._admit()
        if self.guard is not None and self.guard.user_locked(username):
            raise LoginRefused("user")

    async def start(self, name: str, initial: bytes | None) -> object:
        self._mech = self.mechanism(name)
        return await self.resolve(self._mech.start(initial))

    async def respond(self, data: bytes) -> object:
        assert self._mech is not None
        return await self.resolve(self._mech.respond(data))

    async def succeeded(self, user: User, mechanism: str) -> None:
        self.user = user
        self.attempted = None
        logs.event(
            log, "auth", protocol=self.protocol, session=self.session, client=self.client_ip,
            user=user.address, mechanism=mechanism, result="ok",
        )

    async def failed(self, username: str | None, mechanism: str, refused: str = "") -> bool:
        """Record a failure (a wrong password, or ``refused`` by the guard), wait the
        growing delay; True when the connection must close."""
        self.failures += 1
        username = username or self.attempted
        self.attempted = None
        logs.event(
            log, "auth", logging.WARNING, protocol=self.protocol, session=self.session,
            client=self.client_ip, user=username, mechanism=mechanism,
            result=f"refused ({refused})" if refused else "failed", failures=self.failures,
        )
        if self.guard is not None:
            blocked, locked = self.guard.record_failure(self.key, username)
            limits = self.services.settings.limits
            if blocked:
                logs.event(log, "auth_address_blocked", logging.WARNING, client=self.key,
                           seconds=limits.auth_ip_window, failures=limits.auth_ip_failures)
            if locked:
                logs.event(log, "auth_user_locked", logging.WARNING, user=username,
                           seconds=limits.auth_user_window, failures=limits.auth_user_failures)
        delay = self.services.settings.limits.auth_delay * (2 ** (self.failures - 1))
        if delay > 0:
            await asyncio.sleep(min(delay, 30.0))
        return self.exhausted


class UserSessions:
    """Logged-in sessions per (user, client address) of one protocol, bounded by
    ``limits.connections_per_user_ip`` (Dovecot's ``mail_max_userip_connections``).

    Why per address and not per user: a user legitimately has a phone, a laptop and a
    webmail open at once, each from its own address; 30 sessions from one address are a
    misconfigured or hostile client holding connection slots (and file descriptors).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: dict[tuple[int, str], int] = {}

    def enter(self, user_id: int, client_ip: str) -> bool:
        """Count one more session; False (and nothing counted) when over the limit."""
        key = (user_id, client_ip)
        n = self._count.get(key, 0)
        if n >= self.limit:
            return False
        self._count[key] = n + 1
        return True

    def leave(self, user_id: int, client_ip: str) -> None:
        key = (user_id, client_ip)
        n = self._count.get(key, 0) - 1
        if n > 0:
            self._count[key] = n
        else:
            self._count.pop(key, None)
