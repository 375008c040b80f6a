"""SMTP TLS Reporting (RFC 8460), sans-IO: the ``_smtp._tls`` record, the JSON report we
send, the report mail, and the parser for the reports others send us.

* :func:`parse_record`: a recipient domain's reporting addresses (RFC 8460 3).
* :func:`compose_report`: the aggregate report of one policy domain and one UTC day
  (RFC 8460 4) from the rows the recorder stored (``store.api.TlsResultRow``).
* :func:`compose_message`: that report as mail (RFC 8460 5.3): ``multipart/report;
  report-type="tlsrpt"``, gzipped JSON as ``application/tlsrpt+gzip``, the
  ``TLS-Report-Domain``/``TLS-Report-Submitter`` header fields and the RFC subject.
* :func:`extract_report` / :func:`parse_report`: a received report mail's JSON, with size
  and count limits; anything malformed raises :class:`ReportError` (the message stays an
  ordinary message in its mailbox).
"""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import email.utils
import gzip
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

from postroom.store.api import TlsResultRow

# RFC 8460 4.3 result types (4.3.1 negotiation, 4.3.2.1 DANE, 4.3.2.2 MTA-STS).
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
)
POLICY_TYPES = ("sts", "tlsa", "no-policy-found")
MEDIA_GZIP = "application/tlsrpt+gzip"  # RFC 8460 6.4
MEDIA_JSON = "application/tlsrpt+json"  # RFC 8460 6.5

# Limits on what we accept (received reports).
MAX_MESSAGE = 4 * 1024 * 1024  # a bigger message is not looked at
MAX_JSON = 8 * 1024 * 1024  # decompressed report
MAX_POLICIES = 1000
MAX_FAILURE_DETAILS = 1000  # per policy
MAX_STRING = 1024  # any single string kept from a report
MAX_RUA = 10  # reporting URIs used from one record


class ReportError(ValueError):
    """A received report is malformed or over a limit."""


# --- the _smtp._tls record (RFC 8460 3) ----------------------------------------------


def parse_record(records: Sequence[bytes]) -> tuple[str, ...] | None:
    """The ``rua`` URIs (``mailto:ADDRESS`` / ``https://...``) of the TXT records at
    ``_smtp._tls.DOMAIN``, or None: RFC 8460 3 discards records not starting with
    ``v=TLSRPTv1;`` and wants exactly one left. Unknown URI schemes are ignored."""
    found = [r for r in records if r.replace(b" ", b"").startswith(b"v=TLSRPTv1;")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].decode("utf-8", "replace").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip().lower(), value.strip())
    rua = fields.get("rua")
    if not rua:
        return None
    out: list[str] = []
    for uri in rua.split(","):
        uri = uri.strip()
        if uri.lower().startswith("mailto:"):
            address = unquote(uri[7:].partition("?")[0]).strip()
            if "@" in address and " " not in address:
                out.append("mailto:" + address)
        elif uri.lower().startswith("https://"):
            out.append(uri)
    return tuple(out[:MAX_RUA]) or None


