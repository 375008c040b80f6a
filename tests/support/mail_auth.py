"""Helpers shared by the mail-authentication end-to-end tests."""

from __future__ import annotations

import base64
from collections.abc import Callable

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization

from postroom.policy import dkim
from support.dns_server import DnsServer
from support.server import Server


class Remote:
    """A sending domain whose records live in the test DNS server, signing with dkimpy
    (selectors ``rsa`` and ``ed``)."""

    def __init__(self, dns: DnsServer, domain: str, *, dmarc: str | None, spf: str | None) -> None:
        self.domain = domain
        self.rsa = dkim.generate_key("rsa")
        self.ed = dkim.generate_key("ed25519")
        dns.set(f"rsa._domainkey.{domain}", "TXT", [dkim.public_record(self.rsa)])
        dns.set(f"ed._domainkey.{domain}", "TXT", [dkim.public_record(self.ed)])
        if dmarc is not None:
            dns.set(f"_dmarc.{domain}", "TXT", [dmarc])
        if spf is not None:
            dns.set(domain, "TXT", [spf])

    def sign(self, msg: bytes, algorithm: str = "rsa") -> bytes:
        if algorithm == "rsa":
            pem = dkim.private_pem(self.rsa)
            sig = dkimpy.sign(msg, b"rsa", self.domain.encode(), pem,
                              canonicalize=(b"relaxed", b"simple"))
        else:
            raw = self.ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
            sig = dkimpy.sign(msg, b"ed", self.domain.encode(), base64.b64encode(raw),
                              signature_algorithm=b"ed25519-sha256", canonicalize=(b"relaxed", b"relaxed"))
        return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg


def dns_txt_lookup(dns: DnsServer, extra: dict[str, str] | None = None) -> Callable[..., bytes]:
    """A dkimpy ``dnsfunc`` answering TXT questions from ``extra`` then the test DNS server."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        n = name.decode().rstrip(".").lower()
        if extra and n in extra:
            return extra[n].encode()
        found = dns.records.get((n, "TXT"), [""])
        return (found[0] if isinstance(found, list) and found else "").encode()

    return dnsfunc


def generate_keys(srv: Server, domain: str, dns: DnsServer | None = None) -> dict[str, str]:
    """``postroom dkim generate`` an Ed25519 (selector ``ed1``) and an RSA key (``rsa1``)
    for ``domain``; returns {key name: TXT record} from ``dkim list``, published in ``dns``
    when given."""
    import json

    for alg, selector in (("ed25519", "ed1"), ("rsa", "rsa1")):
        r = srv.cli("dkim", "generate", domain, "--algorithm", alg, "--selector", selector)
        assert r.returncode == 0, r.stderr
    listed = srv.cli("dkim", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {f"{k['selector']}._domainkey.{k['domain']}": k["dns_txt"]
            for k in json.loads(listed.stdout) if k["domain"] == domain}
    if dns is not None:
        for name, txt in keys.items():
            dns.set(name, "TXT", [txt])
    return keys
