"""Authentication shared by SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH.

One policy for every protocol (issue: "delayed and counted like SMTP AUTH"):
* a failed attempt is answered only after a delay that doubles with each failure on the
  connection (``limits.auth_delay``, 1 s by default: 1, 2, 4 s ...);
* after ``limits.auth_failures`` failures the connection is closed;
* every attempt is logged with the user name and result, never the password or SASL data.

SASL steps that need I/O (SCRAM credentials, password verification) are resolved here, so
the protocol cores and mechanisms stay free of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator

from postroom import logs
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
# at most 4).
_VERIFY_SLOTS = budget.LoopSemaphore(max(1, min(4, os.cpu_count() or 1)))


@contextlib.asynccontextmanager
async def _verify_slot() -> AsyncIterator[None]:
    """One of the argon2 slots, waited for within the command's budget; the verify itself
    runs with the budget paused (see :meth:`AuthTracker.verify_password`)."""
    b = budget.current()
    slots = _VERIFY_SLOTS.get()
    if b is not None and slots.locked():
        try:
            async with asyncio.timeout(b.remaining() if b.due < math.inf else None):
                await slots.acquire()
        except TimeoutError:
            raise BudgetExceeded(b.limit) from None
    else:
        await slots.acquire()
    try:
        with budget.paused():
            yield
    finally:
        slots.release()


class AuthTracker:
    """Per-connection authentication state: failures, delays, the logged-in user."""

    def __init__(self, services: Services, protocol: str, client_ip: str, session: str) -> None:
        self.services = services
        self.protocol = protocol
        self.client_ip = client_ip
        self.session = session
        self.failures = 0
        self.user: User | None = None
        self._mech: ServerMechanism | None = None

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.services.settings.limits.auth_failures

    def mechanism(self, name: str) -> ServerMechanism:
        return server_mechanism(name, nonce_source=urandom_nonce, secret=self.services.secret)

    async def verify_password(self, username: str, password: str) -> User | None:
        """The user when the password is right. Waiting for a verify slot counts against
        the command's budget (a login flood ends in temporary failures, not an ever longer
        queue); the verify itself does not: its cost is fixed and its concurrency bounded.
        """
        return await self.services.directory.authenticate(username, password, _verify_slot)

    async def resolve(self, step: object) -> object:
        """Resolve the I/O steps of a mechanism; return a Challenge, Success or Failure.

        A ``Success`` leaves the authenticated user in :attr:`user`.
        """
        mech_user: User | None = None
        while True:
            if isinstance(step, NeedCredentials):
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

    async def start(self, name: str, initial: bytes | None) -> object:
        self._mech = self.mechanism(name)
        return await self.resolve(self._mech.start(initial))

    async def respond(self, data: bytes) -> object:
        assert self._mech is not None
        return await self.resolve(self._mech.respond(data))

    async def succeeded(self, user: User, mechanism: str) -> None:
        self.user = user
        logs.event(
            log, "auth", protocol=self.protocol, session=self.session, client=self.client_ip,
            user=user.address, mechanism=mechanism, result="ok",
        )

    async def failed(self, username: str | None, mechanism: str) -> bool:
        """Record a failure, wait the growing delay; True when the connection must close."""
        self.failures += 1
        logs.event(
            log, "auth", logging.WARNING, protocol=self.protocol, session=self.session,
            client=self.client_ip, user=username, mechanism=mechanism, result="failed",
            failures=self.failures,
        )
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
