"""Web logins, CSRF protection and the self-service account, over HTTPS.

The browser-level behaviour (SameSite, a foreign page's form post) is tested in Chromium
by test_http_browser.py; here every rule is checked request by request, including the
ones a browser would hide (a missing CSRF token, a foreign Origin, a stolen old cookie).
App passwords are then used by real IMAP, POP3 and SMTP clients.
"""

from __future__ import annotations

import imaplib
import plistlib
import poplib
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.http import ADMIN, HttpServer
from support.server import PASSWORD

USER = "carol@example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    srv = HttpServer(tmp_path_factory.mktemp("sessions"))
    srv.setup_admin()
    srv.add_user(USER)
    srv.start()
    yield srv
    srv.stop()


class Browserless:
    """Keeps the session cookie and CSRF token like the pages' script does."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.cookie = ""
        self.csrf = ""

    def login(self, address: str, password: str) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.server.call(
            "POST", "/api/v1/login", {"address": address, "password": password}, token=""
        )
        if status == 200:
            self.cookie = headers["set-cookie"].split(";")[0]
            self.csrf = body["csrf"]
        return status, headers, body

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        h = {"Cookie": self.cookie, **(headers or {})}
        if csrf and method != "GET":
            h["X-CSRF-Token"] = self.csrf
        return self.server.call(method, path, body, token="", headers=h)


def test_login_cookie_and_session(server: HttpServer) -> None:
    b = Browserless(server)
    status, _, body = b.login(USER, "wrong password")
    assert status == 401 and body == {"error": "wrong address or password"}
    status, _, body = b.login("nobody@example.test", PASSWORD)
    assert status == 401 and body == {"error": "wrong address or password"}
    status, headers, body = b.login(USER, PASSWORD)
    assert status == 200 and body["address"] == USER and body["admin"] is False
    cookie = headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert cookie.startswith("__Host-postroom=")
    assert {"secure", "httponly", "path", "samesite"} <= attrs and "domain" not in attrs
    assert "samesite=strict" in cookie.lower()
    status, _, session = b.call("GET", "/api/v1/session")
    assert status == 200 and session["csrf"] == body["csrf"]
    status, _, me = b.call("GET", "/api/v1/me")
    assert me["address"] == USER and me["messages"] == 0


def test_non_admin_session_cannot_use_the_admin_api(server: HttpServer) -> None:
    b = Browserless(server)
    b.login(USER, PASSWORD)
    status, _, body = b.call("GET", "/api/v1/domains")
    assert status == 403 and "not an admin" in body["error"]
    # ... until an admin makes them one (checked on every request, no new login needed).
    assert server.call("PUT", f"/api/v1/users/{USER}/admin", {"admin": True})[0] == 200
    assert b.call("GET", "/api/v1/domains")[0] == 200
    assert server.call("PUT", f"/api/v1/users/{USER}/admin", {"admin": False})[0] == 200
    assert b.call("GET", "/api/v1/domains")[0] == 403


def test_csrf_rules(server: HttpServer) -> None:
    b = Browserless(server)
    b.login(ADMIN, PASSWORD)
    assert b.call("GET", "/api/v1/domains")[0] == 200  # reads need no token
    status, _, body = b.call("POST", "/api/v1/domains", {"name": "csrf1.test"}, csrf=False)
    assert status == 403 and "CSRF" in body["error"]
    status, _, body = b.call("POST", "/api/v1/domains", {"name": "csrf1.test"}, csrf=False,
                             headers={"X-CSRF-Token": "0" * 64})
    assert status == 403
    status, _, body = b.call("POST", "/api/v1/domains", {"name": "csrf1.test"},
                             headers={"Origin": "https://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]
    status, _, body = b.call("POST", "/api/v1/domains", {"name": "csrf1.test"},
                             headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in body["error"]
    assert all(d["name"] != "csrf1.test" for d in server.call("GET", "/api/v1/domains")[2])
    status, _, _ = b.call("POST", "/api/v1/domains", {"name": "csrf1.test"},
                          headers={"Origin": f"https://127.0.0.1:{server.https_port}",
                                   "Sec-Fetch-Site": "same-origin"})
    assert status == 201
    # Another session's token is no good either.
    other = Browserless(server)
    other.login(ADMIN, PASSWORD)
    other.csrf = b.csrf
    assert other.call("DELETE", "/api/v1/domains/csrf1.test")[0] == 403
    assert b.call("DELETE", "/api/v1/domains/csrf1.test")[0] == 204
    # Logging in from a foreign page is refused too (login CSRF).
    status, _, _ = server.call("POST", "/api/v1/login", {"address": ADMIN, "password": PASSWORD},
                               token="", headers={"Origin": "https://evil.example"})
    assert status == 403


def test_logout_ends_the_session(server: HttpServer) -> None:
    b = Browserless(server)
    b.login(USER, PASSWORD)
    assert b.call("POST", "/api/v1/logout", csrf=False)[0] == 403
    status, headers, _ = b.call("POST", "/api/v1/logout")
    assert status == 204 and "__Host-postroom=" in headers["set-cookie"]
    assert b.call("GET", "/api/v1/me")[0] == 401  # the old cookie is dead on the server


def test_app_passwords_work_for_mail_and_never_for_the_web(server: HttpServer) -> None:
    b = Browserless(server)
    b.login(USER, PASSWORD)
    status, _, phone = b.call("POST", "/api/v1/me/app-passwords", {"name": "phone"})
    assert status == 201 and phone["name"] == "phone"
    secret = phone["password"]
    status, _, laptop = b.call("POST", "/api/v1/me/app-passwords", {"name": "laptop"})
    status, _, listed = b.call("GET", "/api/v1/me/app-passwords")
    assert [p["name"] for p in listed] == ["phone", "laptop"] and all("password" not in p for p in listed)

    ctx = server.client_context()
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    imap.login(USER, secret)
    imap.logout()
    pop = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=ctx)
    pop.user(USER)
    pop.pass_(secret)
    pop.quit()
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.login(USER, secret)
        s.sendmail(USER, [USER], b"Subject: sent with an app password\r\n\r\nhi\r\n")
    # An app password never opens the web account.
    assert Browserless(server).login(USER, secret)[0] == 401

    status, _, _ = b.call("DELETE", f"/api/v1/me/app-passwords/{phone['id']}")
    assert status == 204
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(USER, secret)
    # The other device's password still works; another user cannot revoke it.
    admin = Browserless(server)
    admin.login(ADMIN, PASSWORD)
    assert admin.call("DELETE", f"/api/v1/me/app-passwords/{laptop['id']}")[0] == 404
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    imap.login(USER, laptop["password"])
    imap.logout()
    assert b.call("DELETE", "/api/v1/me/app-passwords/not-a-number")[0] == 404
    # API tokens are not users: the account routes go by the session cookie only.
    status, _, body = server.call("GET", "/api/v1/me")
    assert status == 401


def test_change_password(server: HttpServer, tmp_path: Path) -> None:
    address = "dave@example.test"
    server.add_user(address)
    b = Browserless(server)
    b.login(address, PASSWORD)
    second = Browserless(server)
    second.login(address, PASSWORD)
    status, _, body = b.call("PUT", "/api/v1/me/password", {"current": "wrong", "new": "a brand new password"})
    assert status == 403
    status, _, body = b.call("PUT", "/api/v1/me/password", {"current": PASSWORD, "new": "short"})
    assert status == 400 and "at least" in body["error"]
    old_cookie = b.cookie
    status, headers, body = b.call("PUT", "/api/v1/me/password", {"current": PASSWORD, "new": "a brand new password"})
    assert status == 200 and "set-cookie" in headers
    b.cookie = headers["set-cookie"].split(";")[0]
    b.csrf = body["csrf"]
    assert b.cookie != old_cookie
    assert b.call("GET", "/api/v1/me")[0] == 200  # this browser stays logged in
    assert second.call("GET", "/api/v1/me")[0] == 401  # every other session ended
    stale = Browserless(server)
    stale.cookie = old_cookie
    assert stale.call("GET", "/api/v1/me")[0] == 401
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.client_context())
    imap.login(address, "a brand new password")
    imap.logout()


def test_apple_profile(server: HttpServer) -> None:
    b = Browserless(server)
    b.login(USER, PASSWORD)
    status, headers, body = b.call("GET", "/api/v1/me/mobileconfig")
    assert status == 200 and headers["content-type"].startswith("application/x-apple-aspen-config")
    assert "attachment" in headers["content-disposition"] and ".mobileconfig" in headers["content-disposition"]
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == USER and mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["IncomingMailServerHostName"] == "mail.example.test"
    assert mail["IncomingMailServerPortNumber"] == server.ports["imaps"]
    assert mail["OutgoingMailServerPortNumber"] == server.ports["submissions"]
    assert mail["IncomingMailServerUseSSL"] is True and mail["OutgoingMailServerUseSSL"] is True
    assert mail["IncomingMailServerUsername"] == USER
    assert "IncomingPassword" not in mail and "OutgoingPassword" not in mail  # no secret inside
    assert PASSWORD.encode() not in body
    again = plistlib.loads(b.call("GET", "/api/v1/me/mobileconfig")[2])
    assert again["PayloadUUID"] == profile["PayloadUUID"]  # installing again replaces it
    assert Browserless(server).call("GET", "/api/v1/me/mobileconfig")[0] == 401


def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    srv = HttpServer(tmp_path, extra='[limits]\nauth_failures = 1\nauth_delay = "10ms"\n')
    srv.setup_admin()
    srv.start()
    try:
        statuses = [Browserless(srv).login(ADMIN, "wrong")[0] for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert Browserless(srv).login(ADMIN, PASSWORD)[0] == 429  # even the right one, for a while
    finally:
        srv.stop()
