"""DMARC record parsing, alignment, policy; Authentication-Results building and forgeries;
the resolver cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from postroom.policy import authres, dmarc
from postroom.policy.dmarc import DkimOutcome


def test_record_parsing() -> None:
    r = dmarc.parse_record("v=DMARC1; p=reject; sp=none; adkim=s; pct=50; rua=mailto:a@x.org!10m,https://x")
    assert (r.policy, r.subdomain_policy, r.adkim, r.aspf, r.pct, r.rua) == (
        "reject", "none", "s", "r", 50, ("mailto:a@x.org",))
    assert dmarc.parse_record("v=DMARC1; p=bogus; rua=mailto:a@x.org").policy == "none"
    with pytest.raises(dmarc.DmarcRecordError):
        dmarc.parse_record("v=DMARC1; p=bogus")
    with pytest.raises(dmarc.DmarcRecordError):
        dmarc.parse_record("p=reject; v=DMARC1")
    assert dmarc.select_record(["v=DMARC1; p=none", "v=DMARC1; p=reject"]) is None
    assert dmarc.select_record(["other", "v=DMARC1; p=none"]) is not None


def test_org_domain_and_alignment() -> None:
    assert dmarc.org_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.org_domain("mail.example.com") == "example.com"
    assert dmarc.aligned("mail.example.com", "example.com", "r")
    assert not dmarc.aligned("mail.example.com", "example.com", "s")
    assert not dmarc.aligned("example.co.uk", "other.co.uk", "r")


def test_evaluate() -> None:
    rec = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; pct=100")
    ok = dmarc.evaluate("example.com", rec, "example.com", spf_result="fail", spf_domain="x.org",
                        dkim=[DkimOutcome("mail.example.com", "s", "pass")])
    assert ok.result == "pass" and ok.dkim_aligned
    partial = dmarc.evaluate("example.com", rec, "example.com", spf_result="none", spf_domain="",
                             dkim=[DkimOutcome("example.com", "s", "pass", partial=True)])
    assert partial.result == "fail" and partial.applied == "reject"
    sub = dmarc.evaluate("a.example.com", rec, "example.com", spf_result="fail", spf_domain="a.example.com",
                         dkim=[])
    assert sub.applied == "quarantine"
    spf_ok = dmarc.evaluate("example.com", rec, "example.com", spf_result="pass",
                            spf_domain="bounce.example.com", dkim=[])
    assert spf_ok.result == "pass" and spf_ok.spf_aligned
    half = dmarc.parse_record("v=DMARC1; p=reject; pct=10")
    missed = dmarc.evaluate("example.com", half, "example.com", spf_result="fail", spf_domain="", dkim=[],
                            sample=50)
    assert missed.applied == "quarantine"  # RFC 7489 6.6.4: reject downgraded outside pct


def test_np_for_nonexistent_subdomains() -> None:
    """RFC 9091: np= applies to a failing From domain that is a non-existent subdomain."""
    rec = dmarc.parse_record("v=DMARC1; p=reject; sp=none; np=quarantine; fo=1")
    assert (rec.np, rec.fo) == ("quarantine", "1")
    assert dmarc.parse_record("v=DMARC1; p=none; np=bogus").np is None
    assert dmarc.parse_record("v=DMARC1; p=none").np is None
    kw: dict[str, Any] = {"spf_result": "fail", "spf_domain": "x.org", "dkim": []}
    existing = dmarc.evaluate("a.example.com", rec, "example.com", **kw)
    assert existing.applied == "none" and dmarc.wants_existence(existing)
    missing = dmarc.evaluate("a.example.com", rec, "example.com", nonexistent=True, **kw)
    assert missing.applied == "quarantine"
    top = dmarc.evaluate("example.com", rec, "example.com", nonexistent=True, **kw)
    assert top.applied == "reject" and not dmarc.wants_existence(top)
    same = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; np=quarantine")
    assert not dmarc.wants_existence(dmarc.evaluate("a.example.com", same, "example.com", **kw))


def test_np_through_the_checker() -> None:
    """The checker asks A, AAAA and MX only for a failing subdomain whose np= matters."""
    from postroom.config import AuthChecksSettings
    from postroom.policy.dns import SERVFAIL, DictResolver
    from postroom.policy.inbound import AuthChecker

    resolver = DictResolver({
        ("_dmarc.np.test", "TXT"): ["v=DMARC1; p=none; sp=none; np=reject"],
        ("np.test", "TXT"): ["v=spf1 -all"],
        ("real.np.test", "MX"): [(10, "mx.np.test")],
        ("flaky.np.test", "A"): SERVFAIL,
    })
    checker = AuthChecker(resolver, AuthChecksSettings(), "mx.here.test")

    def action(domain: str) -> str:
        msg = f"From: <a@{domain}>\r\nSubject: x\r\n\r\nbody\r\n".encode()
        verdict = asyncio.run(checker.check(msg, ip="192.0.2.1", helo="h.test", mail_from=f"a@{domain}"))
        return verdict.action

    assert action("ghost.np.test") == "reject"  # NXDOMAIN for A, AAAA, MX
    assert action("real.np.test") == "accept"  # has an MX: sp=none
    assert action("flaky.np.test") == "accept"  # DNS failure: treated as existing
    resolver.queries.clear()
    assert action("np.test") == "accept"  # the organizational domain itself: p=none
    assert not [q for q in resolver.queries if q[1] in ("A", "AAAA", "MX")]


def test_authentication_results_and_forgeries() -> None:
    field = authres.header("mx.example.org", [
        authres.ResInfo("spf", "pass", (("smtp.mailfrom", "a@x.org"),)),
        authres.ResInfo("dkim", "fail", (("header.d", "x.org"),), 'bad "sig" (really)'),
    ])
    assert field.startswith(b"Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=a@x.org;")
    assert b"(bad \"sig\"  really)" in field
    msg = (b"Authentication-Results: MX.example.org.; dkim=pass\r\n"
           b"Authentication-Results: (comment) mx.example.org; spf=pass\r\n"
           b"Authentication-Results: other.org; spf=pass\r\nSubject: x\r\n\r\n"
           b"Authentication-Results: mx.example.org; in the body\r\n")
    cleaned, n = authres.drop_forged(msg, "mx.example.org")
    assert n == 2 and cleaned.count(b"Authentication-Results") == 2
    assert cleaned.startswith(b"Authentication-Results: other.org")


def test_resolver_cache_honours_ttl_and_negative_soa() -> None:
    from postroom.policy.dns import DnsPythonResolver, NxDomain
    from support.dns_server import DnsServer

    now = [1000.0]
    dns = DnsServer({("a.test", "TXT"): ["one"]}, ttl=60, negative_ttl=30).start()
    try:
        host, port = dns.address.split(":")
        r = DnsPythonResolver((host, int(port)), timeout=3, cache_entries=2, clock=lambda: now[0])

        async def run() -> None:
            assert await r.txt("a.test") == [b"one"]
            dns.set("a.test", "TXT", ["two"])
            assert await r.txt("a.test") == [b"one"]  # cached
            now[0] += 61
            assert await r.txt("a.test") == [b"two"]  # expired
            with pytest.raises(NxDomain):
                await r.txt("missing.test")
            dns.set("missing.test", "TXT", ["now here"])
            with pytest.raises(NxDomain):
                await r.txt("missing.test")  # negative answer cached for the SOA minimum
            now[0] += 31
            assert await r.txt("missing.test") == [b"now here"]
            await r.txt("b.test") if ("b.test", "TXT") in dns.records else None
            assert len(r._cache) <= 2

        asyncio.run(run())
    finally:
        dns.stop()
