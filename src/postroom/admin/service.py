"""Administrative operations, shared by the CLI (and later the HTTP API).

Validation and normalisation of what people type happen here, once: the store below gets
clean values, and the CLI above only parses arguments and prints results. Password hashing
(argon2id and the SCRAM keys) runs on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
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
    Alias,
    Domain,
    NotFound,
    QueuedMessage,
    Quota,
    SendAsGrant,
    Store,
    StoreError,
    User,
)


class AdminError(Exception):
    """A user-facing failure of an admin operation (one line)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    password_hash: str
    scram: str


def _hash(password: str) -> Credentials:
    if not password:
        raise AdminError("the password is empty")
    if len(password) > 1024:
        raise AdminError("the password is longer than 1024 characters")
    return Credentials(
        password_hash=passwords.hash_password(password),
        scram=passwords.scram_credentials(password).to_string(),
    )


def _address(value: str) -> str:
    try:
        return normalize_address(value)
    except AddressError as e:
        raise AdminError(str(e)) from None


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
                f"(add it with `postroom domain add {addr.rpartition('@')[2]}`)"
            )
        if await self.store.get_user(addr) is not None:
            raise AdminError(f"user {addr} already exists")
        creds = await asyncio.get_running_loop().run_in_executor(None, _hash, password)
        return await self._call(self.store.add_user(addr, creds.password_hash, creds.scram))

    async def user_list(self, domain: str | None = None) -> list[User]:
        return await self.store.list_users(_domain(domain) if domain else None)

    async def user_remove(self, address: str) -> None:
        await self._call(self.store.remove_user(_address(address)))

    async def user_passwd(self, address: str, password: str) -> None:
        addr = _address(address)
        if await self.store.get_user(addr) is None:
            raise AdminError(f"no user {addr}")
        creds = await asyncio.get_running_loop().run_in_executor(None, _hash, password)
        await self._call(self.store.set_password(addr, creds.password_hash, creds.scram))

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
            raise AdminError(f"no user {_address(address)}")
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
            raise AdminError(f"no queued message {qid}")
        try:
            data = await self.store.read_blob(entry.blob_id)
        except NotFound:
            raise AdminError(f"no queued message {qid}") from None
        return entry, data

    async def queue_flush(self, qid: str | None = None, domain: str | None = None) -> int:
        n = await self.store.queue_flush(qid, _domain(domain) if domain else None)
        if qid is not None and n == 0:
            raise AdminError(f"no queued message {qid} (or it is on hold)")
        return n

    async def queue_delete(self, qid: str) -> None:
        if not await self.store.queue_delete(qid):
            raise AdminError(f"no queued message {qid}")

    async def queue_hold(self, qid: str, held: bool) -> None:
        if not await self.store.queue_hold(qid, held):
            raise AdminError(f"no queued message {qid}")

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
            raise AdminError(f"no queued message {qid}")
        return int(n)
