"""MTA-STS record and policy parsing, MX patterns, and the cache (RFC 8461)."""

from __future__ import annotations

import asyncio

import pytest

from postroom.policy.dns import NXDOMAIN, DictResolver
from postroom.policy.mtasts import MtaStsPolicies, PolicyFetchError, StsPolicy, mx_matches, parse_policy, parse_txt


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


def test_fetch_errors_carry_tls_rpt_result_types() -> None:
    assert PolicyFetchError("x").result_type == "sts-policy-fetch-error"
    assert PolicyFetchError("x", invalid=True).result_type == "sts-policy-invalid"
    assert PolicyFetchError("x", result_type="sts-webpki-invalid").result_type == "sts-webpki-invalid"
