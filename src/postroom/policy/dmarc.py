"""DMARC (RFC 7489) without I/O: record parsing, the organizational domain, alignment and
the policy decision.

Theory of operation
-------------------
The async layer (``policy.inbound``) fetches ``_dmarc.<From domain>`` and, when that has no
record, ``_dmarc.<organizational domain>`` (RFC 7489 6.6.3), hands the TXT strings to
:func:`select_record`, and calls :func:`evaluate` with the SPF and DKIM results. Everything
that decides is here:

* :func:`org_domain`: the Public Suffix List's registrable domain (``publicsuffixlist``
  ships the list and is kept current by upgrading the package).
* :func:`aligned`: relaxed (same organizational domain) or strict (same name) alignment
  (RFC 7489 3.1).
* :func:`evaluate`: pass when an aligned DKIM signature or an aligned SPF pass exists, and
  the policy to apply otherwise (``p=``, ``sp=`` for subdomains, ``pct=`` sampling with a
  number the caller draws, so this stays deterministic).

A DKIM pass whose ``l=`` left part of the body unsigned does not count (``policy.dkim``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

MAX_RUA = 8  # rua URIs used per record (RFC 7489 6.2 lets us pick; 2 is common)

_POLICIES = ("none", "quarantine", "reject")


class DmarcRecordError(Exception):
    """A ``v=DMARC1`` record that can not be used (RFC 7489 6.6.3: treat as no policy)."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: str  # p=
    subdomain_policy: str  # sp= (defaults to p=)
    adkim: str = "r"  # "r" | "s"
    aspf: str = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()  # mailto: URIs (size limits stripped)
    raw_rua: str = ""
    ruf: tuple[str, ...] = ()
    fo: str = "0"  # failure reporting options (RFC 7489 6.3), echoed in aggregate reports
    np: str | None = None  # RFC 9091: policy for non-existent subdomains (None: not given)

    def tags(self) -> str:
        """The policy as it applied, space-separated, for the aggregate report's
        ``policy_published`` (``policy.reports``)."""
        return (
            f"p={self.policy} sp={self.subdomain_policy} adkim={self.adkim} aspf={self.aspf} "
            f"pct={self.pct} fo={self.fo}"
        )


