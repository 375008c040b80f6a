"""DMARC record parsing, alignment, policy; Authentication-Results building and forgeries;
the resolver cache."""

from __future__ import annotations

import asyncio

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
