"""SPF (RFC 7208) evaluation as a sans-IO generator.

Theory of operation
-------------------
:func:`check_host` is a generator: it *yields* a :class:`Query` whenever it needs DNS and is
*sent* back an :class:`Answer` (records, or the kind of failure). It returns a
:class:`SpfResult`. It never touches sockets, clocks or randomness, so the RFC 7208 test
suite (``tests/policy/test_spf_suite.py``) drives it from the suite's zone data, and the
async layer (:func:`postroom.policy.inbound.run_spf`) drives it from the real resolver:

    gen = check_host(ip, domain, sender, helo=helo)
    answer = None
    try:
        while True:
            query = gen.send(answer)
            answer = await resolve(query)
    except StopIteration as done:
        result = done.value

The RFC's limits are enforced here, not by the caller: at most 10 DNS-querying terms
(``include``, ``a``, ``mx``, ``ptr``, ``exists``, ``redirect``: RFC 7208 4.6.4), at most 2
"void" lookups (NXDOMAIN or no answer), at most 10 MX or PTR names per term, a record of at
most ``MAX_RECORD`` bytes, and recursion no deeper than the term limit allows (an include
loop runs into the term limit: permerror).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass, field

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4
MAX_NAMES_PER_TERM = 10  # RFC 7208 4.6.4 (MX) and 5.5 (PTR)
MAX_RECORD = 4096  # a TXT record longer than this is treated as a syntax error
MAX_EXPLANATION = 1024

RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True, slots=True)
class Query:
    """A DNS question: ``rdtype`` is TXT, A, AAAA, MX or PTR."""

    name: str
    rdtype: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What the resolver found. ``error``: None, "nxdomain" or "temp" (SERVFAIL, timeout).
    ``records``: strings (TXT joined, addresses, host names; MX hosts in any order)."""

    records: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # one of RESULTS
    domain: str  # the domain checked (MAIL FROM's, or HELO's)
    reason: str = ""  # why, for logs and Authentication-Results comments
    explanation: str | None = None  # RFC 7208 6.2, on "fail" only


class _Error(Exception):
    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass
class _State:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    receiver: str
    dns_terms: int = 0
    voids: int = 0
    explanation: str | None = None
    seen: list[str] = field(default_factory=list)
    ptr_names: list[str] | None = None  # the validated PTR names, once looked up


SpfGen = Generator[Query, Answer, SpfResult]

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def valid_domain(domain: str) -> bool:
    """RFC 7208 4.3: a fully qualified domain with labels of 1-63 octets."""
    domain = domain.rstrip(".")
    if not domain or len(domain) > 253 or "." not in domain:
        return False
    return all(0 < len(label) <= 63 for label in domain.split("."))


