"""Answers to the CA's domain checks, set up while an order is pending.

HTTP-01 (RFC 8555 8.3): the key authorization is written to
``DATA/acme-challenge/.well-known/acme-challenge/TOKEN``, the file the HTTP service's
``/.well-known/acme-challenge/{token}`` route already serves (the same folder
``certbot --webroot`` uses), so no second server binds port 80.

TLS-ALPN-01 (RFC 8737): the validator connects to port 443 with the name as SNI and
``acme-tls/1`` as the only ALPN protocol, and expects a self-signed certificate for that
name carrying the SHA-256 of the key authorization in a critical ``id-pe-acmeIdentifier``
extension. Python's ``ssl`` shows the SNI name to a callback but not the offered ALPN list,
so the callback (installed by :class:`postroom.tls.TlsContexts`) switches to the challenge
context for a name with a pending challenge; that context offers only ``acme-tls/1``. A mail
or web client that connects with that very name during the few seconds of a validation gets
the challenge certificate and fails its check (it retries); other names are not affected.

Everything here may be called from the issuing worker thread: files are written whole
(temporary name, rename), and the name → context map is replaced, never mutated, so the
event loop's callback reads a consistent map.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737 6.2
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 6.1
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, RFC 8555 8.1


def http01_dir(data_dir: Path) -> Path:
    return data_dir / "acme-challenge" / ".well-known" / "acme-challenge"


def alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for the TLS-ALPN-01 answer for ``name`` (RFC 8737 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest (RFC 8737 3).
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _alpn_context(cert_pem: bytes, key_pem: bytes, scratch: Path) -> ssl.SSLContext:
    """A server context that presents the challenge certificate and speaks only acme-tls/1.
    ``load_cert_chain`` reads files, so the PEMs pass through a private temporary file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 4: TLS 1.2 or later
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=".alpn-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem + cert_pem)
        ctx.load_cert_chain(tmp)
    finally:
        os.unlink(tmp)
    return ctx


class Responder:
    """What the issuing thread sets up for the CA and takes down afterwards.

    ``alpn`` is read by the TLS SNI callback (see module docstring); ``http01`` tokens are
    files under ``DATA/acme-challenge``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.alpn: dict[str, ssl.SSLContext] = {}
        self._tokens: set[str] = set()

    def add_http01(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.match(token):
            raise ValueError(f"unexpected ACME token {token!r}")
        folder = http01_dir(self.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{token}.tmp"
        tmp.write_text(key_authorization, encoding="ascii")
        os.replace(tmp, folder / token)
        self._tokens.add(token)

    def add_tls_alpn01(self, name: str, key_authorization: str) -> None:
        cert, key = alpn_certificate(name, key_authorization)
        ctx = _alpn_context(cert, key, self.data_dir / "acme")
        self.alpn = {**self.alpn, name.lower(): ctx}

    def clear(self) -> None:
        self.alpn = {}
        folder = http01_dir(self.data_dir)
        for token in self._tokens:
            try:
                (folder / token).unlink()
            except FileNotFoundError:
                pass
        self._tokens.clear()

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        """The challenge context for an SNI name, or None (the normal certificate)."""
        if not server_name or not self.alpn:
            return None
        return self.alpn.get(server_name.lower())
