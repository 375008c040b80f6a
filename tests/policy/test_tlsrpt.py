"""TLS-RPT (RFC 8460) without a server: the ``_smtp._tls`` record, the recorder, the JSON
report (checked against RFC 8460 4.4's required fields), the report mail, the parser of
received reports and ``send_due`` against a real SQLite store."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import types
from pathlib import Path
from typing import Any

import pytest

from postroom.admin.auth_ops import dkim_generate
from postroom.config import AuthChecksSettings, OutboundSettings, TlsReportsSettings
from postroom.policy import tlsrpt, tls_reports
from postroom.policy.dns import SERVFAIL, DictResolver
from postroom.policy.signing import Signer
from postroom.policy.tls_reports import AppliedPolicy, TlsRecorder, TlsReportInbox, send_due
from postroom.store.api import TlsResultRow
from postroom.store.sqlite import open_store
from support.tlsrpt import check_report, google_report, report_mail

DAY = 86400
DAY1 = 20000 * DAY  # a UTC midnight (2024-10-04)
STS = AppliedPolicy("sts.test", "sts", "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400", "mx.sts.test")


def test_parse_record() -> None:
    p = tlsrpt.parse_record
    assert p([b"v=TLSRPTv1; rua=mailto:tls@example.org"]) == ("mailto:tls@example.org",)
    assert p([b"v=TLSRPTv1;rua=mailto:a@x.test,https://r.test/tlsrpt"]) == ("mailto:a@x.test", "https://r.test/tlsrpt")
    assert p([b"v=TLSRPTv1; rua=mailto:tls%2Dreports@x.test"]) == ("mailto:tls-reports@x.test",)
    assert p([b"v=TLSRPTv1; rua=mailto:a@x.test?subject=x"]) == ("mailto:a@x.test",)
    assert p([b"v=spf1 -all", b"v=TLSRPTv1; rua=mailto:a@x.test"]) == ("mailto:a@x.test",)
    # RFC 8460 3: not exactly one record, no rua, or only unknown schemes: none
    assert p([b"v=TLSRPTv1; rua=mailto:a@x.test", b"v=TLSRPTv1; rua=mailto:b@x.test"]) is None
    assert p([b"v=TLSRPTv1"]) is None
    assert p([b"v=TLSRPTv1; rua=ftp://x.test/"]) is None
    assert p([b"v=TLSRPTv2; rua=mailto:a@x.test"]) is None
    assert p([]) is None


def test_recorder_adds_up_and_flushes_in_one_write() -> None:
    written: list[list[TlsResultRow]] = []

    async def write(rows: Any) -> None:
        written.append(list(rows))

    rec = TlsRecorder(types.SimpleNamespace(tlsrpt_add=write), clock=lambda: DAY1 + 3600)
    for _ in range(3):
        rec.success(STS)
    rec.failure(STS, "certificate-expired", sending_ip="192.0.2.1", receiving_mx="mx.sts.test",
                receiving_ip="198.51.100.1", detail="expired")
    rec.failure(STS, "certificate-expired", sending_ip="192.0.2.1", receiving_mx="mx.sts.test",
                receiving_ip="198.51.100.1", detail="expired")
    rec.success(AppliedPolicy(""))  # relays and the like: not reported
    rec.success(AppliedPolicy("Plain.TEST"))
    assert asyncio.run(rec.flush()) == 3
    rows = {(r.policy_domain, r.result_type): r for r in written[0]}
    assert rows[("sts.test", "")].count == 3 and rows[("sts.test", "")].period == DAY1
    assert rows[("sts.test", "certificate-expired")].count == 2
    assert rows[("plain.test", "")].policy_type == "no-policy-found"
    assert asyncio.run(rec.flush()) == 0 and len(written) == 1


def _rows() -> list[TlsResultRow]:
    base = dict(period=DAY1, policy_domain="sts.test", policy_type=STS.type, policy_string=STS.string,
                mx_host=STS.mx_host)
    return [
        TlsResultRow(**base, count=40),  # type: ignore[arg-type]
        TlsResultRow(**base, result_type="certificate-host-mismatch", sending_ip="192.0.2.1",  # type: ignore[arg-type]
                     receiving_mx="mx.sts.test", receiving_ip="198.51.100.1", detail="wrong name", count=2),
        TlsResultRow(**base, result_type="starttls-not-supported", sending_ip="192.0.2.1",  # type: ignore[arg-type]
                     receiving_mx="mx2.sts.test", receiving_ip="198.51.100.2", count=1),
        TlsResultRow(period=DAY1, policy_domain="sts.test", policy_type="no-policy-found", policy_string="",
                     mx_host="", count=5),
    ]


def test_report_json_has_rfc_8460_fields() -> None:
    report = tlsrpt.compose_report(_rows(), org_name="Here", contact="postmaster@here.test",
                                   report_id="r1@mx.here.test", begin=DAY1, end=DAY1 + DAY - 1)
    check_report(report)
    assert report["date-range"] == {"start-datetime": "2024-10-04T00:00:00Z", "end-datetime": "2024-10-04T23:59:59Z"}
    sts, plain = report["policies"]
    assert sts["policy"] == {"policy-type": "sts", "policy-domain": "sts.test",
                             "policy-string": STS.string.split("\n"), "mx-host": ["mx.sts.test"]}
    assert sts["summary"] == {"total-successful-session-count": 40, "total-failure-session-count": 3}
    assert sts["failure-details"][0] == {
        "result-type": "certificate-host-mismatch", "sending-mta-ip": "192.0.2.1",
        "receiving-mx-hostname": "mx.sts.test", "receiving-ip": "198.51.100.1", "failed-session-count": 2,
        "additional-information": "wrong name",
    }
    assert plain == {"policy": {"policy-type": "no-policy-found", "policy-domain": "sts.test"},
                     "summary": {"total-successful-session-count": 5, "total-failure-session-count": 0}}
    # What we send, we also read back.
    parsed = tlsrpt.parse_report(json.dumps(report).encode())
    assert (parsed.successful, parsed.failed, parsed.domains) == (45, 3, ("sts.test",))


def test_report_message() -> None:
    report = tlsrpt.compose_report(_rows(), org_name="Here", contact="c", report_id="r1@mx.here.test",
                                   begin=DAY1, end=DAY1 + DAY - 1)
    gz = tlsrpt.gzip_report(report)
    filename = tlsrpt.report_filename("mx.here.test", "sts.test", DAY1, DAY1 + DAY - 1, "q1")
    assert filename == f"mx.here.test!sts.test!{DAY1}!{DAY1 + DAY - 1}!q1.json.gz"
    data = tlsrpt.compose_message(report, gz, sender="postmaster@here.test", recipients=["tls@sts.test"],
                                  submitter="mx.here.test", domain="sts.test", filename=filename,
                                  message_id="q1@mx.here.test", now=DAY1 + DAY + 600)
    assert b"\n" not in data.replace(b"\r\n", b"")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "sts.test" and msg["TLS-Report-Submitter"] == "mx.here.test"
    assert msg["Subject"] == "Report Domain: sts.test Submitter: mx.here.test Report-ID: <r1@mx.here.test>"
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == filename
    assert json.loads(gzip.decompress(attachment.get_content())) == report
    assert tlsrpt.extract_report(data) == gzip.decompress(gz)


def test_parse_google_report_and_malformed_ones() -> None:
    doc = google_report("example.test")
    parsed = tlsrpt.parse_report(json.dumps(doc).encode())
    assert parsed.organization == "Google Inc." and parsed.domains == ("example.test",)
    assert (parsed.successful, parsed.failed) == (12, 1)
    assert parsed.start == 1796083200 and parsed.end == 1796083200 + DAY - 1
    check_report(parsed.document)
    mail = report_mail(doc, to="postmaster@example.test", domain="example.test")
    assert tlsrpt.extract_report(mail) == json.dumps(doc).encode()
    assert tlsrpt.extract_report(report_mail(doc, to="x@y.test", domain="y.test", gz=False)) == json.dumps(doc).encode()
    bad = [
        b"[]", b"not json", b'{"policies": []}', json.dumps({**doc, "policies": "x"}).encode(),
        json.dumps({**doc, "date-range": {"start-datetime": "yesterday", "end-datetime": "x"}}).encode(),
        json.dumps({**doc, "policies": [{"policy": {}, "summary": {}}]}).encode(),
        json.dumps({**doc, "report-id": 7}).encode(),
        b"[" * 100000,
    ]
    for data in bad:
        with pytest.raises(tlsrpt.ReportError):
            tlsrpt.parse_report(data)
    with pytest.raises(tlsrpt.ReportError, match="gzip"):  # said gzip, is not
        tlsrpt.extract_report(report_mail(b"{}", to="x@y.test", domain="y.test", gz=False).replace(
            b"application/tlsrpt+json", b"application/tlsrpt+gzip"))
    bomb = gzip.compress(b" " * (tlsrpt.MAX_JSON + 10))
    with pytest.raises(tlsrpt.ReportError, match="larger"):
        tlsrpt.gunzip(bomb)
    assert tlsrpt.extract_report(b"Subject: hi\r\n\r\nno report\r\n") is None


def test_inbox_matches_the_address_and_stores_once(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path / "data", fsync=False)
        try:
            inbox = TlsReportInbox(store, "postmaster", clock=lambda: DAY1)
            assert inbox.wants(["PostMaster@example.test"]) and not inbox.wants(["bob@example.test"])
            assert TlsReportInbox(store, "tls@example.test").wants(["tls@example.test"])
            assert not TlsReportInbox(store, "tls@example.test").wants(["tls@other.test"])
            mail = report_mail(google_report("example.test"), to="postmaster@example.test", domain="example.test")
            first = await inbox.store_report(mail, "q1")
            assert first is not None
            assert await inbox.store_report(mail, "q2") is None  # the same report again
            assert await inbox.store_report(b"Subject: x\r\n\r\nhi\r\n", "q3") is None
            broken = report_mail(b"{", to="postmaster@example.test", domain="example.test")
            assert await inbox.store_report(broken, "q4") is None
            [r] = await store.tls_reports()
            assert (r.id, r.organization, r.domains, r.successful, r.failed) == (first, "Google Inc.", "example.test", 12, 1)
            assert await store.tls_reports(domain="other.test") == []
            assert len(await store.tls_reports(domain="example.test")) == 1
        finally:
            await store.close()

    asyncio.run(run())


def test_send_due_mail_once_no_record_and_deferral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_reports, "HTTPS_BACKOFF", 0.0)
    resolver = DictResolver({
        ("_smtp._tls.sts.test", "TXT"): ["v=TLSRPTv1; rua=mailto:tls@reports.test"],
        ("_smtp._tls.flaky.test", "TXT"): SERVFAIL,
        # an https endpoint that does not answer (nothing listens on port 9 of 127.0.0.1)
        ("_smtp._tls.posted.test", "TXT"): ["v=TLSRPTv1; rua=https://127.0.0.1:9/tlsrpt"],
    })

    async def run() -> None:
        store = open_store(tmp_path / "data", fsync=False)
        try:
            await dkim_generate(store, "here.test", algorithm="ed25519", selector="ed1", now=0)
            settings = types.SimpleNamespace(
                hostname="mx.here.test", auth_checks=AuthChecksSettings(report_org="Here"),
                tls_reports=TlsReportsSettings(), outbound=OutboundSettings(), path=tmp_path / "p.toml",
            )
            services = types.SimpleNamespace(settings=settings, store=store, resolver=resolver, signer=Signer(store))
            nop = dict(policy_type="no-policy-found", policy_string="", mx_host="")
            await store.tlsrpt_add([
                *_rows(),
                TlsResultRow(period=DAY1, policy_domain="quiet.test", **nop),  # type: ignore[arg-type]
                TlsResultRow(period=DAY1, policy_domain="flaky.test", **nop),  # type: ignore[arg-type]
                TlsResultRow(period=DAY1, policy_domain="posted.test", **nop),  # type: ignore[arg-type]
                TlsResultRow(period=DAY1 + DAY, policy_domain="sts.test", **nop),  # type: ignore[arg-type]
            ])
            ended = DAY1 + DAY
            assert await send_due(services, now=ended + 10) == []  # recorders may still flush
            outcomes = await send_due(services, now=ended + tls_reports.SETTLE_SECONDS + 1)
            status = {o.domain: (o.status, o.recipients) for o in outcomes}
            assert status == {"sts.test": ("sent", ["tls@reports.test"]), "quiet.test": ("dropped", []),
                              "flaky.test": ("deferred", []), "posted.test": ("failed", [])}
            [posted] = [o for o in outcomes if o.domain == "posted.test"]
            assert posted.failed and posted.failed[0].startswith("https://127.0.0.1:9/tlsrpt: ")
            [q] = await store.queue_list()
            assert q.sender == "postmaster@here.test" and [r.address for r in q.recipients] == ["tls@reports.test"]
            assert q.recipients[0].notify == "NEVER"
            data = await store.read_blob(q.blob_id)
            assert data.startswith(b"DKIM-Signature:") and b"d=here.test" in data[:400]
            report = json.loads(tlsrpt.extract_report(data) or b"")
            check_report(report)
            assert report["organization-name"] == "Here" and report["contact-info"] == "postmaster@here.test"
            assert {p["policy"]["policy-type"] for p in report["policies"]} == {"sts", "no-policy-found"}
            left = {(r.policy_domain, r.period) for r in await store.tlsrpt_pending(10**10)}
            assert left == {("flaky.test", DAY1), ("sts.test", DAY1 + DAY)}
            again = await send_due(services, now=ended + tls_reports.SETTLE_SECONDS + 60)
            assert [(o.domain, o.status) for o in again] == [("flaky.test", "deferred")]
            late = await send_due(services, now=DAY1 + 8 * DAY)
            assert sorted((o.domain, o.status) for o in late) == [("flaky.test", "dropped"), ("sts.test", "sent")]
            assert len(await store.queue_list()) == 2
        finally:
            await store.close()

    asyncio.run(run())


def test_dns_record_and_its_check() -> None:
    from postroom.policy.dnsrecords import judge, required

    records = required("example.test", "mail.example.test", [], [], [], rua="postmaster@example.test",
                       tlsrpt_rua="tls-reports@example.test")
    [rec] = [r for r in records if r.kind == "TLSRPT"]
    assert (rec.name, rec.rtype, rec.value) == (
        "_smtp._tls.example.test", "TXT", "v=TLSRPTv1; rua=mailto:tls-reports@example.test")
    assert tlsrpt.parse_record([rec.value.encode()]) == ("mailto:tls-reports@example.test",)
    assert judge(rec, [rec.value]).status == "correct"
    # another collector besides ours is fine; ours missing, or two records, is not
    assert judge(rec, ["v=TLSRPTv1; rua=https://r.test/x,mailto:TLS-Reports@example.test"]).status == "correct"
    assert judge(rec, ["v=TLSRPTv1; rua=mailto:else@example.test"]).status == "wrong"
    assert judge(rec, [rec.value, rec.value]).status == "wrong"
    assert judge(rec, ["v=spf1 -all"]).status == "missing"
    assert not [r for r in required("example.test", "mail.example.test", [], [], [], rua="p@example.test")
                if r.kind == "TLSRPT"]


def test_inbox_parses_a_bounded_number_at_once(tmp_path: Path) -> None:
    """take() parses in the background; beyond MAX_PARSING at once, messages stay plain."""

    async def run() -> None:
        store = open_store(tmp_path / "data", fsync=False)
        try:
            inbox = TlsReportInbox(store, "postmaster", clock=lambda: DAY1)
            n = tls_reports.MAX_PARSING + 3
            for i in range(n):
                inbox.take(report_mail(google_report("example.test", f"r{i}"), to="postmaster@example.test",
                                       domain="example.test"), f"q{i}")
            inbox.take(b"Subject: not a report\r\n\r\nhi\r\n", "plain")  # not even looked at
            assert len(inbox._tasks) == tls_reports.MAX_PARSING
            await asyncio.gather(*inbox._tasks)
            assert len(await store.tls_reports()) == tls_reports.MAX_PARSING
        finally:
            await store.close()

    asyncio.run(run())
