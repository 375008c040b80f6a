"""DNS behind one seam: the :class:`Resolver` protocol, its two implementations, MX selection.

Theory of operation
-------------------
Everything above this module asks DNS questions through :class:`Resolver` (six coroutines:
``mx``, ``a``, ``aaaa``, ``txt``, ``ptr``, ``srv``) and learns about failures through two exceptions whose
difference matters to mail: :class:`NxDomain` (the name does not exist: permanent, the
message bounces) and :class:`DnsTemporary` (SERVFAIL, timeout, refused, no server reachable:
try again later). A name that exists but has no record of the asked type is not an error:
the answer is an empty list (NODATA).

Implementations:

* :class:`DnsPythonResolver` uses dnspython's asyncio resolver, pointed at the server in
  ``[outbound] resolver`` (tests run a local DNS server) or at the system's resolv.conf.
  It keeps a cache (``[dns] cache_entries``, least recently used first out) that honours
  each answer's TTL (capped at ``MAX_TTL``) and caches negative answers (NXDOMAIN, NODATA)
  for the SOA minimum the server sent (RFC 2308 5; none without an SOA, capped at
  ``MAX_NEGATIVE_TTL``). Failures (SERVFAIL, timeouts) are never cached. One instance is
  shared by the queue (MX) and the inbound checks (SPF, DKIM keys, DMARC), built in
  ``app.py``.
* :class:`DictResolver` answers from a dict, for unit tests; values may be the
  :data:`NXDOMAIN` / :data:`SERVFAIL` markers.

On top of the seam, the mail-routing questions (pure logic over the answers):

* :func:`lookup_mx`: the MX hosts of a domain in the order to try them (RFC 5321 5.1:
  ascending preference, random order among equal preferences); a domain without MX records
  is its own implicit MX; a lone ``MX 0 .`` is a null MX (RFC 7505): the domain accepts no
  mail.
* :func:`lookup_addresses`: A and AAAA of one host, asked concurrently. IPv4 addresses come
  first: large receivers refuse IPv6 senders without matching reverse DNS far more often,
  and a missing IPv6 route fails fast, so the order costs nothing when IPv6 is the only way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from postroom.policy.dane import TlsaRecord

R = TypeVar("R")


class DnsError(Exception):
    """A DNS question could not be answered."""


class NxDomain(DnsError):
    """The name does not exist (RCODE 3): a permanent condition."""


class DnsTemporary(DnsError):
    """SERVFAIL, timeout or no usable server: ask again later. ``timeout`` says which."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True, slots=True, order=True)
class MxRecord:
    preference: int
    host: str  # lower case, no trailing dot; "" for the null MX target "."


@dataclass(frozen=True, slots=True)
class Validated(Generic[R]):
    """An answer with the resolver's word on it: ``secure`` is the AD bit (RFC 4035 3.2.3)
    of a DNSSEC-validating resolver. postroom does not validate signatures itself: it
    trusts ``[outbound] resolver`` (a validating resolver on this host or a trusted
    network, docs/dns.md) for the bit, as Postfix's ``smtp_dns_support_level = dnssec`` does."""

    records: tuple[R, ...]
    secure: bool


class Resolver(Protocol):
    """The DNS seam. Names are given without a trailing dot; answers are lists (empty for
    NODATA). Raise :class:`NxDomain` or :class:`DnsTemporary`, nothing else."""

    async def mx(self, name: str) -> list[MxRecord]: ...
    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def txt(self, name: str) -> list[bytes]: ...
    async def ptr(self, name: str) -> list[str]: ...
    async def srv(self, name: str) -> list[SrvRecord]: ...
    async def tlsa(self, name: str) -> Validated[TlsaRecord]: ...
    async def mx_validated(self, name: str) -> Validated[MxRecord]: ...


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # lower case, no trailing dot


MAX_TTL = 86400.0
MAX_NEGATIVE_TTL = 3600.0


# --- dnspython ---------------------------------------------------------------------------


