"""Client endpoints, the RFC 6186 SRV records and the MTA-STS policy, from the config."""

from __future__ import annotations

import re
from pathlib import Path

from postroom import config
from postroom.clients import (
    best,
    client_dns_records,
    client_endpoints,
    mta_sts_id,
    mta_sts_policy,
    mta_sts_records,
)


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


def test_srv_records(tmp_path: Path) -> None:
    records = {r.name: r for r in client_dns_records(settings(tmp_path, STANDARD), "example.org")}
    assert records["_imaps._tcp.example.org."].value == "0 1 993 mail.example.org."
    assert records["_imap._tcp.example.org."].value == "10 1 143 mail.example.org."
    assert records["_submissions._tcp.example.org."].value == "0 1 465 mail.example.org."
    assert records["_submission._tcp.example.org."].value == "10 1 587 mail.example.org."
    pop3s = int(records["_pop3s._tcp.example.org."].value.split()[0])
    assert pop3s > int(records["_imap._tcp.example.org."].value.split()[0])  # IMAP preferred
    assert records["autoconfig.example.org."].type == "CNAME"
    assert records["_autodiscover._tcp.example.org."].value == "0 1 443 mail.example.org."
    line = records["_imaps._tcp.example.org."].zone_line()
    assert line == "_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org."
    # Not offered: "." says so (RFC 6186 4); no https: no autoconfig names.
    records = {r.name: r for r in client_dns_records(settings(tmp_path, {"imaps": 993}), "example.org")}
    assert records["_pop3._tcp.example.org."].value == "0 0 0 ."
    assert records["_submission._tcp.example.org."].value == "0 0 0 ."
    assert "autoconfig.example.org." not in records


def test_mta_sts_policy_and_id(tmp_path: Path) -> None:
    s = settings(tmp_path, STANDARD)
    policy = mta_sts_policy(s)
    assert policy == "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    # RFC 8461 3.1: id is 1-32 alphanumerics; it changes when the policy does.
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", mta_sts_id(s))
    other = settings(tmp_path, STANDARD, '[mta_sts]\nmode = "enforce"\nmx = ["a.example.org", "*.b.example"]')
    assert "mode: enforce\r\nmx: a.example.org\r\nmx: *.b.example\r\n" in mta_sts_policy(other)
    assert mta_sts_id(other) != mta_sts_id(s)
    txt, cname = mta_sts_records(s, "example.org")
    assert txt.name == "_mta-sts.example.org." and txt.value == f'"v=STSv1; id={mta_sts_id(s)}"'
    assert cname.name == "mta-sts.example.org." and cname.value == "mail.example.org."
