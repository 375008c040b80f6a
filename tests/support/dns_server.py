"""A small authoritative DNS server for tests (dnslib), UDP and TCP on 127.0.0.1:<free port>.

Records are a dict ``{(name, type): answers}`` that tests may change while it runs:
MX answers are ``(preference, host)`` pairs ("." for a null MX), A/AAAA answers address
strings, TXT answers strings (longer than 255 bytes: split into several strings, as zone
files do) or lists of strings, PTR and CNAME answers host names, SRV answers
``(priority, weight, port, target)``, TLSA answers ``(usage, selector, mtype, hex data)``;
names in ``secure`` are answered with the AD bit, as a DNSSEC-validating resolver would. ``ttl`` is the TTL of every answer (0 by default, so
tests that change records mid-run see the change at once); ``negative_ttl`` adds an SOA to
NXDOMAIN/NODATA answers with that minimum (RFC 2308), None for none. ``delay`` makes the
server wait that many seconds before answering names in ``slow`` (a DNS timeout). The values ``NXDOMAIN`` and ``SERVFAIL`` make that name (for
that type) fail so. A name with no entry at all is NXDOMAIN; a known name without the asked
type is NODATA (NOERROR, no answer), as a real server does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any

import time

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, SRV, TLSA, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

NXDOMAIN = "NXDOMAIN"
SERVFAIL = "SERVFAIL"


class _QuietLogger:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, owner: DnsServer) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname)
        name = _norm(qname)
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            self.owner.queries.append((name, qtype))
            value = self.owner.records.get((name, qtype))
            known = any(n == name for n, _ in self.owner.records)
            slow = name in self.owner.slow
            # A validating resolver's "authentic data" bit (RFC 4035 3.2.3); reply() copied
            # the query's flags, and a client may set AD in a query (RFC 6840 5.7).
            reply.header.ad = 1 if name in self.owner.secure else 0
            cname = self.owner.records.get((name, "CNAME"))
        if slow:
            time.sleep(self.owner.delay)
        if value is None and cname and qtype != "CNAME":
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(DNSLabel(cname[0])), ttl=self.owner.ttl))
            inner = DNSRecord.question(cname[0], qtype)
            for rr in self.resolve(inner, handler).rr:
                reply.add_answer(rr)
            return reply
        if value is not None and not isinstance(value, (list, tuple)):
            value = str(value)  # the markers, also postroom.policy.dns's
        if value == SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if value == NXDOMAIN or (value is None and not known):
            reply.header.rcode = RCODE.NXDOMAIN
            self._soa(reply)
            return reply
        if not value:
            self._soa(reply)
        for answer in value or ():
            if qtype == "MX":
                pref, host = answer
                rdata: Any = MX(DNSLabel(host if host != "." else "."), int(pref))
            elif qtype == "A":
                rdata = A(answer)
            elif qtype == "AAAA":
                rdata = AAAA(answer)
            elif qtype == "TXT":
                if isinstance(answer, (list, tuple)):
                    chunks = [a.encode() if isinstance(a, str) else a for a in answer]
                else:
                    raw = answer.encode() if isinstance(answer, str) else answer
                    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
                rdata = TXT(chunks)
            elif qtype == "PTR":
                rdata = PTR(DNSLabel(answer))
            elif qtype == "CNAME":
                rdata = CNAME(DNSLabel(answer))
            elif qtype == "SRV":
                priority, weight, port, target = answer
                rdata = SRV(int(priority), int(weight), int(port), DNSLabel(target))
            elif qtype == "TLSA":
                usage, selector, mtype, data = answer
                rdata = TLSA(int(usage), int(selector), int(mtype), bytes.fromhex(data))
            else:
                continue
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=self.owner.ttl))
        return reply

    def _soa(self, reply: DNSRecord) -> None:
        if self.owner.negative_ttl is None:
            return
        minimum = self.owner.negative_ttl
        reply.add_auth(RR(
            "test.", QTYPE.SOA, ttl=minimum,
            rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, minimum)),
        ))


class DnsServer:
    """Start with :meth:`start`; ``address`` is ("127.0.0.1", port) for ``[outbound] resolver``."""

    def __init__(
        self,
        records: Mapping[tuple[str, str], Any] | None = None,
        *,
        ttl: int = 0,
        negative_ttl: int | None = None,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.slow: set[str] = set()
        self.secure: set[str] = set()  # names answered with the AD bit (as if DNSSEC-validated)
        self.delay = 0.0
        self.lock = threading.Lock()
        self.records: dict[tuple[str, str], Any] = {}
        self.queries: list[tuple[str, str]] = []
        for key, value in (records or {}).items():
            self.set(key[0], key[1], value)
        self._servers: list[DNSServer] = []
        self.port = 0

    def set(self, name: str, rdtype: str, value: Any) -> None:
        with self.lock:
            self.records[(_norm(name), rdtype.upper())] = value

    def publish(self, records: list[dict[str, str]], *, skip: tuple[str, ...] = ()) -> None:
        """Serve what ``postroom dns --json`` printed, as a person pasting it into a zone
        would (``skip``: record types to leave out)."""
        for rec in records:
            if rec["rtype"] in skip:
                continue
            if rec["rtype"] == "MX":
                pref, host = rec["value"].split()
                self.set(rec["name"], "MX", [(int(pref), host)])
            elif rec["rtype"] == "SRV":
                self.set(rec["name"], "SRV", [tuple(rec["value"].split())])
            else:
                self.set(rec["name"], rec["rtype"], [rec["value"]])

    def remove(self, name: str, rdtype: str) -> None:
        with self.lock:
            self.records.pop((_norm(name), rdtype.upper()), None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        resolver = _Resolver(self)
        for _ in range(20):  # UDP on a free port, then TCP on the same number
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=_QuietLogger())
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=_QuietLogger())
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise RuntimeError("no free port pair for the DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []


def free_port_on(addresses: list[str]) -> int:
    """A TCP port number free on every address in ``addresses`` (checked by binding)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((addresses[0], 0))
            port = first.getsockname()[1]
            ok = True
            for address in addresses[1:]:
                with socket.socket() as s:
                    try:
                        s.bind((address, port))
                    except OSError:
                        ok = False
                        break
            if ok:
                return port
    raise RuntimeError("no common free port")
