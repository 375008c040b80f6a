"""MTA-STS record and policy parsing, MX patterns, and the cache (RFC 8461)."""

from __future__ import annotations

import asyncio

import pytest

from postroom.policy.dns import NXDOMAIN, DictResolver
from postroom.policy.mtasts import MtaStsPolicies, PolicyFetchError, StsPolicy, mx_matches, parse_policy, parse_txt
from postroom.store.api import StoreUnavailable, StsPolicyRow


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([b"v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        ([b"v=STSv1;id=abc"], "abc"),
        ([b"v=STSv1; id=abc", b"v=spf1 -all"], "abc"),
        ([b"v=STSv1; id=a", b"v=STSv1; id=b"], None),  # 3.1: more than one: no policy
        ([b"v=STSv2; id=a"], None),
        ([b"v=STSv1; id=bad-id!"], None),
        ([b"v=STSv1; id=" + b"a" * 33], None),
        ([], None),
    ],
)
def test_parse_txt(records: list[bytes], expected: str | None) -> None:
    assert parse_txt(records) == expected


def test_parse_policy_rfc_example_and_errors() -> None:
    # RFC 8461 3.2's example, with CRLF line ends.
    p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
                     "mx: backupmx.example.com\r\nmax_age: 604800\r\n")
    assert p == StsPolicy("enforce", ("mail.example.com", "*.example.net", "backupmx.example.com"), 604800)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\nfuture: x\n").mode == "none"
    for bad in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999999\n",
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
                "garbage"):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_mx_patterns() -> None:
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "a.b.example.net")  # one label only (4.1)
    assert not mx_matches("*.example.net", "example.net")
    assert not mx_matches("mail.example.com", "mail.example.org")


class _Counting(MtaStsPolicies):
    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.fetches = 0
        self.fail = False
        self.text = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 100\n"

    async def fetch(self, domain: str) -> StsPolicy:
        self.fetches += 1
        if self.fail:
            raise PolicyFetchError("unreachable")
        return parse_policy(self.text)


def test_cache_by_id_and_max_age_keeps_policy_when_fetch_fails() -> None:
    now = [1000.0]
    records: dict[tuple[str, str], object] = {("_mta-sts.example.org", "TXT"): ["v=STSv1; id=one"]}
    dns = DictResolver(records)
    sts = _Counting(dns, clock=lambda: now[0])

    async def run() -> None:
        p = await sts.get("example.org")
        assert p is not None and p.mode == "enforce" and p.id == "one"
        assert (await sts.get("example.org")) == p and sts.fetches == 1  # cached
        dns.records[("_mta-sts.example.org", "TXT")] = ["v=STSv1; id=two"]
        sts.fail = True  # the new policy cannot be fetched: the cached one stays in force
        assert (await sts.get("example.org")) == p and sts.fetches == 2
        # ... and TLS-RPT learns why (RFC 8460 4.3.2.2)
        assert sts.last_failure["example.org"] == ("sts-policy-fetch-error", "unreachable")
        dns.records[("_mta-sts.example.org", "TXT")] = NXDOMAIN  # record gone: cache still used
        assert (await sts.get("example.org")) == p
        now[0] += 101  # expired, no record: no policy
        assert await sts.get("example.org") is None
        assert "example.org" not in sts.last_failure  # no record: nothing failed
        assert await sts.get("nothing.example") is None

    asyncio.run(run())


