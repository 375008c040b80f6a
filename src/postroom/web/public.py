"""What the HTTP service answers without a login: client auto-configuration, the MTA-STS
policy, health and metrics, and the admin and account pages (which then log in).

Host names matter here: clients ask ``autoconfig.DOMAIN``, ``autodiscover.DOMAIN`` and
``mta-sts.DOMAIN`` (all CNAMEs of this server, see ``postroom.clients``), or the bare
domain. Every answer is for a domain this server hosts, and 404 otherwise, so the service
never confirms or describes someone else's domain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from importlib import resources

from aiohttp import web

from postroom.address import AddressError, normalize_domain
from postroom.clients import client_endpoints, mta_sts_policy
from postroom.metrics import CONTENT_TYPE as METRICS_TYPE
from postroom.services import Services
from postroom.web import autoconfig
from postroom.web.session import ApiError, Sessions

XML = "application/xml"
_STATIC_NAME = re.compile(r"^[a-z0-9-]{1,40}\.(js|css|html)$")
_STATIC_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
READY_TIMEOUT = 2.0
_ACME_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class Public:
    def __init__(self, services: Services, sessions: Sessions) -> None:
        self.services = services
        self.sessions = sessions
        self._static: dict[str, bytes] = {}

    def routes(self) -> list[web.RouteDef]:
        r = []
        for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
            r.append(web.get(path, self.thunderbird))
        for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
            r.append(web.post(path, self.outlook))
        r += [
            web.get("/.well-known/mta-sts.txt", self.mta_sts),
            web.get("/.well-known/acme-challenge/{token}", self.acme_challenge),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/", self.root),
            web.get("/admin", self.to_admin),
            web.get("/admin/", self.page("admin.html")),
            web.get("/account", self.to_account),
            web.get("/account/", self.page("account.html")),
            web.get("/static/{name}", self.static),
        ]
        return r

    # -- which domain ---------------------------------------------------------------------
    async def _hosted(self, name: str) -> str | None:
        try:
            domain = normalize_domain(name)
        except AddressError:
            return None
        return domain if await self.services.store.get_domain(domain) is not None else None

    @staticmethod
    def _host(request: web.Request) -> str:
        host = request.host.lower()
        if host.startswith("["):
            return host.partition("]")[0] + "]"
        return host.rpartition(":")[0] if ":" in host else host

    # -- Thunderbird ----------------------------------------------------------------------
    async def thunderbird(self, request: web.Request) -> web.Response:
        email = request.query.get("emailaddress", "")
        if email:
            name = email.rpartition("@")[2]
        else:  # the domain from the host asked: autoconfig.DOMAIN or DOMAIN
            host = self._host(request)
            name = host[len("autoconfig."):] if host.startswith("autoconfig.") else host
        domain = await self._hosted(name)
        if domain is None:
            raise web.HTTPNotFound(text="no mail domain here\n")
        body = autoconfig.thunderbird_config(domain, self._endpoints())
        return web.Response(body=body, content_type=XML, charset="utf-8")

    # -- Outlook --------------------------------------------------------------------------
    async def outlook(self, request: web.Request) -> web.Response:
        body = await request.content.read(autoconfig.MAX_REQUEST + 1)
        try:
            req = autoconfig.parse_autodiscover(body)
        except autoconfig.AutodiscoverError as e:
            return web.Response(body=autoconfig.autodiscover_error(e.code, e.message), content_type=XML,
                                charset="utf-8")
        if await self._hosted(req.email.rpartition("@")[2]) is None:
            raise web.HTTPNotFound(text="no mail domain here\n")
        body = autoconfig.autodiscover_response(req.email, self._endpoints())
        return web.Response(body=body, content_type=XML, charset="utf-8")

    def _endpoints(self) -> list:  # type: ignore[type-arg]
        return client_endpoints(self.services.settings, self.services.bound)

    # -- MTA-STS (RFC 8461 3.3) -------------------------------------------------------------
    async def mta_sts(self, request: web.Request) -> web.Response:
        host = self._host(request)
        if not host.startswith("mta-sts.") or await self._hosted(host[len("mta-sts."):]) is None:
            raise web.HTTPNotFound(text="no MTA-STS policy for this host\n")
        # RFC 8461 3.3: media type text/plain; senders must not follow redirects, and
        # a cache may keep it for its max_age.
        return web.Response(text=mta_sts_policy(self.services.settings), content_type="text/plain")

    # -- ACME HTTP-01 (RFC 8555 8.3) for an external client such as certbot --webroot ----------
    async def acme_challenge(self, request: web.Request) -> web.Response:
        """Serve ``DATA/acme-challenge/TOKEN``, the file ``certbot --webroot -w
        DATA/acme-challenge`` writes: certificates can be renewed while postroom holds
        port 80. Tokens are base64url (RFC 8555 8.3), so no path can be formed."""
        token = request.match_info["token"]
        if not _ACME_TOKEN.match(token):
            raise web.HTTPNotFound()
        path = self.services.settings.data_dir / "acme-challenge" / ".well-known" / "acme-challenge" / token
        try:
            body = path.read_bytes()[:4096]
        except OSError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type="application/octet-stream")

    # -- health and metrics -------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answered. Nothing else is checked on purpose: a
        restart does not cure a slow disk or DNS."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: listening, not shutting down, the store answers a read in time."""
        services = self.services
        if services.shutdown.requested:
            return web.json_response({"status": "shutting down"}, status=503)
        if not services.ready:
            return web.json_response({"status": "starting"}, status=503)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(services.store.queue_stats(), READY_TIMEOUT)
        except Exception as e:  # a timeout or a store error: not ready
            return web.json_response(
                {"status": "store not answering", "error": type(e).__name__}, status=503
            )
        return web.json_response(
            {"status": "ready", "store_ms": round((time.perf_counter() - started) * 1000, 2)}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format; open to loopback clients and API tokens (a Prometheus
        on another host sends ``authorization: credentials: TOKEN``)."""
        if not _loopback(request.remote):
            principal = await self.sessions.principal(request) if request.headers.get("Authorization") else None
            if principal is None or principal.kind != "token":
                raise ApiError(403, "metrics: from loopback, or with an API token")
        stats = await self.services.store.queue_stats()
        self.services.metrics.set_queue(stats.messages, stats.oldest)
        await self.services.metrics.refresh()  # the worker processes' figures, if any
        body = self.services.metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    # -- pages ----------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/account/")

    async def to_admin(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin/")

    async def to_account(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/account/")

    def page(self, name: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            return self._file(name)

        return handler

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not _STATIC_NAME.match(name):
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        body = self._static.get(name)
        if body is None:
            try:
                body = resources.files("postroom.web").joinpath("static").joinpath(name).read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                raise web.HTTPNotFound() from None
            self._static[name] = body
        kind = _STATIC_TYPES[name.rpartition(".")[2]]
        return web.Response(body=body, content_type=kind, charset="utf-8",
                            headers={"Cache-Control": "no-cache"})


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def openapi_response(document: dict) -> web.Response:  # type: ignore[type-arg]
    return web.Response(text=json.dumps(document, indent=1), content_type="application/json")
