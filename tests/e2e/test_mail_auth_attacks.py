"""Hostile DNS data and headers on the MX path (issue 9's attack audit): a real
``postroom serve`` with a local DNS server (dnslib) that counts the queries it gets.

* SPF DNS amplification: a record whose macros make the receiver query many names for one
  message (the ``%{p}`` macro validates the client's PTR names each time it is expanded).
* Forged Authentication-Results claiming our host name, in any case or spacing, are
  removed, and the verdict is ours.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from postroom.policy import dkim
from support.dns_server import DnsServer
from support.server import Server

DOMAIN = "example.test"
HOST = f"mail.{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PTR_NAME = "1.0.0.127.in-addr.arpa"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dns = DnsServer().start()
    root = tmp_path_factory.mktemp("auth-attacks")
    extra = f'[outbound]\nresolver = "{dns.address}"\n[auth_checks]\ntimeout = "20s"\n'
    srv = Server(root, roles=("mx",), extra=extra, hostname=HOST)
    srv.add_user(BOB)
    srv.start()
    try:
        yield {"srv": srv, "dns": dns}
    finally:
        srv.stop()
        dns.stop()


def _msg(sender: str, subject: str, extra: str = "") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@x>\r\n{extra}\r\nHello.\r\n").encode()


def _mx(srv: Server, sender: str, msg: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="client.test", timeout=60) as s:
        s.sendmail(sender, [BOB], msg)


def _ar(srv: Server) -> list[str]:
    """The Authentication-Results fields of Bob's last message, unfolded."""
    fields, _ = dkim.split_message(srv.messages(BOB)[-1])
    return [raw.decode().replace("\r\n\t", " ").replace("\r\n", "")
            for name, raw in fields if name == b"authentication-results"]


def test_spf_ptr_macro_cannot_multiply_dns_queries(env: dict[str, Any]) -> None:
    """``v=spf1 exists:%{p}.%{p}...`` in five terms: each ``%{p}`` is a PTR query and up to
    ten forward lookups (RFC 7208 5.5, 7.3). Done once per check, the message costs a few
    dozen queries; done per macro, 50 macros cost 550, all for one 250."""
    srv, dns = env["srv"], env["dns"]
    names = [f"h{i}.ptr.test" for i in range(10)]
    dns.set(PTR_NAME, "PTR", names)
    for name in names:
        dns.set(name, "A", ["10.9.9.9"])  # none validates: every expansion tries all ten
    macros = ".".join(["%{p}"] * 10)
    dns.set("amp.test", "TXT", ["v=spf1 " + " ".join(f"exists:{macros}.x{i}.amp.test" for i in range(5)) + " -all"])
    dns.queries.clear()
    _mx(srv, "x@amp.test", _msg("x@amp.test", "spf amplification"))
    asked = list(dns.queries)
    ptr = [q for q in asked if q[0] == PTR_NAME]
    assert len(ptr) <= 2, f"{len(ptr)} PTR queries, {len(asked)} in all"
    assert len(asked) < 60, asked[:40]
    # no name validates, so %{p} is "unknown" and the names do not exist: the third void
    # lookup ends the check (RFC 7208 4.6.4), after 3 x 10 expansions without the cache
    (ar,) = _ar(srv)
    assert "spf=permerror (more than 2 void lookups)" in ar, ar


FORGED = [
    "Authentication-Results: MAIL.Example.Test; spf=pass smtp.mailfrom=forged.test",
    "Authentication-Results: mail.example.test.; dkim=pass header.d=forged.test",
    "Authentication-Results:\r\n\tmail.example.test;\r\n\tdmarc=pass header.from=forged.test",
    "authentication-results : (our own) mail.example.test; spf=pass",
    # a nested comment and a quoted authserv-id (RFC 8601 2.2: value = token / quoted-string)
    "Authentication-Results: (checked (twice)) mail.example.test; dkim=pass header.d=nested.test",
    'Authentication-Results: "mail.example.test"; dkim=pass header.d=quoted.test',
    'Authentication-Results: (x) "mail.example.test" 1; dmarc=pass header.from=quoted.test',
]


def test_forged_authentication_results_are_removed(env: dict[str, Any]) -> None:
    """RFC 8601 5: every field that claims our authserv-id, however it is written (case, a
    trailing dot, folding, comments nested or not, a quoted-string), is removed before
    ours is added; a field of another host stays."""
    srv, dns = env["srv"], env["dns"]
    dns.set("forged.test", "TXT", ["v=spf1 -all"])
    extra = "".join(f + "\r\n" for f in FORGED) + "Authentication-Results: other.test; spf=pass\r\n"
    _mx(srv, "x@forged.test", _msg("x@forged.test", "forged results", extra))
    ars = _ar(srv)
    assert len(ars) == 2, ars
    assert ars[0].startswith(f"Authentication-Results: {HOST}; spf=fail"), ars
    assert ars[1] == "Authentication-Results: other.test; spf=pass", ars


def _arc_sets(count: int, body: bytes) -> str:
    """``count`` well-formed ARC sets (cv=none then pass) whose seals name ``count``
    different domains: nothing verifies, so every key asked for is a wasted query."""
    bh = base64.b64encode(dkim.body_hash(body, "relaxed")[0]).decode()
    out = []
    for i in range(count, 0, -1):
        cv = "none" if i == 1 else "pass"
        out.append(f"ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d=victim{i}.test; s=s; b=AAAA")
        out.append(f"ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d=victim{i}.test;"
                   f" s=s; h=from:to:subject; bh={bh}; b=AAAA")
        out.append(f"ARC-Authentication-Results: i={i}; hop{i}.test; spf=pass")
    return "".join(line + "\r\n" for line in out)


def test_arc_chain_of_50_sets_costs_few_key_lookups(env: dict[str, Any]) -> None:
    """50 sets (the most RFC 8617 allows) naming 50 domains: the chain fails at the first
    signature that does not verify, so the keys of the others are never asked for
    (otherwise each message makes us send 51 queries to the named domains' servers)."""
    srv, dns = env["srv"], env["dns"]
    dns.set("arc.test", "TXT", ["v=spf1 -all"])
    dns.queries.clear()
    _mx(srv, "x@arc.test", _msg("x@arc.test", "arc chain", _arc_sets(50, b"Hello.\r\n")))
    keys = [q for q in dns.queries if "._domainkey." in q[0]]
    assert len(keys) <= 2, keys
    (ar,) = _ar(srv)
    assert "arc=fail" in ar, ar
