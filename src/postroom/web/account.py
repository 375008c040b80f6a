"""Web login and a user's own account: password, app passwords, the Apple profile.

Every user (not only admins) can log in to ``/account/`` with their address and main
password, change that password (giving the current one again: a stolen session alone
cannot lock the owner out), create per-device app passwords for IMAP/POP3/SMTP (shown
once, listed by name, revocable one by one) and download a ``.mobileconfig`` profile for
Apple Mail. See :mod:`postroom.web.session` for sessions and CSRF.
"""

from __future__ import annotations

from aiohttp import web

from postroom.admin.service import AdminError
from postroom.clients import client_endpoints
from postroom.store.api import AppPassword
from postroom.web.api import LABEL, Ctx
from postroom.web.autoconfig import MOBILECONFIG_TYPE, mobileconfig
from postroom.web.openapi import (
    BOOLEAN,
    INTEGER,
    NULLABLE_INTEGER,
    Json,
    Param,
    Route,
    array,
    obj,
    ref,
    string,
)
from postroom.web.session import ApiError

MIN_PASSWORD = 10  # a person's new password; admins setting one are not limited

SCHEMAS: dict[str, Json] = {
    "Session": obj(
        {"address": string(320), "admin": BOOLEAN, "csrf": string(64), "expires": INTEGER},
        ("address", "admin", "csrf"),
    ),
    "Me": obj(
        {"address": string(320), "admin": BOOLEAN, "created": INTEGER, "messages": INTEGER,
         "octets": INTEGER, "storage_limit": NULLABLE_INTEGER, "messages_limit": NULLABLE_INTEGER},
        ("address", "admin", "created", "messages", "octets", "storage_limit", "messages_limit"),
    ),
    "AppPassword": obj({"id": INTEGER, "name": string(64), "created": INTEGER},
                       ("id", "name", "created")),
}


def _session_json(ctx: Ctx, address: str, admin: bool, digest: str) -> Json:
    return {"address": address, "admin": admin, "csrf": ctx.sessions.csrf_token(digest)}


def app_password_json(p: AppPassword) -> Json:
    return {"id": p.id, "name": p.name, "created": p.created}


async def login(ctx: Ctx) -> web.Response:
    from postroom.auth.passwords import secret_digest

    user, token = await ctx.sessions.login(ctx.request, ctx.body["address"], ctx.body["password"])
    response = web.json_response(_session_json(ctx, user.address, user.admin, secret_digest(token)))
    ctx.sessions.set_cookie(response, token)
    return response


async def logout(ctx: Ctx) -> web.Response:
    assert ctx.principal is not None and ctx.principal.session is not None
    await ctx.services.store.remove_web_sessions(digest=ctx.principal.session)
    response = web.Response(status=204)
    ctx.sessions.clear_cookie(response)
    return response


async def session(ctx: Ctx) -> Json:
    p = ctx.principal
    assert p is not None and p.user is not None and p.session is not None
    return _session_json(ctx, p.user.address, p.user.admin, p.session)


async def me(ctx: Ctx) -> Json:
    assert ctx.principal is not None and ctx.principal.user is not None
    user = ctx.principal.user
    q = await ctx.services.store.get_quota(user.id)
    return {
        "address": user.address, "admin": user.admin, "created": user.created,
        "messages": q.messages_used, "octets": q.storage_used,
        "storage_limit": q.storage_limit, "messages_limit": q.messages_limit,
    }


async def change_password(ctx: Ctx) -> web.Response:
    from postroom.auth.passwords import secret_digest

    assert ctx.principal is not None and ctx.principal.user is not None
    user = ctx.principal.user
    new = ctx.body["new"]
    if len(new) < MIN_PASSWORD:
        raise ApiError(400, f"the new password needs at least {MIN_PASSWORD} characters")
    checked = await ctx.services.directory.authenticate(
        user.address, ctx.body["current"], app_passwords=False
    )
    if checked is None or checked.id != user.id:
        raise ApiError(403, "the current password is wrong")
    await ctx.admin.user_passwd(user.address, new)  # ends every session of the user ...
    token = await ctx.sessions.start(user)  # ... and this browser gets a new one
    response = web.json_response(_session_json(ctx, user.address, user.admin, secret_digest(token)))
    ctx.sessions.set_cookie(response, token)
    return response


async def app_passwords(ctx: Ctx) -> list[Json]:
    assert ctx.principal is not None and ctx.principal.user is not None
    return [app_password_json(p) for p in await ctx.admin.app_password_list(ctx.principal.user)]


async def app_password_add(ctx: Ctx) -> Json:
    assert ctx.principal is not None and ctx.principal.user is not None
    existing = await ctx.admin.app_password_list(ctx.principal.user)
    if len(existing) >= 100:
        raise ApiError(409, "100 app passwords at most: revoke some first")
    entry, secret = await ctx.admin.app_password_add(ctx.principal.user, ctx.body["name"])
    return {**app_password_json(entry), "password": secret}


async def app_password_remove(ctx: Ctx) -> None:
    assert ctx.principal is not None and ctx.principal.user is not None
    try:
        password_id = int(ctx.path("id"))
    except ValueError:
        raise AdminError("no such app password", "not_found") from None
    await ctx.admin.app_password_remove(ctx.principal.user, password_id)


async def apple_profile(ctx: Ctx) -> web.Response:
    assert ctx.principal is not None and ctx.principal.user is not None
    address = ctx.principal.user.address
    settings = ctx.services.settings
    try:
        body = mobileconfig(address, settings.hostname, client_endpoints(settings, ctx.services.bound))
    except ValueError as e:
        raise ApiError(404, str(e)) from None
    filename = address.replace("@", "-at-") + ".mobileconfig"
    return web.Response(
        body=body, content_type=MOBILECONFIG_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


U = "user"
ROUTES: list[Route] = [
    Route("POST", "/api/v1/login", login, "Log in (sets the session cookie)", "session", "public",
          body=obj({"address": string(320, 1), "password": string(1024, 1)}, ("address", "password")),
          response=ref("Session"), errors=(400, 401, 403, 429)),
    Route("POST", "/api/v1/logout", logout, "Log out (ends this session)", "session", U, ok=204),
    Route("GET", "/api/v1/session", session, "This session and its CSRF token", "session", U,
          response=ref("Session")),
    Route("GET", "/api/v1/me", me, "My account", "account", U, response=ref("Me")),
    Route("PUT", "/api/v1/me/password", change_password,
          "Change my password (ends my other sessions)", "account", U,
          body=obj({"current": string(1024, 1), "new": string(1024, 1)}, ("current", "new")),
          response=ref("Session")),
    Route("GET", "/api/v1/me/app-passwords", app_passwords, "My app passwords", "account", U,
          response=array(ref("AppPassword"))),
    Route("POST", "/api/v1/me/app-passwords", app_password_add,
          "Create an app password for one device (shown once)", "account", U, ok=201,
          body=obj({"name": LABEL}, ("name",)),
          response=obj({"id": INTEGER, "name": string(64), "created": INTEGER,
                        "password": string(64)}, ("id", "name", "created", "password")),
          errors=(400, 409)),
    Route("DELETE", "/api/v1/me/app-passwords/{id}", app_password_remove,
          "Revoke one of my app passwords", "account", U, ok=204,
          params=(Param("id", "path", string(20)),)),
    Route("GET", "/api/v1/me/mobileconfig", apple_profile,
          "Apple Mail profile for my account (.mobileconfig)", "account", U,
          response={"type": "string"}, content_type=MOBILECONFIG_TYPE),
]
