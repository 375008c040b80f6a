"""A small authoritative DNS server for tests (dnslib), UDP and TCP on 127.0.0.1:<free port>.

Records are a dict ``{(name, type): answers}`` that tests may change while it runs:
MX answers are ``(preference, host)`` pairs ("." for a null MX), A/AAAA answers address
strings, TXT answers strings. The values ``NXDOMAIN`` and ``SERVFAIL`` make that name (for
that type) fail so. A name with no entry at all is NXDOMAIN; a known name without the asked
type is NODATA (NOERROR, no answer), as a real server does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord
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
        if value is not None and not isinstance(value, (list, tuple)):
            value = str(value)  # the markers, also postroom.policy.dns's
        if value == SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if value == NXDOMAIN or (value is None and not known):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for answer in value or ():
            if qtype == "MX":
                pref, host = answer
                rdata: Any = MX(DNSLabel(host if host != "." else "."), int(pref))
            elif qtype == "A":
                rdata = A(answer)
            elif qtype == "AAAA":
                rdata = AAAA(answer)
            elif qtype == "TXT":
                rdata = TXT(answer)
            else:
                continue
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=60))
        return reply


class DnsServer:
    """Start with :meth:`start`; ``address`` is ("127.0.0.1", port) for ``[outbound] resolver``."""

    def __init__(self, records: Mapping[tuple[str, str], Any] | None = None) -> None:
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