class DnsPythonResolver:
    """dnspython's asyncio resolver; ``server`` = (ip, port), or None for resolv.conf.

    Names are always queried as absolute (no search list: "example.org" must never become
    "example.org.corp.internal"). CNAME chains are followed by dnspython.
    """

    def __init__(
        self,
        server: tuple[str, int] | None = None,
        *,
        timeout: float = 10.0,
        cache_entries: int = 0,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        import dns.asyncresolver

        # observe(rdtype, result, seconds) after every query sent (not cache hits): the
        # DNS latency metric (postroom.metrics).
        self.observe = observe

        self._cache: OrderedDict[tuple[str, str], tuple[float, list[object] | NxDomain]] = OrderedDict()
        self._cache_entries = cache_entries
        self._clock = clock
        self.stats = {"queries": 0, "hits": 0}

        if server is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except Exception as e:  # no /etc/resolv.conf: every lookup fails (temporarily)
                import logging

                logging.getLogger("postroom.dns").warning(
                    "event=dns_unconfigured error=%s (set [outbound] resolver)", e
                )
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = []
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [server[0]]
            self._resolver.port = server[1]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 3.0)
        self._dnssec: Any = None  # a copy asking for the AD bit (DANE), made on first use

    async def _query(self, name: str, rdtype: str) -> list[object]:
        key = (name.rstrip(".").lower(), rdtype)
        if self._cache_entries:
            hit = self._cache.get(key)
            if hit is not None:
                if hit[0] > self._clock():
                    self._cache.move_to_end(key)
                    self.stats["hits"] += 1
                    if isinstance(hit[1], NxDomain):
                        raise NxDomain(str(hit[1]))
                    return hit[1]
                del self._cache[key]
        self.stats["queries"] += 1
        if self.observe is None:
            rows, ttl = await self._ask(name, rdtype)
        else:
            started = time.perf_counter()
            result = "error"
            try:
                rows, ttl = await self._ask(name, rdtype)
                result = "nxdomain" if isinstance(rows, NxDomain) else "ok"
            except DnsTemporary as e:
                result = "timeout" if e.timeout else "error"
                raise
            finally:
                self.observe(rdtype, result, time.perf_counter() - started)
        if self._cache_entries and ttl > 0:
            self._cache[key] = (self._clock() + ttl, rows)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        if isinstance(rows, NxDomain):
            raise rows
        return rows

    async def _ask(self, name: str, rdtype: str) -> tuple[list[object] | NxDomain, float]:
        """(records or NxDomain, seconds it may be cached)."""
        import dns.exception
        import dns.resolver

        qname = name.rstrip(".") + "."
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            ttl = 0.0
            for response in e.responses().values():
                ttl = _negative_ttl(response)
            return NxDomain(f"{name}: no such domain"), ttl
        except dns.resolver.NoNameservers as e:
            raise DnsTemporary(f"{name} {rdtype}: server failure ({_short(e)})") from None
        except dns.exception.Timeout:
            raise DnsTemporary(f"{name} {rdtype}: timed out", timeout=True) from None
        except (dns.exception.DNSException, OSError, ValueError) as e:  # YXDOMAIN, bad names
            raise DnsTemporary(f"{name} {rdtype}: {_short(e)}") from None
        if answer.rrset is None:
            return [], _negative_ttl(answer.response)
        return list(answer.rrset), min(float(answer.rrset.ttl), MAX_TTL)

    async def mx(self, name: str) -> list[MxRecord]:
        rows = await self._query(name, "MX")
        return [
            MxRecord(r.preference, r.exchange.to_text(omit_final_dot=True).lower())  # type: ignore[attr-defined]
            for r in rows
        ]

    async def a(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "A")]  # type: ignore[attr-defined]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "AAAA")]  # type: ignore[attr-defined]

    async def txt(self, name: str) -> list[bytes]:
        return [b"".join(r.strings) for r in await self._query(name, "TXT")]  # type: ignore[attr-defined]

    async def ptr(self, name: str) -> list[str]:
        return [
            r.target.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
            for r in await self._query(name, "PTR")
        ]

    async def srv(self, name: str) -> list[SrvRecord]:
        return [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True).lower())  # type: ignore[attr-defined]
            for r in await self._query(name, "SRV")
        ]


    async def _validated(self, name: str, rdtype: str) -> tuple[list[Any], bool]:
        """Records and the AD bit, asked with DO and AD set (RFC 6840 5.7); never cached,
        so the bit is always the resolver's current word."""
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.resolver

        qname = name.rstrip(".") + "."
        try:
            answer = await self._validating.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise NxDomain(f"{name}: no such domain") from None
        except dns.resolver.NoNameservers as e:
            raise DnsTemporary(f"{name} {rdtype}: server failure ({_short(e)})") from None
        except dns.exception.Timeout:
            raise DnsTemporary(f"{name} {rdtype}: timed out", timeout=True) from None
        except (dns.exception.DNSException, OSError, ValueError) as e:
            raise DnsTemporary(f"{name} {rdtype}: {_short(e)}") from None
        secure = bool(answer.response.flags & dns.flags.AD)
        return (list(answer.rrset) if answer.rrset is not None else []), secure

    @property
    def _validating(self) -> Any:
        if self._dnssec is None:
            import copy

            import dns.flags

            self._dnssec = copy.copy(self._resolver)
            self._dnssec.use_edns(0, dns.flags.DO, 1232)
            self._dnssec.flags = dns.flags.RD | dns.flags.AD
        return self._dnssec

    async def tlsa(self, name: str) -> Validated[TlsaRecord]:
        rows, secure = await self._validated(name, "TLSA")
        return Validated(tuple(TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in rows), secure)

    async def mx_validated(self, name: str) -> Validated[MxRecord]:
        rows, secure = await self._validated(name, "MX")
        return Validated(
            tuple(MxRecord(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in rows), secure
        )


def _negative_ttl(response: object) -> float:
    """RFC 2308 5: a negative answer is cached for min(SOA TTL, SOA minimum); without an
    SOA in the authority section it is not cached."""
    for rrset in getattr(response, "authority", ()) or ():
        for rr in rrset:
            minimum = getattr(rr, "minimum", None)
            if minimum is not None:
                return min(float(rrset.ttl), float(minimum), MAX_NEGATIVE_TTL)
    return 0.0


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- in memory ---------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NXDOMAIN = _Marker("NXDOMAIN")
SERVFAIL = _Marker("SERVFAIL")


class DictResolver:
    """Answers from ``records``: keys ``(name, type)`` with type "MX", "A", "AAAA", "TXT";
    values a list of answers (``(preference, host)`` pairs for MX, ``(priority, weight, port,
    target)`` for SRV) or a marker. A missing key
    is NODATA when some other type exists for the name, else NXDOMAIN. ``queries`` records
    every question asked, for assertions."""

    def __init__(self, records: Mapping[tuple[str, str], object], secure: frozenset[str] = frozenset()) -> None:
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.queries: list[tuple[str, str]] = []
        self.secure = {n.lower().rstrip(".") for n in secure}  # names answered with AD

    def _get(self, name: str, rdtype: str) -> Sequence[object]:
        name = name.lower().rstrip(".")
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if value is NXDOMAIN:
            raise NxDomain(f"{name}: no such domain")
        if value is SERVFAIL:
            raise DnsTemporary(f"{name} {rdtype}: server failure")
        if value is None:
            if any(n == name for n, _ in self.records):
                return []
            raise NxDomain(f"{name}: no such domain")
        assert isinstance(value, (list, tuple))
        return value

    async def mx(self, name: str) -> list[MxRecord]:
        out = []
        for item in self._get(name, "MX"):
            assert isinstance(item, (tuple, list)) and len(item) == 2
            out.append(MxRecord(int(item[0]), str(item[1]).lower().rstrip(".")))
        return out

    async def a(self, name: str) -> list[str]:
        return [str(v) for v in self._get(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(v) for v in self._get(name, "AAAA")]

    async def txt(self, name: str) -> list[bytes]:
        return [v if isinstance(v, bytes) else str(v).encode() for v in self._get(name, "TXT")]

    async def ptr(self, name: str) -> list[str]:
        return [str(v).lower().rstrip(".") for v in self._get(name, "PTR")]

    async def srv(self, name: str) -> list[SrvRecord]:
        out = []
        for item in self._get(name, "SRV"):
            assert isinstance(item, (tuple, list)) and len(item) == 4
            out.append(SrvRecord(int(item[0]), int(item[1]), int(item[2]), str(item[3]).lower().rstrip(".")))
        return out

    async def tlsa(self, name: str) -> Validated[TlsaRecord]:
        out = []
        for item in self._get(name, "TLSA"):  # (usage, selector, matching type, hex data)
            assert isinstance(item, (tuple, list)) and len(item) == 4
            out.append(TlsaRecord(int(item[0]), int(item[1]), int(item[2]), bytes.fromhex(str(item[3]))))
        return Validated(tuple(out), name.lower().rstrip(".") in self.secure)

    async def mx_validated(self, name: str) -> Validated[MxRecord]:
        return Validated(tuple(await self.mx(name)), name.lower().rstrip(".") in self.secure)


# --- mail routing over the seam ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxAnswer:
    """The hosts to try, best first. ``implicit``: no MX records, the domain itself is the
    host (RFC 5321 5.1). ``null``: the domain publishes a null MX (RFC 7505)."""

    hosts: tuple[MxRecord, ...]
    implicit: bool = False
    null: bool = False


async def lookup_mx(resolver: Resolver, domain: str, rng: random.Random | None = None) -> MxAnswer:
    """MX hosts of ``domain`` in the order to try them. NxDomain/DnsTemporary propagate."""
    domain = domain.lower().rstrip(".")
    records = await resolver.mx(domain)
    if not records:
        # RFC 5321 5.1: no MX -> the domain is treated as the one MX host (preference 0).
        return MxAnswer((MxRecord(0, domain),), implicit=True)
    real = [r for r in records if r.host not in ("", ".")]
    if not real:
        # RFC 7505 3: "MX 0 ." alone says the domain accepts no mail. (RFC 7505 4.3: a null
        # MX mixed with real ones is a misconfiguration; we use the real ones.)
        return MxAnswer((), null=True)
    rng = rng if rng is not None else random.Random()
    # RFC 5321 5.1: ascending preference; equal preferences in random order (load sharing).
    keyed = sorted(((r.preference, rng.random(), r) for r in real), key=lambda t: t[:2])
    seen: set[str] = set()
    ordered = []
    for _, _, r in keyed:
        if r.host not in seen:  # a host listed twice is tried once, at its best preference
            seen.add(r.host)
            ordered.append(r)
    return MxAnswer(tuple(ordered))


async def lookup_addresses(resolver: Resolver, host: str) -> list[str]:
    """IPv4 then IPv6 addresses of ``host`` (A and AAAA asked concurrently). An IP literal is
    returned as is. NxDomain when the name does not exist; DnsTemporary when neither answer
    arrived; an empty list when the name has neither record."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    v4, v6 = await asyncio.gather(resolver.a(host), resolver.aaaa(host), return_exceptions=True)
    errors = [x for x in (v4, v6) if isinstance(x, BaseException)]
    for x in errors:
        if not isinstance(x, DnsError):
            raise x
    if len(errors) == 2:
        if all(isinstance(x, NxDomain) for x in errors):
            raise errors[0]
        raise next(x for x in errors if isinstance(x, DnsTemporary))
    out: list[str] = []
    for answer in (v4, v6):
        if isinstance(answer, list):
            out.extend(a for a in answer if a not in out)
    if not out and errors:  # one side empty, the other failed: the failure says more
        raise errors[0]
    return out


def make_resolver(
    server: tuple[str, int] | None,
    *,
    timeout: float = 10.0,
    cache_entries: int = 0,
    observe: Callable[[str, str, float], None] | None = None,
) -> Resolver:
    """The production resolver for ``[outbound] resolver`` (None: the system's).
    ``observe(rdtype, result, seconds)`` is told the time of every query (metrics)."""
    return DnsPythonResolver(server, timeout=timeout, cache_entries=cache_entries, observe=observe)