# --- the report we send (RFC 8460 4) -----------------------------------------------------


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def compose_report(
    rows: Sequence[TlsResultRow], *, org_name: str, contact: str, report_id: str, begin: int, end: int,
) -> dict[str, Any]:
    """The report of one policy domain (rows share ``policy_domain`` and ``period``):
    one ``policies`` entry per distinct applied policy, with its success count and
    failure details (RFC 8460 4.4)."""
    policies: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r.policy_type, r.policy_string, r.mx_host)
        entry = policies.get(key)
        if entry is None:
            policy: dict[str, Any] = {"policy-type": r.policy_type, "policy-domain": r.policy_domain}
            if r.policy_string:
                policy["policy-string"] = _lines(r.policy_string)
            if r.mx_host:
                policy["mx-host"] = _lines(r.mx_host)
            entry = policies[key] = {
                "policy": policy,
                "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
                "failure-details": [],
            }
        if not r.result_type:
            entry["summary"]["total-successful-session-count"] += r.count
            continue
        entry["summary"]["total-failure-session-count"] += r.count
        detail: dict[str, Any] = {"result-type": r.result_type}
        if r.sending_ip:
            detail["sending-mta-ip"] = r.sending_ip
        if r.receiving_mx:
            detail["receiving-mx-hostname"] = r.receiving_mx
        if r.receiving_ip:
            detail["receiving-ip"] = r.receiving_ip
        detail["failed-session-count"] = r.count
        if r.detail:
            detail["additional-information"] = r.detail
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    return {
        "organization-name": org_name,
        "date-range": {"start-datetime": _iso(begin), "end-datetime": _iso(end)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": list(policies.values()),
    }


def report_filename(submitter: str, domain: str, begin: int, end: int, unique: str = "") -> str:
    """RFC 8460 5.1: ``sender!policy-domain!begin!end[!unique-id].json.gz``."""
    tail = f"!{unique}" if unique else ""
    return f"{submitter}!{domain}!{begin}!{end}{tail}.json.gz"


def gzip_report(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode(), mtime=0)


def compose_message(
    report: dict[str, Any], gz: bytes, *, sender: str, recipients: Sequence[str], submitter: str,
    domain: str, filename: str, message_id: str, now: float,
) -> bytes:
    """RFC 8460 5.3: the report as a ``multipart/report`` message (RFC 6522) whose second
    part is the gzipped JSON (``application/tlsrpt+gzip``, base64)."""
    report_id = report["report-id"]
    boundary = f"=_tlsrpt_{message_id.partition('@')[0]}"
    payload = base64.encodebytes(gz).replace(b"\n", b"\r\n")
    day = report["date-range"]["start-datetime"][:10]
    head = (
        f"From: <{sender}>\r\n"
        f"To: {', '.join('<' + r + '>' for r in recipients)}\r\n"
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>\r\n"
        f"Date: {email.utils.formatdate(now, localtime=False)}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        f"TLS-Report-Domain: {domain}\r\n"
        f"TLS-Report-Submitter: {submitter}\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"\r\n\r\n'
    )
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is an aggregate TLS report (RFC 8460) for {domain} from {submitter} ({day}).\r\n\r\n"
        f"--{boundary}\r\nContent-Type: {MEDIA_GZIP}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
    )
    return head.encode() + body.encode() + payload + f"\r\n--{boundary}--\r\n".encode()


# --- reports we receive -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedReport:
    organization: str
    report_id: str
    contact: str
    start: int
    end: int
    domains: tuple[str, ...]
    successful: int
    failed: int
    document: dict[str, Any]  # the report, with only the fields we checked, bounded


def looks_like_report(head: bytes) -> bool:
    """Cheap test on a message's header (case-insensitive): worth parsing?"""
    lower = head.lower()
    return b"tlsrpt" in lower or b"tls-report-domain" in lower


def extract_report(message: bytes) -> bytes | None:
    """The JSON of the first TLS-RPT attachment of ``message`` (RFC 8460 5.3: a part of
    type ``application/tlsrpt+gzip`` or ``+json``; also a ``.json.gz`` file sent as
    ``application/gzip``, which some reporters do), decompressed; None when there is none.
    ReportError when it is over a limit or not gzip."""
    if len(message) > MAX_MESSAGE:
        raise ReportError(f"message larger than {MAX_MESSAGE} bytes")
    msg = email.message_from_bytes(message, policy=email.policy.default)
    for count, part in enumerate(msg.walk()):
        if count > 50:
            break
        ctype = part.get_content_type()
        filename = (part.get_filename() or "").lower() if isinstance(part, EmailMessage) else ""
        gz = ctype == MEDIA_GZIP or (
            ctype in ("application/gzip", "application/x-gzip", "application/octet-stream")
            and filename.endswith(".json.gz")
        )
        if not gz and ctype != MEDIA_JSON:
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            raise ReportError("the report part has no content")
        return gunzip(raw) if gz else raw
    return None


