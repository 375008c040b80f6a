"""Client endpoints, the RFC 6186 SRV records and the MTA-STS policy, from the config."""

from __future__ import annotations

import re
from pathlib import Path

from postroom import config
from postroom.clients import best, client_endpoints, mta_sts_id, mta_sts_policy


def settings(tmp_path: Path, roles: dict[str, int], extra: str = "") -> config.Settings:
    listeners = "".join(f'[[listener]]\naddress = "*:{p}"\nrole = "{r}"\n' for r, p in roles.items())
    return config.from_mapping(
        __import__("tomllib").loads(
            f'hostname = "mail.example.org"\n[tls]\ncert = "c"\nkey = "k"\n{extra}\n{listeners}'
        ),
        tmp_path / "postroom.toml",
    )


STANDARD = {"mx": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
            "pop3": 110, "pop3s": 995, "https": 443}


def test_endpoints_best_first(tmp_path: Path) -> None:
    eps = client_endpoints(settings(tmp_path, STANDARD))
    assert [(e.protocol, e.port, e.security) for e in eps] == [
        ("imap", 993, "ssl"), ("imap", 143, "starttls"), ("pop3", 995, "ssl"), ("pop3", 110, "starttls"),
        ("smtp", 465, "ssl"), ("smtp", 587, "starttls"),
    ]
    assert all(e.host == "mail.example.org" for e in eps)
    only_starttls = client_endpoints(settings(tmp_path, {"imap": 143, "submission": 587}))
    assert best(only_starttls, "imap").port == 143 and best(only_starttls, "pop3") is None


def test_port_zero_reports_the_bound_port(tmp_path: Path) -> None:
    s = settings(tmp_path, {"imaps": 0, "submissions": 0})
    eps = client_endpoints(s, {"imaps": [("127.0.0.1", 40993)], "submissions": [("127.0.0.1", 40465)]})
    assert [e.port for e in eps] == [40993, 40465]
    assert client_endpoints(s) == []  # not bound yet: nothing to tell


def test_mta_sts_policy_and_id(tmp_path: Path) -> None:
    s = settings(tmp_path, STANDARD)
    policy = mta_sts_policy(s)
    assert policy == "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    # RFC 8461 3.1: id is 1-32 alphanumerics; it changes when the policy does.
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", mta_sts_id(s))
    other = settings(tmp_path, STANDARD, '[mta_sts]\nmode = "enforce"\nmx = ["a.example.org", "*.b.example"]')
    assert "mode: enforce\r\nmx: a.example.org\r\nmx: *.b.example\r\n" in mta_sts_policy(other)
    assert mta_sts_id(other) != mta_sts_id(s)


def test_dns_records_for_clients_and_mta_sts(tmp_path: Path) -> None:
    """What `postroom dns` lists for clients and MTA-STS (policy.dnsrecords)."""
    from postroom.policy.dnsrecords import judge, required

    s = settings(tmp_path, STANDARD)
    records = {r.name: r for r in required("example.org", s.hostname, [], s.listeners, ["192.0.2.1"],
                                             rua="postmaster@example.org", mta_sts_id=mta_sts_id(s))}
    assert records["_imaps._tcp.example.org"].value == "0 1 993 mail.example.org"
    assert records["_imap._tcp.example.org"].value == "10 1 143 mail.example.org"
    assert records["_submissions._tcp.example.org"].value == "0 1 465 mail.example.org"
    assert records["_submission._tcp.example.org"].value == "10 1 587 mail.example.org"
    pop3s = int(records["_pop3s._tcp.example.org"].value.split()[0])
    assert pop3s > int(records["_imap._tcp.example.org"].value.split()[0])  # IMAP preferred
    assert records["_autodiscover._tcp.example.org"].value == "0 1 443 mail.example.org"
    sts = records["_mta-sts.example.org"]
    assert sts.value == f"v=STSv1; id={mta_sts_id(s)}"
    assert sts.zone_line() == f'_mta-sts.example.org. 3600 IN TXT "v=STSv1; id={mta_sts_id(s)}"'
    cname = records["autoconfig.example.org"]
    assert cname.zone_line() == "autoconfig.example.org. 3600 IN CNAME mail.example.org."
    assert {"mta-sts.example.org", "autodiscover.example.org"} <= set(records)
    # Judging what DNS serves.
    assert judge(sts, [sts.value]).status == "correct"
    assert judge(sts, ["v=STSv1; id=old"]).status == "wrong"
    assert judge(sts, ["v=spf1 -all"]).status == "missing"
    assert judge(cname, ["192.0.2.1"], addresses=["192.0.2.1"]).status == "correct"
    assert judge(cname, ["198.51.100.9"], addresses=["192.0.2.1"]).status == "wrong"
    assert judge(cname, [], addresses=["192.0.2.1"]).status == "missing"
    # Without an https listener there is nothing to serve those names.
    plain = settings(tmp_path, {"imaps": 993})
    names = {r.name for r in required("example.org", plain.hostname, [], plain.listeners, [],
                                      rua="postmaster@example.org", mta_sts_id=mta_sts_id(plain))}
    assert "autoconfig.example.org" not in names and "_mta-sts.example.org" not in names
