"""Client auto-configuration and MTA-STS, answered to the exact requests clients send.

Thunderbird (FetchConfig: the ISP's ``autoconfig.`` host with ``?emailaddress=``, then the
domain's ``/.well-known/`` path, then the same over plain http) and Outlook (a POX
``Autodiscover`` POST to ``autodiscover.DOMAIN``) are replayed byte for byte, with the
Host and SNI names the clients use. Each answer is then *used*: the IMAP and SMTP
servers it names accept a login with the address as user name.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from support.http import HttpServer, split_response
from support.server import PASSWORD

USER = "fred@example.test"
TB_UA = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
OUTLOOK_UA = b"Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    roles = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
    extra = '[mta_sts]\nmode = "enforce"\nmx = ["mail.example.test", "*.backup.example.test"]\nmax_age = "1d"\n'
    srv = HttpServer(tmp_path_factory.mktemp("autoconfig"), roles=roles, extra=extra)
    srv.add_user(USER)
    srv.start()
    yield srv
    srv.stop()


def thunderbird_request(path: str, host: str) -> bytes:
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: " + host.encode() + b"\r\n"
        b"User-Agent: " + TB_UA + b"\r\n"
        b"Accept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Connection: keep-alive\r\n"
        b"Pragma: no-cache\r\n"
        b"Cache-Control: no-cache\r\n\r\n"
    )


def servers(xml: bytes) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.findtext("domain") == "example.test"

    def read(el: ET.Element) -> dict[str, str]:
        return {"type": el.get("type", ""), **{c.tag: c.text or "" for c in el}}

    return ([read(e) for e in provider.findall("incomingServer")],
            [read(e) for e in provider.findall("outgoingServer")])


@pytest.mark.parametrize(
    ("plain", "host", "path"),
    [
        # 1. the ISP's autoconfig host, with the address (Thunderbird's first try)
        (False, "autoconfig.example.test", "/mail/config-v1.1.xml?emailaddress=fred%40example.test"),
        # 2. the domain's well-known path (with and without the address: versions differ)
        (False, "example.test", "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=fred%40example.test"),
        (False, "example.test", "/.well-known/autoconfig/mail/config-v1.1.xml"),
        # 3. the same over plain http, the last resort
        (True, "autoconfig.example.test", "/mail/config-v1.1.xml?emailaddress=fred%40example.test"),
        (True, "autoconfig.example.test", "/mail/config-v1.1.xml"),
    ],
)
def test_thunderbird_requests(server: HttpServer, plain: bool, host: str, path: str) -> None:
    raw = server.raw(thunderbird_request(path, host), plain=plain, sni=host)
    status, headers, body = split_response(raw)
    assert status == 200, raw
    assert headers["content-type"].startswith("application/xml")
    incoming, outgoing = servers(body)
    p = server.ports
    assert [(s["type"], s["port"], s["socketType"]) for s in incoming] == [
        ("imap", str(p["imaps"]), "SSL"), ("imap", str(p["imap"]), "STARTTLS"),
        ("pop3", str(p["pop3s"]), "SSL"), ("pop3", str(p["pop3"]), "STARTTLS"),
    ]
    assert [(s["type"], s["port"], s["socketType"]) for s in outgoing] == [
        ("smtp", str(p["submissions"]), "SSL"), ("smtp", str(p["submission"]), "STARTTLS"),
    ]
    for s in incoming + outgoing:
        assert s["hostname"] == "mail.example.test"
        assert s["username"] == "%EMAILADDRESS%" and s["authentication"] == "password-cleartext"


def test_thunderbird_config_works(server: HttpServer) -> None:
    """Set up like Thunderbird would from the answer: the first incoming and outgoing
    server, %EMAILADDRESS% replaced by the address."""
    raw = server.raw(thunderbird_request("/mail/config-v1.1.xml?emailaddress=fred%40example.test",
                                         "autoconfig.example.test"), sni="autoconfig.example.test")
    incoming, outgoing = servers(split_response(raw)[2])
    ctx = server.client_context()
    imap = imaplib.IMAP4_SSL("127.0.0.1", int(incoming[0]["port"]), ssl_context=ctx)
    imap.login(incoming[0]["username"].replace("%EMAILADDRESS%", USER), PASSWORD)
    imap.logout()
    with smtplib.SMTP_SSL("127.0.0.1", int(outgoing[0]["port"]), context=ctx, timeout=30) as s:
        s.login(outgoing[0]["username"].replace("%EMAILADDRESS%", USER), PASSWORD)


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("autoconfig.elsewhere.test", "/mail/config-v1.1.xml?emailaddress=x%40elsewhere.test"),
        ("autoconfig.example.test", "/mail/config-v1.1.xml?emailaddress=x%40elsewhere.test"),
        ("elsewhere.test", "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ],
)
def test_thunderbird_other_domains_are_not_ours(server: HttpServer, host: str, path: str) -> None:
    status, _, _ = split_response(server.raw(thunderbird_request(path, host), sni=host))
    assert status == 404


def outlook_request(email: str, schema: str, host: str = "autodiscover.example.test",
                    path: str = "/autodiscover/autodiscover.xml", body: bytes | None = None) -> bytes:
    if body is None:
        body = (
            '<?xml version="1.0" encoding="utf-8"?>\r\n'
            '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">\r\n'
            "  <Request>\r\n"
            f"    <EMailAddress>{email}</EMailAddress>\r\n"
            f"    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\r\n"
            "  </Request>\r\n"
            "</Autodiscover>\r\n"
        ).encode()
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Connection: Keep-Alive\r\n"
        b"Pragma: no-cache\r\n"
        b"Content-Type: text/xml\r\n"
        b"User-Agent: " + OUTLOOK_UA + b"\r\n"
        b"X-MapiHttpCapability: 1\r\n"
        b"X-AnchorMailbox: " + email.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Host: " + host.encode() + b"\r\n\r\n" + body
    )


OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
NS = {"r": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006", "o": OUTLOOK}


@pytest.mark.parametrize(("host", "path"), [
    ("autodiscover.example.test", "/autodiscover/autodiscover.xml"),
    ("example.test", "/Autodiscover/Autodiscover.xml"),
])
def test_outlook_pox_autodiscover(server: HttpServer, host: str, path: str) -> None:
    raw = server.raw(outlook_request(USER, OUTLOOK, host, path), sni=host)
    status, headers, body = split_response(raw)
    assert status == 200 and headers["content-type"].startswith("application/xml")
    root = ET.fromstring(body)
    account = root.find("o:Response/o:Account", NS)
    assert account is not None, body
    assert account.findtext("o:AccountType", namespaces=NS) == "email"
    assert account.findtext("o:Action", namespaces=NS) == "settings"
    protocols = {p.findtext("o:Type", namespaces=NS): p for p in account.findall("o:Protocol", NS)}
    assert set(protocols) == {"IMAP", "SMTP"}
    imap, smtp = protocols["IMAP"], protocols["SMTP"]
    assert imap.findtext("o:Port", namespaces=NS) == str(server.ports["imaps"])
    assert smtp.findtext("o:Port", namespaces=NS) == str(server.ports["submissions"])
    for p in (imap, smtp):
        assert p.findtext("o:Server", namespaces=NS) == "mail.example.test"
        assert p.findtext("o:LoginName", namespaces=NS) == USER
        assert p.findtext("o:Encryption", namespaces=NS) == "SSL"
        assert p.findtext("o:SPA", namespaces=NS) == "off"
        assert p.findtext("o:AuthRequired", namespaces=NS) == "on"
    # And it works: log in where it says, as it says.
    imaplib.IMAP4_SSL("127.0.0.1", int(imap.findtext("o:Port", namespaces=NS) or 0),
                      ssl_context=server.client_context()).login(
        imap.findtext("o:LoginName", namespaces=NS) or "", PASSWORD)


def test_outlook_errors(server: HttpServer) -> None:
    mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    status, _, body = split_response(server.raw(outlook_request(USER, mobilesync)))
    root = ET.fromstring(body)
    assert status == 200 and root.findtext("r:Response/r:Error/r:ErrorCode", namespaces=NS) == "601"
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Autodiscover>&lol2;</Autodiscover>')
    status, _, body = split_response(server.raw(outlook_request(USER, OUTLOOK, body=laughs)))
    assert status == 200 and ET.fromstring(body).findtext("r:Response/r:Error/r:ErrorCode", namespaces=NS) == "600"
    status, _, body = split_response(server.raw(outlook_request(USER, OUTLOOK, body=b"<not xml")))
    assert ET.fromstring(body).findtext("r:Response/r:Error/r:ErrorCode", namespaces=NS) == "600"
    status, _, _ = split_response(server.raw(outlook_request("x@elsewhere.test", OUTLOOK)))
    assert status == 404


def test_mta_sts_policy(server: HttpServer) -> None:
    request = (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
               b"User-Agent: postfix-mta-sts-resolver/1.4\r\nAccept: */*\r\n\r\n")
    status, headers, body = split_response(server.raw(request, sni="mta-sts.example.test"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    # RFC 8461 3.2: "key: value" lines, CRLF, version first.
    lines = body.decode().split("\r\n")
    assert lines[0] == "version: STSv1" and lines[-1] == ""
    fields = [tuple(line.split(": ", 1)) for line in lines[:-1]]
    assert ("mode", "enforce") in fields and ("max_age", "86400") in fields
    assert [v for k, v in fields if k == "mx"] == ["mail.example.test", "*.backup.example.test"]
    for host in (b"mta-sts.elsewhere.test", b"example.test", b"mail.example.test"):
        req = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        assert split_response(server.raw(req))[0] == 404


def test_https_certificate_is_the_configured_one(server: HttpServer) -> None:
    """The https role uses the same certificate as the mail roles (and SIGHUP reloads it,
    tests/net/test_listener_tls.py covers the shared context)."""
    import socket

    ctx = ssl.create_default_context(cafile=str(server.cert))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", server.https_port)) as sock:
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der == ssl.PEM_cert_to_DER_cert(server.cert.read_text())


def test_https_certificate_reloads_on_sighup(tmp_path: object) -> None:
    import signal
    import socket
    import time
    from pathlib import Path

    from postroom.tls import write_self_signed

    srv = HttpServer(Path(str(tmp_path)), roles=("https",))
    srv.start()
    try:
        def served() -> bytes:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", srv.https_port)) as sock:
                with ctx.wrap_socket(sock) as tls:
                    return tls.getpeercert(binary_form=True) or b""

        assert served() == ssl.PEM_cert_to_DER_cert(srv.cert.read_text())
        write_self_signed(srv.cert, srv.key, "renewed.example.test")
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        new = ssl.PEM_cert_to_DER_cert(srv.cert.read_text())
        deadline = time.monotonic() + 10
        while served() != new:
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.1)
    finally:
        srv.stop()


def test_acme_http01_challenge_from_the_webroot(server: HttpServer) -> None:
    """certbot --webroot -w DATA/acme-challenge writes the token file; the CA fetches it
    over plain http on port 80 (RFC 8555 8.3) while postroom holds that port."""
    folder = server.data / "acme-challenge" / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True, exist_ok=True)
    token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
    (folder / token).write_text(token + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI")
    request = (f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: mail.example.test\r\n"
               "User-Agent: Mozilla/5.0 (compatible; Let's Encrypt validation server)\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode()
    status, _, body = split_response(server.raw(request, plain=True))
    assert status == 200 and body.decode() == (folder / token).read_text()
    for missing in ("unknown-token", "..%2F..%2Fpostroom.sqlite3", "a.b"):
        req = f"GET /.well-known/acme-challenge/{missing} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert split_response(server.raw(req.encode(), plain=True))[0] == 404
