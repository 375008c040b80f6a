"""How mail clients and other servers find this server: endpoints, DNS records, MTA-STS.

One place answers "which host, port and security does a client use for IMAP, POP3 and
SMTP submission?", from the configured listeners. Thunderbird autoconfig, Outlook
autodiscover and the Apple profile (``postroom.web.autoconfig``) use it, so they can
never disagree with each other or with what the server really listens on. The DNS
records that point clients here (RFC 6186 SRV, ``autoconfig.``/``autodiscover.``, the
MTA-STS names) are listed by ``postroom dns`` (``postroom.policy.dnsrecords``).

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
