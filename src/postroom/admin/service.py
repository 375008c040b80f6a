"""Administrative operations, shared by the CLI and the HTTP API (``postroom.web``).

Validation and normalisation of what people type happen here, once: the store below gets
clean values, and the CLI above only parses arguments and prints results. Password hashing
(argon2id and the SCRAM keys) runs on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from postroom.address import (
    AddressError,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
)
from postroom.auth import passwords
from postroom.config import Settings
from postroom.store.api import (
    AlreadyExists,
    Alias,
    ApiToken,
    AppPassword,
    DeliveryLogEntry,
    Conflict,
    Domain,
    NotFound,
    QueuedMessage,
    Quota,
    SendAsGrant,
    Store,
    StoreError,
    User,
)

# Names people give tokens and app passwords: shown in listings, so short and printable.
MAX_LABEL = 64
TOKEN_PREFIX = "prt_"  # recognisable in logs and secret scanners


class AdminError(Exception):
    """A user-facing failure of an admin operation (one line).

    ``kind`` says what went wrong for callers that answer with a status (the HTTP API):
    "invalid" (bad input), "not_found", "conflict" (exists already, still in use).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Credentials:
    password_hash: str
    scram: str


def _hash(password: str) -> Credentials:
    if not password:
        raise AdminError("the password is empty")
    if len(password) > 1024:
        raise AdminError("the password is longer than 1024 characters")
    try:
        scram = passwords.scram_credentials(password).to_string()
    except ValueError as e:  # SaslPrepError: RFC 4013 prohibits or leaves unassigned a character
        raise AdminError(f"the password cannot be used: {e} (RFC 4013 SASLprep)") from None
    return Credentials(password_hash=passwords.hash_password(password), scram=scram)


def _address(value: str) -> str:
    try:
        return normalize_address(value)
    except AddressError as e:
        raise AdminError(str(e)) from None


LABEL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,64}$"  # the same rule in the OpenAPI document


def _label(value: str, what: str) -> str:
    if not re.match(LABEL_PATTERN, value) or not value.strip():
        raise AdminError(f"{what}: 1 to {MAX_LABEL} characters, no control characters")
    return value


def _grant_address(value: str) -> str:
    """A send-as grant: an address or ``@domain`` (every address of the domain)."""
    try:
        return normalize_alias_source(value)
    except AddressError as e:
        raise AdminError(str(e)) from None


def _domain(value: str) -> str:
    try:
        return normalize_domain(value)
    except AddressError as e:
        raise AdminError(str(e)) from None