def parse_record(text: str) -> DmarcRecord:
    """RFC 7489 6.3/6.4. ``v=DMARC1`` must come first; an unknown p= makes the record
    unusable unless a valid ``rua=`` exists (then p=none, RFC 7489 6.6.3)."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        raise DmarcRecordError("not a DMARC1 record")
    tags: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise DmarcRecordError(f"bad tag {part[:30]!r}")
        tags.setdefault(name.strip().lower(), value.strip())
    rua = tuple(u for u in (_uri(x) for x in tags.get("rua", "").split(",")) if u)[:MAX_RUA]
    ruf = tuple(u for u in (_uri(x) for x in tags.get("ruf", "").split(",")) if u)[:MAX_RUA]
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        if rua:
            policy = "none"
        else:
            raise DmarcRecordError(f"bad or missing p= {policy!r}")
    sp = tags.get("sp", policy).lower()
    if sp not in _POLICIES:
        sp = policy
    np = tags.get("np", "").lower()
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy=policy, subdomain_policy=sp,
        adkim=adkim if adkim in ("r", "s") else "r", aspf=aspf if aspf in ("r", "s") else "r",
        pct=min(100, max(0, pct)), rua=rua, raw_rua=tags.get("rua", ""), ruf=ruf,
        fo=_fo(tags.get("fo", "0")), np=np if np in _POLICIES else None,
    )


def _fo(value: str) -> str:
    """RFC 7489 6.3 ``fo=``: colon-separated options among 0, 1, d, s; anything else is
    ignored (the default "0")."""
    options = [o.strip().lower() for o in value.split(":")]
    return value.strip().lower().replace(" ", "") if options and all(o in ("0", "1", "d", "s") for o in options) else "0"


def _uri(value: str) -> str:
    """A mailto: URI without its size limit (RFC 7489 6.2 ``!10m``); others are dropped."""
    parsed = parse_uri(value)
    return "mailto:" + parsed[0] if parsed else ""


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_uri(value: str) -> tuple[str, int | None] | None:
    """A ``mailto:`` report URI (RFC 7489 6.2) as (address, size limit in bytes or None);
    None for other schemes and malformed addresses. ``!10m`` means 10 * 2**20 bytes."""
    value = value.strip()
    if not value.lower().startswith("mailto:"):
        return None
    address, _, size = value[7:].partition("!")
    address = address.strip()
    if "@" not in address or any(c in address for c in " <>,;\r\n!"):
        return None
    limit: int | None = None
    size = size.strip().lower()
    if size:
        digits, unit = (size[:-1], size[-1]) if size[-1] in "kmgt" else (size, "")
        if not digits.isdigit() or len(digits) > 15:
            return None  # RFC 7489 6.2: an unparseable URI is ignored
        limit = int(digits) * _UNITS[unit]
    return address, limit


def report_addresses(rua: str) -> list[tuple[str, int | None]]:
    """The usable ``mailto:`` addresses of a ``rua=`` value with their size limits (at most
    MAX_RUA; other URI schemes are ignored)."""
    found = [p for p in (parse_uri(u) for u in rua.split(",")) if p]
    return found[:MAX_RUA]


def select_record(texts: Sequence[str]) -> DmarcRecord | None:
    """The one DMARC record among a name's TXT strings; none or several -> None
    (RFC 7489 6.6.3: several records mean no policy)."""
    found = [t for t in texts if t.replace(" ", "").startswith("v=DMARC1")]
    if len(found) != 1:
        return None
    try:
        return parse_record(found[0])
    except DmarcRecordError:
        return None


@functools.lru_cache(maxsize=1)
def _psl() -> object:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """RFC 7489 3.2: the registrable domain ("example.co.uk" for "a.b.example.co.uk"); a
    public suffix itself (or a name the list does not know at all) is its own org domain."""
    domain = domain.lower().rstrip(".")
    found = _psl().privatesuffix(domain)  # type: ignore[attr-defined]
    return str(found) if found else domain


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return org_domain(a) == org_domain(b)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    domain: str  # d=
    selector: str
    result: str  # pass | fail | neutral | temperror | permerror | policy
    partial: bool = False  # pass with l= leaving content unsigned: not counted by DMARC


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # none | pass | fail | temperror | permerror
    domain: str  # the From: domain
    policy_domain: str = ""  # where the record was found
    record: DmarcRecord | None = None
    policy: str = "none"  # the policy the record asks for this message (p or sp)
    applied: str = "none"  # after pct sampling: none | quarantine | reject
    dkim_aligned: bool = False
    spf_aligned: bool = False
    reason: str = ""


def evaluate(
    from_domain: str,
    record: DmarcRecord | None,
    policy_domain: str,
    *,
    spf_result: str,
    spf_domain: str,
    dkim: Sequence[DkimOutcome],
    sample: int = 0,
    nonexistent: bool = False,
) -> DmarcResult:
    """RFC 7489 6.6.2: identifier alignment and the policy to apply. ``sample``: a number
    in [0, 100) drawn by the caller for ``pct=`` (policy applies when sample < pct).
    ``nonexistent``: the From domain is a subdomain that does not exist in DNS, so the
    record's ``np=`` applies when it has one (RFC 9091 4); the caller only needs to find
    that out when a failure would use ``np=`` (:func:`wants_existence`)."""
    if record is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    dkim_ok = any(
        d.result == "pass" and not d.partial and aligned(d.domain, from_domain, record.adkim)
        for d in dkim
    )
    spf_ok = spf_result == "pass" and bool(spf_domain) and aligned(spf_domain, from_domain, record.aspf)
    if from_domain == policy_domain:
        policy = record.policy
    elif nonexistent and record.np is not None:
        policy = record.np
    else:
        policy = record.subdomain_policy
    if dkim_ok or spf_ok:
        return DmarcResult(
            "pass", from_domain, policy_domain, record, policy, "none", dkim_ok, spf_ok,
        )
    applied = policy if sample < record.pct else ("quarantine" if policy == "reject" else "none")
    # RFC 7489 6.6.4: a pct miss downgrades reject to quarantine and quarantine to none.
    if sample >= record.pct and policy == "quarantine":
        applied = "none"
    return DmarcResult(
        "fail", from_domain, policy_domain, record, policy, applied, False, False,
        reason="no aligned DKIM signature or SPF pass",
    )


def wants_existence(result: DmarcResult) -> bool:
    """Whether the policy of this failure depends on the From domain existing (RFC 9091:
    a subdomain's record with ``np=`` different from ``sp=``)."""
    rec = result.record
    return (result.result == "fail" and rec is not None and rec.np is not None
            and rec.np != rec.subdomain_policy and result.domain != result.policy_domain)


def verify_external_destination(policy_domain: str, rua: str) -> str | None:
    """RFC 7489 7.1: when a report address lies outside the policy domain's org domain,
    the name to query for the receiving domain's consent (``<domain>._report._dmarc.<rua
    domain>``), else None (no check needed)."""
    address = rua.partition(":")[2]
    rua_domain = address.rpartition("@")[2].lower()
    if org_domain(rua_domain) == org_domain(policy_domain):
        return None
    return f"{policy_domain}._report._dmarc.{rua_domain}"
