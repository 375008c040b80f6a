"""TLS-RPT test helpers: a checker of RFC 8460 4.4's report format (required fields and
their JSON types, written from the RFC's field list), a report in the form Google sends,
and that report as a mail."""

from __future__ import annotations

import base64
import gzip
import json
import re
from typing import Any

RESULT_TYPES = {
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
}
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")  # RFC 3339


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    assert key in obj, f"{where}: {key} is required"
    value = obj[key]
    assert isinstance(value, kind) and not isinstance(value, bool), f"{where}.{key}: {value!r}"
    return value


def check_report(doc: Any, *, strict: bool = True) -> None:
    """Assert ``doc`` has every field RFC 8460 4.4 requires, with the right types.
    ``strict`` (reports we make): also known result types and counts that add up."""
    assert isinstance(doc, dict)
    _need(doc, "organization-name", str, "report")
    _need(doc, "contact-info", str, "report")
    _need(doc, "report-id", str, "report")
    rng = _need(doc, "date-range", dict, "report")
    for key in ("start-datetime", "end-datetime"):
        value = _need(rng, key, str, "date-range")
        assert not strict or _DATETIME.match(value), rng
    policies = _need(doc, "policies", list, "report")
    assert policies
    for i, p in enumerate(policies):
        where = f"policies[{i}]"
        policy = _need(p, "policy", dict, where)
        assert _need(policy, "policy-type", str, where) in ("sts", "tlsa", "no-policy-found")
        _need(policy, "policy-domain", str, where)
        for key in ("policy-string", "mx-host"):
            if key in policy:
                assert all(isinstance(s, str) for s in _need(policy, key, list, where))
        summary = _need(p, "summary", dict, where)
        ok = _need(summary, "total-successful-session-count", int, where)
        bad = _need(summary, "total-failure-session-count", int, where)
        assert ok >= 0 and bad >= 0
        details = p.get("failure-details", [])
        assert isinstance(details, list)
        for d in details:
            result = _need(d, "result-type", str, where)
            count = _need(d, "failed-session-count", int, where)
            assert count >= 0
            if strict:
                assert result in RESULT_TYPES and count > 0, d
            for key in ("sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo", "receiving-ip",
                        "additional-information", "failure-reason-code"):
                if key in d:
                    _need(d, key, str, where)
        if strict:
            assert sum(d["failed-session-count"] for d in details) == bad, p


def google_report(domain: str, report_id: str = "2026-12-01T00:00:00Z_example.test") -> dict[str, Any]:
    """Shaped like the reports Google sends (field order and values as theirs look)."""
    return {
        "organization-name": "Google Inc.",
        "date-range": {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-01T23:59:59Z"},
        "contact-info": "smtp-tls-reporting@google.com",
        "report-id": report_id,
        "policies": [{
            "policy": {
                "policy-type": "sts",
                "policy-string": ["version: STSv1", "mode: enforce", f"mx: mail.{domain}", "max_age: 86400"],
                "policy-domain": domain,
            },
            "summary": {"total-successful-session-count": 12, "total-failure-session-count": 1},
            "failure-details": [{
                "result-type": "certificate-expired", "sending-mta-ip": "209.85.220.41",
                "receiving-mx-hostname": f"mail.{domain}", "receiving-ip": "192.0.2.10",
                "failed-session-count": 1,
            }],
        }],
    }


def report_mail(report: dict[str, Any] | bytes, *, to: str, domain: str, gz: bool = True) -> bytes:
    """A report mail as Google's look (multipart/report, application/tlsrpt+gzip)."""
    raw = report if isinstance(report, bytes) else json.dumps(report).encode()
    body = gzip.compress(raw) if gz else raw
    payload = base64.encodebytes(body).decode().replace("\n", "\r\n")
    ctype = "application/tlsrpt+gzip" if gz else "application/tlsrpt+json"
    name = f"google.com!{domain}!1796083200!1796169599!001.json" + (".gz" if gz else "")
    return (
        "From: noreply-smtp-tls-reporting@google.com\r\n"
        f"To: {to}\r\n"
        f"Subject: Report Domain: {domain} Submitter: google.com Report-ID: <2026.12.01T00.00.00Z+{domain}@google.com>\r\n"
        "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
        "Message-ID: <000000000000abcdef@google.com>\r\n"
        f"TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: google.com\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; boundary="000000000000b1"; report-type=tlsrpt\r\n\r\n'
        "--000000000000b1\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\n"
        f"This is an aggregate TLS report from google.com\r\n\r\n"
        f"--000000000000b1\r\nContent-Type: {ctype}; name=\"{name}\"\r\n"
        f"Content-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{payload}\r\n--000000000000b1--\r\n"
    ).encode()
