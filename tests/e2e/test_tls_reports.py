"""TLS-RPT (RFC 8460) end to end with a running ``postroom serve``.

Sending: the server runs two days in the past (libfaketime, as the DMARC report test)
and delivers through its queue to capture MX servers:

* ``good.test``: STARTTLS works (opportunistic TLS): a successful session;
* ``notls.test``: no STARTTLS offered: delivered in plaintext, ``starttls-not-supported``;
* ``sts.test``: an MTA-STS ``enforce`` policy (fetched from a local HTTPS server), but the
  MX's certificate names another host: ``certificate-host-mismatch``, not delivered;
* ``badsts.test``: announces an MTA-STS policy whose host's certificate is not valid for
  it: ``sts-webpki-invalid``; without a policy, delivered with opportunistic TLS;
* ``dane.test``: a DNSSEC-validated TLSA record that matches nothing the MX sends:
  ``validation-failure`` under the ``tlsa`` policy, not delivered;
* ``quiet.test``: TLS works, but the domain publishes no ``_smtp._tls`` record.

Then, at the real time, ``postroom tlsrpt send-reports`` sends the reports: DKIM-signed
mails with the RFC 8460 5.3 headers to the sink of ``reports.test``, and an HTTPS POST
(``application/tlsrpt+gzip``) to the local HTTPS server for ``good.test``; none for
``quiet.test``; a second run sends nothing.

Receiving: a report shaped like Google's arrives over SMTP for postmaster@: ``postroom
tlsrpt list`` and ``GET /api/v1/tls-reports`` show it; a malformed one is delivered as an
ordinary message and listed nowhere. ``postroom dns`` lists the ``_smtp._tls`` record.
"""

from __future__ import annotations

import gzip
import http.server
import json
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
import trustme

from support.capture import Behaviour, Capture, Received
from support.dns_server import DnsServer
from support.http import ADMIN, HttpServer
from support.mail_auth import dns_txt_lookup, generate_keys
from support.outbound import pending_reason, wait
from support.server import PASSWORD, faketime
from support.tlsrpt import check_report, google_report, report_mail

DOMAIN = "example.test"
HOST = f"mail.{DOMAIN}"
MX = {"good.test": "127.0.0.221", "notls.test": "127.0.0.222", "sts.test": "127.0.0.223",
      "quiet.test": "127.0.0.224", "reports.test": "127.0.0.225", "badsts.test": "127.0.0.226",
      "dane.test": "127.0.0.227"}
PAST = faketime("-2d")


