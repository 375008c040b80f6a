"""The JSON admin API (``/api/v1``): everything the CLI does, as routes.

Each handler is a thin adapter: it reads what the route table already validated, calls
the one implementation in :class:`postroom.admin.service.AdminService` (the CLI calls the
same), and returns JSON-able data; :mod:`postroom.web.server` turns ``AdminError`` into
400/404/409. Adding an operation (DKIM keys, DNS checks) is one service method, one
handler and one :class:`Route` entry: the OpenAPI document follows by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from postroom import __version__
from postroom.admin.queue_cli import queue_entry_json
from postroom.admin.service import LABEL_PATTERN, AdminError, AdminService
from postroom.services import Services
from postroom.store.api import Alias, ApiToken, DeliveryLogEntry, Domain, Quota, User
from postroom.web.openapi import (
    BOOLEAN,
    INTEGER,
    NULLABLE_INTEGER,
    NULLABLE_STRING,
    Json,
    Param,
    Route,
    array,
    obj,
    ref,
    string,
)
from postroom.web.session import ApiError, Principal, Sessions


@dataclass
class Ctx:
    """What a handler gets: the request, who asked, the validated body, the services."""

    request: web.Request
    principal: Principal | None
    body: Any
    services: Services
    sessions: Sessions

    @property
    def admin(self) -> AdminService:
        return AdminService(self.services.store, self.services.settings)

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def path_address(self, name: str, *, alias: bool = False) -> str:
        """A path segment naming an address (or an alias source): one that cannot be an
        address names nothing, so it is 404 like any unknown one."""
        from postroom.address import AddressError, normalize_address, normalize_alias_source

        try:
            return (normalize_alias_source if alias else normalize_address)(self.path(name))
        except AddressError:
            raise ApiError(404, f"no such {'alias' if alias else 'user'}") from None

    def domain_filter(self) -> tuple[bool, str | None]:
        """The ``domain`` query filter: (possible, domain or None for all). A name that
        cannot be a domain is not an error: nothing is in it (possible = False)."""
        from postroom.address import AddressError, normalize_domain

        raw = self.query("domain")
        if not raw:
            return True, None
        try:
            return True, normalize_domain(raw)
        except AddressError:
            return False, None

    def query(self, name: str) -> str | None:
        return self.request.query.get(name)

    def query_int(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected an integer") from None
        if not lo <= value <= hi:
            raise ApiError(400, f"{name}: from {lo} to {hi}")
        return value


# -- JSON shapes ---------------------------------------------------------------------------

ADDRESS = string(320, 1)
LABEL = string(64, 1, pattern=LABEL_PATTERN)
SCHEMAS: dict[str, Json] = {
    "Domain": obj({"name": string(253), "created": INTEGER, "users": INTEGER, "aliases": INTEGER},
                  ("name", "created", "users", "aliases")),
    "User": obj(
        {"address": ADDRESS, "domain": string(253), "created": INTEGER, "admin": BOOLEAN,
         "messages": INTEGER, "octets": INTEGER, "storage_limit": NULLABLE_INTEGER,
         "messages_limit": NULLABLE_INTEGER, "password": string(1024)},
        ("address", "domain", "created", "admin", "messages", "octets", "storage_limit",
         "messages_limit"),
        description="A user with their quota (RFC 9208): usage and limits (null: unlimited); "
        "password only in the answer to a create with generate: true",
    ),
    "SendAs": obj({"user": ADDRESS, "address": ADDRESS}, ("user", "address")),
    "Credentials": obj({"address": ADDRESS, "password": string(1024)}, ("address",)),
    "Alias": obj({"source": ADDRESS, "target": ADDRESS}, ("source", "target")),
    "QueueEntry": {"type": "object"},  # see queue_entry_json: the CLI's --json shape
    "Token": obj({"name": string(64), "created": INTEGER}, ("name", "created")),
    "LogEntry": obj(
        {"id": INTEGER, "time": INTEGER, "direction": string(3), "qid": string(64),
         "sender": string(500), "recipient": string(500), "result": string(16),
         "detail": string(500)},
        ("id", "time", "direction", "qid", "sender", "recipient", "result", "detail"),
    ),
    "Status": obj(
        {"version": string(32), "hostname": string(253), "domains": INTEGER, "users": INTEGER,
         "queue": obj({"messages": INTEGER, "oldest": NULLABLE_INTEGER}, ("messages", "oldest"))},
        ("version", "hostname", "domains", "users", "queue"),
    ),
}
NEW_PASSWORD = obj(
    {"password": string(1024, 1), "generate": BOOLEAN},
    description="Give password, or generate: true to have a strong one generated and returned",
)


def domain_json(d: Domain, users: int = 0, aliases: int = 0) -> Json:
    return {"name": d.name, "created": d.created, "users": users, "aliases": aliases}


def user_json(u: User, q: Quota) -> Json:
    return {
        "address": u.address, "domain": u.domain, "created": u.created, "admin": u.admin,
        "messages": q.messages_used, "octets": q.storage_used,
        "storage_limit": q.storage_limit, "messages_limit": q.messages_limit,
    }


def alias_json(a: Alias) -> Json:
    return {"source": a.source, "target": a.target}


def token_json(t: ApiToken) -> Json:
    return {"name": t.name, "created": t.created}


def log_json(e: DeliveryLogEntry) -> Json:
    return {
        "id": e.id, "time": e.time, "direction": e.direction, "qid": e.qid, "sender": e.sender,
        "recipient": e.recipient, "result": e.result, "detail": e.detail,
    }


def _password_choice(body: Json) -> tuple[str, bool]:
    from postroom.auth.passwords import generate_password

    if body.get("generate"):
        if "password" in body:
            raise ApiError(400, "give password or generate, not both")
        return generate_password(), True
    if "password" not in body:
        raise ApiError(400, "password or generate: true is required")
    return str(body["password"]), False


# -- handlers ------------------------------------------------------------------------------


async def status(ctx: Ctx) -> Json:
    store = ctx.services.store
    stats = await store.queue_stats()
    return {
        "version": __version__, "hostname": ctx.services.settings.hostname,
        "domains": len(await store.list_domains()), "users": len(await store.list_users()),
        "queue": {"messages": stats.messages, "oldest": stats.oldest},
    }


async def domains_list(ctx: Ctx) -> list[Json]:
    admin = ctx.admin
    users: dict[str, int] = {}
    for u in await admin.user_list():
        users[u.domain] = users.get(u.domain, 0) + 1
    aliases: dict[str, int] = {}
    for a in await admin.alias_list():
        d = a.source.rpartition("@")[2]
        aliases[d] = aliases.get(d, 0) + 1
    return [domain_json(d, users.get(d.name, 0), aliases.get(d.name, 0)) for d in await admin.domain_list()]


async def domain_add(ctx: Ctx) -> Json:
    return domain_json(await ctx.admin.domain_add(ctx.body["name"]))


async def domain_remove(ctx: Ctx) -> None:
    from postroom.address import AddressError, normalize_domain

    try:
        name = normalize_domain(ctx.path("name"))
    except AddressError:
        raise ApiError(404, "no such domain") from None
    await ctx.admin.domain_remove(name)


async def users_list(ctx: Ctx) -> list[Json]:
    admin = ctx.admin
    possible, domain = ctx.domain_filter()
    if not possible:
        return []
    return [user_json(u, q) for u, q in await admin.user_list_quotas(domain)]


async def user_get(ctx: Ctx) -> Json:
    address = ctx.path_address("address")
    return user_json(await ctx.admin.user_get(address), await ctx.admin.user_quota(address))


async def user_add(ctx: Ctx) -> Json:
    password, generated = _password_choice(ctx.body)
    user = await ctx.admin.user_add(ctx.body["address"], password)
    out = user_json(user, await ctx.admin.user_quota(user.address))
    if generated:
        out["password"] = password
    return out


async def user_remove(ctx: Ctx) -> None:
    await ctx.admin.user_remove(ctx.path_address("address"))


async def user_password(ctx: Ctx) -> Json:
    password, generated = _password_choice(ctx.body)
    address = ctx.path_address("address")
    await ctx.admin.user_passwd(address, password)
    out: Json = {"address": (await ctx.admin.user_get(address)).address}
    if generated:
        out["password"] = password
    return out


async def user_admin(ctx: Ctx) -> Json:
    admin = ctx.admin
    address = ctx.path_address("address")
    await admin.user_admin(address, bool(ctx.body["admin"]))
    return user_json(await admin.user_get(address), await admin.user_quota(address))


async def user_quota(ctx: Ctx) -> Json:
    """Set the quota: ``storage`` octets and optionally ``messages`` (null: unlimited;
    ``messages`` left out: kept as it is), like ``postroom user quota``."""
    address = ctx.path_address("address")
    admin = ctx.admin
    await admin.user_quota_set(address, ctx.body["storage"], ctx.body.get("messages"),
                               keep_messages="messages" not in ctx.body)
    return user_json(await admin.user_get(address), await admin.user_quota(address))


async def sendas_list(ctx: Ctx) -> list[Json]:
    grants = await ctx.admin.sendas_list(ctx.path_address("address"))
    return [{"user": g.user, "address": g.address} for g in grants]


async def sendas_add(ctx: Ctx) -> Json:
    g = await ctx.admin.sendas_add(ctx.path_address("address"), ctx.body["address"])
    return {"user": g.user, "address": g.address}


async def sendas_remove(ctx: Ctx) -> None:
    user = ctx.path_address("address")
    grant = ctx.path("grant")
    try:
        await ctx.admin.sendas_remove(user, grant)
    except AdminError as e:
        if e.kind == "invalid":  # a grant that cannot exist: nothing to remove
            raise ApiError(404, str(e)) from None
        raise


async def aliases_list(ctx: Ctx) -> list[Json]:
    possible, domain = ctx.domain_filter()
    if not possible:
        return []
    return [alias_json(a) for a in await ctx.admin.alias_list(domain)]


async def alias_add(ctx: Ctx) -> list[Json]:
    return [alias_json(a) for a in await ctx.admin.alias_add(ctx.body["source"], ctx.body["targets"])]


async def alias_remove(ctx: Ctx) -> Json:
    from postroom.address import AddressError, normalize_address

    source = ctx.path_address("source", alias=True)
    target = ctx.query("target")
    if target:
        try:
            target = normalize_address(target)
        except AddressError:
            raise ApiError(404, "no such alias target") from None
    return {"removed": await ctx.admin.alias_remove(source, target or None)}


async def queue_list(ctx: Ctx) -> list[Json]:
    return [queue_entry_json(q) for q in await ctx.admin.queue_list()]


async def queue_show(ctx: Ctx) -> Json:
    entry, data = await ctx.admin.queue_show(ctx.path("id"))
    doc = queue_entry_json(entry)
    doc["headers"] = data.partition(b"\r\n\r\n")[0][:65536].decode("utf-8", "replace")
    return doc


async def queue_retry(ctx: Ctx) -> Json:
    return {"scheduled": await ctx.admin.queue_flush(ctx.path("id"))}


async def queue_retry_all(ctx: Ctx) -> Json:
    from postroom.address import AddressError, normalize_domain

    domain = ctx.body.get("domain") or None
    if domain is not None:
        try:
            domain = normalize_domain(domain)
        except AddressError:
            return {"scheduled": 0}  # no message can be queued for a name that is no domain
    return {"scheduled": await ctx.admin.queue_flush(None, domain)}


async def queue_hold(ctx: Ctx) -> Json:
    await ctx.admin.queue_hold(ctx.path("id"), True)
    return {"id": ctx.path("id"), "held": True}


async def queue_release(ctx: Ctx) -> Json:
    await ctx.admin.queue_hold(ctx.path("id"), False)
    return {"id": ctx.path("id"), "held": False}


async def queue_bounce(ctx: Ctx) -> Json:
    return {"bounced": await ctx.admin.queue_bounce(ctx.path("id"))}


async def queue_delete(ctx: Ctx) -> None:
    await ctx.admin.queue_delete(ctx.path("id"))


async def tokens_list(ctx: Ctx) -> list[Json]:
    return [token_json(t) for t in await ctx.admin.token_list()]


async def token_add(ctx: Ctx) -> Json:
    token, secret = await ctx.admin.token_add(ctx.body["name"])
    return {**token_json(token), "token": secret}


async def token_remove(ctx: Ctx) -> None:
    name = ctx.path("name")
    if ctx.principal is not None and ctx.principal.kind == "token" and ctx.principal.name == name:
        raise AdminError("a token cannot revoke itself (use another token or the CLI)")
    await ctx.admin.token_remove(name)


async def delivery_log(ctx: Ctx) -> list[Json]:
    limit = ctx.query_int("limit", 100, 1, 1000)
    before = ctx.query_int("before", 0, 0, 2**62) or None
    return [log_json(e) for e in await ctx.admin.delivery_log(limit, before)]


# -- the table ------------------------------------------------------------------------------

_DOMAIN_Q = Param("domain", "query", string(253), description="only this domain")
_ID = Param("id", "path", string(64), description="queue id")
_ADDR = Param("address", "path", string(320))
A = "admin"

ROUTES: list[Route] = [
    Route("GET", "/api/v1/status", status, "Server overview", "status", A, response=ref("Status")),
    Route("GET", "/api/v1/domains", domains_list, "List domains", "domains", A,
          response=array(ref("Domain"))),
    Route("POST", "/api/v1/domains", domain_add, "Add a domain", "domains", A, ok=201,
          body=obj({"name": string(253, 1)}, ("name",)), response=ref("Domain"), errors=(400, 409)),
    Route("DELETE", "/api/v1/domains/{name}", domain_remove,
          "Remove a domain (refused while it has users or aliases)", "domains", A, ok=204,
          params=(Param("name", "path", string(253)),), errors=(400, 409)),
    Route("GET", "/api/v1/users", users_list, "List users with their usage", "users", A,
          params=(_DOMAIN_Q,), response=array(ref("User"))),
    Route("POST", "/api/v1/users", user_add, "Add a user", "users", A, ok=201,
          body=obj({"address": ADDRESS, "password": string(1024, 1), "generate": BOOLEAN},
                   ("address",)),
          response=ref("User"), errors=(400, 404, 409)),
    Route("GET", "/api/v1/users/{address}", user_get, "One user", "users", A, params=(_ADDR,),
          response=ref("User")),
    Route("DELETE", "/api/v1/users/{address}", user_remove, "Remove a user and all their mail",
          "users", A, ok=204, params=(_ADDR,)),
    Route("PUT", "/api/v1/users/{address}/password", user_password,
          "Set a user's password (ends their web sessions)", "users", A, params=(_ADDR,),
          body=NEW_PASSWORD, response=obj({"address": ADDRESS, "password": string(1024)}, ("address",))),
    Route("PUT", "/api/v1/users/{address}/admin", user_admin,
          "Allow or stop a user's use of the web admin", "users", A, params=(_ADDR,),
          body=obj({"admin": BOOLEAN}, ("admin",)), response=ref("User")),
    Route("PUT", "/api/v1/users/{address}/quota", user_quota,
          "Set a user's quota (RFC 9208 STORAGE in octets, MESSAGE count; null: unlimited)", "users", A,
          params=(_ADDR,),
          body=obj({"storage": NULLABLE_INTEGER | {"minimum": 0},
                    "messages": NULLABLE_INTEGER | {"minimum": 0}}, ("storage",)),
          response=ref("User")),
    Route("GET", "/api/v1/users/{address}/sendas", sendas_list,
          "Addresses the user may send as besides their own", "users", A, params=(_ADDR,),
          response=array(ref("SendAs"))),
    Route("POST", "/api/v1/users/{address}/sendas", sendas_add,
          "Let the user send as an address or @domain", "users", A, ok=201, params=(_ADDR,),
          body=obj({"address": ADDRESS}, ("address",)), response=ref("SendAs"), errors=(400, 404, 409)),
    Route("DELETE", "/api/v1/users/{address}/sendas/{grant}", sendas_remove,
          "Take a send-as grant away", "users", A, ok=204,
          params=(_ADDR, Param("grant", "path", string(320)))),
    Route("GET", "/api/v1/aliases", aliases_list, "List aliases", "aliases", A, params=(_DOMAIN_Q,),
          response=array(ref("Alias"))),
    Route("POST", "/api/v1/aliases", alias_add, "Add an alias (source may be @domain: catch-all)",
          "aliases", A, ok=201,
          body=obj({"source": ADDRESS, "targets": array(ADDRESS, 100) | {"minItems": 1}},
                   ("source", "targets")),
          response=array(ref("Alias")), errors=(400, 404, 409)),
    Route("DELETE", "/api/v1/aliases/{source}", alias_remove,
          "Remove an alias (all targets, or one with ?target=)", "aliases", A,
          params=(Param("source", "path", string(320)), Param("target", "query", string(320))),
          response=obj({"removed": INTEGER}, ("removed",))),
    Route("GET", "/api/v1/queue", queue_list, "List the outbound queue", "queue", A,
          response=array(ref("QueueEntry"))),
    Route("POST", "/api/v1/flush", queue_retry_all,
          "Retry every queued message now (or those for one domain)", "queue", A,
          body=obj({"domain": string(253)}), response=obj({"scheduled": INTEGER}, ("scheduled",))),
    Route("GET", "/api/v1/queue/{id}", queue_show, "One queued message with its headers", "queue",
          A, params=(_ID,), response=ref("QueueEntry")),
    Route("POST", "/api/v1/queue/{id}/retry", queue_retry, "Retry a message now", "queue", A,
          params=(_ID,), response=obj({"scheduled": INTEGER}, ("scheduled",))),
    Route("POST", "/api/v1/queue/{id}/hold", queue_hold, "Stop delivery attempts", "queue", A,
          params=(_ID,), response=obj({"id": string(64), "held": BOOLEAN}, ("id", "held"))),
    Route("POST", "/api/v1/queue/{id}/release", queue_release, "Resume delivery attempts", "queue",
          A, params=(_ID,), response=obj({"id": string(64), "held": BOOLEAN}, ("id", "held"))),
    Route("POST", "/api/v1/queue/{id}/bounce", queue_bounce,
          "Give up: return the message to its sender now", "queue", A, params=(_ID,),
          response=obj({"bounced": INTEGER}, ("bounced",))),
    Route("DELETE", "/api/v1/queue/{id}", queue_delete, "Delete a message without notice", "queue",
          A, ok=204, params=(_ID,)),
    Route("GET", "/api/v1/tokens", tokens_list, "List API tokens (never their secrets)", "tokens", A,
          response=array(ref("Token"))),
    Route("POST", "/api/v1/tokens", token_add, "Create an API token (its secret is shown once)",
          "tokens", A, ok=201, body=obj({"name": LABEL}, ("name",)),
          response=obj({"name": string(64), "created": INTEGER, "token": string(100)},
                       ("name", "created", "token")),
          errors=(400, 409)),
    Route("DELETE", "/api/v1/tokens/{name}", token_remove, "Revoke an API token", "tokens", A,
          ok=204, params=(Param("name", "path", string(64)),)),
    Route("GET", "/api/v1/log", delivery_log, "Recent deliveries, newest first", "log", A,
          params=(Param("limit", "query", INTEGER | {"minimum": 1, "maximum": 1000}),
                  Param("before", "query", INTEGER | {"minimum": 0, "maximum": 2**62},
                        description="page back: entries with a smaller id")),
          response=array(ref("LogEntry"))),
]

__all__ = ["ROUTES", "SCHEMAS", "Ctx", "NULLABLE_STRING"]
