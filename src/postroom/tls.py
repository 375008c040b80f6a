"""TLS: server contexts with modern defaults, reloadable certificates, self-signed set-up.

Why one context reloaded in place: implicit-TLS listeners hand the context to the server
socket once, at start. On SIGHUP we first load the new files into a scratch context (so
broken files change nothing), then load them into the live context: OpenSSL copies the
certificate into each connection when it starts, so new handshakes (new connections and
STARTTLS) use the new certificate and running connections keep theirs. Nothing is dropped.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


class ChallengeContexts(Protocol):
    def context_for(self, server_name: str | None) -> ssl.SSLContext | None: ...


class TlsContexts:
    """The current server context, or None when no certificate is configured."""

    def __init__(self, cert: Path | None, key: Path | None) -> None:
        self.cert = cert
        self.key = key
        self.context: ssl.SSLContext | None = None
        self._challenges: ChallengeContexts | None = None
        # Called after each successful reload: the supervisor passes it on to its worker
        # processes (server.workers), which hold contexts of their own.
        self.after_reload: Callable[[], None] | None = None
        if cert is not None and key is not None:
            self.context = server_context(cert, key)

    def serve_challenges(self, challenges: ChallengeContexts) -> None:
        """Hand connections whose SNI name has a pending ACME TLS-ALPN-01 challenge to that
        challenge's context (see postroom.acme.challenges); all others are untouched."""
        self._challenges = challenges
        if self.context is not None:
            self.context.sni_callback = self._sni

    def _sni(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        if self._challenges is not None:
            other = self._challenges.context_for(server_name)
            if other is not None:
                sslobj.context = other

    @property
    def available(self) -> bool:
        return self.context is not None

    def reload(self) -> bool:
        """Re-read the files; keep the old context when the new files are broken."""
        if self.cert is None or self.key is None:
            return False
        try:
            server_context(self.cert, self.key)  # validate first
            if self.context is None:
                self.context = server_context(self.cert, self.key)
            else:
                self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.error("event=tls_reload_failed error=%s", e)
            return False
        log.info("event=tls_reloaded cert=%s", self.cert)
        if self.after_reload is not None:
            self.after_reload()
        return True


def describe(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """``TLSv1.3 TLS_AES_256_GCM_SHA384`` for Received headers and logs."""
    if obj is None:
        return ""
    cipher = obj.cipher()
    version = obj.version() or ""
    return f"{version} {cipher[0]}" if cipher else version


def write_self_signed(cert_path: Path, key_path: Path, hostname: str, days: int = 825) -> None:
    """A self-signed certificate for ``hostname`` (and localhost), for first start and tests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
