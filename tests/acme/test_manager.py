"""When a certificate is ordered, and for which names (pure parts of postroom.acme.manager)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postroom import config
from postroom.acme import manager
from postroom.tls import write_self_signed

NOW = 1_800_000_000.0


def _ca_signed(path: Path, names: list[str], start: float, days: float) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    begin = datetime.datetime.fromtimestamp(start, datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(begin).not_valid_after(begin + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_due_at_two_thirds_of_the_lifetime(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    _ca_signed(cert, ["mail.example.test"], NOW, 90)
    when, why = manager.due(cert, ["mail.example.test"], {}, NOW)
    assert why == "renewal" and when == NOW + 60 * 86400


def test_due_now_for_placeholder_missing_file_and_new_names(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    assert manager.due(cert, ["a.test"], {}, NOW) == (NOW, "no certificate")
    write_self_signed(cert, tmp_path / "key.pem", "mail.example.test")
    assert manager.due(cert, ["mail.example.test"], {}, NOW) == (NOW, "placeholder")
    _ca_signed(cert, ["mail.example.test"], NOW, 90)
    when, why = manager.due(cert, ["mail.example.test", "mta-sts.example.org"], {}, NOW)
    assert when == NOW and why == "new names mta-sts.example.org"
    # A name the CA refused an hour ago does not trigger a new order; after a day it does.
    dropped = {"mta-sts.example.org": NOW - 3600}
    assert manager.due(cert, ["mail.example.test", "mta-sts.example.org"], dropped, NOW)[1] == "renewal"
    dropped = {"mta-sts.example.org": NOW - 86400}
    assert manager.due(cert, ["mail.example.test", "mta-sts.example.org"], dropped, NOW)[0] == NOW


def _settings(tmp_path: Path, roles: list[str], tls: str = "") -> config.Settings:
    listeners = "".join(f'[[listener]]\naddress = "127.0.0.1:{9000 + i}"\nrole = "{r}"\n' for i, r in enumerate(roles))
    p = tmp_path / "postroom.toml"
    p.write_text('hostname = "Mail.Example.Test"\n[tls]\nacme = true\nacme_contact = "a@example.test"\n'
                 f'{tls}\n{listeners}')
    return config.load(p)


def test_names_and_methods(tmp_path: Path) -> None:
    s = _settings(tmp_path, ["mx", "http", "https"])
    assert manager.wanted_names(s, ["example.org", "example.net"]) == [
        "mail.example.test", "mta-sts.example.net", "autoconfig.example.net", "autodiscover.example.net",
        "mta-sts.example.org", "autoconfig.example.org", "autodiscover.example.org"]
    assert manager.methods(s) == ("http-01", "tls-alpn-01")
    # Without an https listener nobody serves those names: the host name only.
    s = _settings(tmp_path, ["mx", "imaps"])
    assert manager.wanted_names(s, ["example.org"]) == ["mail.example.test"]
    assert manager.methods(s) == ("tls-alpn-01",)
    s = _settings(tmp_path, ["mx", "http", "https"], 'acme_challenge = "http-01"\nacme_domain_names = false')
    assert manager.methods(s) == ("http-01",)
    assert manager.wanted_names(s, ["example.org"]) == ["mail.example.test"]


def test_prepare_writes_a_placeholder_once(tmp_path: Path) -> None:
    s = _settings(tmp_path, ["mx", "imaps"])
    manager.prepare(s)
    assert s.tls_cert is not None and s.tls_key is not None
    first = s.tls_cert.read_bytes()
    assert s.tls_key.stat().st_mode & 0o077 == 0
    manager.prepare(s)
    assert s.tls_cert.read_bytes() == first
