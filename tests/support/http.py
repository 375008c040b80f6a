"""A running ``postroom serve`` with the HTTP roles, and a small real HTTP client for it.

``HttpServer`` adds ``http`` and ``https`` listeners to the usual roles, creates an admin
user and an API token through the CLI's own service, and ``call`` sends real requests
over TLS (http.client: the stdlib's client, with keep-alive off so every call is one
connection like a script's). ``raw`` sends exact bytes, for tests that replay what a
mail client sends.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from support.dns_server import DnsServer
from support.server import PASSWORD, Server

WEB_ROLES = ("mx", "submission", "submissions", "imap", "imaps", "pop3s", "http", "https")
ADMIN = "admin@example.test"


class HttpServer(Server):
    """Unless the test brings its own ``resolver``, DNS goes to a local server of its own
    (``self.dns``, no records: every name is NXDOMAIN until a test sets one), so that no
    path of the HTTP service (DNS checks, the queue) ever asks a resolver elsewhere."""

    def __init__(self, root: Path, roles: tuple[str, ...] = WEB_ROLES, extra: str = "", **kw: Any) -> None:
        self.dns: DnsServer | None = None
        if "resolver" not in extra:
            self.dns = DnsServer().start()
            line = f'resolver = "{self.dns.address}"\n'
            extra = extra.replace("[outbound]\n", "[outbound]\n" + line) if "[outbound]" in extra \
                else extra + f"\n[outbound]\n{line}"
        super().__init__(root, roles=roles, extra=extra, **kw)
        self.token = ""

    def stop(self, timeout: float = 20.0) -> int:
        rc = super().stop(timeout)
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        return rc

    def setup_admin(self) -> None:
        async def fn(admin: Any, store: Any) -> str:
            if await store.get_domain("example.test") is None:
                await admin.domain_add("example.test")
            await admin.user_add(ADMIN, PASSWORD)
            await admin.user_admin(ADMIN, True)
            _, secret = await admin.token_add("tests")
            return str(secret)

        self.token = self.admin(fn)

    @property
    def https_port(self) -> int:
        return self.ports["https"]

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.check_hostname = False
        return ctx

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        plain: bool = False,
        raw_body: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request; returns (status, headers, parsed JSON or bytes). ``token``
        defaults to the admin token; pass "" for none."""
        if plain:
            conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=30)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.tls(), timeout=30)
        h = dict(headers or {})
        tok = self.token if token is None else token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            payload = resp.read()
            out_headers = {k.lower(): v for k, v in resp.getheaders()}
            if out_headers.get("content-type", "").startswith("application/json") and payload:
                return resp.status, out_headers, json.loads(payload)
            return resp.status, out_headers, payload
        finally:
            conn.close()

    def raw(self, request: bytes, *, plain: bool = False, sni: str = "localhost") -> bytes:
        """Send ``request`` as is on a new connection; return the response: up to the end
        of its Content-Length body (clients keep connections alive), or to EOF."""
        port = self.ports["http" if plain else "https"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            s: socket.socket = sock if plain else self.tls().wrap_socket(sock, server_hostname=sni)
            s.sendall(request)
            data = b""
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = _content_length(head)
                    if length is not None and len(body) >= length:
                        return data
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk
        finally:
            sock.close()


def closed_port(address: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``address`` (bound once, then closed): a dead peer."""
    s = socket.socket()
    s.bind((address, 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body
