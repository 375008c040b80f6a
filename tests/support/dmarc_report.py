"""Checks of a DMARC aggregate report against the structure of RFC 7489 appendix C.

No XML Schema validator is among the test dependencies, so the schema's rules that matter
are written out here as a table: for each complex type, its children in order (``seq``:
an ``xs:sequence``, order enforced) or in any order (``all``), with their minimum and maximum
counts, and the enumerations of the simple types. :func:`check_feedback` walks a report and
raises AssertionError naming the first element that breaks a rule.
"""

from __future__ import annotations

import email
import gzip
import ipaddress
import xml.etree.ElementTree as ET
from email.message import Message
from email.policy import default

UNBOUNDED = 1 << 30

# type name -> (kind, [(child, child type or None for text, min, max)])
TYPES: dict[str, tuple[str, list[tuple[str, str | None, int, int]]]] = {
    "feedback": ("seq", [
        ("version", "decimal", 1, 1),
        ("report_metadata", "ReportMetadataType", 1, 1),
        ("policy_published", "PolicyPublishedType", 1, 1),
        ("record", "RecordType", 1, UNBOUNDED),
    ]),
    "ReportMetadataType": ("seq", [
        ("org_name", "string", 1, 1),
        ("email", "string", 1, 1),
        ("extra_contact_info", "string", 0, 1),
        ("report_id", "string", 1, 1),
        ("date_range", "DateRangeType", 1, 1),
        ("error", "string", 0, UNBOUNDED),
    ]),
    "DateRangeType": ("all", [("begin", "integer", 1, 1), ("end", "integer", 1, 1)]),
    "PolicyPublishedType": ("all", [
        ("domain", "string", 1, 1),
        ("adkim", "AlignmentType", 0, 1),
        ("aspf", "AlignmentType", 0, 1),
        ("p", "DispositionType", 1, 1),
        ("sp", "DispositionType", 1, 1),
        ("pct", "integer", 1, 1),
        ("fo", "string", 1, 1),
    ]),
    "RecordType": ("seq", [
        ("row", "RowType", 1, 1),
        ("identifiers", "IdentifierType", 1, 1),
        ("auth_results", "AuthResultType", 1, 1),
    ]),
    "RowType": ("all", [
        ("source_ip", "IPAddress", 1, 1),
        ("count", "integer", 1, 1),
        ("policy_evaluated", "PolicyEvaluatedType", 1, 1),
    ]),
    "PolicyEvaluatedType": ("seq", [
        ("disposition", "DispositionType", 1, 1),
        ("dkim", "DMARCResultType", 1, 1),
        ("spf", "DMARCResultType", 1, 1),
        ("reason", "PolicyOverrideReason", 0, UNBOUNDED),
    ]),
    "PolicyOverrideReason": ("all", [
        ("type", "PolicyOverrideType", 1, 1), ("comment", "string", 0, 1),
    ]),
    "IdentifierType": ("all", [
        ("envelope_to", "string", 0, 1),
        ("envelope_from", "string", 1, 1),
        ("header_from", "string", 1, 1),
    ]),
    "AuthResultType": ("seq", [
        ("dkim", "DKIMAuthResultType", 0, UNBOUNDED),
        ("spf", "SPFAuthResultType", 1, UNBOUNDED),
    ]),
    "DKIMAuthResultType": ("all", [
        ("domain", "string", 1, 1), ("selector", "string", 0, 1),
        ("result", "DKIMResultType", 1, 1), ("human_result", "string", 0, 1),
    ]),
    "SPFAuthResultType": ("all", [
        ("domain", "string", 1, 1), ("scope", "SPFDomainScope", 1, 1),
        ("result", "SPFResultType", 1, 1),
    ]),
}

ENUMS = {
    "AlignmentType": {"r", "s"},
    "DispositionType": {"none", "quarantine", "reject"},
    "DMARCResultType": {"pass", "fail"},
    "PolicyOverrideType": {"forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                           "local_policy", "other"},
    "DKIMResultType": {"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"},
    "SPFDomainScope": {"helo", "mfrom"},
    "SPFResultType": {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"},
}


def _text(el: ET.Element, kind: str, path: str) -> None:
    assert len(el) == 0, f"{path} must be text only"
    text = (el.text or "").strip()
    if kind == "string":
        return
    if kind == "integer":
        assert text.lstrip("-").isdigit(), f"{path}: {text!r} is not an integer"
    elif kind == "decimal":
        float(text)
    elif kind == "IPAddress":
        ipaddress.ip_address(text)
    else:
        assert text in ENUMS[kind], f"{path}: {text!r} not in {sorted(ENUMS[kind])}"


def _check(el: ET.Element, type_name: str, path: str) -> None:
    kind, children = TYPES[type_name]
    names = [c.tag for c in el]
    known = {name for name, _, _, _ in children}
    unknown = [n for n in names if n not in known]
    assert not unknown, f"{path}: unexpected elements {unknown}"
    for name, _, low, high in children:
        n = names.count(name)
        assert low <= n <= high, f"{path}/{name}: {n} present, allowed {low}..{high}"
    if kind == "seq":
        order = [name for name, _, _, _ in children]
        positions = [order.index(n) for n in names]
        assert positions == sorted(positions), f"{path}: children out of order: {names}"
    types = {name: t for name, t, _, _ in children}
    for child in el:
        child_type = types[child.tag]
        child_path = f"{path}/{child.tag}"
        if child_type in TYPES:
            _check(child, child_type, child_path)
        else:
            _text(child, child_type or "string", child_path)


def check_feedback(xml: bytes) -> ET.Element:
    """Parse ``xml`` and check it against RFC 7489 appendix C; returns the root."""
    root = ET.fromstring(xml)
    assert root.tag == "feedback", root.tag
    _check(root, "feedback", "feedback")
    return root


def report_parts(data: bytes) -> tuple[Message, str, bytes]:
    """(the parsed message, the attachment's file name, the XML) of a report message."""
    msg = email.message_from_bytes(data, policy=default)
    attachments = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    assert len(attachments) == 1, [p.get_content_type() for p in msg.walk()]
    part = attachments[0]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return msg, part.get_filename() or "", gzip.decompress(payload)