def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    receiver: str = "unknown",
) -> SpfGen:
    """RFC 7208 4: the SPF result for ``ip`` sending as ``sender`` (MAIL FROM, or
    ``postmaster@HELO`` for the HELO check) whose domain is ``domain``."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("permerror", domain, "invalid client address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # RFC 7208 5: an IPv4-mapped client is an IPv4 client
    domain = domain.rstrip(".").lower()
    local, at, _ = sender.rpartition("@")
    if not at or not local:
        sender = f"postmaster@{domain}"  # RFC 7208 4.3
    if not valid_domain(domain):
        return SpfResult("none", domain, "not a valid domain name")
    state = _State(addr, sender, helo, receiver)
    try:
        result = yield from _check(state, domain, top=True)
    except _Error as e:
        return SpfResult(e.result, domain, e.reason)
    return result


def _check(state: _State, domain: str, *, top: bool) -> Generator[Query, Answer, SpfResult]:
    record = yield from _find_record(state, domain)
    if record is None:
        return SpfResult("none", domain, "no SPF record")
    terms = _parse(record)
    modifiers = {name: arg for kind, _, name, arg, _, _ in terms if kind == "modifier"}
    redirect = modifiers.get("redirect")
    exp = modifiers.get("exp")
    for kind, qualifier, name, arg, cidr4, cidr6 in terms:
        if kind == "modifier":
            continue
        matched = yield from _mechanism(state, domain, name, arg, cidr4, cidr6)
        if matched:
            result = _QUALIFIERS[qualifier]
            explanation = None
            if result == "fail" and top:
                explanation = yield from _explain(state, domain, exp)
            return SpfResult(result, domain, f"matched {qualifier if qualifier != '+' else ''}{name}", explanation)
    if redirect is not None:
        # RFC 7208 6.1: the redirect target's result is the result (its own exp applies).
        _count_term(state)
        target = yield from _expand(state, redirect, domain)
        if not valid_domain(target):
            raise _Error("permerror", f"redirect to an invalid domain {target!r}")
        inner = yield from _check(state, target.lower(), top=top)
        if inner.result == "none":
            raise _Error("permerror", f"redirect target {target} has no SPF record")
        return SpfResult(inner.result, domain, f"redirect {target}: {inner.reason}", inner.explanation)
    return SpfResult("neutral", domain, "no mechanism matched")


def _find_record(state: _State, domain: str) -> Generator[Query, Answer, str | None]:
    """RFC 7208 4.4/4.5: the one ``v=spf1`` TXT record, None when there is none."""
    answer = yield Query(domain, "TXT")
    if answer.error == "temp":
        raise _Error("temperror", f"DNS failure looking up TXT {domain}")
    if answer.error == "nxdomain":
        return None
    found = [r for r in answer.records if r[:6].lower() == "v=spf1" and (len(r) == 6 or r[6] == " ")]
    if len(found) > 1:
        raise _Error("permerror", f"{domain} has {len(found)} SPF records")
    if not found:
        return None
    if len(found[0]) > MAX_RECORD:
        raise _Error("permerror", f"{domain}: SPF record too long")
    return found[0]


# --- record syntax (RFC 7208 4.6.1, 12) ------------------------------------------------

_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_TERM = re.compile(r"^([+?~-]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)$", re.S)
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", re.S)
_CIDR = re.compile(r"^(?:/(\d{1,3}))?(?://(\d{1,3}))?$")
# macro-string characters: visible ASCII except "%" unless a valid macro
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|%|_|-)")

Term = tuple[str, str, str, str, int | None, int | None]


def _parse(record: str) -> list[Term]:
    """Every term of ``record``; any syntax error anywhere is a permerror (RFC 7208 4.6)."""
    terms: list[Term] = []
    modifiers: set[str] = set()
    for word in record.split(" ")[1:]:
        if not word:
            continue
        if not word.isascii() or not word.isprintable():
            raise _Error("permerror", "non-ASCII or control characters in the record")
        mod = _MODIFIER.match(word)
        if mod and mod.group(1).lower() not in _MECHANISMS:
            name, value = mod.group(1).lower(), mod.group(2)
            _check_macro_string(value)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise _Error("permerror", f"{name}= given twice")  # RFC 7208 6
                modifiers.add(name)
                _check_domain_spec(value)
            terms.append(("modifier", "", name, value, None, None))
            continue
        m = _TERM.match(word)
        if not m:
            raise _Error("permerror", f"syntax error at {word!r}")
        qualifier, name, rest = m.group(1) or "+", m.group(2).lower(), m.group(3)
        if name not in _MECHANISMS:
            raise _Error("permerror", f"unknown mechanism {name!r}")
        arg = ""
        cidr4: int | None = None
        cidr6: int | None = None
        if name == "all":
            if rest:
                raise _Error("permerror", f"syntax error at {word!r}")
        elif name in ("ip4", "ip6"):
            if not rest.startswith(":"):
                raise _Error("permerror", f"{name} needs an address")
            arg = rest[1:]
            addr, slash, length = arg.partition("/")
            try:
                net = ipaddress.ip_address(addr)
            except ValueError:
                raise _Error("permerror", f"bad address in {word!r}") from None
            if (name == "ip4") != isinstance(net, ipaddress.IPv4Address):
                raise _Error("permerror", f"bad address in {word!r}")
            limit = 32 if name == "ip4" else 128
            if slash:
                if not length.isdigit() or (len(length) > 1 and length[0] == "0") or int(length) > limit:
                    raise _Error("permerror", f"bad prefix length in {word!r}")
                cidr4 = cidr6 = int(length)
            arg = addr
        else:
            spec, cidrs = rest, ""
            if name in ("a", "mx"):
                cut = _cidr_start(rest)
                spec, cidrs = rest[:cut], rest[cut:]
                cm = _CIDR.match(cidrs)
                if not cm:
                    raise _Error("permerror", f"bad prefix length in {word!r}")
                for group, lim in ((cm.group(1), 32), (cm.group(2), 128)):
                    if group is not None and ((len(group) > 1 and group[0] == "0") or int(group) > lim):
                        raise _Error("permerror", f"bad prefix length in {word!r}")
                cidr4 = int(cm.group(1)) if cm.group(1) is not None else None
                cidr6 = int(cm.group(2)) if cm.group(2) is not None else None
            if spec:
                if not spec.startswith(":") or len(spec) == 1:
                    raise _Error("permerror", f"syntax error at {word!r}")
                arg = spec[1:]
                _check_macro_string(arg)
                _check_domain_spec(arg)
            elif name in ("include", "exists"):
                raise _Error("permerror", f"{name} needs a domain")
        terms.append(("mechanism", qualifier, name, arg, cidr4, cidr6))
    return terms


def _cidr_start(rest: str) -> int:
    """Where a trailing dual-cidr-length begins in ``:domain/24//64`` (or len)."""
    m = re.search(r"(/\d+)?(//\d+)?$", rest)
    if m and m.group(0) and not (rest[: m.start()].endswith("/")):
        return m.start()
    return len(rest)


