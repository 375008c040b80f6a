"""The HTTP service: aiohttp's web server inside postroom's own event loop.

Why aiohttp (measured, see docs/architecture.md "HTTP service"): on a small JSON endpoint
in one uvloop loop it served about as many requests per second as Starlette on uvicorn's
httptools protocol and twice as many as uvicorn's h11 protocol, and unlike uvicorn it is
made to be embedded: ``AppRunner.server`` is a protocol factory that our listener binds
with ``loop.create_server`` (same TLS context as the mail roles, reloaded on SIGHUP; same
connection limits), with no server process or signal handling of its own.

This module wires the pieces: one middleware answers every error under ``/api/`` as JSON
``{"error": ...}`` (so clients and the OpenAPI document see one error shape), adds the
security headers to every response, counts requests for ``/metrics``, and logs every
change made through the API (who, what, result). Route handlers come from
:mod:`postroom.web.api` (admin), :mod:`postroom.web.account` (login, self-service) and
:mod:`postroom.web.public` (auto-configuration, MTA-STS, health, pages).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from postroom import logs
from postroom.admin.service import AdminError
from postroom.services import Services
from postroom.web import account, api, mailauth
from postroom.web.openapi import Document, Invalid, Route, validate
from postroom.web.public import Public, _loopback, openapi_response
from postroom.web.session import UNSAFE, ApiError, Sessions

log = logging.getLogger("postroom.http")

_KIND_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409}
# One policy for every page: our own scripts and styles only, no framing, no plugins.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# What a closed-over-limit connection is told (see ListenerSet.start_protocol).
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 20\r\n\r\ntoo many connections"
)
KEEPALIVE = 30.0  # idle keep-alive connections are closed after this


class _OneLine(logging.Filter):
    """aiohttp reports a malformed request (it has already answered 400) as an error with
    a traceback; that is the client's mistake, so it becomes one info line without one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = "event=http_bad_request error=%r"
            record.args = (f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_PROTOCOL_LOG = logging.getLogger("postroom.http.protocol")
_PROTOCOL_LOG.addFilter(_OneLine())


def _group(path: str) -> str:
    """A small fixed set of labels for the request counter (never the raw path)."""
    if path.startswith("/api/"):
        return "api"
    if path in ("/metrics", "/healthz", "/readyz"):
        return path[1:]
    if "autoconfig" in path or path.startswith("/mail/") or "utodiscover" in path:
        return "autoconfig"
    if path == "/.well-known/mta-sts.txt":
        return "mta-sts"
    return "pages"


_PRIVATE = ("/api/", "/admin", "/account")


def needs_tls(secure: bool, remote: str | None, path: str, has_credentials: bool) -> bool:
    """Passwords, tokens and session cookies never cross the network in clear: over plain
    HTTP, the API, the admin and account pages and any request carrying credentials are
    only served to loopback clients (a reverse proxy on this host that terminated TLS)."""
    if secure or _loopback(remote):
        return False
    return has_credentials or path.startswith(_PRIVATE)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class HttpService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions = Sessions(services)
        self.public = Public(services, self.sessions)
        self.document = Document(
            routes=[*api.ROUTES, *mailauth.ROUTES, *account.ROUTES],
            schemas={**api.SCHEMAS, **mailauth.SCHEMAS, **account.SCHEMAS},
        )
        self.openapi = self.document.build()
        self.app = web.Application(
            middlewares=[self._middleware],
            client_max_size=services.settings.http.request_size,
        )
        for route in self.document.routes:
            self.app.router.add_route(route.method, route.path, self._wrap(route))
        self.app.router.add_get("/api/v1/openapi.json", self._openapi)
        self.app.router.add_routes(self.public.routes())
        self.runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, keepalive_timeout=KEEPALIVE,
            max_line_size=8190, max_field_size=8190, max_headers=100, shutdown_timeout=5.0,
            logger=_PROTOCOL_LOG,
        )

    async def setup(self) -> None:
        await self.runner.setup()

    def protocol_factory(self) -> Any:
        """Called once per accepted connection (see ListenerSet.start_protocol)."""
        server = self.runner.server
        assert server is not None, "setup() first"
        return server()

    async def close(self) -> None:
        """Close idle keep-alive connections, let requests in progress finish (up to
        ``shutdown_timeout``), then close the rest. Safe to call twice."""
        if self.runner.server is not None:
            await self.runner.cleanup()

    # ---------------------------------------------------------------------------------
    async def _openapi(self, request: web.Request) -> web.Response:
        return openapi_response(self.openapi)

    def _wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            principal = await self.sessions.require(request, route.auth)
            request["principal"] = principal
            body: Any = None
            if route.body is not None:
                if request.content_type != "application/json":
                    raise ApiError(400, "send the body as application/json")
                try:
                    body = json.loads(await request.read())
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(400, "the body is not valid JSON") from None
                try:
                    validate(route.body, body)
                except Invalid as e:
                    raise ApiError(400, str(e)) from None
            for param in route.params:
                if param.where == "query" and param.name in request.query:
                    value: Any = request.query[param.name]
                    if param.schema.get("type") == "integer":
                        try:
                            value = int(value)
                        except ValueError:
                            raise ApiError(400, f"{param.name}: expected an integer") from None
                    try:
                        validate(param.schema, value, param.name)
                    except Invalid as e:
                        raise ApiError(400, str(e)) from None
            ctx = api.Ctx(request, principal, body, self.services, self.sessions)
            result = await route.handler(ctx)
            if isinstance(result, web.StreamResponse):
                return result
            if route.response is None:
                return web.Response(status=route.ok)
            return web.json_response(result, status=route.ok)

        return handler

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        is_api = request.path.startswith("/api/")
        try:
            if needs_tls(request.secure, request.remote, request.path, "Authorization" in request.headers):
                raise self._to_https(request)
            response = await handler(request)
        except ApiError as e:
            response = error_response(e.status, e.message)
        except AdminError as e:
            response = error_response(_KIND_STATUS.get(e.kind, 400), str(e))
        except web.HTTPException as e:
            if e.status < 400 or not is_api:
                self._decorate(request, e)
                raise
            response = error_response(e.status, e.reason)
            if "Allow" in e.headers:  # 405: RFC 9110 15.5.6 requires the list
                response.headers["Allow"] = e.headers["Allow"]
        except Exception:
            log.exception("http request failed method=%s path=%s", request.method, request.path)
            response = error_response(500, "internal error")
        self._decorate(request, response)
        if is_api and request.method in UNSAFE:
            principal = request.get("principal")
            logs.event(
                log, "http_admin", method=request.method, path=request.path,
                status=response.status, client=request.remote,
                by=f"{principal.kind}:{principal.name}" if principal else None,
            )
        return response

    def _to_https(self, request: web.Request) -> Exception:
        """The same page over HTTPS (pages), or 403 (API calls and credentials)."""
        https = self.services.bound.get("https")
        if request.method != "GET" or request.path.startswith("/api/") or not https:
            return ApiError(403, "use HTTPS: credentials are not accepted over plain HTTP")
        port = next((lst.port for lst in self.services.settings.listeners if lst.role == "https"), 443)
        port = port or https[0][1]
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        where = host if port == 443 else f"{host}:{port}"
        return web.HTTPFound(f"https://{where}{request.rel_url}")

    def _decorate(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        self.services.metrics.http_request(_group(request.path), response.status)
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Content-Security-Policy", _CSP)
        if request.path.startswith("/api/"):
            h.setdefault("Cache-Control", "no-store")
        if request.secure:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
