"""Mail addresses as postroom stores and compares them.

Decisions (documented in docs/configuration.md, "Addresses"):
* Domains are stored as lower-case A-labels (IDNA2008 via the ``idna`` package), so
  ``müller.example`` and ``xn--mller-kva.example`` are the same domain.
* Local parts are compared case-insensitively (as every mainstream server does in
  practice, although RFC 5321 allows case-sensitive local parts): stored lower-case.
* ``user+tag@domain`` reaches ``user@domain`` with no configuration (plus-addressing).
* Local parts we *create* (users, aliases) must be dot-atoms (RFC 5322 3.2.3) or UTF-8
  (RFC 6531); quoted local parts are refused at creation, which keeps relay tricks out.
"""

from __future__ import annotations

import re

import idna

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_UTF8_LOCAL = re.compile(r"^[^\x00-\x20\x7f()<>\[\]:;@\\,\".]+(\.[^\x00-\x20\x7f()<>\[\]:;@\\,\".]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressError(ValueError):
    """Not an address postroom accepts; the message says why."""


def normalize_domain(domain: str) -> str:
    d = domain.strip().rstrip(".")
    if not d:
        raise AddressError("empty domain")
    try:
        ascii_domain = d.lower() if d.isascii() else idna.encode(d, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise AddressError(f"invalid domain {domain!r}: {e}") from None
    ascii_domain = ascii_domain.lower()
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise AddressError(f"invalid domain {domain!r}: expected a name like example.org")
    return ascii_domain


def normalize_local(local: str) -> str:
    if not local:
        raise AddressError("empty local part")
    if len(local.encode("utf-8")) > 64:
        raise AddressError("local part longer than 64 octets")
    if not (_DOT_ATOM.match(local) or (not local.isascii() and _UTF8_LOCAL.match(local))):
        raise AddressError(f"invalid local part {local!r}")
    return local.lower()


def normalize_address(address: str) -> str:
    """``User@Example.ORG`` -> ``user@example.org``; raises :class:`AddressError`."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at:
        raise AddressError(f"{address!r} is not an address (local@domain)")
    return f"{normalize_local(local)}@{normalize_domain(domain)}"


def normalize_alias_source(source: str) -> str:
    """Like :func:`normalize_address`, and ``@domain`` (a catch-all) is allowed."""
    if source.strip().startswith("@"):
        return "@" + normalize_domain(source.strip()[1:])
    return normalize_address(source)


def base_address(address: str) -> str | None:
    """``user+tag@d`` -> ``user@d``; ``None`` when there is no tag."""
    local, _, domain = address.rpartition("@")
    base, plus, _tag = local.partition("+")
    if not plus or not base:
        return None
    return f"{base}@{domain}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
