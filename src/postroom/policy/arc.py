"""ARC (RFC 8617) without I/O: chain validation up to the key lookups, and sealing.

Theory of operation
-------------------
An ARC set is three header fields sharing an instance number ``i=``: the
ARC-Authentication-Results (AAR) a forwarder saw, an ARC-Message-Signature (AMS, a DKIM
signature with ``i=`` instead of ``v=``) and an ARC-Seal (AS) signing every set so far.

Validation (RFC 8617 5.2) is split like DKIM's: :func:`prepare_chain` checks the structure
(instances 1..N, exactly one field of each kind per instance, at most 50, ``cv=none`` on the
first seal and ``cv=pass`` on later ones, the newest ``cv`` not ``fail``) and returns the
signatures whose keys must be fetched: the newest AMS and every AS. :func:`finish_chain`
takes the fetched keys and gives ``pass`` or ``fail``.

:func:`seal` adds our set when we forward: the AAR holds the results we computed, the AMS
signs the message like our DKIM signatures, the AS signs all sets with ``cv`` = the result
of the incoming chain. A chain that failed is not extended (RFC 8617 5.1.2 would have us
seal it with ``cv=fail``, which tells receivers nothing more than a missing seal).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from postroom.policy import dkim
from postroom.policy.dkim import DkimError, PrivateKey, PublicKey, Signature

MAX_INSTANCES = 50  # RFC 8617 4.2.1
_NAMES = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)\s*(?:;|$)")


@dataclass
class ArcCheck:
    """The chain as far as it can be checked without keys."""

    result: str  # "none" | "fail" | "pending" (keys needed)
    instances: int = 0
    reason: str = ""
    signatures: list[Signature] = field(default_factory=list)  # newest AMS first, then AS N..1
    sealer_domain: str = ""  # d= of the newest ARC-Seal


def _instance(raw: bytes) -> int | None:
    value = raw.partition(b":")[2]
    m = _INSTANCE.search(value)
    if m is None:
        return None
    return int(m.group(1)) if len(m.group(1)) <= 3 else None


def collect(fields: Sequence[tuple[bytes, bytes]]) -> dict[int, dict[bytes, int]] | str:
    """instance -> {field name: index in fields}, or the reason the structure is broken."""
    sets: dict[int, dict[bytes, int]] = {}
    for idx, (name, raw) in enumerate(fields):
        if name not in _NAMES:
            continue
        n = _instance(raw)
        if n is None or not 1 <= n <= MAX_INSTANCES:
            return f"bad instance in {name.decode()}"
        entry = sets.setdefault(n, {})
        if name in entry:
            return f"two {name.decode()} with i={n}"
        entry[name] = idx
    if sets and (sorted(sets) != list(range(1, max(sets) + 1))):
        return "instances are not 1..N"
    for n, entry in sets.items():
        if len(entry) != 3:
            return f"incomplete ARC set i={n}"
    return sets


def _seal_input(fields: Sequence[tuple[bytes, bytes]], sets: Mapping[int, Mapping[bytes, int]], upto: int) -> bytes:
    """RFC 8617 5.1.1: AAR, AMS, AS of every set 1..upto, relaxed; the last AS with ``b=``
    empty and without its final CRLF."""
    parts: list[bytes] = []
    for n in range(1, upto + 1):
        for name in _NAMES:
            raw = fields[sets[n][name]][1]
            if n == upto and name == b"arc-seal":
                last = dkim.canon_header(dkim.strip_b(raw), "relaxed")
                parts.append(last[:-2])
            else:
                parts.append(dkim.canon_header(raw, "relaxed"))
    return b"".join(parts)


def _seal_signature(raw: bytes, data: bytes) -> Signature:
    sig = Signature(raw, "", "", "", "", "relaxed", (), b"", data)
    try:
        text = raw.partition(b":")[2].decode("ascii")
    except UnicodeDecodeError:
        sig.error = DkimError("permerror", "non-ASCII ARC-Seal")
        return sig
    try:
        tags = dkim.parse_tags(text)
        for t in ("a", "b", "d", "s", "cv", "i"):
            if t not in tags:
                raise DkimError("permerror", f"ARC-Seal without {t}=")
        if "h" in tags:
            raise DkimError("permerror", "ARC-Seal with h=")  # RFC 8617 4.1.3
        if tags["a"].lower() not in dkim.ALGORITHMS:
            raise DkimError("permerror", f"algorithm {tags['a']} not accepted")
        sig.domain = tags["d"].lower().rstrip(".")
        sig.selector = tags["s"].lower()
        sig.algorithm = tags["a"].lower()
        sig.identity = "@" + sig.domain
        sig.signature = base64.b64decode(re.sub(r"\s+", "", tags["b"]), validate=True)
    except DkimError as e:
        sig.error = e
    except ValueError:
        sig.error = DkimError("permerror", "bad base64 in ARC-Seal")
    return sig


def _cv(raw: bytes) -> str:
    try:
        return dkim.parse_tags(raw.partition(b":")[2].decode("ascii")).get("cv", "").lower()
    except (DkimError, UnicodeDecodeError):
        return ""


def prepare_chain(fields: Sequence[tuple[bytes, bytes]], body: bytes, *, now: int | None = None) -> ArcCheck:
    sets = collect(fields)
    if isinstance(sets, str):
        return ArcCheck("fail", reason=sets)
    if not sets:
        return ArcCheck("none")
    top = max(sets)
    for n in range(1, top + 1):
        cv = _cv(fields[sets[n][b"arc-seal"]][1])
        if n == top and cv == "fail":
            return ArcCheck("fail", top, f"i={n} says cv=fail")
        if cv != ("none" if n == 1 else "pass"):
            return ArcCheck("fail", top, f"i={n} has cv={cv or '?'}")
    check = ArcCheck("pending", top)
    ams = dkim.prepare(fields, body, sets[top][b"arc-message-signature"], now=now, arc=True)
    check.signatures.append(ams)
    for n in range(top, 0, -1):
        raw = fields[sets[n][b"arc-seal"]][1]
        sig = _seal_signature(raw, _seal_input(fields, sets, n))
        if n == top:
            check.sealer_domain = sig.domain
        check.signatures.append(sig)
    for sig in check.signatures:
        if sig.error is not None:
            return ArcCheck("fail", top, sig.error.reason, sealer_domain=check.sealer_domain)
    return check


def finish_chain(check: ArcCheck, keys: Mapping[str, PublicKey | DkimError]) -> tuple[str, str]:
    """("pass" | "fail", reason) once the keys of ``check.signatures`` are known
    (``keys``: key name -> key, or the error fetching/parsing it)."""
    if check.result != "pending":
        return check.result, check.reason
    for sig in check.signatures:
        key = keys.get(sig.key_name)
        if key is None:
            return "fail", f"no key {sig.key_name}"
        if isinstance(key, DkimError):
            return "fail", f"{sig.key_name}: {key.reason}"
        try:
            dkim.verify_prepared(sig, key)
        except DkimError as e:
            return "fail", f"{sig.key_name}: {e.reason}"
    return "pass", ""


def seal(
    data: bytes,
    key: PrivateKey,
    *,
    chain: str,
    authserv_id: str,
    results: str,
    timestamp: int | None = None,
) -> bytes:
    """The three header fields of our ARC set, to prepend to ``data``. ``chain`` is the
    incoming chain's result ("none" or "pass"); ``results`` the resinfo part of our
    Authentication-Results (without the authserv-id)."""
    fields, _ = dkim.split_message(data)
    sets = collect(fields)
    if isinstance(sets, str):
        raise ValueError(f"can not seal a broken chain: {sets}")
    n = max(sets) + 1 if sets else 1
    if n > MAX_INSTANCES:
        raise ValueError("ARC chain too long")
    cv = "none" if n == 1 else chain
    aar = dkim.fold_tags("ARC-Authentication-Results:", [("i", f"{n}; {authserv_id}")])[:-2]
    aar += b";\r\n\t" + results.encode() + b"\r\n" if results else b"\r\n"
    ams = dkim.sign(data, key, timestamp=timestamp, field_name="ARC-Message-Signature",
                    extra=[("i", str(n))], version=False)
    algorithm = "ed25519-sha256" if key.algorithm == "ed25519" else "rsa-sha256"
    tags: list[tuple[str, str]] = [("i", str(n)), ("a", algorithm), ("cv", cv), ("d", key.domain),
                                   ("s", key.selector)]
    if timestamp is not None:
        tags.append(("t", str(timestamp)))
    tags.append(("b", ""))
    unsigned = dkim.fold_tags("ARC-Seal:", tags)
    new_fields = list(fields) + [
        (b"arc-authentication-results", aar), (b"arc-message-signature", ams), (b"arc-seal", unsigned)
    ]
    new_sets = {k: dict(v) for k, v in sets.items()}
    base = len(fields)
    new_sets[n] = {b"arc-authentication-results": base, b"arc-message-signature": base + 1, b"arc-seal": base + 2}
    signature = dkim.sign_digest(key, _seal_input(new_fields, new_sets, n))
    tags[-1] = ("b", base64.b64encode(signature).decode())
    return dkim.fold_tags("ARC-Seal:", tags) + ams + aar
