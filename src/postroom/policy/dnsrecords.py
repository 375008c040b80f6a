"""The DNS records a mail domain needs, and the comparison with what DNS serves.

Sans-IO: :func:`required` lists the records from the configuration and the DKIM keys;
:func:`judge` compares one record with the answers found (the lookups are done by
``admin.auth_ops.dns_check``). Used by ``postroom dns DOMAIN [--check]`` and, later, by the
HTTP admin API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from postroom.config import Listener
from postroom.policy import dkim, dmarc
from postroom.store.api import DkimKey

SPF_RECORD = "v=spf1 mx -all"

# RFC 6186 / RFC 8314: the SRV records mail clients use to find our services.
_SRV = {
    "submission": "_submission._tcp",
    "submissions": "_submissions._tcp",
    "imap": "_imap._tcp",
    "imaps": "_imaps._tcp",
    "pop3": "_pop3._tcp",
    "pop3s": "_pop3s._tcp",
}


@dataclass(frozen=True, slots=True)
class Record:
    kind: str  # MX, SPF, DKIM, DMARC, SRV, A, AAAA, PTR
    name: str  # owner name, without the final dot
    rtype: str  # the DNS type to create
    value: str  # the record's data as a zone file writes it (TXT: unquoted text)
    note: str = ""

    def zone_line(self) -> str:
        if self.rtype == "TXT":
            # Zone files cut character-strings at 255 octets (RFC 1035 3.3.14).
            chunks = [self.value[i : i + 255] for i in range(0, len(self.value), 255)] or [""]
            data = " ".join(f'"{c}"' for c in chunks)
        elif self.rtype in ("MX", "SRV", "PTR", "CNAME"):
            data = self.value + "."
        else:
            data = self.value
        return f"{self.name}. 3600 IN {self.rtype} {data}"

    def to_json(self) -> dict[str, str]:
        return asdict(self) | {"zone": self.zone_line()}


def required(
    domain: str,
    hostname: str,
    keys: Sequence[DkimKey],
    listeners: Sequence[Listener],
    addresses: Sequence[str],
    *,
    rua: str,
) -> list[Record]:
    """Every record ``domain`` needs for mail through this server, in the order to create
    them. ``addresses``: the server's public addresses (for A/AAAA and PTR)."""
    out = [Record("MX", domain, "MX", f"10 {hostname}", "mail for the domain goes to this server")]
    for ip in addresses:
        v6 = ipaddress.ip_address(ip).version == 6
        out.append(Record("AAAA" if v6 else "A", hostname, "AAAA" if v6 else "A", ip,
                          "the server's address"))
    out.append(Record("SPF", domain, "TXT", SPF_RECORD, "only the MX hosts send for the domain (RFC 7208)"))
    for key in keys:
        note = "signing key" if key.retire_at is None else "retiring key: keep until `postroom dkim retire`"
        out.append(Record("DKIM", f"{key.selector}._domainkey.{domain}", "TXT", key.public_record,
                          f"{key.algorithm} {note}"))
    out.append(Record("DMARC", f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:{rua}",
                      "unauthenticated mail claiming the domain goes to spam; reports to a local address"))
    seen: set[str] = set()
    for lst in listeners:
        label = _SRV.get(lst.role)
        if label and label not in seen:
            seen.add(label)
            out.append(Record("SRV", f"{label}.{domain}", "SRV", f"0 1 {lst.port} {hostname}",
                              f"mail clients find {lst.role} (RFC 6186)"))
    for ip in addresses:
        out.append(Record("PTR", ipaddress.ip_address(ip).reverse_pointer, "PTR", hostname,
                          "reverse DNS of the server's address (set by the address's provider)"))
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    record: Record
    status: str  # correct | missing | wrong
    found: tuple[str, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {**self.record.to_json(), "status": self.status, "found": list(self.found), "detail": self.detail}


def judge(record: Record, found: Sequence[str], *, spf_pass: bool | None = None) -> Verdict:
    """Compare ``record`` with the answers ``found`` (same text form as ``Record.value``;
    MX "pref host", SRV "prio weight port host"). ``spf_pass``: whether our addresses pass
    the SPF record found (None: unknown, compare text)."""
    found_t = tuple(found)
    kind = record.kind
    if kind == "SPF":
        spf = [f for f in found if f.lower().startswith("v=spf1")]
        if not spf:
            return Verdict(record, "missing", found_t)
        if len(spf) > 1:
            return Verdict(record, "wrong", found_t, "several SPF records (permerror)")
        if spf_pass is True or (spf_pass is None and spf[0].split() == record.value.split()):
            return Verdict(record, "correct", found_t)
        return Verdict(record, "wrong", found_t, "the server's addresses do not pass this SPF record")
    if kind == "DKIM":
        if not found:
            return Verdict(record, "missing", found_t)
        want = dkim.parse_tags(record.value).get("p", "")
        for f in found:
            try:
                if dkim.parse_tags(f).get("p", "").replace(" ", "") == want:
                    return Verdict(record, "correct", found_t)
            except dkim.DkimError:
                continue
        return Verdict(record, "wrong", found_t, "a different key is published")
    if kind == "DMARC":
        records = [f for f in found if f.replace(" ", "").startswith("v=DMARC1")]
        if not records:
            return Verdict(record, "missing", found_t)
        parsed = dmarc.select_record(records)
        if parsed is None:
            return Verdict(record, "wrong", found_t, "not a usable DMARC record")
        if parsed.policy not in ("quarantine", "reject"):
            return Verdict(record, "wrong", found_t, f"p={parsed.policy} does not protect the domain")
        return Verdict(record, "correct", found_t)
    if not found:
        return Verdict(record, "missing", found_t)
    if kind == "MX":
        host = record.value.split()[1]
        if any(f.split()[-1].rstrip(".").lower() == host for f in found):
            return Verdict(record, "correct", found_t)
        return Verdict(record, "wrong", found_t, f"no MX points to {host}")
    if kind == "SRV":
        _, _, port, host = record.value.split()
        if any(f.split()[2:] == [port, host] for f in found):
            return Verdict(record, "correct", found_t)
        return Verdict(record, "wrong", found_t, f"expected port {port} on {host}")
    # A, AAAA, PTR: the exact value must be among the answers
    if any(f.rstrip(".").lower() == record.value.lower() for f in found):
        return Verdict(record, "correct", found_t)
    return Verdict(record, "wrong", found_t)
