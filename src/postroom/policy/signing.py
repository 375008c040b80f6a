"""Outbound DKIM signing and ARC sealing with the keys kept in the store.

Theory of operation
-------------------
Keys are rows of the store (``postroom dkim generate|rotate|retire``). :class:`Signer`
reads them all at most every ``RELOAD_SECONDS`` (so a key made with the CLI while the
server runs is used within that time), parses each private key once, and picks for a
domain, per algorithm, the key that became active last and is not retired. A message is
signed once, at submission (and when postroom writes a DSN), with every picked key: an
Ed25519 signature (small, fast, RFC 8463) and an RSA-2048 one (what every verifier
understands). The signing domain is the ``From:`` domain, or the closest parent domain with
a key (DMARC's relaxed alignment accepts it).

RSA signing takes one or two milliseconds: it runs off the event loop (``policy.offload``);
Ed25519 and the hashing of small bodies run inline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from postroom.policy import arc, dkim
from postroom.policy.offload import maybe_offload, run_cpu
from postroom.store.api import DkimKey, Store

log = logging.getLogger("postroom.dkim")

RELOAD_SECONDS = 30.0


def active(key: DkimKey, now: float) -> bool:
    return key.active_from <= now and (key.retire_at is None or key.retire_at > now)


def pick(keys: list[DkimKey], now: float) -> list[DkimKey]:
    """Per algorithm, the active key that became active last (Ed25519 first)."""
    best: dict[str, DkimKey] = {}
    for key in keys:
        if active(key, now) and (key.algorithm not in best or key.active_from >= best[key.algorithm].active_from):
            best[key.algorithm] = key
    return [best[a] for a in ("ed25519", "rsa") if a in best]


class Signer:
    def __init__(self, store: Store, *, enabled: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.enabled = enabled
        self.clock = clock
        self._loaded = float("-inf")
        self._keys: dict[str, list[DkimKey]] = {}
        self._parsed: dict[tuple[str, str, str], dkim.PrivateKey] = {}

    async def _domain_keys(self, domain: str) -> tuple[str, list[DkimKey]]:
        """The keys of ``domain`` or of its closest parent that has any."""
        import time as _t

        mono = _t.monotonic()
        if mono - self._loaded > RELOAD_SECONDS:
            keys: dict[str, list[DkimKey]] = {}
            for k in await self.store.dkim_keys():
                keys.setdefault(k.domain, []).append(k)
            self._keys = keys
            self._loaded = mono
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            name = ".".join(labels[i:])
            if name in self._keys:
                return name, self._keys[name]
        return domain, []

    def invalidate(self) -> None:
        self._loaded = float("-inf")

    def _private(self, key: DkimKey) -> dkim.PrivateKey:
        cache_key = (key.domain, key.selector, key.private_key[-40:])
        parsed = self._parsed.get(cache_key)
        if parsed is None:
            parsed = self._parsed[cache_key] = dkim.PrivateKey.from_pem(
                key.domain, key.selector, key.private_key.encode()
            )
        return parsed

    async def signing_keys(self, domain: str) -> list[dkim.PrivateKey]:
        _, keys = await self._domain_keys(domain)
        return [self._private(k) for k in pick(keys, self.clock())]

    async def sign(self, data: bytes, domain: str) -> bytes:
        """The DKIM-Signature fields for ``data`` (b"" when signing is off or no key)."""
        if not self.enabled or not domain:
            return b""
        out = b""
        for key in await self.signing_keys(domain):
            now = int(self.clock())
            try:
                if key.algorithm == "rsa":
                    out += await run_cpu(_sign, data, key, now)
                else:
                    out += await maybe_offload(len(data), _sign, data, key, now)
            except Exception:  # a broken key must not lose the message
                log.exception("DKIM signing failed domain=%s selector=%s", key.domain, key.selector)
        return out

    async def seal(self, data: bytes, domain: str, *, chain: str, authserv_id: str, results: str) -> bytes:
        """Our ARC set for ``data`` forwarded on behalf of ``domain``; b"" without an RSA
        key (RFC 8617 allows only rsa-sha256) or when the incoming chain failed."""
        if chain not in ("none", "pass"):
            return b""
        keys = [k for k in await self.signing_keys(domain) if k.algorithm == "rsa"]
        if not keys:
            return b""
        try:
            return await run_cpu(
                lambda: arc.seal(data, keys[0], chain=chain, authserv_id=authserv_id,
                                 results=results, timestamp=int(self.clock()))
            )
        except ValueError as e:
            log.warning("ARC seal skipped domain=%s: %s", domain, e)
            return b""


def _sign(data: bytes, key: dkim.PrivateKey, now: int) -> bytes:
    return dkim.sign(data, key, timestamp=now)


def header_from_domain(data: bytes) -> str:
    """The From: domain of ``data`` (first address), "" when there is none."""
    from postroom.policy.inbound import from_domain

    fields, _ = dkim.split_message(data)
    return from_domain(fields) or ""
