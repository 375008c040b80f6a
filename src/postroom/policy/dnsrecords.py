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
from postroom.policy import dkim, dmarc, tlsrpt
from postroom.store.api import DkimKey

SPF_RECORD = "v=spf1 mx -all"

# RFC 6186 / RFC 8314: the SRV records mail clients use to find our services, with their
# priority (lower is preferred): implicit TLS before STARTTLS (RFC 8314 5.1), IMAP before
# POP3 (RFC 6186 3.4: clients supporting both follow the priorities across them).
_SRV = {
    "submissions": ("_submissions._tcp", 0),
    "submission": ("_submission._tcp", 10),
    "imaps": ("_imaps._tcp", 0),
    "imap": ("_imap._tcp", 10),
    "pop3s": ("_pop3s._tcp", 20),
    "pop3": ("_pop3._tcp", 30),
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
    mta_sts_id: str | None = None,
    tlsrpt_rua: str | None = None,
) -> list[Record]:
    """Every record ``domain`` needs for mail through this server, in the order to create
    them. ``addresses``: the server's public addresses (for A/AAAA and PTR).
    ``mta_sts_id``: the current MTA-STS policy id (``postroom.clients.mta_sts_id``); with
    an ``https`` listener, the MTA-STS and client auto-configuration names are listed too.
    ``tlsrpt_rua``: the address TLS-RPT reports about the domain go to (None: no record)."""
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
    if tlsrpt_rua is not None:
        out.append(Record("TLSRPT", f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{tlsrpt_rua}",
                          "senders report TLS failures of their deliveries here (RFC 8460 3)"))
    seen: set[str] = set()
    for role, (label, priority) in _SRV.items():
        for lst in listeners:
            if lst.role == role and label not in seen:
                seen.add(label)
                out.append(Record("SRV", f"{label}.{domain}", "SRV", f"{priority} 1 {lst.port} {hostname}",
                                  f"mail clients find {lst.role} (RFC 6186)"))
    https = next((lst.port for lst in listeners if lst.role == "https"), None)
    if https is not None:
        # The names below are this server under other names: its certificate must cover
        # them (mta-sts. above all: RFC 8461 3.3 senders verify it).
        if mta_sts_id is not None:
            out.append(Record("MTA-STS", f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mta_sts_id}",
                              "announces the MTA-STS policy (RFC 8461 3.1); the id changes with [mta_sts]"))
            out.append(Record("CNAME", f"mta-sts.{domain}", "CNAME", hostname,
                              "serves the MTA-STS policy (RFC 8461 3.3)"))
        out.append(Record("CNAME", f"autoconfig.{domain}", "CNAME", hostname,
                          "Thunderbird finds its settings here"))
        out.append(Record("CNAME", f"autodiscover.{domain}", "CNAME", hostname,
                          "Outlook finds its settings here"))
        out.append(Record("SRV", f"_autodiscover._tcp.{domain}", "SRV", f"0 1 {https} {hostname}",
                          "Outlook's way to the autodiscover host"))
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


def judge(
    record: Record, found: Sequence[str], *, spf_pass: bool | None = None,
    addresses: Sequence[str] = (),
) -> Verdict:
    """Compare ``record`` with the answers ``found`` (same text form as ``Record.value``;
    MX "pref host", SRV "prio weight port host"; CNAME: the addresses the name resolves to).
    ``spf_pass``: whether our addresses pass the SPF record found (None: unknown, compare
    text). ``addresses``: the server's addresses, which a CNAME must lead to."""
    found_t = tuple(found)
    kind = record.kind
    if kind == "MTA-STS":
        sts = [f for f in found if f.replace(" ", "").startswith("v=STSv1")]
        if not sts:
            return Verdict(record, "missing", found_t)
        if len(sts) == 1 and sts[0].replace(" ", "") == record.value.replace(" ", ""):
            return Verdict(record, "correct", found_t)
        return Verdict(record, "wrong", found_t, "another policy id (senders keep the old policy)")
    if kind == "TLSRPT":
        # RFC 8460 3: exactly one v=TLSRPTv1 record; other rua besides ours are fine.
        found_records = [f for f in found if f.replace(" ", "").startswith("v=TLSRPTv1;")]
        if not found_records:
            return Verdict(record, "missing", found_t)
        rua = tlsrpt.parse_record([f.encode() for f in found_records])
        if rua is None:
            return Verdict(record, "wrong", found_t, "not exactly one usable v=TLSRPTv1 record")
        want = record.value.rpartition("rua=")[2].lower()
        if want not in (u.lower() for u in rua):
            return Verdict(record, "wrong", found_t, f"reports do not go to {want}")
        return Verdict(record, "correct", found_t)
    if kind == "CNAME":
        if not found:
            return Verdict(record, "missing", found_t)
        if not addresses or set(found) & set(addresses):
            return Verdict(record, "correct", found_t)
        return Verdict(record, "wrong", found_t, f"does not lead to {record.value}")
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