class _Handler(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[str, dict[str, str], bytes]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        host = (self.headers.get("Host") or "").split(":")[0]
        if host != "mta-sts.sts.test" or self.path != "/.well-known/mta-sts.txt":
            self.send_response(404)
            self.end_headers()
            return
        body = b"version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Handler.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("tlsrpt")
    ca = trustme.CA()
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mx_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("mx.tls.test").configure_cert(mx_ctx)  # not mx.sts.test: the mismatch
    capture = Capture(tuple(MX.values()), tls=mx_ctx, default=Behaviour(starttls=False))
    for domain in ("good.test", "sts.test", "quiet.test", "badsts.test", "dane.test"):
        capture.behaviours[MX[domain]] = Behaviour()
    capture.start()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    web_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("reports.test", "mta-sts.sts.test").configure_cert(web_ctx)
    httpd.socket = web_ctx.wrap_socket(httpd.socket, server_side=True)
    https_port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dns = DnsServer().start()
    for domain, address in MX.items():
        dns.set(domain, "MX", [(10, f"mx.{domain}")])
        dns.set(f"mx.{domain}", "A", [address])
    for name in ("reports.test", "mta-sts.sts.test", "mta-sts.badsts.test"):
        dns.set(name, "A", ["127.0.0.1"])
    dns.set("_smtp._tls.good.test", "TXT",
            [f"v=TLSRPTv1; rua=mailto:tls@reports.test,https://reports.test:{https_port}/tlsrpt"])
    dns.set("_smtp._tls.notls.test", "TXT", ["v=TLSRPTv1; rua=mailto:tls@reports.test"])
    dns.set("_smtp._tls.sts.test", "TXT", ["v=TLSRPTv1;rua=mailto:tls@reports.test"])
    dns.set("_mta-sts.sts.test", "TXT", ["v=STSv1; id=20261207;"])
    dns.set("_mta-sts.badsts.test", "TXT", ["v=STSv1; id=20261207;"])  # not on the certificate
    dns.set("_smtp._tls.badsts.test", "TXT", ["v=TLSRPTv1; rua=mailto:tls@reports.test"])
    tlsa = f"_{capture.port}._tcp.mx.dane.test"
    dns.set(tlsa, "TLSA", [["3", "1", "1", "00" * 32]])
    dns.secure |= {"dane.test", tlsa}  # the validating resolver's AD bit
    dns.set("_smtp._tls.dane.test", "TXT", ["v=TLSRPTv1; rua=mailto:tls@reports.test"])
    extra = (
        f'[outbound]\nresolver = "{dns.address}"\nport = {capture.port}\ntls_ca_file = "{ca_file}"\n'
        f'mta_sts_port = {https_port}\nqueue_poll_interval = "1s"\nretry_schedule = ["2s"]\n'
        'connect_timeout = "3s"\nread_timeout = "5s"\n'
        '[tls_reports]\nreport_interval = "1h"\nreport_org = "Example Mail"\n'
    )
    srv = HttpServer(root / "server", extra=extra, hostname=HOST)
    srv.setup_admin()  # example.test, admin@ (the first user: the postmaster)
    generate_keys(srv, DOMAIN, dns)
    try:
        yield {"srv": srv, "dns": dns, "capture": capture, "port": https_port}
    finally:
        srv.stop()
        httpd.shutdown()
        httpd.server_close()
        capture.stop()
        dns.stop()


def _submit(srv: HttpServer, recipients: list[str]) -> None:
    msg = f"From: <{ADMIN}>\r\nTo: {', '.join(recipients)}\r\nSubject: hello\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.starttls(context=srv.client_context())
        s.login(ADMIN, PASSWORD)
        assert s.sendmail(ADMIN, recipients, msg) == {}


def _report(received: Received) -> dict[str, Any]:
    msg = message_from_bytes(received.data, policy=default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    [part] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    domain = str(msg["TLS-Report-Domain"])
    assert str(msg["TLS-Report-Submitter"]) == HOST
    assert str(msg["Subject"]).startswith(f"Report Domain: {domain} Submitter: {HOST} Report-ID: <")
    assert str(part.get_filename()).startswith(f"{HOST}!{domain}!")
    report: dict[str, Any] = json.loads(gzip.decompress(part.get_content()))
    check_report(report)
    assert str(msg["Subject"]).endswith(f"<{report['report-id']}>")
    return report


def test_reports_recorded_in_the_past_sent_by_mail_and_https(env: dict[str, Any]) -> None:
    srv, dns, capture = env["srv"], env["dns"], env["capture"]
    srv.start(env=PAST)
    try:
        _submit(srv, ["a@good.test", "b@notls.test", "c@sts.test", "d@quiet.test", "e@badsts.test",
                      "f@dane.test"])
        assert wait(lambda: capture.arrived(MX["good.test"]), 30)[0].tls
        assert not wait(lambda: capture.arrived(MX["notls.test"]), 30)[0].tls
        assert wait(lambda: capture.arrived(MX["quiet.test"]), 30)[0].tls
        assert wait(lambda: capture.arrived(MX["badsts.test"]), 30)[0].tls
        reason = wait(lambda: pending_reason(srv, "c@sts.test"), 30)
        assert "certificate" in reason.lower() or "hostname" in reason.lower(), reason
        assert "DANE" in wait(lambda: pending_reason(srv, "f@dane.test"), 30)
    finally:
        assert srv.stop() == 0  # the recorder flushes its counts at shutdown
    assert capture.arrived(MX["sts.test"]) == [] and capture.arrived(MX["dane.test"]) == []
    pending = srv.admin(lambda admin, store: store.tlsrpt_pending(10**11))
    assert {r.policy_domain for r in pending} == {"good.test", "notls.test", "sts.test", "quiet.test", "badsts.test",
                                                  "dane.test"}
    [period] = {r.period for r in pending}
    assert time.time() - 3 * 86400 < period < time.time() - 86400

    srv.start()
    try:
        first = srv.cli("tlsrpt", "send-reports", "--json")
        assert first.returncode == 0, first.stderr
        outcomes = {o["domain"]: o for o in json.loads(first.stdout)["reports"]}
        assert {d: o["status"] for d, o in outcomes.items()} == {
            "good.test": "sent", "notls.test": "sent", "sts.test": "sent", "quiet.test": "dropped",
            "badsts.test": "sent", "dane.test": "sent"}
        assert outcomes["good.test"]["posted"] == [f"https://reports.test:{env['port']}/tlsrpt"]
        assert outcomes["notls.test"]["recipients"] == ["tls@reports.test"]
        again = srv.cli("tlsrpt", "send-reports", "--json")
        assert [o for o in json.loads(again.stdout)["reports"] if o["status"] != "deferred"] == []
        mails = wait(lambda: (lambda m: m if len(m) >= 5 else None)(capture.arrived(MX["reports.test"])), 30)
    finally:
        srv.stop()
    assert len(capture.arrived(MX["reports.test"])) == 5
    assert "Traceback" not in srv.logs(), srv.logs()
    reports = {}
    for m in mails:
        assert m.mail_from == f"postmaster@{DOMAIN}" and m.recipients == ["tls@reports.test"]
        assert dkimpy.DKIM(m.data).verify(dnsfunc=dns_txt_lookup(dns)), "report's DKIM signature fails"
        report = _report(m)
        reports[report["policies"][0]["policy"]["policy-domain"]] = report
    assert set(reports) == {"good.test", "notls.test", "sts.test", "badsts.test", "dane.test"}
    for report in reports.values():
        assert report["organization-name"] == "Example Mail"
        assert report["contact-info"] == f"postmaster@{DOMAIN}"
        assert report["date-range"]["end-datetime"].endswith("T23:59:59Z")

    [good] = reports["good.test"]["policies"]
    assert good["policy"] == {"policy-type": "no-policy-found", "policy-domain": "good.test"}
    assert good["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}
    [notls] = reports["notls.test"]["policies"]
    assert notls["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    assert notls["failure-details"] == [{
        "result-type": "starttls-not-supported", "sending-mta-ip": "127.0.0.1",
        "receiving-mx-hostname": "mx.notls.test", "receiving-ip": MX["notls.test"], "failed-session-count": 1}]
    [sts] = reports["sts.test"]["policies"]
    assert sts["policy"] == {
        "policy-type": "sts", "policy-domain": "sts.test", "mx-host": ["mx.sts.test"],
        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx.sts.test", "max_age: 86400"]}
    assert sts["summary"]["total-successful-session-count"] == 0
    details = sts["failure-details"]
    assert {d["result-type"] for d in details} == {"certificate-host-mismatch"}
    assert {(d["receiving-mx-hostname"], d["receiving-ip"]) for d in details} == {("mx.sts.test", MX["sts.test"])}
    assert sts["summary"]["total-failure-session-count"] >= 1

    by_type = {p["policy"]["policy-type"]: p for p in reports["badsts.test"]["policies"]}
    assert by_type["no-policy-found"]["summary"] == {"total-successful-session-count": 1,
                                                     "total-failure-session-count": 0}
    assert by_type["sts"]["policy"] == {"policy-type": "sts", "policy-domain": "badsts.test"}
    assert [d["result-type"] for d in by_type["sts"]["failure-details"]] == ["sts-webpki-invalid"]

    [dane] = reports["dane.test"]["policies"]
    assert dane["policy"] == {"policy-type": "tlsa", "policy-domain": "dane.test",
                              "policy-string": ["3 1 1 " + "00" * 32], "mx-host": ["mx.dane.test"]}
    assert dane["summary"]["total-successful-session-count"] == 0
    assert {(d["result-type"], d["receiving-mx-hostname"]) for d in dane["failure-details"]} == {
        ("validation-failure", "mx.dane.test")}
    assert "TLSA" in dane["failure-details"][0]["additional-information"]

    [(path, headers, body)] = _Handler.posts
    assert path == "/tlsrpt" and headers["content-type"] == "application/tlsrpt+gzip"
    assert json.loads(gzip.decompress(body)) == reports["good.test"]  # the mail's report, posted


def test_received_reports_listed_by_cli_and_api_and_dns_record(env: dict[str, Any]) -> None:
    srv, dns = env["srv"], env["dns"]
    srv.start()
    try:
        good = report_mail(google_report(DOMAIN), to=f"postmaster@{DOMAIN}", domain=DOMAIN)
        broken = report_mail(b'{"organization-name": "Broken Inc.", "policies": [', to=f"postmaster@{DOMAIN}",
                             domain=DOMAIN)
        with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="mail-sor-f41.google.com", timeout=30) as s:
            assert s.sendmail("noreply-smtp-tls-reporting@google.com", [f"postmaster@{DOMAIN}"], broken) == {}
            assert s.sendmail("noreply-smtp-tls-reporting@google.com", [f"postmaster@{DOMAIN}"], good) == {}

        def listed() -> list[Any] | None:
            r = srv.cli("tlsrpt", "list", "--json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout) or None

        [item] = wait(listed, 30)
        assert item["organization"] == "Google Inc." and item["domains"] == [DOMAIN]
        assert (item["successful"], item["failed"]) == (12, 1)
        assert item["start"] == "2026-12-01T00:00:00Z"
        assert item["document"]["policies"][0]["failure-details"][0]["result-type"] == "certificate-expired"
        table = srv.cli("tlsrpt", "list")
        assert "Google Inc." in table.stdout and "certificate-expired" in table.stdout
        status, _, api = srv.call("GET", f"/api/v1/tls-reports?domain={DOMAIN}")
        assert status == 200 and api == [item]
        assert srv.call("GET", "/api/v1/tls-reports?domain=other.test")[2] == []
        assert srv.call("GET", "/api/v1/tls-reports", token="")[0] == 401
        # Both messages are in the postmaster's mailbox: the broken report is just mail.
        subjects = [m for m in srv.messages(ADMIN) if b"TLS-Report-Domain" in m]
        assert len(subjects) == 2
        records = json.loads(srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--json").stdout)
        [rec] = [r for r in records if r["kind"] == "TLSRPT"]
        assert rec["name"] == f"_smtp._tls.{DOMAIN}"
        assert rec["value"] == f"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"
        dns.publish(records)
        check = json.loads(srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--check", "--json").stdout)
        assert [v["status"] for v in check if v["kind"] == "TLSRPT"] == ["correct"]
    finally:
        srv.stop()
    logs = srv.logs()
    assert "tlsrpt_report_invalid" in logs and "tlsrpt_report_received" in logs
    assert "Traceback" not in logs, logs
