"""Outbound MTA-STS (RFC 8461) and DANE (RFC 7672) end to end.

A real ``postroom serve`` sends to capture MX servers (TLS with a trustme certificate for
``mx.tls.test``/``mx.verify.test``); the DNS server plays a validating resolver (the AD bit
on the names in ``dns.secure``) and serves TLSA records; MTA-STS policies come from a local
HTTPS server with a certificate for the ``mta-sts.`` names from the same CA.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from postroom.policy.dane import record_for
from support.capture import Behaviour
from support.outbound import World, wait, world_fixture

POLICIES: dict[str, str] = {}  # host name -> policy text served at /.well-known/mta-sts.txt


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        host = (self.headers.get("Host") or "").split(":")[0]
        body = POLICIES.get(host)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_response(404)
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class PolicyServer:
    def __init__(self, world: World, names: list[str]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PolicyHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        world.ca.issue_cert(*names).configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


STS_DOMAINS = [
    "sts-ok.test", "sts-wrongmx.test", "sts-testing.test", "sts-badcert.test", "sts-notls.test", "sts-restart.test",
]
_servers: list[PolicyServer] = []


def _outbound(world: World) -> str:
    # sts-badcert.test's policy host is not on the certificate: the fetch must fail.
    server = PolicyServer(world, [f"mta-sts.{d}" for d in STS_DOMAINS if d != "sts-badcert.test"])
    _servers.append(server)
    return (
        'retry_schedule = ["1s"]\nmax_queue_lifetime = "1h"\ndelay_warning = "1h"\n'
        'queue_poll_interval = "1s"\nconnection_cache_time = "1s"\nread_timeout = "5s"\n'
        f'connect_timeout = "3s"\nmta_sts_port = {server.port}\n'
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        yield from world_fixture(tmp_path_factory.mktemp("security"), outbound=_outbound, first=150)
    finally:
        for server in _servers:
            server.stop()
        _servers.clear()


def _policy(world: World, domain: str, mode: str, mx: str) -> None:
    world.dns.set(f"_mta-sts.{domain}", "TXT", ["v=STSv1; id=20261207a;"])
    world.dns.set(f"mta-sts.{domain}", "A", ["127.0.0.1"])
    POLICIES[f"mta-sts.{domain}"] = f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"


def test_mta_sts_enforce_testing_and_mismatch(world: World) -> None:
    ok = world.mx("sts-ok.test", Behaviour(), name="mx.verify.test")
    _policy(world, "sts-ok.test", "enforce", "*.verify.test")
    # enforce, but the MX is not in the policy: not delivered, deferred with the reason
    wrongmx = world.mx("sts-wrongmx.test", Behaviour(), name="mx.tls.test")
    _policy(world, "sts-wrongmx.test", "enforce", "mx.elsewhere.test")
    # testing: the same mismatch is only reported, mail flows
    testing = world.mx("sts-testing.test", Behaviour(), name="mx.tls.test")
    _policy(world, "sts-testing.test", "testing", "mx.elsewhere.test")
    world.send(["a@sts-ok.test", "b@sts-wrongmx.test", "c@sts-testing.test"])
    assert world.wait_arrived(ok)[0].tls
    assert world.wait_arrived(testing)
    reason = wait(lambda: world.pending_reason("b@sts-wrongmx.test"))
    assert "MTA-STS" in reason
    assert world.arrived(wrongmx) == []


def test_mta_sts_enforce_needs_tls_with_a_valid_certificate(world: World) -> None:
    """The MX matches the policy but offers no STARTTLS: enforce refuses plaintext."""
    plain = world.mx("sts-notls.test", Behaviour(starttls=False), name="mx.notls.test")
    world.dns.set("_mta-sts.sts-notls.test", "TXT", ["v=STSv1; id=1;"])
    world.dns.set("mta-sts.sts-notls.test", "A", ["127.0.0.1"])
    POLICIES["mta-sts.sts-notls.test"] = "version: STSv1\nmode: enforce\nmx: mx.notls.test\nmax_age: 600\n"
    world.send(["d@sts-notls.test"])
    reason = wait(lambda: world.pending_reason("d@sts-notls.test"))
    assert "TLS is required" in reason
    assert world.arrived(plain) == []


def test_mta_sts_policy_with_a_bad_certificate_is_not_used(world: World) -> None:
    address = world.mx("sts-badcert.test", Behaviour(), name="mx.tls.test")
    _policy(world, "sts-badcert.test", "enforce", "mx.elsewhere.test")
    world.send(["e@sts-badcert.test"])
    # The policy host's certificate is not valid for its name: the policy is not used
    # (RFC 8461 3.3), and with nothing cached the domain has no policy (RFC 8461 5).
    assert world.wait_arrived(address)


def test_mta_sts_policy_survives_a_restart(world: World) -> None:
    """RFC 8461 5.1: the policy fetched before a restart stays in force after it while the
    policy host cannot be reached (an attacker who blocks it must not get the mail to an
    MX outside the policy)."""
    wrong = world.mx("sts-restart.test", Behaviour(), name="mx.tls.test")
    _policy(world, "sts-restart.test", "enforce", "mx.elsewhere.test")
    world.send(["f@sts-restart.test"])
    assert "MTA-STS" in wait(lambda: world.pending_reason("f@sts-restart.test"))
    assert world.server is not None
    world.server.stop()
    del POLICIES["mta-sts.sts-restart.test"]  # the fetch now fails (404)
    world.server.start()
    world.send(["g@sts-restart.test"])
    assert "MTA-STS" in wait(lambda: world.pending_reason("g@sts-restart.test"))
    assert world.arrived(wrong) == []


def _served_leaf(world: World, address: str) -> x509.Certificate:
    """The certificate the capture server presents after STARTTLS (read with smtplib)."""
    import smtplib

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(address, world.capture.port, timeout=10) as s:
        s.starttls(context=ctx)
        assert s.sock is not None
        der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_dane_ee_match_mismatch_and_unvalidated(world: World) -> None:
    """TLSA records live at _PORT._tcp.HOST for the port we connect to (25 in real life,
    the capture port here)."""
    good = world.mx("dane-ok.test", Behaviour(), name="mx.tls.test")
    leaf = _served_leaf(world, good)
    world.dns.set(f"_{world.capture.port}._tcp.mx.tls.test", "TLSA", [record_for(leaf, 3, 1, 1).text().split()])
    world.dns.secure |= {"dane-ok.test", f"_{world.capture.port}._tcp.mx.tls.test"}
    # A TLSA record that matches nothing, validated: the MX is refused.
    bad = world.mx("dane-bad.test", Behaviour(), name="mx.verify.test")
    wrong = "3 1 1 " + "00" * 32
    world.dns.set(f"_{world.capture.port}._tcp.mx.verify.test", "TLSA", [wrong.split()])
    world.dns.secure |= {"dane-bad.test", f"_{world.capture.port}._tcp.mx.verify.test"}
    # The same wrong record without the AD bit: DANE does not apply, opportunistic TLS.
    insecure = world.mx("dane-insecure.test", Behaviour(), name="mx.insecure.test")
    world.dns.set(f"_{world.capture.port}._tcp.mx.insecure.test", "TLSA", [wrong.split()])
    world.send(["f@dane-ok.test", "g@dane-bad.test", "h@dane-insecure.test"])
    assert world.wait_arrived(good)[0].tls
    assert world.wait_arrived(insecure)[0].tls
    reason = wait(lambda: world.pending_reason("g@dane-bad.test"))
    assert "DANE" in reason and "TLSA" in reason
    assert world.arrived(bad) == []


def test_dane_requires_starttls(world: World) -> None:
    plain = world.mx("dane-notls.test", Behaviour(starttls=False), name="mx.dnotls.test")
    world.dns.set(f"_{world.capture.port}._tcp.mx.dnotls.test", "TLSA", [["3", "1", "1", "ab" * 32]])
    world.dns.secure |= {"dane-notls.test", f"_{world.capture.port}._tcp.mx.dnotls.test"}
    world.send(["i@dane-notls.test"])
    reason = wait(lambda: world.pending_reason("i@dane-notls.test"))
    assert "TLS is required" in reason
    assert world.arrived(plain) == []


def test_policy_server_is_real(world: World) -> None:
    """The fixture's HTTPS server answers with a certificate from the World's CA."""
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(world.ca_file))
    ctx.check_hostname = False
    POLICIES["127.0.0.1"] = "version: STSv1\nmode: none\nmax_age: 1\n"
    url = f"https://127.0.0.1:{_servers[0].port}/.well-known/mta-sts.txt"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        assert resp.read().startswith(b"version: STSv1")
    assert Path(world.ca_file).exists()
