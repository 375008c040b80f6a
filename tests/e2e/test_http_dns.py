"""``postroom dns DOMAIN`` with an https listener: the client auto-configuration and
MTA-STS names are listed, and ``--check`` judges them against a real DNS server after
they are published the way a person would paste them into a zone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.dns_server import DnsServer
from support.http import HttpServer


def _cli(srv: HttpServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postroom", "-c", str(srv.config), *args],
                          capture_output=True, text=True, timeout=120)


def test_dns_lists_and_checks_client_and_mta_sts_records(tmp_path: Path) -> None:
    dns = DnsServer().start()
    try:
        srv = HttpServer(tmp_path, extra=f'[outbound]\nresolver = "{dns.address}"\n')
        srv.setup_admin()
        r = _cli(srv, "dns", "example.test", "--address", "127.0.0.1", "--json")
        assert r.returncode == 0, r.stderr
        records = json.loads(r.stdout)
        by_name = {rec["name"]: rec for rec in records}
        assert by_name["autoconfig.example.test"]["rtype"] == "CNAME"
        assert by_name["autodiscover.example.test"]["value"] == "mail.example.test"
        assert by_name["mta-sts.example.test"]["rtype"] == "CNAME"
        assert by_name["_mta-sts.example.test"]["value"].startswith("v=STSv1; id=")
        assert by_name["_autodiscover._tcp.example.test"]["rtype"] == "SRV"
        assert by_name["_imaps._tcp.example.test"]["value"].startswith("0 1 ")
        assert by_name["_imap._tcp.example.test"]["value"].startswith("10 1 ")

        dns.publish(records)
        check = _cli(srv, "dns", "example.test", "--address", "127.0.0.1", "--check", "--json")
        verdicts = json.loads(check.stdout)
        assert check.returncode == 0, [(v["name"], v["status"], v["detail"]) for v in verdicts if v["status"] != "correct"]

        # A changed policy has a new id: the published announcement is now wrong.
        with srv.config.open("a") as f:
            f.write('\n[mta_sts]\nmode = "enforce"\n')
        check = _cli(srv, "dns", "example.test", "--address", "127.0.0.1", "--check")
        assert check.returncode == 3 and "WRONG    MTA-STS" in check.stdout, check.stdout
        # An autoconfig name pointing elsewhere is wrong too.
        dns.set("autoconfig.example.test", "CNAME", ["elsewhere.test"])
        dns.set("elsewhere.test", "A", ["192.0.2.99"])
        check = _cli(srv, "dns", "example.test", "--address", "127.0.0.1", "--check", "--json")
        (auto,) = [v for v in json.loads(check.stdout) if v["name"] == "autoconfig.example.test"]
        assert auto["status"] == "wrong"
    finally:
        dns.stop()


def test_dkim_and_dns_through_the_api(tmp_path: Path) -> None:
    srv = HttpServer(tmp_path)
    assert srv.dns is not None
    srv.setup_admin()
    srv.start()
    try:
        status, _, key = srv.call("POST", "/api/v1/dkim", {"domain": "example.test"})
        assert status == 201 and key["state"] == "active" and key["algorithm"] == "ed25519"
        assert key["record"].startswith("v=DKIM1; k=ed25519; p=") and "private" not in json.dumps(key)
        status, _, rsa = srv.call("POST", "/api/v1/dkim", {"domain": "example.test", "algorithm": "rsa",
                                                          "selector": "legacy"})
        assert status == 201 and rsa["selector"] == "legacy"
        assert srv.call("POST", "/api/v1/dkim", {"domain": "example.test", "algorithm": "dsa"})[0] == 400
        assert srv.call("POST", "/api/v1/dkim", {"domain": "elsewhere.test"})[0] == 404
        _, _, keys = srv.call("GET", "/api/v1/dkim?domain=example.test")
        assert {k["selector"] for k in keys} == {key["selector"], "legacy"}
        # The CLI sees the same keys (one implementation).
        listed = _cli(srv, "dkim", "list", "example.test")
        assert key["selector"] in listed.stdout and "legacy" in listed.stdout

        status, _, records = srv.call("GET", "/api/v1/domains/example.test/dns")
        assert status == 200
        dkim = {r["name"]: r["value"] for r in records if r["kind"] == "DKIM"}
        assert dkim[f"{key['selector']}._domainkey.example.test"] == key["record"]
        assert any(r["name"] == "_mta-sts.example.test" for r in records)
        status, _, verdicts = srv.call("GET", "/api/v1/domains/example.test/dns/check")
        assert status == 200 and {v["status"] for v in verdicts} == {"missing"}  # nothing published

        dns = srv.dns
        dns.set("mail.example.test", "A", ["127.0.0.1"])  # the server's address, found by name
        status, _, records = srv.call("GET", "/api/v1/domains/example.test/dns")
        dns.publish(records, skip=("A",))
        status, _, verdicts = srv.call("GET", "/api/v1/domains/example.test/dns/check")
        assert [(v["name"], v["detail"]) for v in verdicts if v["status"] != "correct"] == []

        status, _, new = srv.call("POST", "/api/v1/domains/example.test/dkim-rotation", {"delay": 3600, "algorithm": "rsa"})
        assert status == 201 and len(new) == 1 and new[0]["state"] == "pending"
        _, _, keys = srv.call("GET", "/api/v1/dkim?domain=example.test")
        assert {k["selector"]: k["retire_at"] is not None for k in keys}["legacy"] is True
        assert srv.call("DELETE", "/api/v1/dkim/example.test/legacy")[0] == 204
        assert srv.call("DELETE", "/api/v1/dkim/example.test/legacy")[0] == 404
        assert srv.call("GET", "/api/v1/domains/nowhere.test/dns")[0] == 404
    finally:
        srv.stop()
