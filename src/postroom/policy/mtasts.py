"""MTA-STS for sending (RFC 8461): discover, fetch, cache and apply a domain's policy.

* Discovery (RFC 8461 3.1): one TXT record at ``_mta-sts.DOMAIN`` starting ``v=STSv1;``
  with an ``id``; none, or several, means no (new) policy.
* Fetch (3.3): ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` with a certificate valid
  for that name (system CAs or ``[outbound] tls_ca_file``), no redirects, 200 only, at most
  64 KiB, within 60 s. The host name is resolved through postroom's own resolver (the same
  one the queue uses), not the system's.
* Cache (3.3, 5.1): per domain for the policy's ``max_age``; fetched again when the TXT id
  changes or the entry expires. A failed fetch or DNS failure keeps a cached policy in
  force (that is what protects against an attacker who blocks the policy fetch); with
  nothing cached the domain has no policy. The cache is kept in the store as well
  (``mta_sts_policies``), so it survives restarts and is shared by every node on
  PostgreSQL: otherwise a restart would forget every policy, and whoever can block the
  next fetch (and strip STARTTLS) would get the mail in clear. Memory holds what this
  process has read; the store is read on a miss and written after each fetch.
* Proactive refresh (10.2): a policy that is used while older than a day (or than half
  its max_age, if that is shorter) is fetched again in the background, even with the
  same TXT id, so a domain we keep sending to never lets its policy run out and start
  cold (an attacker who then blocks the fetch would find nothing cached). The delivery
  that notices does not wait for it; a failed refresh keeps the cached policy.
* Apply (4, 5): ``enforce``: deliver only to MX hosts matching a ``mx`` pattern and only
  over TLS with a valid certificate for the MX name; ``testing``: deliver as before (the
  result is reported, TLS-RPT); ``none``: no policy.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp.abc import AbstractResolver

from postroom import logs
from postroom.policy.dns import DnsError, Resolver, lookup_addresses
from postroom.store.api import StoreError, StsPolicyRow

log = logging.getLogger("postroom.queue")

MAX_POLICY_SIZE = 64 * 1024
FETCH_TIMEOUT = 60.0  # RFC 8461 3.3: "a timeout of 60 seconds" is suggested
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: at most one year
MAX_CACHE = 10000
MAX_REFRESHES = 100  # background refreshes at a time; more wait for the next use
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 3.1: sts-id = 1*32(ALPHA / DIGIT)
MODES = ("enforce", "testing", "none")


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    def allows(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)

    def lines(self) -> list[str]:
        """The policy as its lines (TLS-RPT's ``policy-string``, RFC 8460 4.4)."""
        return ["version: STSv1", f"mode: {self.mode}", *(f"mx: {m}" for m in self.mx), f"max_age: {self.max_age}"]


def parse_txt(records: list[bytes]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records, or None (RFC 8461 3.1: exactly one
    record must start with ``v=STSv1``; fields are ``key=value`` separated by ``;``)."""
    found = [r for r in records if r.startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].decode("ascii", "replace").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    sts_id = fields.get("id", "")
    return sts_id if _ID.match(sts_id) else None


def parse_policy(text: str) -> StsPolicy:
    """RFC 8461 3.2: ``key: value`` lines (CRLF or LF); unknown keys are ignored; the first
    of a repeated key counts, except ``mx`` which may repeat. ValueError when invalid."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a key: value line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise ValueError("version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int(fields.get("max_age", ""))
    except ValueError:
        raise ValueError("max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise ValueError("max_age out of range")
    if mode != "none" and not mx:
        raise ValueError("no mx line")
    return StsPolicy(mode, tuple(mx), max_age)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: an exact name, or ``*.`` matching exactly one leftmost label."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


class OurResolver(AbstractResolver):
    """aiohttp's resolver interface over postroom's DNS seam (the policy host's A/AAAA)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        try:
            addresses = await lookup_addresses(self.resolver, host)
        except DnsError as e:
            raise OSError(f"{host}: {e}") from None
        if not addresses:
            raise OSError(f"{host}: no address")
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
             "proto": 0, "flags": socket.AI_NUMERICHOST}
            for a in addresses
        ]

    async def close(self) -> None:
        return None


def https_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate-checking client context (system CAs, or ``ca_file``), TLS 1.2+: for the
    policy fetch (RFC 8461 3.3) and TLS-RPT's HTTPS reports (RFC 8460 5.2)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PolicyFetchError(Exception):
    """The policy could not be fetched or parsed. ``result_type``: what TLS-RPT reports
    (RFC 8460 4.3.2.2): ``sts-policy-fetch-error``, ``sts-policy-invalid``, or
    ``sts-webpki-invalid`` when the policy host's certificate was not valid."""

    def __init__(self, message: str, invalid: bool = False, result_type: str = "") -> None:
        super().__init__(message)
        self.invalid = invalid
        self.result_type = result_type or ("sts-policy-invalid" if invalid else "sts-policy-fetch-error")


class PolicyStore(Protocol):
    """The part of the Store that keeps policies (``store.api.Store``)."""

    async def sts_policy(self, domain: str) -> StsPolicyRow | None: ...
    async def sts_policy_put(self, row: StsPolicyRow) -> None: ...
    async def sts_policies_prune(self, now: int) -> int: ...


PRUNE_INTERVAL = 3600.0
REFRESH_AFTER = 86400.0  # RFC 8461 10.2: "e.g., daily"
REFRESH_RETRY = 3600.0  # after a failed refresh, the next try waits this long


class MtaStsPolicies:
    """Policies by domain, cached for their max_age (see module docstring)."""

    def __init__(
        self, resolver: Resolver, *, ca_file: str | None = None, port: int = 443,
        clock: Callable[[], float] = time.time, store: PolicyStore | None = None,
    ) -> None:
        self.resolver = resolver
        self.ca_file = ca_file
        self.port = port
        self.clock = clock
        self.store = store
        self._pruned = float("-inf")  # prune at the first save, then hourly
        self._cache: dict[str, tuple[float, StsPolicy]] = {}
        self._loaded: set[str] = set()  # domains whose stored row was read already
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # background refreshes
        self._refresh_failed: dict[str, float] = {}  # domain -> when a refresh last failed
        # domain -> (RFC 8460 result type, why) of the last fetch, when it failed
        self.last_failure: dict[str, tuple[str, str]] = {}

    async def get(self, domain: str) -> StsPolicy | None:
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        try:
            async with lock:  # one fetch per domain at a time
                return await self._get(domain)
        finally:
            if not lock.locked():  # a late waiter making a new lock only costs a fetch
                self._locks.pop(domain, None)

    async def _get(self, domain: str) -> StsPolicy | None:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is None:
            cached = await self._load(domain)
        if cached is not None and cached[0] <= now:
            cached = None
            self._cache.pop(domain, None)
        try:
            sts_id = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DnsError:
            sts_id = None
        if cached is not None and (sts_id is None or sts_id == cached[1].id):
            if sts_id is not None and self._stale(now, *cached):
                self._refresh_soon(domain, sts_id)
            return cached[1]
        if sts_id is None:
            self.last_failure.pop(domain, None)
            return None
        try:
            policy = await self.fetch(domain)
        except PolicyFetchError as e:
            self._note_failure(domain, (e.result_type, str(e)))
            return cached[1] if cached is not None else None
        self.last_failure.pop(domain, None)
        policy = StsPolicy(policy.mode, policy.mx, policy.max_age, sts_id)
        if policy.max_age > 0:
            self._remember(domain, now + policy.max_age, policy)
            await self._save(domain, now, policy)
        return policy

    @staticmethod
    def _stale(now: float, expires: float, policy: StsPolicy) -> bool:
        fetched = expires - policy.max_age
        return now - fetched >= min(REFRESH_AFTER, policy.max_age / 2)

    def _refresh_soon(self, domain: str, sts_id: str) -> None:
        if domain in self._refreshing or len(self._refreshing) >= MAX_REFRESHES:
            return
        failed = self._refresh_failed.get(domain)
        if failed is not None and self.clock() - failed < REFRESH_RETRY:
            return
        task = asyncio.get_running_loop().create_task(self._refresh(domain, sts_id))
        self._refreshing[domain] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(domain, None))

    async def _refresh(self, domain: str, sts_id: str) -> None:
        try:
            policy = await self.fetch(domain)
        except PolicyFetchError as e:  # the cached policy stays in force until max_age
            logs.event(log, "mta_sts_refresh_failed", logging.INFO, domain=domain, error=str(e))
            if len(self._refresh_failed) >= MAX_CACHE:
                self._refresh_failed.pop(next(iter(self._refresh_failed)))
            self._refresh_failed[domain] = self.clock()
            return
        self._refresh_failed.pop(domain, None)
        policy = StsPolicy(policy.mode, policy.mx, policy.max_age, sts_id)
        if policy.max_age > 0:
            now = self.clock()
            self._remember(domain, now + policy.max_age, policy)
            await self._save(domain, now, policy)

    async def close(self) -> None:
        """Cancel the background refreshes (shutdown: a refresh may wait 60 s)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_refreshes(self) -> None:
        """Wait for the background refreshes under way (tests, and shutdown)."""
        while self._refreshing:
            await asyncio.gather(*list(self._refreshing.values()), return_exceptions=True)

    def _remember(self, domain: str, expires: float, policy: StsPolicy) -> None:
        if domain not in self._cache and len(self._cache) >= MAX_CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[domain] = (expires, policy)

    async def _load(self, domain: str) -> tuple[float, StsPolicy] | None:
        """The stored policy of ``domain`` unless expired, read once per process (later
        fetches by this process keep memory and the store in step). A store that cannot
        answer counts as nothing stored, as a failed fetch would."""
        if self.store is None or domain in self._loaded:
            return None
        try:
            row = await self.store.sts_policy(domain)
        except StoreError as e:  # read again next time
            logs.event(log, "mta_sts_store_failed", logging.WARNING, domain=domain, error=str(e))
            return None
        if len(self._loaded) >= MAX_CACHE:
            self._loaded.clear()
        self._loaded.add(domain)  # one read per domain and process, not one per delivery
        if row is None or row.expires <= self.clock():
            return None
        policy = StsPolicy(row.mode, row.mx, row.max_age, row.policy_id)
        self._remember(domain, float(row.expires), policy)
        return float(row.expires), policy

    async def _save(self, domain: str, now: float, policy: StsPolicy) -> None:
        if self.store is None:
            return
        row = StsPolicyRow(domain, policy.id, policy.mode, policy.mx, policy.max_age,
                           int(now), int(now) + policy.max_age)
        try:
            await self.store.sts_policy_put(row)
            if now - self._pruned >= PRUNE_INTERVAL:
                self._pruned = now
                await self.store.sts_policies_prune(int(now))
        except StoreError as e:  # kept in memory all the same
            logs.event(log, "mta_sts_store_failed", logging.WARNING, domain=domain, error=str(e))

    def _note_failure(self, domain: str, failure: tuple[str, str]) -> None:
        if len(self.last_failure) >= MAX_CACHE:
            self.last_failure.pop(next(iter(self.last_failure)))
        self.last_failure[domain] = failure

    async def fetch(self, domain: str) -> StsPolicy:
        import aiohttp

        host = f"mta-sts.{domain}"
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(resolver=OurResolver(self.resolver), ssl=https_context(self.ca_file), use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            ) as session:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status != 200:  # RFC 8461 3.3: redirects are not followed
                        raise PolicyFetchError(f"{url}: HTTP {resp.status}")
                    # read() returns what has arrived so far: a policy sent in several
                    # chunks is read to its end (or just past the size limit).
                    body = b""
                    while len(body) <= MAX_POLICY_SIZE:
                        chunk = await resp.content.read(MAX_POLICY_SIZE + 1 - len(body))
                        if not chunk:
                            break
                        body += chunk
        except aiohttp.ClientConnectorCertificateError as e:
            raise PolicyFetchError(f"{url}: {type(e).__name__}: {e}"[:300], result_type="sts-webpki-invalid") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise PolicyFetchError(f"{url}: {type(e).__name__}: {e}"[:300]) from None
        if len(body) > MAX_POLICY_SIZE:
            raise PolicyFetchError(f"{url}: larger than {MAX_POLICY_SIZE} bytes", invalid=True)
        try:
            return parse_policy(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PolicyFetchError(f"{url}: invalid policy: {e}", invalid=True) from None
