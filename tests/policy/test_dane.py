"""TLSA matching (RFC 7672, RFC 6698) over real certificate chains made with trustme."""

from __future__ import annotations

import trustme
from cryptography import x509

from postroom.policy.dane import TlsaRecord, record_for, verify


def _chain() -> tuple[list[bytes], x509.Certificate, x509.Certificate, x509.Certificate]:
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert("mx.example.org")
    pems = [b.bytes() for b in leaf.cert_chain_pems]  # leaf, intermediate
    certs = [x509.load_pem_x509_certificate(p) for p in pems]
    root_cert = x509.load_pem_x509_certificate(root.cert_pem.bytes())
    ders = [c.public_bytes(__import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER) for c in certs]
    return ders, certs[0], certs[1], root_cert


def test_dane_ee_selectors_and_matching_types() -> None:
    ders, leaf, _, _ = _chain()
    for selector in (0, 1):
        for mtype in (0, 1, 2):
            assert verify([record_for(leaf, 3, selector, mtype)], ders, "any.name.at.all") is None
    wrong = TlsaRecord(3, 1, 1, b"\0" * 32)
    assert "no TLSA record matches" in (verify([wrong], ders, "mx.example.org") or "")
    assert verify([wrong, record_for(leaf, 3, 1, 1)], ders, "x") is None  # any record suffices


def test_dane_ta_checks_chain_and_name() -> None:
    ders, _, inter, _ = _chain()
    ta = record_for(inter, 2, 0, 1)
    assert verify([ta], ders, "mx.example.org") is None
    assert verify([ta], ders, "other.example.org") is not None  # RFC 7672 3.2.2: name checked
    assert verify([ta], ders[:1], "mx.example.org") is not None  # anchor not sent


def test_unusable_records_mean_unauthenticated_tls() -> None:
    ders, leaf, _, _ = _chain()
    pkix = record_for(leaf, 1, 0, 1)  # PKIX-EE: unusable for SMTP (RFC 7672 3.1.3)
    assert not pkix.usable and verify([pkix], ders, "mx.example.org") is None
    assert verify([TlsaRecord(3, 1, 1, b"\0" * 32)], [], "mx") == "the server sent no certificate"
