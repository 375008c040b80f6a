"""Recipient resolution, authentication and sender ownership, on a real store."""

from __future__ import annotations

from typing import Any

from postroom.auth import passwords
from postroom.auth.directory import AuthCache, Directory


async def _setup(store: Any) -> dict[str, Any]:
    await store.add_domain("example.test")
    await store.add_domain("other.test")
    h = passwords.hash_password("pw-alice")
    users = {
        "alice": await store.add_user("alice@example.test", h, None),
        "bob": await store.add_user("bob@example.test", h, None),
        "carol": await store.add_user("carol@other.test", h, None),
    }
    await store.add_alias("team@example.test", ["alice@example.test", "bob@example.test", "ext@far.example"])
    await store.add_alias("nested@example.test", ["team@example.test", "carol@other.test"])
    await store.add_alias("loop1@example.test", ["loop2@example.test"])
    await store.add_alias("loop2@example.test", ["loop1@example.test", "alice@example.test"])
    await store.add_alias("@other.test", ["carol@other.test"])
    await store.add_alias("ghost@example.test", ["nobody@example.test"])
    return users


def test_resolution(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _setup(store)
        d = Directory(store)
        r = await d.resolve("Alice@EXAMPLE.test")
        assert r.kind == "local" and r.user_ids == (u["alice"].id,)
        r = await d.resolve("alice+news@example.test")
        assert r.kind == "local" and r.user_ids == (u["alice"].id,)
        r = await d.resolve("team@example.test")
        assert set(r.user_ids) == {u["alice"].id, u["bob"].id} and r.external == ("ext@far.example",)
        r = await d.resolve("team+x@example.test")
        assert len(r.user_ids) == 2, "plus-addressing works for aliases too"
        r = await d.resolve("nested@example.test")
        assert set(r.user_ids) == {u["alice"].id, u["bob"].id, u["carol"].id}
        r = await d.resolve("loop1@example.test")
        assert r.user_ids == (u["alice"].id,), "alias loops are cut, not followed forever"
        assert (await d.resolve("nobody@example.test")).kind == "unknown"
        assert (await d.resolve("ghost@example.test")).kind == "unknown"
        r = await d.resolve("anything@other.test")
        assert r.kind == "local" and r.user_ids == (u["carol"].id,), "catch-all"
        assert (await d.resolve("someone@far.example")).kind == "remote"
        # Relay tricks never resolve to anything deliverable or remote.
        assert (await d.resolve("alice%far.example@example.test")).kind == "unknown"
        assert (await d.resolve('"alice@far.example"@example.test')).kind == "unknown"
        assert (await d.resolve("far.example!alice@example.test")).kind == "unknown"

    store_run(body)


def test_postmaster_of_every_domain(store_run: Any) -> None:
    """RFC 5321 4.5.1: postmaster@ every hosted domain, and the bare postmaster, are
    accepted without an alias: they go to the configured postmaster (default: the first
    user created). An explicit alias or user wins; a catch-all comes after."""

    async def body(store: Any) -> None:
        u = await _setup(store)
        d = Directory(store)
        for address in ("postmaster@example.test", "PostMaster@Example.TEST", "postmaster",
                        "POSTMASTER", "postmaster@other.test"):
            r = await d.resolve(address)
            assert r.kind == "local" and r.user_ids == (u["alice"].id,), address
        assert (await d.resolve("postmaster@far.example")).kind == "remote"
        d = Directory(store, postmaster="bob@example.test")
        assert (await d.resolve("postmaster@example.test")).user_ids == (u["bob"].id,)
        assert (await d.resolve("postmaster")).user_ids == (u["bob"].id,)
        d = Directory(store, postmaster="admin@far.example")  # a postmaster elsewhere
        r = await d.resolve("postmaster@example.test")
        assert r.kind == "local" and r.external == ("admin@far.example",)
        d = Directory(store, postmaster="postmaster@example.test")  # points at itself
        assert (await d.resolve("postmaster@example.test")).kind == "unknown"
        await store.add_alias("postmaster@example.test", ["carol@other.test"])
        d = Directory(store)
        assert (await d.resolve("postmaster@example.test")).user_ids == (u["carol"].id,)

    store_run(body)


async def _empty(store: Any) -> None:
    await store.add_domain("example.test")


def test_postmaster_without_any_user_is_unknown(store_run: Any) -> None:
    async def body(store: Any) -> None:
        await _empty(store)
        d = Directory(store)
        assert (await d.resolve("postmaster@example.test")).kind == "unknown"
        assert (await d.resolve("postmaster")).kind == "unknown"

    store_run(body)


def test_authenticate_and_cache(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _setup(store)
        d = Directory(store)
        assert (await d.authenticate("alice@example.test", "pw-alice")).id == u["alice"].id
        assert await d.authenticate("alice@example.test", "wrong") is None
        assert await d.authenticate("nobody@example.test", "pw-alice") is None
        assert await d.authenticate("not an address", "pw-alice") is None
        # The second success comes from the cache; a password change invalidates it.
        assert d.auth_cache.hit(u["alice"].password_hash, "pw-alice")
        await store.set_password("alice@example.test", passwords.hash_password("new"), None)
        assert await d.authenticate("alice@example.test", "pw-alice") is None
        assert (await d.authenticate("alice@example.test", "new")) is not None

    store_run(body)


def test_auth_cache_expiry_and_bounds() -> None:
    c = AuthCache(ttl=0)
    c.remember("h", "p")
    assert not c.hit("h", "p")
    c = AuthCache(ttl=60, size=3)
    for i in range(10):
        c.remember("h", f"p{i}")
    assert len(c._entries) <= 3
    assert not c.hit("h", "other") and not c.hit("h2", "p9")
    assert c.hit("h", "p9")


def test_may_send_as(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _setup(store)
        d = Directory(store)
        alice = u["alice"]
        assert await d.may_send_as(alice, "alice@example.test")
        assert await d.may_send_as(alice, "Alice+tag@Example.test")
        assert await d.may_send_as(alice, "team@example.test"), "an alias that reaches her"
        assert await d.may_send_as(alice, "")
        assert not await d.may_send_as(alice, "bob@example.test")
        assert not await d.may_send_as(alice, "x@far.example")
        assert not await d.may_send_as(u["carol"], "random@other.test"), "catch-all does not count"
        # Send-as grants: one address (and its +tag forms), or every address of a domain.
        await store.add_sendas("alice@example.test", "bob@example.test")
        await store.add_sendas("alice@example.test", "@lists.example")
        assert await d.may_send_as(alice, "Bob@example.test")
        assert await d.may_send_as(alice, "bob+x@example.test")
        assert await d.may_send_as(alice, "anyone@lists.example")
        assert not await d.may_send_as(alice, "anyone@sub.lists.example")
        assert not await d.may_send_as(alice, "carol@other.test")
        assert not await d.may_send_as(u["bob"], "anyone@lists.example"), "grants are per user"

    store_run(body)


def test_app_passwords_authenticate_until_revoked(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from postroom.admin.service import AdminService

        u = await _setup(store)
        d = Directory(store)
        admin = AdminService(store)
        entry, secret = await admin.app_password_add(u["alice"], "phone")
        assert len(secret) == 23 and secret.count("-") == 3
        assert (await d.authenticate("alice@example.test", secret)).id == u["alice"].id
        # Typed without the dashes, or with spaces instead, it is the same password.
        assert await d.authenticate("alice@example.test", secret.replace("-", "")) is not None
        assert await d.authenticate("alice@example.test", secret.replace("-", " ")) is not None
        # Only for its own user, and never for the web login.
        assert await d.authenticate("bob@example.test", secret) is None
        assert await d.authenticate("alice@example.test", secret, app_passwords=False) is None
        assert (await d.authenticate("alice@example.test", "pw-alice", app_passwords=False)) is not None
        # A near miss is a wrong password.
        wrong = secret[:-1] + ("2" if secret[-1] != "2" else "3")
        assert await d.authenticate("alice@example.test", wrong) is None
        await admin.app_password_remove(u["alice"], entry.id)
        assert await d.authenticate("alice@example.test", secret) is None

    store_run(body)


def test_app_password_digest_shape() -> None:
    assert passwords.app_password_digest("short") is None
    assert passwords.app_password_digest("0" * 20) is None  # look-alike symbols are not ours
    pw = passwords.generate_app_password()
    assert passwords.app_password_digest(pw) == passwords.secret_digest(pw.replace("-", ""))


def test_unusable_password_is_a_one_line_error(store_run: Any) -> None:
    """SASLprep (RFC 4013) refuses unassigned code points and control characters; setting
    such a password is refused with an explanation (found by schemathesis: it was a 500)."""
    import pytest

    from postroom.admin.service import AdminError, AdminService

    async def body(store: Any) -> None:
        await _setup(store)
        admin = AdminService(store)
        for bad in ("abc\U000b8ccadef", "tab\x07bell"):
            with pytest.raises(AdminError) as e:
                await admin.user_passwd("alice@example.test", bad)
            assert "SASLprep" in str(e.value) and e.value.kind == "invalid"
        await admin.user_passwd("alice@example.test", "fine päss wörd")

    store_run(body)
