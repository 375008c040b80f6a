"""Where a recipient domain's mail goes: transport map, smarthost, MX, and loop detection.

Theory of operation
-------------------
Routing is two steps, so that the worker can group recipients before any DNS traffic:

1. :meth:`Router.next_hop` (configuration only, instant): the :class:`NextHop` for a
   domain. In Postfix's order: an entry of ``[outbound] transport`` (like
   ``transport_maps``) wins, then ``smarthost`` (like ``relayhost``), else MX delivery. The
   hop's ``key`` names the destination for connection reuse, concurrency limits and the
   destination-down backoff; recipients of one message with the same key travel in one
   SMTP transaction.
2. :meth:`Router.resolve` (DNS): the :class:`Target` addresses to try, in order. A relay
   host (transport or smarthost) is looked up by A/AAAA only, like Postfix's ``[host]``.
   MX delivery follows RFC 5321 5.1 (see ``policy.dns.lookup_mx``): MX by preference, the
   domain itself when there is no MX, nothing at all for a null MX (RFC 7505).

Loop detection (RFC 5321 5.1): if one of the MX hosts is this server (its name is our
``hostname``, or one of its addresses is an address we listen on), that MX and every MX with
the same or a worse preference are dropped; when nothing is left we are the best MX for a
domain we do not host, and the message would loop: bounce with 5.4.6. A transport map entry
or the smarthost are explicit configuration and are never second-guessed.

Failures are :class:`RouteError` carrying the ``queue.model.TransportError`` that decides
temporary or permanent: NXDOMAIN and null MX bounce, SERVFAIL and timeouts are retried, MX
hosts without any address are retried (their records may come back).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from postroom.config import OutboundSettings, Settings
from postroom.policy.dns import (
    DnsTemporary,
    NxDomain,
    Resolver,
    lookup_addresses,
    lookup_mx,
)
from postroom.queue.model import TransportError

_WILDCARDS = frozenset({"*", "0.0.0.0", "::"})


class RouteError(Exception):
    """No address to try. ``error`` decides temporary/permanent (queue.model)."""

    def __init__(self, error: TransportError, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a domain's mail goes, before DNS. ``relay_host`` is set for transport and
    smarthost routes (``domain`` then is only informative)."""

    key: str
    domain: str
    port: int
    tls_policy: str  # none | may | require | verify
    relay_host: str | None = None
    username: str = ""
    password: str = ""

    @property
    def is_relay(self) -> bool:
        return self.relay_host is not None


@dataclass(frozen=True, slots=True)
class Target:
    """One address to connect to. ``name`` is the MX (or relay) host name: the TLS ``verify``
    policy checks the certificate against it, and DSNs report it as Remote-MTA."""

    name: str
    address: str
    port: int
    preference: int = 0

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.name}[{host}]:{self.port}" if self.name != self.address else f"{host}:{self.port}"