def gunzip(data: bytes, limit: int = MAX_JSON) -> bytes:
    """Decompress gzip with a bound on the output (a small bomb stays small)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise ReportError(f"not gzip data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ReportError(f"report larger than {limit} bytes")
    return out


def _str(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{key}: a string is required")
    return value[:MAX_STRING]


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ReportError(f"{key}: a count is required")
    return value


def _time(text: str, key: str) -> int:
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return int(when.timestamp())
    except (ValueError, OverflowError):
        raise ReportError(f"{key}: not an RFC 3339 date-time") from None


def parse_report(data: bytes) -> ParsedReport:
    """Check a report's JSON against RFC 8460 4.4 (the required fields and their types)
    and summarize it. Unknown fields are dropped from the kept document; strings are cut
    at MAX_STRING and lists at their limits."""
    if len(data) > MAX_JSON:
        raise ReportError(f"report larger than {MAX_JSON} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ReportError(f"not JSON: {e}"[:200]) from None
    if not isinstance(doc, dict):
        raise ReportError("the report is not a JSON object")
    rng = doc.get("date-range")
    if not isinstance(rng, dict):
        raise ReportError("date-range: an object is required")
    start_text, end_text = _str(rng, "start-datetime"), _str(rng, "end-datetime")
    policies = doc.get("policies")
    if not isinstance(policies, list) or not policies:
        raise ReportError("policies: a non-empty list is required")
    if len(policies) > MAX_POLICIES:
        raise ReportError(f"more than {MAX_POLICIES} policies")
    kept: list[dict[str, Any]] = []
    domains: dict[str, None] = {}
    successful = failed = 0
    for p in policies:
        if not isinstance(p, dict) or not isinstance(p.get("policy"), dict) or not isinstance(p.get("summary"), dict):
            raise ReportError("policies[]: policy and summary objects are required")
        pol, summ = p["policy"], p["summary"]
        ptype = _str(pol, "policy-type")
        if ptype not in POLICY_TYPES:
            raise ReportError(f"policy-type: {ptype[:40]!r} is not one of RFC 8460 4.4's")
        domain = _str(pol, "policy-domain").lower()
        ok, bad = _count(summ, "total-successful-session-count"), _count(summ, "total-failure-session-count")
        successful, failed = successful + ok, failed + bad
        domains[domain] = None
        entry: dict[str, Any] = {
            "policy": {"policy-type": ptype, "policy-domain": domain},
            "summary": {"total-successful-session-count": ok, "total-failure-session-count": bad},
        }
        for key in ("policy-string", "mx-host"):
            value = pol.get(key)
            if isinstance(value, list):
                entry["policy"][key] = [str(v)[:MAX_STRING] for v in value[:100]]
        details = p.get("failure-details", [])
        if not isinstance(details, list):
            raise ReportError("failure-details: a list is required")
        out_details = []
        for d in details[:MAX_FAILURE_DETAILS]:
            if not isinstance(d, dict):
                raise ReportError("failure-details[]: an object is required")
            item: dict[str, Any] = {
                "result-type": _str(d, "result-type"),
                "failed-session-count": _count(d, "failed-session-count"),
            }
            for key in ("sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo", "receiving-ip",
                        "additional-information", "failure-reason-code"):
                value = _str(d, key, required=False)
                if value:
                    item[key] = value
            out_details.append(item)
        if out_details:
            entry["failure-details"] = out_details
        kept.append(entry)
    organization, report_id = _str(doc, "organization-name"), _str(doc, "report-id")
    contact = _str(doc, "contact-info", required=False)
    start, end = _time(start_text, "start-datetime"), _time(end_text, "end-datetime")
    document = {
        "organization-name": organization,
        "date-range": {"start-datetime": start_text, "end-datetime": end_text},
        "contact-info": contact,
        "report-id": report_id,
        "policies": kept,
    }
    return ParsedReport(organization, report_id, contact, start, end, tuple(domains), successful, failed, document)
