"""queue/routing.py: transport map, smarthost, MX targets, loop detection (RFC 5321 5.1)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from postroom.config import from_mapping
from postroom.policy.dns import NXDOMAIN, SERVFAIL, DictResolver
from postroom.queue.model import TransportError
from postroom.queue.routing import RouteError, Router, local_address_checker


def settings(**outbound: Any) -> Any:
    doc: dict[str, Any] = {
        "hostname": "mail.self.test",
        "listener": [{"address": "127.0.0.1:25", "role": "mx"}],
    }
    if outbound:
        doc["outbound"] = outbound
    return from_mapping(doc, Path("/tmp/postroom.toml"))


RECORDS = {
    ("remote.test", "MX"): [(10, "mx1.remote.test"), (20, "mx2.remote.test")],
    ("mx1.remote.test", "A"): ["127.0.0.2"],
    ("mx2.remote.test", "A"): ["127.0.0.3"],
    ("mx2.remote.test", "AAAA"): ["::1"],
    ("nomx.test", "A"): ["127.0.0.4"],
    ("null.test", "MX"): [(0, ".")],
    ("gone.test", "MX"): NXDOMAIN,
    ("flaky.test", "MX"): SERVFAIL,
    ("dangling.test", "MX"): [(10, "nowhere.dangling.test"), (20, "mx1.remote.test")],
    ("allbad.test", "MX"): [(10, "nowhere.allbad.test")],
    # loops: an MX that is us, by address or by name
    ("secondary.test", "MX"): [(10, "mx1.remote.test"), (20, "self.secondary.test")],
    ("self.secondary.test", "A"): ["127.0.0.1"],
    ("primary.test", "MX"): [(10, "self.secondary.test"), (20, "mx1.remote.test")],
    ("byname.test", "MX"): [(5, "mail.self.test")],
    ("mail.self.test", "A"): ["127.0.0.99"],
    ("relay.host.test", "A"): ["127.0.0.7"],
    ("servfail-mx.test", "MX"): [(10, "sf.servfail-mx.test"), (20, "self.secondary.test")],
    ("sf.servfail-mx.test", "A"): SERVFAIL,
    ("sf.servfail-mx.test", "AAAA"): SERVFAIL,
}


def resolve(router: Router, domain: str) -> list[tuple[str, str, int]]:
    targets = asyncio.run(router.resolve(router.next_hop(domain)))
    return [(t.name, t.address, t.port) for t in targets]


def route_error(router: Router, domain: str) -> RouteError:
    with pytest.raises(RouteError) as info:
        asyncio.run(router.resolve(router.next_hop(domain)))
    return info.value


def test_mx_targets_in_order_with_port() -> None:
    router = Router(settings(port=2525), DictResolver(RECORDS))
    assert resolve(router, "Remote.Test") == [
        ("mx1.remote.test", "127.0.0.2", 2525),
        ("mx2.remote.test", "127.0.0.3", 2525),
        ("mx2.remote.test", "::1", 2525),
    ]
    hop = router.next_hop("remote.test")
    assert hop.key == "mx:remote.test" and not hop.is_relay and hop.tls_policy == "may"


def test_implicit_mx_and_failures() -> None:
    router = Router(settings(), DictResolver(RECORDS))
    assert resolve(router, "nomx.test") == [("nomx.test", "127.0.0.4", 25)]
    assert route_error(router, "null.test").error is TransportError.NULL_MX
    assert route_error(router, "gone.test").error is TransportError.DNS_NXDOMAIN
    assert route_error(router, "flaky.test").error is TransportError.DNS_SERVFAIL
    assert route_error(router, "allbad.test").error is TransportError.NO_ADDRESS
    # a dangling MX host is skipped, the next one is used
    assert resolve(router, "dangling.test") == [("mx1.remote.test", "127.0.0.2", 25)]


def test_loop_detection() -> None:
    router = Router(settings(), DictResolver(RECORDS))
    # we are a backup MX: only the better one is used
    assert resolve(router, "secondary.test") == [("mx1.remote.test", "127.0.0.2", 25)]
    # we are the best MX for a domain we do not host: loop
    err = route_error(router, "primary.test")
    assert err.error is TransportError.LOCAL_LOOP and "loops back" in err.detail
    assert route_error(router, "byname.test").error is TransportError.LOCAL_LOOP
    # a better MX that cannot be resolved right now: try later rather than bounce
    assert route_error(router, "servfail-mx.test").error is TransportError.DNS_SERVFAIL


def test_transport_overrides_loop_detection_and_smarthost() -> None:
    s = settings(
        transport={"primary.test": "127.0.0.1:2626", "named.test": "relay.host.test:26"},
        smarthost="127.0.0.8:587", smarthost_username="u", smarthost_password="p",
        smarthost_tls="require", tls_policy={"named.test": "verify"},
    )
    router = Router(s, DictResolver(RECORDS))
    assert resolve(router, "primary.test") == [("127.0.0.1", "127.0.0.1", 2626)]
    hop = router.next_hop("named.test")
    assert hop.is_relay and hop.tls_policy == "verify" and not hop.username
    assert resolve(router, "named.test") == [("relay.host.test", "127.0.0.7", 26)]
    smart = router.next_hop("anything.test")
    assert smart.relay_host == "127.0.0.8" and smart.port == 587
    assert (smart.username, smart.password, smart.tls_policy) == ("u", "p", "require")
    assert router.next_hop("other.test").key == smart.key  # one destination for all


def test_local_address_checker() -> None:
    explicit = local_address_checker(["127.0.0.1", "::1", "mail.example"])
    assert explicit("127.0.0.1") and explicit("::1") and explicit("::ffff:127.0.0.1")
    assert not explicit("127.0.0.2") and not explicit("not-an-ip")
    wildcard = local_address_checker(["*"])
    assert wildcard("127.0.0.1") and wildcard("127.0.0.42")  # all of 127/8 is this machine
    assert not wildcard("192.0.2.1")  # TEST-NET-1: never assigned to a local interface


def test_address_literals() -> None:
    router = Router(settings(port=2525), DictResolver({}))
    assert resolve(router, "[127.0.0.9]") == [("127.0.0.9", "127.0.0.9", 2525)]
    assert resolve(router, "[IPv6:::2]") == [("::2", "::2", 2525)]
    assert route_error(router, "[127.0.0.1]").error is TransportError.LOCAL_LOOP  # our listener
    assert route_error(router, "[not-an-ip]").error is TransportError.DNS_NXDOMAIN
