"""policy/dns.py: MX ordering, null MX, implicit MX, A/AAAA, and the dnspython resolver
against a real (local) DNS server: NXDOMAIN vs SERVFAIL vs NODATA."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from postroom.policy.dns import (
    NXDOMAIN,
    SERVFAIL,
    DictResolver,
    DnsPythonResolver,
    DnsTemporary,
    MxRecord,
    NxDomain,
    lookup_addresses,
    lookup_mx,
)
from support.dns_server import DnsServer


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_mx_sorted_by_preference() -> None:
    r = DictResolver({("a.test", "MX"): [(20, "mx2.a.test"), (10, "MX1.a.test."), (30, "mx3.a.test")]})
    answer = run(lookup_mx(r, "a.test"))
    assert [h.host for h in answer.hosts] == ["mx1.a.test", "mx2.a.test", "mx3.a.test"]
    assert not answer.implicit and not answer.null


def test_equal_preferences_are_shuffled() -> None:
    r = DictResolver({("a.test", "MX"): [(10, "x.a.test"), (10, "y.a.test"), (10, "z.a.test"), (5, "best.a.test")]})
    seen = set()
    rng = random.Random(1)
    for _ in range(60):
        hosts = [h.host for h in run(lookup_mx(r, "a.test", rng)).hosts]
        assert hosts[0] == "best.a.test"  # the lowest preference always first
        seen.add(tuple(hosts[1:]))
    assert len(seen) == 6  # every order of the three equals occurs (RFC 5321 5.1)


def test_duplicate_mx_host_tried_once() -> None:
    r = DictResolver({("a.test", "MX"): [(10, "mx.a.test"), (20, "mx.a.test")]})
    assert run(lookup_mx(r, "a.test")).hosts == (MxRecord(10, "mx.a.test"),)


def test_no_mx_means_implicit_mx() -> None:
    r = DictResolver({("a.test", "A"): ["127.0.0.9"]})
    answer = run(lookup_mx(r, "a.test"))
    assert answer.implicit and answer.hosts == (MxRecord(0, "a.test"),)


def test_null_mx() -> None:
    r = DictResolver({("a.test", "MX"): [(0, ".")]})
    answer = run(lookup_mx(r, "a.test"))
    assert answer.null and answer.hosts == ()
    mixed = DictResolver({("b.test", "MX"): [(0, "."), (10, "mx.b.test")]})
    assert [h.host for h in run(lookup_mx(mixed, "b.test")).hosts] == ["mx.b.test"]


def test_mx_errors_propagate() -> None:
    r = DictResolver({("gone.test", "MX"): NXDOMAIN, ("broken.test", "MX"): SERVFAIL})
    with pytest.raises(NxDomain):
        run(lookup_mx(r, "gone.test"))
    with pytest.raises(DnsTemporary):
        run(lookup_mx(r, "broken.test"))
    with pytest.raises(NxDomain):
        run(lookup_mx(r, "never-heard-of.test"))


def test_addresses_ipv4_first_and_literals() -> None:
    r = DictResolver({("h.test", "A"): ["127.0.0.5"], ("h.test", "AAAA"): ["::1"]})
    assert run(lookup_addresses(r, "h.test")) == ["127.0.0.5", "::1"]
    assert run(lookup_addresses(r, "127.0.0.7")) == ["127.0.0.7"]
    assert r.queries == [("h.test", "A"), ("h.test", "AAAA")]  # literals are not looked up


def test_addresses_partial_failures() -> None:
    r = DictResolver({("v6.test", "AAAA"): ["::1"], ("half.test", "A"): ["127.0.0.5"], ("half.test", "AAAA"): SERVFAIL,
                      ("bad.test", "A"): SERVFAIL, ("bad.test", "AAAA"): SERVFAIL, ("none.test", "TXT"): ["x"]})
    assert run(lookup_addresses(r, "v6.test")) == ["::1"]
    assert run(lookup_addresses(r, "half.test")) == ["127.0.0.5"]  # one answer is enough
    with pytest.raises(DnsTemporary):
        run(lookup_addresses(r, "bad.test"))
    with pytest.raises(NxDomain):
        run(lookup_addresses(r, "missing.test"))
    assert run(lookup_addresses(r, "none.test")) == []  # NODATA for both


# --- the dnspython implementation against a local server -------------------------------------


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    server = DnsServer({
        ("example.test", "MX"): [(10, "mx1.example.test"), (20, "mx2.example.test")],
        ("mx1.example.test", "A"): ["127.0.0.2"],
        ("mx1.example.test", "AAAA"): ["::1"],
        ("null.test", "MX"): [(0, ".")],
        ("nomx.test", "A"): ["127.0.0.3"],
        ("fail.test", "MX"): SERVFAIL,
        ("txt.test", "TXT"): ["v=spf1 -all"],
    }).start()
    yield server
    server.stop()


def test_dnspython_answers(dns: DnsServer) -> None:
    r = DnsPythonResolver(("127.0.0.1", dns.port), timeout=5)

    async def main() -> None:
        assert await r.mx("example.test") == [MxRecord(10, "mx1.example.test"), MxRecord(20, "mx2.example.test")]
        assert await r.a("mx1.example.test") == ["127.0.0.2"]
        assert await r.aaaa("mx1.example.test") == ["::1"]
        assert await r.txt("txt.test") == [b"v=spf1 -all"]
        assert await r.mx("nomx.test") == []  # NODATA
        null = await lookup_mx(r, "null.test")
        assert null.null
        implicit = await lookup_mx(r, "nomx.test")
        assert implicit.implicit and await lookup_addresses(r, "nomx.test") == ["127.0.0.3"]
        with pytest.raises(NxDomain):
            await r.mx("nonexistent.test")
        with pytest.raises(DnsTemporary) as info:
            await r.mx("fail.test")
        assert not info.value.timeout

    run(main())


def test_dnspython_timeout_is_temporary() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        r = DnsPythonResolver(("127.0.0.1", silent.getsockname()[1]), timeout=0.5)
        with pytest.raises(DnsTemporary) as info:
            run(r.mx("example.test"))
        assert info.value.timeout
