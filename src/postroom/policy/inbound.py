"""Inbound mail authentication: the thin async layer over the sans-IO checks.

Theory of operation
-------------------
At end of data on the ``mx`` role, ``net/smtp.py`` calls :meth:`AuthChecker.check` with
the message and its envelope. The checker runs, concurrently:

* SPF (``policy.spf``) for the MAIL FROM identity, or for the HELO identity when the
  reverse-path is null (RFC 7208 2.4);
* DKIM (``policy.dkim``) for at most ``max_signatures`` signatures, fetching each distinct
  key once (the resolver caches the TXT answers; parsed keys are cached by record text);
* ARC (``policy.arc``) for the chain present;

then DMARC (``policy.dmarc``) over their results. All DNS goes through the shared resolver
with one deadline for the whole message (``auth_checks.timeout``); a lookup still running
then counts as a temporary DNS failure, so its check reports ``temperror`` and the message
is never stalled. The result is an :class:`AuthVerdict`: the Authentication-Results field
to add, the action (accept / junk / reject) and the data for DMARC aggregate reports.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from postroom.config import AuthChecksSettings
from postroom.policy import arc, dkim, dmarc, spf
from postroom.policy.authres import ResInfo
from postroom.policy.authres import header as ar_header
from postroom.policy.dns import DnsError, NxDomain, Resolver
from postroom.policy.offload import maybe_offload

log = logging.getLogger("postroom.auth")
T = TypeVar("T")

KEY_CACHE_SIZE = 2048
MAX_KEY_RECORDS = 4  # TXT records tried at one key name


@dataclass
class AuthVerdict:
    header: bytes  # the Authentication-Results field (CRLF-terminated)
    action: str  # "accept" | "junk" | "reject"
    results: list[ResInfo]
    spf: spf.SpfResult
    dkim: list[dmarc.DkimOutcome]
    dmarc: dmarc.DmarcResult
    arc: str  # none | pass | fail
    arc_sealer: str = ""
    override: str = ""  # why a DMARC failure was not enforced
    ms: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


def from_domain(fields: list[tuple[bytes, bytes]]) -> str | None:
    """The RFC5322.From domain (RFC 7489 6.6.1): exactly one From field with one address;
    anything else gives None (DMARC permerror)."""
    values = [raw for name, raw in fields if name == b"from"]
    if len(values) != 1:
        return None
    text = values[0].partition(b":")[2].decode("utf-8", "replace").replace("\r\n", "")
    addresses = [a for _, a in email.utils.getaddresses([text]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    return domain if spf.valid_domain(domain) else None


class AuthChecker:
    def __init__(
        self,
        resolver: Resolver,
        settings: AuthChecksSettings,
        hostname: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self.settings = settings
        self.hostname = hostname
        self.rng = rng or random.Random()
        self._keys: OrderedDict[str, dkim.PublicKey | dkim.DkimError] = OrderedDict()
        self._networks = []
        self._domains: set[str] = set()
        for item in settings.trusted_forwarders:
            try:
                self._networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._domains.add(item)

    # -- DNS with the message's deadline ------------------------------------------------
    async def _dns(self, coro: Awaitable[T], deadline: float) -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise TimeoutError
        async with asyncio.timeout(remaining):
            return await coro

    async def _spf_answer(self, query: spf.Query, deadline: float) -> spf.Answer:
        r = self.resolver
        try:
            if query.rdtype == "TXT":
                rows = await self._dns(r.txt(query.name), deadline)
                return spf.Answer(tuple(b.decode("utf-8", "replace") for b in rows))
            if query.rdtype == "A":
                return spf.Answer(tuple(await self._dns(r.a(query.name), deadline)))
            if query.rdtype == "AAAA":
                return spf.Answer(tuple(await self._dns(r.aaaa(query.name), deadline)))
            if query.rdtype == "MX":
                mxs = await self._dns(r.mx(query.name), deadline)
                return spf.Answer(tuple(m.host for m in mxs))
            if query.rdtype == "PTR":
                return spf.Answer(tuple(await self._dns(r.ptr(query.name), deadline)))
        except NxDomain:
            return spf.Answer(error="nxdomain")
        except (DnsError, TimeoutError):
            return spf.Answer(error="temp")
        return spf.Answer(error="temp")

    async def run_spf(self, ip: str, domain: str, sender: str, helo: str, deadline: float) -> spf.SpfResult:
        gen = spf.check_host(ip, domain, sender, helo=helo, receiver=self.hostname)
        answer: spf.Answer | None = None
        try:
            while True:
                query = gen.send(answer)  # type: ignore[arg-type]
                answer = await self._spf_answer(query, deadline)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def key(self, name: str, deadline: float) -> dkim.PublicKey | dkim.DkimError:
        """The DKIM key at ``name`` (``selector._domainkey.domain``), or why there is none."""
        try:
            rows = await self._dns(self.resolver.txt(name), deadline)
        except NxDomain:
            return dkim.DkimError("permerror", "no key")
        except (DnsError, TimeoutError):
            return dkim.DkimError("temperror", "key lookup failed")
        records = [b.decode("ascii", "replace") for b in rows][:MAX_KEY_RECORDS]
        if not records:
            return dkim.DkimError("permerror", "no key")
        error: dkim.DkimError = dkim.DkimError("permerror", "no usable key")
        for text in records:
            cached = self._keys.get(text)
            if cached is None:
                try:
                    cached = dkim.parse_key(text)
                except dkim.DkimError as e:
                    cached = e
                self._keys[text] = cached
                while len(self._keys) > KEY_CACHE_SIZE:
                    self._keys.popitem(last=False)
            else:
                self._keys.move_to_end(text)
            if isinstance(cached, dkim.PublicKey):
                return cached
            error = cached
        return error

    async def _arc_keys(self, chain: arc.ArcCheck, keys: dict[str, dkim.PublicKey | dkim.DkimError],
                        deadline: float) -> None:
        """Add to ``keys`` the keys the ARC chain needs, in the order it is verified,
        stopping at the first signature that fails: a chain may have 50 sets (RFC 8617
        4.2.1), each naming any domain, and fetching every key up front would make one
        message cost 51 queries to servers the sender picks (DKIM is bounded by
        ``max_signatures``). A chain that verifies costs what it did."""
        if chain.result != "pending":
            return
        for sig in chain.signatures:
            if sig.key_name not in keys:
                keys[sig.key_name] = await self.key(sig.key_name, deadline)
            key = keys[sig.key_name]
            if isinstance(key, dkim.DkimError):
                return
            try:
                dkim.verify_prepared(sig, key)
            except dkim.DkimError:
                return

    # -- the whole check --------------------------------------------------------------
    async def check(self, data: bytes, *, ip: str, helo: str, mail_from: str) -> AuthVerdict:
        started = time.monotonic()
        deadline = started + self.settings.timeout
        fields, body = dkim.split_message(data)
        now = int(time.time())

        # SPF: MAIL FROM, or HELO for the null reverse-path (RFC 7208 2.4).
        if mail_from:
            spf_domain = mail_from.rpartition("@")[2].lower()
            spf_task = self.run_spf(ip, spf_domain, mail_from, helo, deadline)
            spf_prop = ("smtp.mailfrom", mail_from if "@" in mail_from else spf_domain)
        else:
            spf_domain = helo.lower().rstrip(".")
            spf_task = self.run_spf(ip, spf_domain, f"postmaster@{spf_domain}", helo, deadline)
            spf_prop = ("smtp.helo", spf_domain)

        def prepare_all() -> tuple[list[dkim.Signature], arc.ArcCheck, int]:
            cache: dict[tuple[str, int | None], tuple[bytes, int]] = {}
            indexes = [i for i, (n, _) in enumerate(fields) if n == b"dkim-signature"]
            sigs = [dkim.prepare(fields, body, i, now=now, body_cache=cache)
                    for i in indexes[: self.settings.max_signatures]]
            return sigs, arc.prepare_chain(fields, body, now=now), len(indexes)

        spf_future = asyncio.ensure_future(spf_task)
        try:
            sigs, chain, total_sigs = await maybe_offload(len(body), prepare_all)
            names = {s.key_name for s in sigs if s.error is None}
            # The ARC chain's first two keys (newest AMS and AS) come with the DKIM keys;
            # the others one at a time, only while the chain still verifies (_arc_keys).
            names |= {s.key_name for s in chain.signatures[:2]} if chain.result == "pending" else set()
            found = await asyncio.gather(*(self.key(n, deadline) for n in names))
            keys = dict(zip(names, found, strict=True))
            await self._arc_keys(chain, keys, deadline)
            spf_result = await spf_future
        finally:
            spf_future.cancel()

        outcomes: list[dmarc.DkimOutcome] = []
        results: list[ResInfo] = [ResInfo("spf", spf_result.result, (spf_prop,), spf_result.reason)]
        for sig in sigs:
            result, reason = "pass", ""
            try:
                key = keys.get(sig.key_name) if sig.error is None else None
                if sig.error is not None:
                    raise sig.error
                if key is None or isinstance(key, dkim.DkimError):
                    raise key or dkim.DkimError("permerror", "no key")
                dkim.verify_prepared(sig, key)
                if sig.partial:
                    reason = "l= leaves content unsigned: not used for DMARC"
            except dkim.DkimError as e:
                result, reason = e.result, e.reason
            outcomes.append(dmarc.DkimOutcome(sig.domain, sig.selector, result, sig.partial))
            b = base64_prefix(sig)
            results.append(ResInfo(
                "dkim", result,
                (("header.d", sig.domain), ("header.s", sig.selector), ("header.a", sig.algorithm),
                 ("header.b", b)),
                reason,
            ))
        if not sigs:
            results.append(ResInfo("dkim", "none"))
        arc_result, arc_reason = arc.finish_chain(chain, keys)  # type: ignore[arg-type]

        # DMARC over the results (RFC 7489 6.6).
        fdomain = from_domain(fields)
        if fdomain is None:
            dm = dmarc.DmarcResult("permerror", "", reason="no single From: domain")
        else:
            dm = await self._dmarc(fdomain, spf_result, spf_domain if mail_from else "", outcomes, deadline)
        results.append(ResInfo("dmarc", dm.result, (("header.from", dm.domain),),
                               f"p={dm.policy}" if dm.record else dm.reason))
        results.append(ResInfo("arc", arc_result, (("smtp.remote-ip", ip),) if arc_result != "none" else (),
                               arc_reason))
        action, override = "accept", ""
        if dm.result == "fail" and dm.applied in ("reject", "quarantine"):
            override = self._override(ip, arc_result, chain.sealer_domain)
            if not self.settings.enforce:
                override = override or "not enforced"
            if not override:
                action = "reject" if dm.applied == "reject" else "junk"
        ms = (time.monotonic() - started) * 1000
        return AuthVerdict(
            header=ar_header(self.hostname, results), action=action, results=results,
            spf=spf_result, dkim=outcomes, dmarc=dm, arc=arc_result,
            arc_sealer=chain.sealer_domain, override=override, ms=ms,
            extra={"signatures": total_sigs},
        )

    async def _dmarc(
        self, fdomain: str, spf_result: spf.SpfResult, spf_domain: str,
        outcomes: list[dmarc.DkimOutcome], deadline: float,
    ) -> dmarc.DmarcResult:
        policy_domain = fdomain
        record, error = await self._dmarc_record(fdomain, deadline)
        org = dmarc.org_domain(fdomain)
        if record is None and error is None and org != fdomain:
            policy_domain = org
            record, error = await self._dmarc_record(org, deadline)
        if error is not None:
            return dmarc.DmarcResult("temperror", fdomain, reason=error)
        sample = self.rng.randrange(100)
        result = dmarc.evaluate(
            fdomain, record, policy_domain, spf_result=spf_result.result, spf_domain=spf_domain,
            dkim=outcomes, sample=sample,
        )
        if dmarc.wants_existence(result) and await self._nonexistent(fdomain, deadline):
            result = dmarc.evaluate(
                fdomain, record, policy_domain, spf_result=spf_result.result,
                spf_domain=spf_domain, dkim=outcomes, sample=sample, nonexistent=True,
            )
        return result

    async def _nonexistent(self, domain: str, deadline: float) -> bool:
        """RFC 9091 2.1: a domain is non-existent when A, AAAA and MX all answer NXDOMAIN
        or no data. A DNS failure counts as existing (the milder ``sp=`` applies)."""
        r = self.resolver

        async def empty(lookup: Awaitable[list[Any]]) -> bool:
            try:
                return not await self._dns(lookup, deadline)
            except NxDomain:
                return True
            except (DnsError, TimeoutError):
                return False

        answers = await asyncio.gather(empty(r.a(domain)), empty(r.aaaa(domain)), empty(r.mx(domain)))
        return all(answers)

    async def _dmarc_record(self, domain: str, deadline: float) -> tuple[dmarc.DmarcRecord | None, str | None]:
        try:
            rows = await self._dns(self.resolver.txt(f"_dmarc.{domain}"), deadline)
        except NxDomain:
            return None, None
        except (DnsError, TimeoutError):
            return None, f"DNS failure looking up _dmarc.{domain}"
        return dmarc.select_record([b.decode("utf-8", "replace") for b in rows]), None

    def _override(self, ip: str, arc_result: str, sealer: str) -> str:
        """Local policy (RFC 7489 7.2 "local_policy"/"trusted_forwarder" reasons)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None and any(addr in net for net in self._networks):
            return "trusted_forwarder"
        if arc_result == "pass" and sealer and any(
            sealer == d or sealer.endswith("." + d) for d in self._domains
        ):
            return "trusted_forwarder"
        return ""


def base64_prefix(sig: dkim.Signature) -> str:
    """RFC 6008: header.b= the first 8 characters of the signature, to tell signatures apart."""
    import base64

    return base64.b64encode(sig.signature).decode()[:8] if sig.signature else ""
