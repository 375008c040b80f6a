"""Which TLS each MX host of a destination gets: DANE, MTA-STS or the configured policy.

Applies to MX delivery of domains without an explicit ``[outbound] tls_policy`` entry (an
entry is the administrator's decision and wins; relays, the smarthost and address literals
are configuration too). For each destination, before connecting:

1. DANE (RFC 7672 2.2), when ``outbound.dane``: only if the MX RRset is DNSSEC-validated
   (the resolver's AD bit, see ``policy.dns.Validated``), each MX host's TLSA records at
   ``_PORT._tcp.HOST`` are looked up. Validated records: that host gets the ``dane`` policy
   (TLS mandatory, chain checked against the records). A TLSA lookup that fails (not
   NXDOMAIN/NODATA): the host is skipped (RFC 7672 2.2.1: it may be under attack).
   Unvalidated or no records: the host is not DANE-protected.
2. MTA-STS (RFC 8461), when ``outbound.mta_sts``, for the hosts DANE does not cover (RFC
   8461 2: DANE takes precedence where it applies): an ``enforce`` policy keeps only the MX
   hosts that match its ``mx`` patterns and gives them ``verify`` (a certificate valid
   for the MX name); ``testing`` changes nothing but is reported.

The result also carries what TLS-RPT needs to report (policy type and domain).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from postroom import logs
from postroom.net.smtp_out import OutboundOptions
from postroom.policy.dane import TlsaRecord
from postroom.policy.dns import DnsError, DnsTemporary, NxDomain, Resolver
from postroom.policy.mtasts import MtaStsPolicies, StsPolicy
from postroom.policy.tls_reports import AppliedPolicy
from postroom.queue.model import TransportError
from postroom.queue.routing import NextHop, RouteError, Target

log = logging.getLogger("postroom.queue")


@dataclass(frozen=True, slots=True)
class Plan:
    """The addresses to try with the options for each; ``kind`` is ``dane``, ``sts`` or
    ``""`` (no policy), ``sts`` the MTA-STS policy in force (also in testing mode).
    ``domain``: the recipient domain whose TLS-RPT report the sessions count in ("" for
    relays and domains with their own ``tls_policy``: not reported); ``sts_failure``:
    (RFC 8460 result type, why) when the MTA-STS policy could not be fetched."""

    attempts: tuple[tuple[Target, OutboundOptions], ...]
    kind: str = ""
    sts: StsPolicy | None = None
    domain: str = ""
    sts_failure: tuple[str, str] | None = None

    def applied(self, target: Target, options: OutboundOptions) -> AppliedPolicy:
        """The policy one attempt is held to, as TLS-RPT reports it (RFC 8460 4.4)."""
        if options.tls_policy == "dane" and options.tlsa:
            return AppliedPolicy(self.domain, "tlsa", "\n".join(r.text() for r in options.tlsa), target.name)
        if self.sts is not None:
            return AppliedPolicy(self.domain, "sts", "\n".join(self.sts.lines()), "\n".join(self.sts.mx))
        return AppliedPolicy(self.domain)


class PolicyRouteError(RouteError):
    """No MX host may be used under the domain's policy; ``applied`` and ``result_type``
    say what TLS-RPT reports about it."""

    def __init__(self, error: TransportError, detail: str, applied: AppliedPolicy, result_type: str) -> None:
        super().__init__(error, detail)
        self.applied = applied
        self.result_type = result_type


class TransportSecurity:
    def __init__(
        self, resolver: Resolver, *, dane: bool, mta_sts: MtaStsPolicies | None,
        explicit: frozenset[str] = frozenset(),
    ) -> None:
        self.resolver = resolver
        self.dane = dane
        self.mta_sts = mta_sts
        self.explicit = explicit  # domains with their own [outbound] tls_policy entry

    def applies(self, hop: NextHop) -> bool:
        return not hop.is_relay and not hop.domain.startswith("[") and hop.domain not in self.explicit

    async def plan(self, hop: NextHop, targets: Sequence[Target], options: OutboundOptions) -> Plan:
        """Raises RouteError when no MX host may be used (all skipped or none matches an
        enforced policy): a temporary failure, the policy may be fixed."""
        plain = tuple((t, options) for t in targets)
        if not self.applies(hop):
            return Plan(plain)
        dane_hosts: dict[str, tuple[TlsaRecord, ...]] = {}
        skipped: set[str] = set()
        if self.dane:
            dane_hosts, skipped = await self._dane(hop, targets)
        attempts: list[tuple[Target, OutboundOptions]] = []
        rest: list[Target] = []
        for t in targets:
            if t.name in skipped:
                continue
            if t.name in dane_hosts:
                attempts.append((t, dataclasses.replace(options, tls_policy="dane", tlsa=dane_hosts[t.name])))
            else:
                rest.append(t)
        policy = await self.mta_sts.get(hop.domain) if self.mta_sts is not None and rest else None
        kind = "dane" if dane_hosts else ""
        if policy is not None and policy.mode == "enforce":
            kind = kind or "sts"
            for t in rest:
                if policy.allows(t.name):
                    attempts.append((t, dataclasses.replace(options, tls_policy="verify")))
                else:
                    logs.event(log, "mta_sts_mx_mismatch", logging.WARNING, domain=hop.domain, mx=t.name)
        else:
            if policy is not None and policy.mode == "testing":
                kind = kind or "sts"
            attempts.extend((t, options) for t in rest)
        # Keep the MX order: DANE hosts were collected first only for clarity.
        order = {id(t): i for i, t in enumerate(targets)}
        attempts.sort(key=lambda a: order[id(a[0])])
        failure = None
        if policy is None and self.mta_sts is not None:
            failure = self.mta_sts.last_failure.get(hop.domain.lower())
        plan = Plan(tuple(attempts), kind, policy, hop.domain.lower(), failure)
        if not attempts:
            if policy is not None and targets:  # RFC 8460 has no type of its own for an MX outside the policy
                why, result = "no MX host matches the MTA-STS policy", "validation-failure"
                applied = plan.applied(targets[0], options)
            else:  # RFC 8460 4.3.2.1: "no valid records were returned from the recursive resolver"
                why, result, applied = "TLSA lookups failed", "dnssec-invalid", AppliedPolicy(plan.domain, "tlsa")
            raise PolicyRouteError(TransportError.TLS_FAILED, f"{hop.domain}: {why}", applied, result)
        return plan

    async def _dane(self, hop: NextHop, targets: Sequence[Target]) -> tuple[dict[str, tuple[TlsaRecord, ...]], set[str]]:
        """(host -> its TLSA records, hosts to skip). RFC 7672 2.2.1: TLSA records are only
        looked up for MX hosts from a validated MX RRset."""
        try:
            mx = await self.resolver.mx_validated(hop.domain)
        except DnsError:
            return {}, set()
        if not mx.secure or not mx.records:
            return {}, set()
        found: dict[str, tuple[TlsaRecord, ...]] = {}
        skipped: set[str] = set()
        for name in dict.fromkeys(t.name for t in targets):
            port = next(t.port for t in targets if t.name == name)
            try:
                answer = await self.resolver.tlsa(f"_{port}._tcp.{name}")
            except NxDomain:
                continue
            except DnsTemporary as e:
                logs.event(log, "dane_tlsa_failed", logging.WARNING, host=name, error=str(e))
                skipped.add(name)
                continue
            if answer.secure and answer.records:
                found[name] = answer.records
        return found, skipped