class _RowStore:
    """The three Store methods MtaStsPolicies uses, over a dict (the real backends are in
    tests/store/test_contract.py; the restart end to end in tests/e2e)."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}
        self.down = False

    async def sts_policy(self, domain: str) -> object:
        if self.down:
            raise StoreUnavailable("down")
        return self.rows.get(domain)

    async def sts_policy_put(self, row: StsPolicyRow) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.rows[row.domain] = row

    async def sts_policies_prune(self, now: int) -> int:
        gone = [d for d, r in self.rows.items() if r.expires <= now]  # type: ignore[attr-defined]
        for d in gone:
            del self.rows[d]
        return len(gone)


def test_policy_survives_a_restart_through_the_store() -> None:
    """RFC 8461 5.1: a new process (a restart, another node) whose fetch is blocked still
    enforces the policy the previous one fetched, until its max_age runs out."""
    now = [1000.0]
    dns = DictResolver({("_mta-sts.example.org", "TXT"): ["v=STSv1; id=one"]})
    store = _RowStore()

    async def run() -> None:
        first = _Counting(dns, clock=lambda: now[0], store=store)  # type: ignore[arg-type]
        p = await first.get("example.org")
        assert p is not None and p.mode == "enforce"
        row = store.rows["example.org"]
        assert row == StsPolicyRow("example.org", "one", "enforce", ("mx.example.org",), 100, 1000, 1100)
        second = _Counting(dns, clock=lambda: now[0], store=store)  # type: ignore[arg-type]
        second.fail = True  # an attacker blocks the policy host
        assert await second.get("example.org") == p and second.fetches == 0
        now[0] += 101  # expired: the stored row no longer counts
        third = _Counting(dns, clock=lambda: now[0], store=store)  # type: ignore[arg-type]
        third.fail = True
        assert await third.get("example.org") is None
        # a later successful fetch replaces the row and prunes expired ones
        store.rows["old.example"] = StsPolicyRow("old.example", "x", "none", (), 1, 0, 1)
        third.fail = False
        assert await third.get("example.org") == p
        assert store.rows["example.org"].expires == 1201  # type: ignore[attr-defined]
        assert "old.example" not in store.rows
        # a store that cannot answer: memory and a fresh fetch still work
        store.down = True
        fourth = _Counting(dns, clock=lambda: now[0], store=store)  # type: ignore[arg-type]
        assert await fourth.get("example.org") == p and fourth.fetches == 1

    asyncio.run(run())


def test_a_policy_in_use_is_refreshed_ahead_of_expiry() -> None:
    """RFC 8461 10.2: a policy still in use is fetched again before it runs out, in the
    background and with the same id, so it never expires while mail flows to the domain;
    a failed refresh keeps the cached one."""
    now = [1000.0]
    dns = DictResolver({("_mta-sts.example.org", "TXT"): ["v=STSv1; id=one"]})
    store = _RowStore()
    sts = _Counting(dns, clock=lambda: now[0], store=store)  # type: ignore[arg-type]
    sts.text = sts.text.replace("max_age: 100", "max_age: 200000")

    async def run() -> None:
        p = await sts.get("example.org")
        assert p is not None and sts.fetches == 1
        now[0] += 3600  # an hour later: used as cached
        assert await sts.get("example.org") == p
        await sts.wait_refreshes()
        assert sts.fetches == 1
        now[0] += 86400  # over a day since the fetch: used, and refreshed meanwhile
        sts.text = sts.text.replace("max_age: 200000", "max_age: 300000")
        assert await sts.get("example.org") == p  # the delivery does not wait
        await sts.wait_refreshes()
        assert sts.fetches == 2
        assert store.rows["example.org"].expires == now[0] + 300000  # type: ignore[attr-defined]
        fresh = await sts.get("example.org")
        assert fresh is not None and fresh.max_age == 300000 and fresh.id == "one"
        await sts.wait_refreshes()
        assert sts.fetches == 2  # just refreshed: nothing more
        now[0] += 86400
        sts.fail = True  # the refresh fails: the policy stays in force
        assert await sts.get("example.org") == fresh
        await sts.wait_refreshes()
        assert sts.fetches == 3 and await sts.get("example.org") == fresh
        await sts.wait_refreshes()
        assert sts.fetches == 3  # no new try within the hour after a failure
        now[0] += 3600
        sts.fail = False
        assert await sts.get("example.org") == fresh
        await sts.wait_refreshes()
        assert sts.fetches == 4

    asyncio.run(run())


def test_fetch_errors_carry_tls_rpt_result_types() -> None:
    assert PolicyFetchError("x").result_type == "sts-policy-fetch-error"
    assert PolicyFetchError("x", invalid=True).result_type == "sts-policy-invalid"
    assert PolicyFetchError("x", result_type="sts-webpki-invalid").result_type == "sts-webpki-invalid"


def test_policy_sent_in_chunks_is_read_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A policy whose body arrives in several TCP segments (a chunked response with pauses)
    is read to its end: a single read() returns only what has arrived so far."""
    import socket
    import ssl

    import trustme
    from aiohttp import web

    ca = trustme.CA()
    cert = ca.issue_cert("mta-sts.example.org")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    policy = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.example.org\r\nmax_age: 86400\r\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(0, len(policy), 20):
            await resp.write(policy[i:i + 20].encode())
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx)
        await site.start()
        try:
            dns = DictResolver({
                ("_mta-sts.example.org", "TXT"): ["v=STSv1; id=one"],
                ("mta-sts.example.org", "A"): ["127.0.0.1"],
            })
            sts = MtaStsPolicies(dns, ca_file=str(ca_file), port=port)
            got = await sts.get("example.org")
            assert got is not None, sts.last_failure
            assert got.mode == "enforce" and got.mx == ("mx1.example.org", "*.example.org")
            assert got.max_age == 86400
        finally:
            await runner.cleanup()

    asyncio.run(run())