def _check_macro_string(value: str, *, exp: bool = False) -> None:
    """Every ``%`` starts a valid macro; c, r and t only in explanation text (RFC 7208 7.1)."""
    pos = 0
    while True:
        i = value.find("%", pos)
        if i < 0:
            return
        m = _MACRO.match(value, i)
        if not m:
            raise _Error("permerror", f"bad macro in {value!r}")
        if not exp and m.group(1) and m.group(1).lower() in "crt":
            raise _Error("permerror", f"%{{{m.group(1)}}} is only allowed in exp")
        pos = m.end()


_TOPLABEL = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")


def _check_domain_spec(spec: str) -> None:
    """RFC 7208 7.1: a domain-spec ends in a macro or in "." toplabel."""
    if spec.endswith("}"):
        return
    body = spec[:-1] if spec.endswith(".") else spec
    last = body.rsplit(".", 1)
    if len(last) != 2 or not _TOPLABEL.match(last[1]):
        raise _Error("permerror", f"bad domain {spec!r}")


# --- mechanisms (RFC 7208 5) -------------------------------------------------------------


def _count_term(state: _State) -> None:
    state.dns_terms += 1
    if state.dns_terms > MAX_DNS_TERMS:
        raise _Error("permerror", f"more than {MAX_DNS_TERMS} DNS-querying terms")


def _void(state: _State) -> None:
    state.voids += 1
    if state.voids > MAX_VOID_LOOKUPS:
        raise _Error("permerror", f"more than {MAX_VOID_LOOKUPS} void lookups")


def _lookup(state: _State, name: str, rdtype: str, *, count_void: bool = True) -> Generator[Query, Answer, tuple[str, ...]]:
    if not valid_domain(name):
        # A name that can not exist (empty or over-long label) answers nothing.
        if count_void:
            _void(state)
        return ()
    answer = yield Query(name, rdtype)
    if answer.error == "temp":
        raise _Error("temperror", f"DNS failure looking up {rdtype} {name}")
    if answer.error == "nxdomain" or not answer.records:
        if count_void:
            _void(state)
        return ()
    return answer.records


def _addr_type(state: _State) -> str:
    return "A" if isinstance(state.ip, ipaddress.IPv4Address) else "AAAA"


def _in(state: _State, addresses: tuple[str, ...], cidr4: int | None, cidr6: int | None) -> bool:
    v4 = isinstance(state.ip, ipaddress.IPv4Address)
    length = (cidr4 if cidr4 is not None else 32) if v4 else (cidr6 if cidr6 is not None else 128)
    for text in addresses:
        try:
            net = ipaddress.ip_network(f"{text}/{length}", strict=False)
        except ValueError:
            continue
        if net.version == state.ip.version and state.ip in net:
            return True
    return False


def _mechanism(
    state: _State, domain: str, name: str, arg: str, cidr4: int | None, cidr6: int | None
) -> Generator[Query, Answer, bool]:
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        return _in(state, (arg,), cidr4, cidr6)
    _count_term(state)
    target = (yield from _expand(state, arg, domain)) if arg else domain
    target = target.rstrip(".")
    if name == "include":
        if not valid_domain(target):
            raise _Error("permerror", f"include of an invalid domain {target!r}")
        inner = yield from _check(state, target.lower(), top=False)
        if inner.result == "pass":
            return True
        if inner.result == "temperror":
            raise _Error("temperror", f"include {target}: {inner.reason}")
        if inner.result in ("permerror", "none"):
            raise _Error("permerror", f"include {target}: {inner.reason}")
        return False
    if name == "a":
        addresses = yield from _lookup(state, target, _addr_type(state))
        return _in(state, addresses, cidr4, cidr6)
    if name == "mx":
        hosts = yield from _lookup(state, target, "MX")
        if len(hosts) > MAX_NAMES_PER_TERM:
            raise _Error("permerror", f"{target} has more than {MAX_NAMES_PER_TERM} MX hosts")
        for host in hosts:
            if host in ("", "."):
                continue
            addresses = yield from _lookup(state, host, _addr_type(state), count_void=False)
            if _in(state, addresses, cidr4, cidr6):
                return True
        return False
    if name == "ptr":
        names = yield from _validated_names(state)
        target_l = target.lower()
        return any(n == target_l or n.endswith("." + target_l) for n in names)
    if name == "exists":
        addresses = yield from _lookup(state, target, "A")
        return bool(addresses)
    raise AssertionError(name)


