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
from collections import OrderedDict, deque
import time
from collections.abc import AsyncIterator

from typing import TYPE_CHECKING

from postroom import logs
from postroom.auth.failures import LoginGuard, client_key
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

if TYPE_CHECKING:
    from postroom.net.listener import OtherCounts

log = logging.getLogger("postroom.auth")

# Mechanisms offered, strongest first (clients often pick the first they know).
MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
# argon2 holds 32 MiB and keeps two cores busy per verify: cap how many run at once so a
# login flood can neither exhaust memory nor starve the event loop of CPU (one per core,
# at most 4). Waiters are served in turn per client address (:class:`FairSlots`).
VERIFY_SLOTS = max(1, min(4, os.cpu_count() or 1))
# What a client refused by the guard is told (with its protocol's temporary failure).
TEXT_REFUSED = "Too many failed logins, try again later"


class LoginRefused(Exception):
    """A login refused without checking the password: the client address is blocked or
    the user locked (auth/failures.py). Shells answer with their temporary failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "address" | "user"


class FairSlots:
    """``size`` slots given out in turn per key (a client address), FIFO within a key.

    Why: with one FIFO queue, 50 parallel guesses of one address sit in line ahead of
    everybody else's login (the reported flood: new logins queued, then got a temporary
    failure). Here a free slot goes to the next *address* that waits, round robin, so a
    login from an address that is not flooding waits for about one verify, however many
    guesses are queued. Work-conserving: an address alone may use every slot.
    """

    __slots__ = ("_free", "_queues")

    def __init__(self, size: int) -> None:
        self._free = size
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def waiting(self, key: str) -> int:
        return len(self._queues.get(key, ()))

    async def acquire(self, key: str) -> None:
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
                if not queue and self._queues.get(key) is queue:
                    del self._queues[key]
            raise

    def release(self) -> None:
        while self._queues:
            key, queue = next(iter(self._queues.items()))
            fut = queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # the other addresses come first
            else:
                del self._queues[key]
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


_VERIFY_SLOTS: budget.PerLoop[FairSlots] = budget.PerLoop(lambda: FairSlots(VERIFY_SLOTS))


@contextlib.asynccontextmanager
async def _verify_slot(key: str) -> AsyncIterator[None]:
    """One of the argon2 slots, in turn with the other client addresses, waited for within
    the command's budget (a login flood ends in temporary failures, not an ever longer
    queue); the verify itself runs with the budget paused (a fixed, bounded cost)."""
    slots = _VERIFY_SLOTS.get()
    b = budget.current()
    if b is not None and b.due < math.inf:
        try:
            async with asyncio.timeout(b.remaining()):
                await slots.acquire(key)
        except TimeoutError:
            raise BudgetExceeded(b.limit) from None
    else:
        await slots.acquire(key)
    try:
        with budget.paused():
            yield
    finally:
        slots.release()


verify_slot = _verify_slot  # shared with the web login (postroom.web.session), keyed by address


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
        self.slot_key = client_key(client_ip)  # argon2 slots go round these
        self.attempted: str | None = None  # the user name of the attempt under way

    @property
    def owner(self) -> tuple[str, object]:
        """Who this connection's commands share the heavy slots as (net/heavy_slots.py):
        the user once logged in (all of a user's sessions together), else the address."""
        if self.user is not None:
            return ("user", self.user.id)
        return ("ip", self.client_ip)

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
    async def _new_password_slot(self, username: str) -> AsyncIterator[None]:
        """The argon2 slot, for a password that is not remembered: refused while the user
        is locked (a remembered login never gets here), or when the address got blocked
        while this attempt waited in line."""
        if self.guard is not None and self.guard.user_locked(username):
            raise LoginRefused("user")
        async with _verify_slot(self.slot_key):
            if self.guard is not None and self.key is not None and \
                    self.guard.admission(self.key) is None:
                raise LoginRefused("address")
            yield

    async def verify_password(self, username: str, password: str) -> User | None:
        """The user when the password is right. Raises :class:`LoginRefused` for a
        blocked address or (unless the password is remembered) a locked user.

        Waiting for a verify slot counts against the command's budget (a login flood
        ends in temporary failures, not an ever longer queue); the address's penalty and
        the verify itself do not: their cost is fixed and bounded.
        """
        self.attempted = username
        await self._admit()
        started = time.perf_counter()
        user = await self.services.directory.authenticate(
            username, password, lambda: self._new_password_slot(username))
        self.services.metrics.login(self.protocol, user is not None, time.perf_counter() - started)
        return user

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

    def __init__(self, limit: int, others: OtherCounts | None = None) -> None:
        self.limit = limit
        self.others = others  # the other worker processes' sessions (server.workers)
        self._count: dict[tuple[int, str], int] = {}

    def enter(self, user_id: int, client_ip: str) -> bool:
        """Count one more session; False (and nothing counted) when over the limit."""
        key = (user_id, client_ip)
        n = self._count.get(key, 0)
        shared = f"{user_id}|{client_ip}"
        if n + (self.others.others_from(shared) if self.others else 0) >= self.limit:
            return False
        self._count[key] = n + 1
        if self.others is not None:
            self.others.add(shared, 1)
        return True

    def leave(self, user_id: int, client_ip: str) -> None:
        key = (user_id, client_ip)
        n = self._count.get(key, 0) - 1
        if n > 0:
            self._count[key] = n
        else:
            self._count.pop(key, None)
        if n >= 0 and self.others is not None:
            self.others.add(f"{user_id}|{client_ip}", -1)
