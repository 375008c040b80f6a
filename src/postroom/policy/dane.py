"""DANE for SMTP (RFC 7672): match a server's certificate chain against its TLSA records.

Pure functions over bytes; the lookups are in :mod:`postroom.queue.security` and the TLS
handshake in :mod:`postroom.net.smtp_out`.

What SMTP uses (RFC 7672 3.1): only DANE-TA(2) and DANE-EE(3). PKIX-TA(0)/PKIX-EE(1) are
"unusable" for SMTP, as are unknown selectors and matching types; when every record is
unusable, TLS is still mandatory but unauthenticated (RFC 7672 2.2).

* DANE-EE(3): the leaf certificate (selector 0: the whole DER certificate, 1: its
  SubjectPublicKeyInfo) must match. Names and dates are not checked (RFC 7672 3.1.1).
* DANE-TA(2): some certificate in the chain the server sent must match; it is the trust
  anchor: the leaf must chain to it, be valid now, and name the MX host (RFC 7672 3.1.2,
  3.2.2; the reference identifiers are the MX host name and, for a secure CNAME, its
  target; we check the MX host name).

Matching types (RFC 6698 2.1.3): 0 exact, 1 SHA-256, 2 SHA-512.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

DANE_TA = 2
DANE_EE = 3


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(record: TlsaRecord, cert: x509.Certificate) -> bool:
    return _digest(_selected(cert, record.selector), record.mtype) == record.data


def record_for(cert: x509.Certificate, usage: int, selector: int, mtype: int) -> TlsaRecord:
    """The TLSA record that matches ``cert`` (``postroom dns`` and tests)."""
    return TlsaRecord(usage, selector, mtype, _digest(_selected(cert, selector), mtype))


def verify(
    records: Sequence[TlsaRecord], chain_der: Sequence[bytes], host: str,
    now: datetime.datetime | None = None,
) -> str | None:
    """None when the chain (leaf first, as the server sent it) satisfies a usable record,
    else why not. With no usable record at all, any chain passes (RFC 7672 2.2)."""
    usable = [r for r in records if r.usable]
    if not usable:
        return None
    if not chain_der:
        return "the server sent no certificate"
    try:
        chain = [x509.load_der_x509_certificate(d) for d in chain_der]
    except ValueError:
        return "the server sent an unreadable certificate"
    leaf = chain[0]
    for record in usable:
        if record.usage == DANE_EE and matches(record, leaf):
            return None
    for record in usable:
        if record.usage != DANE_TA:
            continue
        for anchor in chain[1:] if len(chain) > 1 else chain:
            if matches(record, anchor) and _chains_to(leaf, chain[1:], anchor, host, now):
                return None
    return "no TLSA record matches the certificate chain (" + "; ".join(r.text()[:40] for r in usable[:3]) + ")"


def _chains_to(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], anchor: x509.Certificate,
    host: str, now: datetime.datetime | None,
) -> bool:
    """The leaf is valid for ``host`` now and chains to ``anchor`` (cryptography's path
    validation with the anchor as the only trusted root)."""
    from cryptography.x509 import verification

    builder = verification.PolicyBuilder().store(verification.Store([anchor]))
    if hasattr(builder, "extension_policies"):  # cryptography >= 45
        # DANE-TA anchors are often private CAs: check the chain, the dates and the name,
        # not the CA/Browser Forum's profile of the leaf's extensions (RFC 7672 3.1.2).
        policy = verification.ExtensionPolicy
        ee = policy.permit_all().require_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
        )
        builder = builder.extension_policies(ca_policy=policy.webpki_defaults_ca(), ee_policy=ee)
    if now is not None:
        builder = builder.time(now)
    try:
        verifier = builder.build_server_verifier(x509.DNSName(host))
        verifier.verify(leaf, [c for c in intermediates if c != anchor] + [anchor])
    except (verification.VerificationError, ValueError):
        return False
    return True
