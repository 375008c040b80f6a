"""ACME end to end against pebble (Let's Encrypt's test CA, validating for real).

What a user sees: ``tls.acme = true`` and a contact address, DNS pointing at the server,
and after a moment the TLS listeners serve a certificate that chains to the CA's root for
the host name and the hosted domains' mta-sts./autoconfig./autodiscover. names; it is renewed at 2/3 of
its lifetime, and a connection made before the renewal keeps working after it.
"""

from __future__ import annotations

import imaplib
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from support.dns_server import DnsServer, free_port_on
from support.outbound import wait
from support.pebble import Pebble, pebble_binary
from support.server import PASSWORD, Server

HOST = "mail.example.test"
ROLES = ("mx", "imaps", "http", "https")
NAMES = (HOST, "mta-sts.example.test", "autoconfig.example.test", "autodiscover.example.test")


def served_certificate(port: int, name: str, root: bytes | None = None) -> x509.Certificate:
    """The leaf a TLS client gets with SNI ``name``; with ``root`` the chain and the
    name are verified against it (a plain client's full check)."""
    if root is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=root.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _acme_server(
    tmp_path: Path, challenge: str, validity: int = 0, workers: int | None = None,
) -> tuple[Server, Pebble, DnsServer]:
    assert pebble_binary(), "apt-get install pebble"
    dns = DnsServer().start()
    for name in NAMES:
        dns.set(name, "A", ["127.0.0.1"])
    http_port = free_port_on(["127.0.0.1"])
    https_port = free_port_on(["127.0.0.1"])
    pebble = Pebble(tmp_path / "pebble", dns, http_port=http_port, tls_port=https_port, validity=validity).start()
    tls = (
        f'acme = true\nacme_contact = "postmaster@example.test"\nacme_directory = "{pebble.directory}"\n'
        f'acme_ca_file = "{pebble.ca_file}"\nacme_challenge = "{challenge}"\n'
    )
    srv = Server(
        tmp_path / "srv", roles=ROLES, tls=tls, hostname=HOST,
        fixed_ports={"http": http_port, "https": https_port},
        extra=f'[outbound]\nresolver = "{dns.address}"\n', workers=workers,
    )
    srv.add_user("alice@example.test")
    return srv, pebble, dns


def _issued(srv: Server, port: int, serial: int | None = None) -> x509.Certificate | None:
    cert = served_certificate(port, HOST)
    if cert.issuer == cert.subject or cert.serial_number == serial:
        return None  # still the placeholder (or the previous certificate)
    return cert


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_certificate_issued_and_served(tmp_path: Path, challenge: str) -> None:
    srv, pebble, dns = _acme_server(tmp_path, challenge)
    try:
        srv.start()
        https = srv.ports["https"]
        cert = wait(lambda: _issued(srv, https), 60)
        root = pebble.root_pem()
        # Verified as a client would: chain to pebble's root, name checked, on every TLS role.
        for port in (https, srv.ports["imaps"]):
            for name in NAMES:
                assert served_certificate(port, name, root).serial_number == cert.serial_number
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == set(NAMES)
        # Stored in the data folder: account key (private) and the certificate pair.
        folder = srv.data / "acme"
        account = json.loads((folder / "account.json").read_text())
        assert account["uri"].startswith(f"https://127.0.0.1:{pebble.port}/")
        assert (folder / "account.json").stat().st_mode & 0o077 == 0
        assert (folder / "key.pem").stat().st_mode & 0o077 == 0
        assert x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes()).serial_number == cert.serial_number
        # The challenge answers are gone once the order is done.
        assert not list((srv.data / "acme-challenge" / ".well-known" / "acme-challenge").glob("*"))
        assert "acme_certificate" in srv.logs()
        # Mail still flows over the new certificate with full verification.
        ctx = ssl.create_default_context(cadata=root.decode())
        with imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=_sni(ctx, HOST)) as imap:
            imap.login("alice@example.test", PASSWORD)
        # Restarted without the CA: the stored certificate is served at once, no new order.
        srv.stop()
        pebble.stop()
        srv.start()
        assert served_certificate(srv.ports["https"], HOST, root).serial_number == cert.serial_number
    finally:
        srv.stop()
        pebble.stop()
        dns.stop()


def _sni(ctx: ssl.SSLContext, name: str) -> ssl.SSLContext:
    """imaplib connects to an address; have the context verify ``name`` instead."""
    original = ctx.wrap_socket

    def wrap(sock, server_side=False, do_handshake_on_connect=True, suppress_ragged_eofs=True,  # type: ignore[no-untyped-def]
             server_hostname=None, session=None):
        return original(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs, name, session)

    ctx.wrap_socket = wrap  # type: ignore[method-assign]
    return ctx


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_renewal_keeps_running_connections(tmp_path: Path, workers: int) -> None:
    """Certificates of 15 s are renewed after 10 s (2/3); an IMAP session opened on the
    first one goes on working after the reload, and new connections get the second. With
    two worker processes the supervisor orders and the workers' imaps listeners reload."""
    srv, pebble, dns = _acme_server(tmp_path, "http-01", validity=15, workers=workers)
    try:
        srv.start()
        port = srv.ports["imaps"]
        first = wait(lambda: _issued(srv, port), 60)
        root = pebble.root_pem()
        ctx = ssl.create_default_context(cadata=root.decode())
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=_sni(ctx, HOST))
        imap.login("alice@example.test", PASSWORD)
        imap.select("INBOX")
        old = imap.sock.getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(old).serial_number == first.serial_number
        second = wait(lambda: _issued(srv, port, first.serial_number), 40)
        assert second.not_valid_after_utc > first.not_valid_after_utc
        assert served_certificate(port, HOST, root).serial_number == second.serial_number
        # The session from before the reload is still there and still answers.
        typ, _ = imap.noop()
        assert typ == "OK"
        typ, data = imap.select("INBOX")
        assert typ == "OK"
        imap.logout()
        assert srv.logs().count("acme_certificate") >= 2
    finally:
        srv.stop()
        pebble.stop()
        dns.stop()


def test_names_without_dns_do_not_hold_back_the_host_name(tmp_path: Path) -> None:
    """A hosted domain whose mta-sts./autoconfig. names do not resolve yet: the CA refuses
    them, the certificate is issued without them, and the refusal is logged."""
    srv, pebble, dns = _acme_server(tmp_path, "tls-alpn-01")
    srv.add_user("bob@example.org")  # no DNS records for *.example.org
    try:
        srv.start()
        cert = wait(lambda: _issued(srv, srv.ports["https"]), 60)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == set(NAMES)
        assert "acme_names_dropped" in srv.logs() and "mta-sts.example.org" in srv.logs()
        state = json.loads((srv.data / "acme" / "state.json").read_text())
        assert set(state["dropped"]) == {"mta-sts.example.org", "autoconfig.example.org", "autodiscover.example.org"}
    finally:
        srv.stop()
        pebble.stop()
        dns.stop()
