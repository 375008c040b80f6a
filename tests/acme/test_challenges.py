"""TLS-ALPN-01 and HTTP-01 answers (RFC 8737, RFC 8555 8.3), checked as a validator would."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from postroom.acme.challenges import ACME_TLS_ALPN, ID_PE_ACME_IDENTIFIER, Responder, alpn_certificate
from postroom.acme.client import key_authorization
from postroom.tls import TlsContexts, write_self_signed


def test_alpn_certificate_carries_the_digest() -> None:
    cert_pem, _ = alpn_certificate("mail.example.test", "token.thumb")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    # RFC 8737 3: DER OCTET STRING (tag 4, length 32) of SHA-256(key authorization).
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]


def test_key_authorization_is_token_dot_thumbprint() -> None:
    import josepy as jose
    from cryptography.hazmat.primitives.asymmetric import ec

    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    ka = key_authorization("abc_-1", key)
    token, _, thumb = ka.partition(".")
    assert token == "abc_-1" and len(thumb) == 43 and "=" not in thumb


def test_http01_files_written_and_cleared(tmp_path: Path) -> None:
    r = Responder(tmp_path)
    r.add_http01("tok_EN-1", "tok_EN-1.thumb")
    f = tmp_path / "acme-challenge" / ".well-known" / "acme-challenge" / "tok_EN-1"
    assert f.read_text() == "tok_EN-1.thumb"
    with pytest.raises(ValueError):
        r.add_http01("../etc/passwd", "x")
    r.clear()
    assert not f.exists()


def _handshake(port: int, name: str, alpn: list[str] | None) -> tuple[x509.Certificate, str | None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def test_sni_switches_to_the_challenge_only_for_its_name(tmp_path: Path) -> None:
    """A real TLS server with the live context: the pending name gets the challenge
    certificate and acme-tls/1; other names get the normal certificate."""
    write_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mail.example.test")
    tls = TlsContexts(tmp_path / "c.pem", tmp_path / "k.pem")
    responder = Responder(tmp_path)
    tls.serve_challenges(responder)
    responder.add_tls_alpn01("MTA-STS.example.test", "tok.thumb")
    assert tls.context is not None
    server_ctx = tls.context
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        cert, proto = _handshake(port, "mta-sts.example.test", [ACME_TLS_ALPN])
        assert proto == ACME_TLS_ALPN
        assert cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER).critical
        cert, _ = _handshake(port, "mail.example.test", None)
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        responder.clear()
        cert, proto = _handshake(port, "mta-sts.example.test", [ACME_TLS_ALPN])
        assert proto is None
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    finally:
        listener.close()
        t.join(5)
