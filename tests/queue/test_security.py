"""Which options each MX host gets (queue.security), over a dict resolver."""

from __future__ import annotations

import asyncio

import pytest

from postroom.net.smtp_out import OutboundOptions
from postroom.policy.dns import SERVFAIL, DictResolver
from postroom.policy.mtasts import MtaStsPolicies, StsPolicy
from postroom.queue.routing import NextHop, RouteError, Target
from postroom.policy.tls_reports import AppliedPolicy
from postroom.queue.security import TransportSecurity

OPTS = OutboundOptions(helo_name="mail.example.test")
TARGETS = [Target("mx1.example.org", "192.0.2.1", 25, 10), Target("mx2.example.org", "192.0.2.2", 25, 20)]
HOP = NextHop("mx:example.org", "example.org", 25, "may")


class _Fixed(MtaStsPolicies):
    def __init__(self, policy: StsPolicy | None, failure: tuple[str, str] | None = None) -> None:
        self.policy = policy
        self.last_failure = {"example.org": failure} if failure else {}

    async def get(self, domain: str) -> StsPolicy | None:
        return self.policy


def _plan(security: TransportSecurity, hop: NextHop = HOP) -> list[tuple[str, str]]:
    plan = asyncio.run(security.plan(hop, TARGETS, OPTS))
    return [(t.name, o.tls_policy) for t, o in plan.attempts]


def test_dane_per_host_then_mta_sts_for_the_rest() -> None:
    dns = DictResolver({
        ("example.org", "MX"): [(10, "mx1.example.org"), (20, "mx2.example.org")],
        ("_25._tcp.mx1.example.org", "TLSA"): [(3, 1, 1, "ab" * 32)],
    }, secure=frozenset({"example.org", "_25._tcp.mx1.example.org"}))
    enforce = StsPolicy("enforce", ("*.example.org",), 86400, "1")
    security = TransportSecurity(dns, dane=True, mta_sts=_Fixed(enforce))
    assert _plan(security) == [("mx1.example.org", "dane"), ("mx2.example.org", "verify")]
    # Unvalidated MX RRset: no TLSA lookups at all (RFC 7672 2.2.1).
    dns.secure = {"_25._tcp.mx1.example.org"}
    dns.queries.clear()
    assert _plan(security) == [("mx1.example.org", "verify"), ("mx2.example.org", "verify")]
    assert dns.queries == [("example.org", "MX")]


def test_enforce_without_matching_mx_and_failed_tlsa() -> None:
    dns = DictResolver({("example.org", "MX"): [(10, "mx1.example.org")],
                        ("_25._tcp.mx1.example.org", "TLSA"): SERVFAIL,
                        ("_25._tcp.mx2.example.org", "TLSA"): SERVFAIL}, secure=frozenset({"example.org"}))
    security = TransportSecurity(dns, dane=True, mta_sts=None)
    with pytest.raises(RouteError, match="TLSA lookups failed"):
        _plan(security)
    other = TransportSecurity(dns, dane=False, mta_sts=_Fixed(StsPolicy("enforce", ("mx.elsewhere.test",), 1, "1")))
    with pytest.raises(RouteError, match="MTA-STS"):
        _plan(other)
    testing = TransportSecurity(dns, dane=False, mta_sts=_Fixed(StsPolicy("testing", ("mx.elsewhere.test",), 1, "1")))
    plan = asyncio.run(testing.plan(HOP, TARGETS, OPTS))
    assert plan.kind == "sts" and [o.tls_policy for _, o in plan.attempts] == ["may", "may"]


def test_explicit_policy_and_relays_are_left_alone() -> None:
    dns = DictResolver({})
    enforce = _Fixed(StsPolicy("enforce", ("nothing.test",), 1, "1"))
    security = TransportSecurity(dns, dane=True, mta_sts=enforce, explicit=frozenset({"example.org"}))
    assert _plan(security) == [("mx1.example.org", "may"), ("mx2.example.org", "may")]
    relay = NextHop("relay:smart:25:may", "example.net", 25, "may", "smart.example.net")
    assert _plan(TransportSecurity(dns, dane=True, mta_sts=enforce), relay)[0][1] == "may"
    assert dns.queries == []


def test_what_tls_rpt_reports_per_attempt() -> None:
    """Plan.applied: the policy each attempt is held to (RFC 8460 4.4); a policy that
    failed to load, and the route errors, carry their RFC 8460 result types."""
    from postroom.queue.security import PolicyRouteError

    dns = DictResolver({
        ("example.org", "MX"): [(10, "mx1.example.org"), (20, "mx2.example.org")],
        ("_25._tcp.mx1.example.org", "TLSA"): [(3, 1, 1, "ab" * 32)],
    }, secure=frozenset({"example.org", "_25._tcp.mx1.example.org"}))
    enforce = StsPolicy("enforce", ("*.example.org",), 86400, "1")
    plan = asyncio.run(TransportSecurity(dns, dane=True, mta_sts=_Fixed(enforce)).plan(HOP, TARGETS, OPTS))
    (t1, o1), (t2, o2) = plan.attempts
    assert plan.applied(t1, o1) == AppliedPolicy("example.org", "tlsa", "3 1 1 " + "ab" * 32, "mx1.example.org")
    assert plan.applied(t2, o2) == AppliedPolicy(
        "example.org", "sts", "version: STSv1\nmode: enforce\nmx: *.example.org\nmax_age: 86400", "*.example.org")
    failed = TransportSecurity(dns, dane=False, mta_sts=_Fixed(None, ("sts-webpki-invalid", "bad cert")))
    plan = asyncio.run(failed.plan(HOP, TARGETS, OPTS))
    assert plan.sts_failure == ("sts-webpki-invalid", "bad cert")
    assert plan.applied(*plan.attempts[0]) == AppliedPolicy("example.org")  # no-policy-found
    # Relays and explicit policies are not reported (no domain).
    relay = NextHop("relay:smarthost", "smarthost.test", 25, "may", relay_host="smarthost.test")
    assert asyncio.run(failed.plan(relay, TARGETS, OPTS)).domain == ""
    mismatch = TransportSecurity(dns, dane=False, mta_sts=_Fixed(StsPolicy("enforce", ("mx.elsewhere.test",), 1, "1")))
    with pytest.raises(PolicyRouteError) as e:
        asyncio.run(mismatch.plan(HOP, TARGETS, OPTS))
    assert (e.value.result_type, e.value.applied.type, e.value.applied.mx_host) == (
        "validation-failure", "sts", "mx.elsewhere.test")
    dns.records[("_25._tcp.mx1.example.org", "TLSA")] = SERVFAIL
    dns.records[("_25._tcp.mx2.example.org", "TLSA")] = SERVFAIL
    with pytest.raises(PolicyRouteError) as e:
        asyncio.run(TransportSecurity(dns, dane=True, mta_sts=None).plan(HOP, TARGETS, OPTS))
    assert (e.value.result_type, e.value.applied.type) == ("dnssec-invalid", "tlsa")
