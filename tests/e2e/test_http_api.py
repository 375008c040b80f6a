"""The JSON admin API of a running ``postroom serve``, over HTTPS with a real client.

What the API does is checked where it shows: a user added through the API logs in over
IMAP with the password the API generated; a message submitted over SMTP appears in the
API's queue and delivery log; the CLI sees what the API changed and the other way round.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.http import ADMIN, HttpServer, closed_port
from support.outbound import wait
from support.server import PASSWORD


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    # Outbound mail goes to a port nobody listens on, retried only hourly: it stays queued.
    extra = (
        f'[outbound]\nsmarthost = "127.0.0.1:{closed_port()}"\nretry_schedule = ["1h"]\n'
        'queue_poll_interval = "300ms"\n'
    )
    srv = HttpServer(tmp_path_factory.mktemp("httpapi"), extra=extra)
    srv.setup_admin()
    srv.start()
    yield srv
    srv.stop()


def cli(server: HttpServer, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(server.config), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_requires_credentials(server: HttpServer) -> None:
    status, headers, body = server.call("GET", "/api/v1/domains", token="")
    assert status == 401 and body == {"error": "log in first"}
    assert headers["content-type"].startswith("application/json")
    status, _, body = server.call("GET", "/api/v1/domains", token="prt_not-a-real-token")
    assert status == 401 and "unknown" in body["error"]
    status, _, body = server.call("GET", "/api/v1/domains", headers={"Authorization": "Basic eDp5"}, token="")
    assert status == 401
    # A web session is not an admin's merely because it exists (see test_http_sessions).
    status, _, body = server.call("GET", "/api/v1/nowhere")
    assert status == 404 and "error" in body


def test_security_headers(server: HttpServer) -> None:
    _, headers, _ = server.call("GET", "/api/v1/status")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["strict-transport-security"].startswith("max-age=")


def test_domains_users_aliases_cycle(server: HttpServer) -> None:
    status, _, d = server.call("POST", "/api/v1/domains", {"name": "Cycle.Test"})
    assert status == 201 and d["name"] == "cycle.test"
    status, _, body = server.call("POST", "/api/v1/domains", {"name": "cycle.test"})
    assert status == 409 and "already exists" in body["error"]
    status, _, body = server.call("POST", "/api/v1/domains", {"name": "not a domain"})
    assert status == 400

    status, _, user = server.call("POST", "/api/v1/users", {"address": "Bob@Cycle.test", "generate": True})
    assert status == 201 and user["address"] == "bob@cycle.test" and len(user["password"]) >= 16
    # The generated password works for IMAP: the API made a real user.
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.tls())
    imap.login("bob@cycle.test", user["password"])
    imap.logout()
    status, _, body = server.call("POST", "/api/v1/users", {"address": "x@nowhere.test", "password": "abc"})
    assert status == 404 and "not a local domain" in body["error"]
    status, _, body = server.call("POST", "/api/v1/users", {"address": "bob@cycle.test", "password": "abcdef"})
    assert status == 409

    status, _, users = server.call("GET", "/api/v1/users?domain=cycle.test")
    assert status == 200 and [u["address"] for u in users] == ["bob@cycle.test"]
    assert users[0]["messages"] == 0 and users[0]["admin"] is False
    assert users[0]["storage_limit"] is None and users[0]["messages_limit"] is None
    status, _, u = server.call("PUT", "/api/v1/users/bob@cycle.test/quota", {"storage": 1000, "messages": 5})
    assert status == 200 and (u["storage_limit"], u["messages_limit"]) == (1000, 5)
    status, _, u = server.call("PUT", "/api/v1/users/bob@cycle.test/quota", {"storage": 2000})
    assert (u["storage_limit"], u["messages_limit"]) == (2000, 5)  # messages kept, like the CLI
    assert json.loads(cli(server, "user", "list", "--json", "--domain", "cycle.test"))[0]["storage_limit"] == 2000
    assert server.call("PUT", "/api/v1/users/bob@cycle.test/quota", {"storage": -1})[0] == 400
    status, _, u = server.call("PUT", "/api/v1/users/bob@cycle.test/quota", {"storage": None, "messages": None})
    assert (u["storage_limit"], u["messages_limit"]) == (None, None)
    status, _, u = server.call("PUT", "/api/v1/users/bob@cycle.test/admin", {"admin": True})
    assert status == 200 and u["admin"] is True
    assert json.loads(cli(server, "user", "list", "--json", "--domain", "cycle.test"))[0]["admin"] is True

    status, _, aliases = server.call(
        "POST", "/api/v1/aliases", {"source": "team@cycle.test", "targets": ["bob@cycle.test", "ext@far.test"]}
    )
    assert status == 201 and len(aliases) == 2
    status, _, listed = server.call("GET", "/api/v1/aliases?domain=cycle.test")
    assert {(a["source"], a["target"]) for a in listed} == {
        ("team@cycle.test", "bob@cycle.test"), ("team@cycle.test", "ext@far.test"),
    }
    status, _, domains = server.call("GET", "/api/v1/domains")
    (cycle,) = [x for x in domains if x["name"] == "cycle.test"]
    assert (cycle["users"], cycle["aliases"]) == (1, 2)
    status, _, body = server.call("DELETE", "/api/v1/domains/cycle.test")
    assert status == 409 and "still has" in body["error"]
    status, _, body = server.call("DELETE", "/api/v1/aliases/team@cycle.test?target=ext@far.test")
    assert status == 200 and body == {"removed": 1}
    status, _, body = server.call("DELETE", "/api/v1/aliases/team@cycle.test")
    assert body == {"removed": 1}
    status, _, body = server.call("DELETE", "/api/v1/aliases/team@cycle.test")
    assert status == 404

    status, _, body = server.call("PUT", "/api/v1/users/bob@cycle.test/password", {"password": "a new secret!"})
    assert status == 200 and "password" not in body
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.tls())
    imap.login("bob@cycle.test", "a new secret!")
    imap.logout()
    status, _, _ = server.call("DELETE", "/api/v1/users/bob@cycle.test")
    assert status == 204
    assert "bob@cycle.test" not in cli(server, "user", "list")
    status, _, _ = server.call("DELETE", "/api/v1/domains/cycle.test")
    assert status == 204
    status, _, body = server.call("DELETE", "/api/v1/domains/cycle.test")
    assert status == 404


def test_bodies_are_validated(server: HttpServer) -> None:
    status, _, body = server.call("POST", "/api/v1/domains", {"name": "a.test", "extra": 1})
    assert status == 400 and "unknown key" in body["error"]
    status, _, body = server.call("POST", "/api/v1/domains", {})
    assert status == 400 and "name is required" in body["error"]
    status, _, body = server.call("POST", "/api/v1/domains", raw_body=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]
    status, _, body = server.call("POST", "/api/v1/domains", raw_body=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "application/json" in body["error"]
    status, _, body = server.call(
        "POST", "/api/v1/domains", raw_body=b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    status, _, body = server.call("POST", "/api/v1/users", {"address": "a@example.test"})
    assert status == 400 and "password or generate" in body["error"]
    status, _, body = server.call("GET", "/api/v1/log?limit=0")
    assert status == 400
    status, _, body = server.call("GET", "/api/v1/log?limit=abc")
    assert status == 400


def submit(server: HttpServer, sender: str, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=server.client_context())
        s.login(sender, PASSWORD)
        s.sendmail(sender, recipients, f"From: {sender}\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode())


def test_queue_through_the_api(server: HttpServer) -> None:
    submit(server, ADMIN, ["someone@far-away.test"], "stays queued")

    def deferred() -> Any:
        _, _, entries = server.call("GET", "/api/v1/queue")
        return next((e for e in entries if e["attempts"] >= 1 and e["recipients"][0]["address"] == "someone@far-away.test"), None)

    entry = wait(deferred)
    qid = entry["id"]
    assert entry["sender"] == ADMIN and entry["held"] is False and entry["last_error"]
    # Same implementation as the CLI: same document.
    (cli_doc,) = [d for d in json.loads(cli(server, "queue", "list", "--json")) if d["id"] == qid]
    assert cli_doc == entry
    status, _, shown = server.call("GET", f"/api/v1/queue/{qid}")
    assert status == 200 and "Subject: stays queued" in shown["headers"]

    status, _, body = server.call("POST", f"/api/v1/queue/{qid}/hold")
    assert status == 200 and body == {"id": qid, "held": True}
    status, _, body = server.call("POST", f"/api/v1/queue/{qid}/retry")
    assert status == 404 and "on hold" in body["error"]
    assert "held" in cli(server, "queue", "list")
    status, _, body = server.call("POST", f"/api/v1/queue/{qid}/release")
    assert body == {"id": qid, "held": False}
    status, _, body = server.call("POST", f"/api/v1/queue/{qid}/retry")
    assert status == 200 and body == {"scheduled": 1}
    wait(lambda: (deferred() or {}).get("attempts", 0) >= 2)  # the server tried again at once
    status, _, body = server.call("POST", "/api/v1/flush", {"domain": "far-away.test"})
    assert status == 200 and body["scheduled"] >= 1
    status, _, _ = server.call("DELETE", f"/api/v1/queue/{qid}")
    assert status == 204
    status, _, body = server.call("GET", f"/api/v1/queue/{qid}")
    assert status == 404
    for action in ("hold", "release", "retry", "bounce"):
        assert server.call("POST", f"/api/v1/queue/{qid}/{action}")[0] == 404

    submit(server, ADMIN, ["other@far-away.test"], "to bounce")
    bounced = wait(lambda: next((e for e in server.call("GET", "/api/v1/queue")[2]
                                     if e["recipients"][0]["address"] == "other@far-away.test"), None))
    status, _, body = server.call("POST", f"/api/v1/queue/{bounced['id']}/bounce")
    assert status == 200 and body == {"bounced": 1}
    # The sender gets the bounce in their INBOX.
    wait(lambda: any(b"to bounce" in m for m in server.messages(ADMIN)))


def test_delivery_log_records_what_smtp_and_the_queue_did(server: HttpServer) -> None:
    submit(server, ADMIN, [ADMIN, "nobody-home@far-away.test"], "logged")

    def logged() -> Any:
        _, _, entries = server.call("GET", "/api/v1/log?limit=50")
        ins = [e for e in entries if e["direction"] == "in" and e["sender"] == ADMIN
               and "nobody-home@far-away.test" in e["recipient"]]
        outs = [e for e in entries if e["direction"] == "out" and e["recipient"] == "nobody-home@far-away.test"]
        return (ins, outs) if ins and outs else None

    ins, outs = wait(logged)
    assert ins[0]["result"] == "accepted" and ins[0]["qid"]
    assert outs[0]["result"] == "deferred" and outs[0]["qid"] == ins[0]["qid"]
    # Paging back with before= gives strictly older entries.
    _, _, first = server.call("GET", "/api/v1/log?limit=1")
    _, _, older = server.call("GET", f"/api/v1/log?limit=5&before={first[0]['id']}")
    assert all(e["id"] < first[0]["id"] for e in older)


def test_tokens(server: HttpServer) -> None:
    status, _, created = server.call("POST", "/api/v1/tokens", {"name": "made-by-api"})
    assert status == 201 and created["token"].startswith("prt_")
    status, _, me = server.call("GET", "/api/v1/status", token=created["token"])
    assert status == 200 and me["hostname"] == "mail.example.test"
    assert "made-by-api" in cli(server, "token", "list")
    status, _, body = server.call("DELETE", "/api/v1/tokens/made-by-api", token=created["token"])
    assert status == 400 and "cannot revoke itself" in body["error"]
    cli(server, "token", "remove", "made-by-api")
    status, _, _ = server.call("GET", "/api/v1/status", token=created["token"])
    assert status == 401  # revoked by the CLI: refused at once
    status, _, tokens = server.call("GET", "/api/v1/tokens")
    assert [t["name"] for t in tokens] == ["tests"] and "token" not in tokens[0]


def test_status_and_openapi(server: HttpServer) -> None:
    status, _, body = server.call("GET", "/api/v1/status")
    assert status == 200 and body["queue"]["messages"] >= 0 and body["domains"] >= 1
    status, headers, spec = server.call("GET", "/api/v1/openapi.json", token="")
    assert status == 200 and spec["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    for needed in [("GET", "/api/v1/domains"), ("POST", "/api/v1/users"), ("DELETE", "/api/v1/queue/{id}"),
                   ("POST", "/api/v1/queue/{id}/hold"), ("POST", "/api/v1/tokens"), ("GET", "/api/v1/log"),
                   ("PUT", "/api/v1/me/password"), ("POST", "/api/v1/me/app-passwords")]:
        assert needed in ops


def test_plain_http_serves_the_same_from_loopback(server: HttpServer) -> None:
    status, headers, body = server.call("GET", "/api/v1/status", plain=True)
    assert status == 200 and "strict-transport-security" not in headers


def test_limits_refuse_over_the_connection_limit(tmp_path: Path) -> None:
    srv = HttpServer(tmp_path, extra='[limits]\nconnections_per_ip = 2\nauth_delay = "10ms"\n')
    srv.start()
    try:
        held = [socket.create_connection(("127.0.0.1", srv.ports["http"])) for _ in range(2)]
        time.sleep(0.2)
        raw = srv.raw(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n", plain=True)
        assert raw.startswith(b"HTTP/1.1 503")
        for s in held:
            s.close()
        time.sleep(0.2)
        raw = srv.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", plain=True)
        assert raw.startswith(b"HTTP/1.1 200")
    finally:
        srv.stop()


def test_send_as_grants_and_dmarc_reports(server: HttpServer) -> None:
    status, _, g = server.call("POST", f"/api/v1/users/{ADMIN}/sendas", {"address": "@lists.example.test"})
    assert status == 201 and g == {"user": ADMIN, "address": "@lists.example.test"}
    assert server.call("POST", f"/api/v1/users/{ADMIN}/sendas", {"address": "@lists.example.test"})[0] == 409
    status, _, grants = server.call("GET", f"/api/v1/users/{ADMIN}/sendas")
    assert grants == [g]
    assert "@lists.example.test" in cli(server, "user", "sendas", "list")
    # The grant works: submission as an address of that domain is accepted.
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=server.client_context())
        s.login(ADMIN, PASSWORD)
        s.sendmail("announce@lists.example.test", [ADMIN],
                   b"From: announce@lists.example.test\r\nSubject: granted\r\n\r\nhi\r\n")
    assert server.call("DELETE", f"/api/v1/users/{ADMIN}/sendas/@lists.example.test")[0] == 204
    assert server.call("DELETE", f"/api/v1/users/{ADMIN}/sendas/@lists.example.test")[0] == 404
    assert server.call("DELETE", f"/api/v1/users/{ADMIN}/sendas/not%20an%20address")[0] == 404
    assert server.call("GET", "/api/v1/users/nobody@example.test/sendas")[2] == []
    status, _, body = server.call("POST", "/api/v1/dmarc/send-reports")
    assert status == 200 and body == {"reports": []}  # no checked mail: nothing to report
