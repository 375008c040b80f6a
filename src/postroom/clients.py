"""How mail clients and other servers find this server: endpoints, DNS records, MTA-STS.

One place answers "which host, port and security does a client use for IMAP, POP3 and
SMTP submission?", from the configured listeners. Thunderbird autoconfig, Outlook
autodiscover, the Apple profile (``postroom.web.autoconfig``) and the RFC 6186 SRV
records (``client_dns_records``, listed by ``postroom dns``) all use it, so they can never
disagree with each other or with what the server really listens on.

Ports: a listener's configured port (the public one; behind NAT a port forward keeps it).
Only a listener configured with port 0 (tests) reports the port actually bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from postroom.config import Settings

# Preference order: implicit TLS first (RFC 8314 3.3: it SHOULD be preferred), IMAP before
# POP3 (it keeps the mail on the server for every device).
_ROLES: tuple[tuple[str, str, str], ...] = (
    ("imaps", "imap", "ssl"),
    ("imap", "imap", "starttls"),
    ("pop3s", "pop3", "ssl"),
    ("pop3", "pop3", "starttls"),
    ("submissions", "smtp", "ssl"),
    ("submission", "smtp", "starttls"),
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str  # "imap" | "pop3" | "smtp"
    role: str  # the listener role
    host: str
    port: int
    security: str  # "ssl" (implicit TLS) | "starttls"


def client_endpoints(
    settings: Settings, bound: Mapping[str, Sequence[tuple[str, int]]] | None = None
) -> list[Endpoint]:
    """Every client-facing endpoint, best first within each protocol. ``bound``: the
    (address, port) pairs each role actually listens on (to resolve port 0)."""
    out: list[Endpoint] = []
    for role, protocol, security in _ROLES:
        ports: list[int] = []
        for lst in settings.listeners:
            if lst.role != role:
                continue
            port = lst.port
            if port == 0 and bound and bound.get(role):
                port = bound[role][0][1]
            if port and port not in ports:
                ports.append(port)
        out.extend(Endpoint(protocol, role, settings.hostname, p, security) for p in ports)
    return out


def best(endpoints: Sequence[Endpoint], protocol: str) -> Endpoint | None:
    return next((e for e in endpoints if e.protocol == protocol), None)


# -- DNS records (listed by `postroom dns`) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str  # absolute, with the final dot
    type: str  # "SRV", "CNAME", "TXT"
    value: str  # in zone-file syntax
    purpose: str

    def zone_line(self) -> str:
        return f"{self.name} 3600 IN {self.type} {self.value}"


# RFC 6186 3 (+ RFC 8314 5.1 for _submissions): service label, role, priority. Lower
# priority is preferred: implicit TLS before STARTTLS, IMAP before POP3 (RFC 6186 3.4).
_SRV: tuple[tuple[str, str, int], ...] = (
    ("_imaps._tcp", "imaps", 0),
    ("_imap._tcp", "imap", 10),
    ("_pop3s._tcp", "pop3s", 20),
    ("_pop3._tcp", "pop3", 30),
    ("_submissions._tcp", "submissions", 0),
    ("_submission._tcp", "submission", 10),
)


def client_dns_records(settings: Settings, domain: str) -> list[DnsRecord]:
    """The records that let clients set themselves up for ``domain``: RFC 6186/8314 SRV
    records (a "." target says "not offered", RFC 6186 4), the ``autoconfig.`` and
    ``autodiscover.`` names (Thunderbird, Outlook) and Outlook's ``_autodiscover`` SRV."""
    host = settings.hostname.rstrip(".") + "."
    roles = {lst.role: lst.port for lst in reversed(settings.listeners)}
    out: list[DnsRecord] = []
    for label, role, priority in _SRV:
        port = roles.get(role)
        if port:
            value = f"{priority} 1 {port} {host}"
            purpose = f"clients find {role} (RFC 6186)"
        else:
            value = "0 0 0 ."
            purpose = f"{role} is not offered (RFC 6186 4)"
        out.append(DnsRecord(f"{label}.{domain}.", "SRV", value, purpose))
    https = roles.get("https")
    if https:
        out.append(DnsRecord(f"autoconfig.{domain}.", "CNAME", host, "Thunderbird autoconfig"))
        out.append(DnsRecord(f"autodiscover.{domain}.", "CNAME", host, "Outlook autodiscover"))
        out.append(
            DnsRecord(f"_autodiscover._tcp.{domain}.", "SRV", f"0 1 {https} {host}", "Outlook autodiscover")
        )
    return out


# -- MTA-STS (RFC 8461) ----------------------------------------------------------------------


def mta_sts_policy(settings: Settings) -> str:
    """The policy file served at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``
    (RFC 8461 3.2): CRLF-separated ``key: value`` lines."""
    policy = settings.mta_sts
    mx = policy.mx or (settings.hostname,)
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    lines += [f"mx: {m}" for m in mx]
    lines.append(f"max_age: {int(policy.max_age)}")
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(settings: Settings) -> str:
    """The policy id for the ``_mta-sts`` TXT record: derived from the policy text, so
    it changes exactly when the policy does (RFC 8461 3.1: 1-32 alphanumerics)."""
    return hashlib.sha256(mta_sts_policy(settings).encode()).hexdigest()[:20]


def mta_sts_records(settings: Settings, domain: str) -> list[DnsRecord]:
    """The records that publish the policy for ``domain`` (RFC 8461 3.1, 3.3)."""
    host = settings.hostname.rstrip(".") + "."
    return [
        DnsRecord(f"_mta-sts.{domain}.", "TXT", f'"v=STSv1; id={mta_sts_id(settings)}"',
                  "MTA-STS policy announcement (RFC 8461 3.1)"),
        DnsRecord(f"mta-sts.{domain}.", "CNAME", host,
                  "MTA-STS policy host: the certificate must cover this name (RFC 8461 3.3)"),
    ]