class Router:
    """Routing decisions for one configuration. ``local_address`` answers "is this IP
    ours?" (default: :func:`local_address_checker` over the listeners)."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        *,
        rng: random.Random | None = None,
        local_address: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.out: OutboundSettings = settings.outbound
        self.resolver = resolver
        self.rng = rng if rng is not None else random.Random()
        self.hostname = settings.hostname.lower()
        self.helo_name = self.out.helo_name or settings.hostname
        self.local_address = (
            local_address
            if local_address is not None
            else local_address_checker(lst.host for lst in settings.listeners)
        )

    def tls_policy(self, domain: str) -> str:
        return self.out.tls_policy.get(domain, self.out.default_tls_policy)

    def next_hop(self, domain: str) -> NextHop:
        domain = domain.lower().rstrip(".")
        out = self.out
        policy = self.tls_policy(domain)
        transport = out.transport.get(domain)
        if transport is not None:
            host, port = transport
            return NextHop(f"relay:{host}:{port}:{policy}", domain, port, policy, host)
        if out.smarthost is not None:
            host, port = out.smarthost
            return NextHop(
                f"relay:{host}:{port}:{out.smarthost_tls}", domain, port, out.smarthost_tls,
                host, out.smarthost_username, out.smarthost_password,
            )
        return NextHop(f"mx:{domain}", domain, out.port, policy)

    async def resolve(self, hop: NextHop) -> list[Target]:
        """The addresses to try for ``hop``, best first; RouteError when there are none."""
        try:
            if hop.relay_host is not None:
                return await self._relay(hop, hop.relay_host)
            return await self._mx(hop)
        except NxDomain as e:
            raise RouteError(TransportError.DNS_NXDOMAIN, str(e)) from None
        except DnsTemporary as e:
            kind = TransportError.DNS_TIMEOUT if e.timeout else TransportError.DNS_SERVFAIL
            raise RouteError(kind, str(e)) from None

    async def _relay(self, hop: NextHop, host: str) -> list[Target]:
        addresses = await lookup_addresses(self.resolver, host)
        if not addresses:
            raise RouteError(TransportError.NO_ADDRESS, f"{host}: no A or AAAA record")
        return [Target(host, a, hop.port) for a in addresses]

    def _literal(self, hop: NextHop) -> list[Target]:
        """``user@[192.0.2.1]`` / ``user@[IPv6:2001:db8::1]`` (RFC 5321 4.1.3): no DNS."""
        text = hop.domain[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            raise RouteError(TransportError.DNS_NXDOMAIN, f"bad address literal {hop.domain}") from None
        if self.local_address(address):
            raise RouteError(TransportError.LOCAL_LOOP, f"mail for {hop.domain} loops back to myself")
        return [Target(address, address, hop.port)]

    async def _mx(self, hop: NextHop) -> list[Target]:
        if hop.domain.startswith("[") and hop.domain.endswith("]"):
            return self._literal(hop)
        answer = await lookup_mx(self.resolver, hop.domain, self.rng)
        if answer.null:
            raise RouteError(
                TransportError.NULL_MX, f"{hop.domain} does not accept mail (null MX, RFC 7505)"
            )
        results = await asyncio.gather(
            *(lookup_addresses(self.resolver, mx.host) for mx in answer.hosts),
            return_exceptions=True,
        )
        targets: list[Target] = []
        temporary: DnsTemporary | None = None
        for mx, found in zip(answer.hosts, results, strict=True):
            if isinstance(found, NxDomain):
                if answer.implicit:  # the domain had records a moment ago; it is gone now
                    raise found
                continue  # a dangling MX host: skip it (RFC 5321 5.1 "try the next")
            if isinstance(found, DnsTemporary):
                temporary = temporary or found
                continue
            if isinstance(found, BaseException):
                raise found
            if mx.host == self.hostname or any(self.local_address(a) for a in found):
                # RFC 5321 5.1: we are this MX; only better-preference hosts may be used.
                targets = [t for t in targets if t.preference < mx.preference]
                if not targets and temporary is not None:
                    raise temporary  # a better MX may resolve again: not a loop yet
                if not targets:
                    raise RouteError(
                        TransportError.LOCAL_LOOP,
                        f"mail for {hop.domain} loops back to myself (MX {mx.host})",
                    )
                break
            targets.extend(Target(mx.host, a, hop.port, mx.preference) for a in found)
        if not targets:
            if temporary is not None:
                raise temporary
            raise RouteError(
                TransportError.NO_ADDRESS, f"no address for the MX hosts of {hop.domain}"
            )
        return targets


def local_address_checker(listener_hosts: Iterable[str]) -> Callable[[str], bool]:
    """"Is this address one of ours?" for loop detection.

    Explicit listener addresses count as ours. With a wildcard listener ("*", 0.0.0.0, ::)
    every address of this machine is ours, which we learn by trying to bind a socket to it:
    the kernel allows that exactly for local addresses (on Linux all of 127.0.0.0/8).
    """
    explicit: set[str] = set()
    wildcard = False
    for host in listener_hosts:
        if host in _WILDCARDS:
            wildcard = True
            continue
        try:
            explicit.add(str(ipaddress.ip_address(host)))
        except ValueError:
            continue
    cache: dict[str, bool] = {}

    def check(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        text = str(ip)
        if text in explicit or (ip.version == 6 and ip.ipv4_mapped and str(ip.ipv4_mapped) in explicit):
            return True
        if not wildcard:
            return False
        if text not in cache:
            cache[text] = _bindable(ip)
        return cache[text]

    return check


def _bindable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError:
        return False