def _reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return ip.reverse_pointer


def _validated_names(state: _State) -> Generator[Query, Answer, list[str]]:
    """RFC 7208 5.5: PTR names of the client that resolve back to it (at most 10 tried).
    DNS errors here mean "no match", not temperror.

    Looked up once per evaluation and kept in ``state``: the client address does not
    change, and the ``%{p}`` macro, which RFC 7208 4.6.4 does not count as a term, would
    otherwise cost eleven queries each time it is expanded (a 4 KB record holds hundreds)."""
    if state.ptr_names is not None:
        return state.ptr_names
    state.ptr_names = []
    answer = yield Query(_reverse_name(state.ip), "PTR")
    if answer.error is not None or not answer.records:
        if answer.error != "temp":
            _void(state)
        return state.ptr_names
    for host in answer.records[:MAX_NAMES_PER_TERM]:
        host = host.rstrip(".").lower()
        if not valid_domain(host):
            continue
        forward = yield Query(host, _addr_type(state))
        if forward.error is None and _in(state, forward.records, None, None):
            state.ptr_names.append(host)
    return state.ptr_names


# --- macros (RFC 7208 7) -----------------------------------------------------------------


def _expand(state: _State, spec: str, domain: str, *, exp: bool = False) -> Generator[Query, Answer, str]:
    out: list[str] = []
    pos = 0
    while True:
        i = spec.find("%", pos)
        if i < 0:
            out.append(spec[pos:])
            break
        out.append(spec[pos:i])
        m = _MACRO.match(spec, i)
        if not m:
            raise _Error("permerror", f"bad macro in {spec!r}")
        pos = m.end()
        token = m.group(0)
        if token == "%%":
            out.append("%")
        elif token == "%_":
            out.append(" ")
        elif token == "%-":
            out.append("%20")
        else:
            letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
            lower = letter.lower()
            if lower in "crt" and not exp:
                raise _Error("permerror", f"%{{{letter}}} is only allowed in exp")
            value = yield from _macro_value(state, lower, domain)
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise _Error("permerror", "macro with 0 labels")
                parts = parts[-n:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
    result = "".join(out)
    if not exp and len(result) > 253:
        # RFC 7208 7.3: drop left-hand labels until the name fits.
        labels = result.split(".")
        while labels and len(".".join(labels)) > 253:
            labels.pop(0)
        result = ".".join(labels)
    return result


def _macro_value(state: _State, letter: str, domain: str) -> Generator[Query, Answer, str]:
    if letter == "s":
        return state.sender
    if letter == "l":
        return state.sender.rpartition("@")[0]
    if letter == "o":
        return state.sender.rpartition("@")[2]
    if letter == "d":
        return domain
    if letter in "ci":
        if letter == "i" and isinstance(state.ip, ipaddress.IPv6Address):
            # RFC 7208 7.4's example writes the nibbles in upper case, as the suite does.
            return ".".join(state.ip.exploded.replace(":", "").upper())
        return str(state.ip)
    if letter == "p":
        names = yield from _validated_names(state)
        return names[0] if names else "unknown"
    if letter == "v":
        return "in-addr" if isinstance(state.ip, ipaddress.IPv4Address) else "ip6"
    if letter == "h":
        return state.helo or "unknown"
    if letter == "r":
        return state.receiver
    if letter == "t":
        return "0"  # sans-IO: no clock; the timestamp is not meaningful to the reader
    raise _Error("permerror", f"unknown macro %{{{letter}}}")


def _explain(state: _State, domain: str, exp: str | None) -> Generator[Query, Answer, str | None]:
    """RFC 7208 6.2: the explanation string; any problem leaves none (not an error)."""
    if exp is None:
        return None
    try:
        target = yield from _expand(state, exp, domain)
        if not valid_domain(target):
            return None
        answer = yield Query(target.rstrip("."), "TXT")
        if answer.error is not None or len(answer.records) != 1:
            return None
        text = answer.records[0]
        if not text.isascii():
            return None
        explanation = yield from _expand(state, text, domain, exp=True)
    except _Error:
        return None
    return explanation[:MAX_EXPLANATION]