class AdminService:
    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings  # needed by queue_bounce (the DSN names our hostname)

    async def _call(self, coro):  # type: ignore[no-untyped-def]
        try:
            return await coro
        except NotFound as e:
            raise AdminError(str(e), "not_found") from None
        except (AlreadyExists, Conflict) as e:
            raise AdminError(str(e), "conflict") from None
        except StoreError as e:
            raise AdminError(str(e)) from None

    # -- domains -------------------------------------------------------------------------
    async def domain_add(self, name: str) -> Domain:
        return await self._call(self.store.add_domain(_domain(name)))

    async def domain_list(self) -> list[Domain]:
        return await self.store.list_domains()

    async def domain_remove(self, name: str) -> None:
        await self._call(self.store.remove_domain(_domain(name)))

    # -- users ---------------------------------------------------------------------------
    async def user_add(self, address: str, password: str) -> User:
        addr = _address(address)
        if await self.store.get_domain(addr.rpartition("@")[2]) is None:
            raise AdminError(
                f"{addr.rpartition('@')[2]} is not a local domain "
                f"(add it with `postroom domain add {addr.rpartition('@')[2]}`)", "not_found",
            )
        if await self.store.get_user(addr) is not None:
            raise AdminError(f"user {addr} already exists", "conflict")
        creds = await asyncio.get_running_loop().run_in_executor(None, _hash, password)
        return await self._call(self.store.add_user(addr, creds.password_hash, creds.scram))

    async def user_list(self, domain: str | None = None) -> list[User]:
        return await self.store.list_users(_domain(domain) if domain else None)

    async def user_remove(self, address: str) -> None:
        await self._call(self.store.remove_user(_address(address)))

    async def user_passwd(self, address: str, password: str) -> None:
        """Set a new password; every web session of the user ends (app passwords stay:
        they are per device and revoked one by one)."""
        addr = _address(address)
        user = await self.store.get_user(addr)
        if user is None:
            raise AdminError(f"no user {addr}", "not_found")
        creds = await asyncio.get_running_loop().run_in_executor(None, _hash, password)
        await self._call(self.store.set_password(addr, creds.password_hash, creds.scram))
        await self.store.remove_web_sessions(user_id=user.id)

    async def user_admin(self, address: str, admin: bool) -> None:
        """Allow (or stop) ``address`` to use the web admin; takes effect on its next request."""
        await self._call(self.store.set_user_admin(_address(address), admin))

    async def user_get(self, address: str) -> User:
        user = await self.store.get_user(_address(address))
        if user is None:
            raise AdminError(f"no user {_address(address)}", "not_found")
        return user

    # -- app passwords (per-device passwords for IMAP/POP3/SMTP) -------------------------
    async def app_password_add(self, user: User, name: str) -> tuple[AppPassword, str]:
        """Create one; returns it with the password, which is shown once and not stored."""
        from postroom.auth.passwords import app_password_digest, generate_app_password

        secret = generate_app_password()
        digest = app_password_digest(secret)
        assert digest is not None
        entry = await self._call(self.store.add_app_password(user.id, _label(name, "name"), digest))
        return entry, secret

    async def app_password_list(self, user: User) -> list[AppPassword]:
        return await self.store.list_app_passwords(user.id)

    async def app_password_remove(self, user: User, password_id: int) -> None:
        if not await self.store.remove_app_password(user.id, password_id):
            raise AdminError(f"no app password {password_id}", "not_found")

    # -- API tokens ----------------------------------------------------------------------
    async def token_add(self, name: str) -> tuple[ApiToken, str]:
        """Create an admin API token; returns it with the secret, shown once, stored as a
        digest only."""
        import secrets

        from postroom.auth.passwords import secret_digest

        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = await self._call(self.store.add_api_token(_label(name, "token name"), secret_digest(secret)))
        return token, secret

    async def token_list(self) -> list[ApiToken]:
        return await self.store.list_api_tokens()

    async def token_remove(self, name: str) -> None:
        if not await self.store.remove_api_token(name):
            raise AdminError(f"no token {name}", "not_found")

    async def token_check(self, secret: str) -> ApiToken | None:
        from postroom.auth.passwords import secret_digest

        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        return await self.store.find_api_token(secret_digest(secret))

    # -- the recent delivery log -------------------------------------------------------------
    async def delivery_log(self, limit: int = 100, before: int | None = None) -> list[DeliveryLogEntry]:
        return await self.store.list_delivery_log(max(1, min(limit, 1000)), before)

    async def user_quota_set(
        self, address: str, storage: int | None, messages: int | None = None, *,
        keep_messages: bool = False,
    ) -> Quota:
        """Set a user's quota (``None``: unlimited; ``keep_messages``: leave the message
        limit as it is). Usage is kept by the store."""
        if storage is not None and storage < 0 or messages is not None and messages < 0:
            raise AdminError("a quota cannot be negative")
        if keep_messages:
            messages = (await self.user_quota(address)).messages_limit
        return await self._call(self.store.set_quota(_address(address), storage, messages))

    async def user_quota(self, address: str) -> Quota:
        user = await self.store.get_user(_address(address))
        if user is None:
            raise AdminError(f"no user {_address(address)}", "not_found")
        return await self.store.get_quota(user.id)

    async def user_list_quotas(self, domain: str | None = None) -> list[tuple[User, Quota]]:
        """Every user with their quota and usage, for ``user list`` and the admin UI."""
        users = await self.user_list(domain)
        quotas = await self.store.list_quotas()
        empty = Quota(0, 0, None, 0, None)
        return [(u, quotas.get(u.id, empty)) for u in users]

    # -- "may send as" grants --------------------------------------------------------------
    # Submission refuses an envelope sender or From: address the login does not own (its
    # own, +tag forms, aliases that reach it); a grant adds one address or a whole @domain.
    async def sendas_add(self, user: str, address: str) -> SendAsGrant:
        return await self._call(self.store.add_sendas(_address(user), _grant_address(address)))

    async def sendas_remove(self, user: str, address: str) -> None:
        await self._call(self.store.remove_sendas(_address(user), _grant_address(address)))

    async def sendas_list(self, user: str | None = None) -> list[SendAsGrant]:
        return await self.store.list_sendas(_address(user) if user else None)

    # -- aliases -------------------------------------------------------------------------
    async def alias_add(self, source: str, targets: list[str]) -> list[Alias]:
        try:
            src = normalize_alias_source(source)
        except AddressError as e:
            raise AdminError(str(e)) from None
        if not targets:
            raise AdminError("an alias needs at least one target address")
        clean = [_address(t) for t in targets]
        if src in clean:
            raise AdminError(f"alias {src} cannot point to itself")
        return await self._call(self.store.add_alias(src, clean))

    async def alias_list(self, domain: str | None = None) -> list[Alias]:
        return await self.store.list_aliases(_domain(domain) if domain else None)

    async def alias_remove(self, source: str, target: str | None = None) -> int:
        try:
            src = normalize_alias_source(source)
        except AddressError as e:
            raise AdminError(str(e)) from None
        return await self._call(
            self.store.remove_alias(src, _address(target) if target else None)
        )

    # -- queue ---------------------------------------------------------------------------
    async def queue_list(self) -> list[QueuedMessage]:
        return await self.store.queue_list()

    async def queue_show(self, qid: str) -> tuple[QueuedMessage, bytes]:
        entry = await self.store.queue_get(qid)
        if entry is None:
            raise AdminError(f"no queued message {qid}", "not_found")
        try:
            data = await self.store.read_blob(entry.blob_id)
        except NotFound:
            raise AdminError(f"no queued message {qid}", "not_found") from None
        return entry, data

    async def queue_flush(self, qid: str | None = None, domain: str | None = None) -> int:
        n = await self.store.queue_flush(qid, _domain(domain) if domain else None)
        if qid is not None and n == 0:
            raise AdminError(f"no queued message {qid} (or it is on hold)", "not_found")
        return n

    async def queue_delete(self, qid: str) -> None:
        if not await self.store.queue_delete(qid):
            raise AdminError(f"no queued message {qid}", "not_found")

    async def queue_hold(self, qid: str, held: bool) -> None:
        if not await self.store.queue_hold(qid, held):
            raise AdminError(f"no queued message {qid}", "not_found")

    async def queue_bounce(self, qid: str) -> int:
        """Fail every pending recipient now, with a DSN to the sender (``postroom queue
        bounce``). Returns how many recipients were bounced."""
        import socket

        from postroom.auth.directory import Directory
        from postroom.queue.bounce import bounce_entry

        hostname = self.settings.hostname if self.settings is not None else socket.getfqdn()
        from postroom.policy.signing import Signer

        signer = Signer(self.store, enabled=self.settings.dkim.sign) if self.settings else None
        n = await self._call(bounce_entry(self.store, Directory(self.store), hostname, qid, signer=signer))
        if n is None:
            raise AdminError(f"no queued message {qid}", "not_found")
        return int(n)
