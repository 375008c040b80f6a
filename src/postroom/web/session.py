"""Who is asking: API tokens, web sessions, CSRF protection, login throttling.

Two kinds of credentials reach the HTTP service:

* **API tokens** (``Authorization: Bearer prt_...``), made with ``postroom token add``:
  full admin rights, for scripts. Not sent by browsers on their own, so no CSRF risk.
* **Sessions** of a web login (``POST /api/v1/login`` with a user's address and main
  password; app passwords never log in to the web). The session id is a random 256-bit
  value in the cookie ``__Host-postroom`` (``Secure``, ``HttpOnly``, ``SameSite=Strict``,
  ``Path=/``, no ``Domain``: the ``__Host-`` prefix makes browsers enforce the last
  three); the store keeps its SHA-256 only. A session lasts ``http.session_lifetime``,
  ends at logout, and every session of a user ends when the password changes. Whether
  the user is an admin is read again on every request, so revoking takes effect at once.

CSRF (a foreign page making the browser send the cookie): three independent checks on
every POST/PUT/DELETE made with a session. ``SameSite=Strict`` keeps browsers from
attaching the cookie to cross-site requests; the request must carry ``X-CSRF-Token``, an
HMAC of the session id under the server secret, which only a same-origin page can read
(``GET /api/v1/session``); and an ``Origin``/``Sec-Fetch-Site`` header, when the browser
sends one, must name this site. The login itself is checked by the last one.

Failed web logins from an address are delayed like IMAP/SMTP ones (``limits.auth_delay``
doubling per failure, at most 30 s), and answered 429 after ``limits.auth_failures`` x 5
failures within 15 minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from postroom.auth.passwords import secret_digest
from postroom.services import Services
from postroom.store.api import User

COOKIE = "__Host-postroom"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
THROTTLE_WINDOW = 900.0
THROTTLE_SIZE = 10_000


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status`` by the server's middleware."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "token" | "session"
    name: str  # the token's name or the user's address
    user: User | None = None
    session: str | None = None  # the session id's digest

    @property
    def admin(self) -> bool:
        return self.kind == "token" or (self.user is not None and self.user.admin)


class Sessions:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self._failures: dict[str, tuple[int, float]] = {}  # client ip -> (count, last)

    # -- who is asking ------------------------------------------------------------------
    async def principal(self, request: web.Request, *, cookie_only: bool = False) -> Principal | None:
        """The token of an Authorization header, else the session of the cookie.
        ``cookie_only``: a user's own routes go by the session even when a token is sent."""
        header = "" if cookie_only else request.headers.get("Authorization", "")
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise ApiError(401, "use \"Authorization: Bearer TOKEN\"")
            from postroom.admin.service import AdminService

            token = await AdminService(self.store).token_check(secret.strip())
            if token is None:
                raise ApiError(401, "unknown or revoked API token")
            return Principal("token", token.name)
        cookie = request.cookies.get(COOKIE)
        if not cookie or len(cookie) > 200:
            return None
        digest = secret_digest(cookie)
        session = await self.store.get_web_session(digest)
        if session is None or session.expires <= time.time():
            return None
        user = await self.store.get_user_by_id(session.user_id)
        if user is None or user.disabled:
            return None
        return Principal("session", user.address, user, digest)

    async def require(self, request: web.Request, auth: str) -> Principal | None:
        """Enforce a route's ``auth`` ("admin", "user", "public"); CSRF for sessions."""
        if auth == "public":
            return None
        principal = await self.principal(request, cookie_only=auth == "user")
        if principal is None:
            raise ApiError(401, "log in first")
        if auth == "user" and principal.user is None:
            raise ApiError(403, "this needs a user's login, not an API token")
        if auth == "admin" and not principal.admin:
            raise ApiError(403, f"{principal.name} is not an admin (postroom user admin ADDRESS)")
        if principal.kind == "session" and request.method in UNSAFE:
            self.check_origin(request)
            assert principal.session is not None
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.csrf_token(principal.session).encode()):
                raise ApiError(403, "missing or wrong CSRF token (X-CSRF-Token)")
        return principal

    def csrf_token(self, session_digest: str) -> str:
        key = self.services.secret or b"postroom"
        return hmac.new(key, b"csrf:" + session_digest.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def check_origin(request: web.Request) -> None:
        """Browsers name the page that made a request; it must be this site."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise ApiError(403, "cross-site request refused")
        origin = request.headers.get("Origin")
        if origin is not None:
            _, _, netloc = origin.partition("://")
            if netloc.lower() != request.host.lower():
                raise ApiError(403, "cross-origin request refused")

    # -- logging in and out ---------------------------------------------------------------
    async def login(self, request: web.Request, address: str, password: str) -> tuple[User, str]:
        """Check the main password (never an app password); return the user and a new
        session id for the cookie. Failures are delayed and throttled per client."""
        import asyncio

        self.check_origin(request)
        ip = request.remote or "unknown"
        failures = self._recent_failures(ip)
        limits = self.services.settings.limits
        if failures >= limits.auth_failures * 5:
            raise ApiError(429, "too many failed logins from your address; try again later")
        from postroom.auth.failures import client_key
        from postroom.net.auth import verify_slot

        # The same per-address and per-user rules as IMAP/POP3/SMTP logins (auth/failures.py):
        # a guesser cannot move to the web form to escape them.
        guard = self.services.login_guard
        key = guard.key_for(ip) if guard is not None else None
        if guard is not None and (
            (key is not None and guard.admission(key) is None) or guard.user_locked(address)
        ):
            raise ApiError(429, "too many failed logins; try again later")
        started = time.perf_counter()
        user = await self.services.directory.authenticate(
            address, password, lambda: verify_slot(client_key(ip)), app_passwords=False
        )
        self.services.metrics.login("web", user is not None, time.perf_counter() - started)
        if user is None:
            self._failed(ip)
            if guard is not None:
                guard.record_failure(key, address)
            await asyncio.sleep(min(limits.auth_delay * 2 ** failures, 30.0))
            raise ApiError(401, "wrong address or password")
        self._failures.pop(ip, None)
        return user, await self.start(user)

    async def start(self, user: User) -> str:
        token = secrets.token_urlsafe(32)
        expires = int(time.time() + self.services.settings.http.session_lifetime)
        await self.store.add_web_session(secret_digest(token), user.id, expires)
        return token

    def set_cookie(self, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(
            COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict",
            max_age=int(self.services.settings.http.session_lifetime),
        )

    @staticmethod
    def clear_cookie(response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")

    def _recent_failures(self, ip: str) -> int:
        entry = self._failures.get(ip)
        if entry is None or time.monotonic() - entry[1] > THROTTLE_WINDOW:
            return 0
        return entry[0]

    def _failed(self, ip: str) -> None:
        if len(self._failures) >= THROTTLE_SIZE:
            now = time.monotonic()
            self._failures = {
                k: v for k, v in self._failures.items() if now - v[1] <= THROTTLE_WINDOW
            }
            if len(self._failures) >= THROTTLE_SIZE:
                self._failures.clear()
        self._failures[ip] = (self._recent_failures(ip) + 1, time.monotonic())
