"""The web admin and the account page in a real browser: Debian's Chromium, driven by
Playwright (``executable_path``: Playwright's own browser downloads are not used).

Everything is done as a person would: typing into the forms and clicking the buttons;
results are then checked outside the browser (the generated password logs in over IMAP,
the queue entry is gone from the store, the app password works for IMAP). A foreign page
in the same browser tries a cross-site request against the logged-in admin: it must fail.
"""

from __future__ import annotations

import http.server
import imaplib
import plistlib
import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.http import ADMIN, HttpServer, closed_port
from support.outbound import wait
from support.server import PASSWORD

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    extra = (f'[outbound]\nsmarthost = "127.0.0.1:{closed_port()}"\nretry_schedule = ["1h"]\n'
             'queue_poll_interval = "300ms"\n')
    srv = HttpServer(tmp_path_factory.mktemp("browser"), extra=extra)
    srv.setup_admin()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install chromium (scripts/run-tests does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


def store(server: HttpServer, fn: Any) -> Any:
    """``server.admin(fn)`` on another thread: Playwright's sync API keeps an event loop
    running on this one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(server.admin, fn).result()


def queue(server: HttpServer) -> list[Any]:
    return store(server, lambda a, s: s.queue_list())  # type: ignore[no-any-return]


def url(server: HttpServer, path: str) -> str:
    return f"https://127.0.0.1:{server.https_port}{path}"


def log_in(page: Any, address: str, password: str) -> None:
    page.fill("#login-address", address)
    page.fill("#login-password", password)
    page.click("#login-submit")


def row(page: Any, table: str, text: str) -> Any:
    return page.locator(f"#{table} tbody tr", has_text=text)


def test_admin_manages_domains_users_aliases(server: HttpServer, page: Any, tmp_path: Path) -> None:
    page.goto(url(server, "/admin/"))
    log_in(page, ADMIN, "not the password")
    page.wait_for_selector("#login-error:has-text('wrong address or password')")
    log_in(page, ADMIN, PASSWORD)
    page.wait_for_selector("#admin-view", state="visible")
    assert page.inner_text("#who") == ADMIN
    page.wait_for_selector("#server:has-text('mail.example.test')")  # from /api/v1/status

    page.fill("#domain-name", "ui.test")
    page.click("#domain-form button[type=submit]")
    row(page, "domains-table", "ui.test").wait_for()
    page.fill("#domain-name", "ui.test")
    page.click("#domain-form button[type=submit]")
    page.wait_for_selector("#message.error:has-text('already exists')")

    # DNS check status: nothing is published for ui.test in the test's DNS server, except
    # its MX, which the check then finds correct.
    assert server.dns is not None
    server.dns.set("ui.test", "MX", [(10, "mail.example.test")])
    row(page, "domains-table", "ui.test").locator("button", has_text="Check").click()
    status = row(page, "domains-table", "ui.test").locator(".dns-status")
    wait(lambda: "missing" in status.inner_text())
    page.wait_for_selector("#dns-details", state="visible")
    mx = row(page, "dns-table", "MX")
    assert mx.locator("td").first.inner_text() == "correct"
    assert row(page, "dns-table", "_dmarc.ui.test").locator("td").first.inner_text() == "missing"

    page.click("nav [data-tab=users]")
    page.fill("#user-address", "zoe@ui.test")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#user-created", state="visible")
    generated = page.inner_text("#user-created-password")
    assert len(generated) >= 16
    row(page, "users-table", "zoe@ui.test").wait_for()
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.client_context())
    imap.login("zoe@ui.test", generated)  # the password the page showed is the real one
    imap.logout()

    # Usage follows mail: deliver one message, reload the tab.
    with smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=30) as s:
        s.sendmail("someone@far.test", ["zoe@ui.test"], b"Subject: hello zoe\r\n\r\n" + b"x" * 3000 + b"\r\n")
    page.click("nav [data-tab=domains]")
    page.click("nav [data-tab=users]")
    zoe = row(page, "users-table", "zoe@ui.test")
    wait(lambda: zoe.locator("td").nth(1).inner_text() == "1")
    assert zoe.locator("td").nth(2).inner_text().endswith("KiB / unlimited")
    page.once("dialog", lambda d: d.accept("2M"))
    zoe.locator("button", has_text="Quota").click()
    page.wait_for_selector("#message.ok:has-text('quota of zoe@ui.test set')")
    zoe = row(page, "users-table", "zoe@ui.test")
    # The table is reloaded after the message shows: wait for the new row.
    wait(lambda: zoe.locator("td").nth(2).inner_text().endswith("/ 2.0 MiB"))
    assert store(server, lambda a, s: a.user_quota("zoe@ui.test")).storage_limit == 2 * 1024 * 1024
    zoe.locator("button", has_text="Make admin").click()
    page.wait_for_selector("#message.ok:has-text('is now an admin')")
    assert store(server, lambda a, s: s.get_user("zoe@ui.test")).admin is True

    page.click("nav [data-tab=aliases]")
    page.fill("#alias-source", "sales@ui.test")
    page.fill("#alias-targets", "zoe@ui.test, boss@far.test")
    page.click("#alias-form button[type=submit]")
    row(page, "aliases-table", "boss@far.test").wait_for()
    row(page, "aliases-table", "boss@far.test").locator("button").click()
    page.wait_for_selector("#message.ok:has-text('removed sales@ui.test')")
    assert [a.target for a in store(server, lambda a, s: s.list_aliases("ui.test"))] == ["zoe@ui.test"]

    page.click("nav [data-tab=users]")
    page.once("dialog", lambda d: d.accept())
    row(page, "users-table", "zoe@ui.test").locator("button", has_text="Remove").click()
    page.wait_for_selector("#message.ok:has-text('removed zoe@ui.test')")
    assert store(server, lambda a, s: s.get_user("zoe@ui.test")) is None
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)


def test_admin_queue_and_delivery_log(server: HttpServer, page: Any) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=server.client_context())
        s.login(ADMIN, PASSWORD)
        s.sendmail(ADMIN, ["far@remote.test"], b"Subject: queued for the ui\r\n\r\nhi\r\n")
    entry = wait(lambda: next((q for q in queue(server) if q.attempts >= 1), None))
    page.goto(url(server, "/admin/"))
    log_in(page, ADMIN, PASSWORD)
    page.wait_for_selector("#admin-view", state="visible")
    page.click("nav [data-tab=queue]")
    line = row(page, "queue-table", entry.qid)
    line.wait_for()
    assert "far@remote.test" in line.inner_text()
    line.locator("button", has_text="Hold").click()
    page.wait_for_selector(f"#message.ok:has-text('held {entry.qid}')")
    assert "held" in row(page, "queue-table", entry.qid).inner_text()
    assert queue(server)[0].held is True
    row(page, "queue-table", entry.qid).locator("button", has_text="Release").click()
    page.wait_for_selector(f"#message.ok:has-text('released {entry.qid}')")
    row(page, "queue-table", entry.qid).locator("button", has_text="Retry").click()
    page.wait_for_selector("#message.ok:has-text('will be retried now')")
    wait(lambda: queue(server)[0].attempts >= 2)
    page.once("dialog", lambda d: d.accept())
    row(page, "queue-table", entry.qid).locator("button", has_text="Delete").click()
    page.wait_for_selector("#queue-table tbody tr.empty")
    assert queue(server) == []

    page.click("nav [data-tab=log]")
    row(page, "log-table", "far@remote.test").first.wait_for()
    results = [r.inner_text() for r in row(page, "log-table", entry.qid).all()]
    assert any("accepted" in r for r in results) and any("deferred" in r for r in results)


def test_non_admin_sees_no_admin(server: HttpServer, page: Any) -> None:
    store(server, lambda a, s: a.user_add("plain@example.test", PASSWORD))
    page.goto(url(server, "/admin/"))
    log_in(page, "plain@example.test", PASSWORD)
    page.wait_for_selector("#not-admin", state="visible")
    assert page.is_hidden("#admin-view")


def test_account_page(server: HttpServer, page: Any, tmp_path: Path) -> None:
    address = "ann@example.test"
    store(server, lambda a, s: a.user_add(address, PASSWORD))
    page.goto(url(server, "/account/"))
    log_in(page, address, PASSWORD)
    page.wait_for_selector("#account-view", state="visible")
    page.wait_for_selector(f"#me-address:text-is('{address}')")  # filled in once /me answered

    page.fill("#apppw-name", "phone")
    page.click("#apppw-form button[type=submit]")
    page.wait_for_selector("#apppw-created", state="visible")
    secret = page.inner_text("#apppw-created-password")
    row(page, "apppw-table", "phone").wait_for()
    ctx = server.client_context()
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    imap.login(address, secret)
    imap.logout()
    row(page, "apppw-table", "phone").locator("button").click()
    page.wait_for_selector("#message.ok:has-text('revoked phone')")
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx).login(address, secret)

    with page.expect_download() as info:
        page.click("#mobileconfig")
    profile = plistlib.loads(Path(info.value.path()).read_bytes())
    assert profile["PayloadContent"][0]["EmailAddress"] == address
    assert info.value.suggested_filename.endswith(".mobileconfig")

    page.fill("#password-current", PASSWORD)
    page.fill("#password-new", "my much better password")
    page.fill("#password-repeat", "my much better password")
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#message.ok:has-text('password changed')")
    assert page.is_visible("#account-view")  # still logged in, with a new session
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx)
    imap.login(address, "my much better password")
    imap.logout()
    page.screenshot(path=str(tmp_path / "account.png"), full_page=True)
    page.click("#logout")
    page.wait_for_selector("#login-view", state="visible")


EVIL = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{target}/api/v1/domains">
<input name='{{"name": "evil-form.test", "x": "' value='"}}'></form>
<script>
fetch("{target}/api/v1/domains", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: '{{"name": "evil-fetch.test"}}'}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""


def test_foreign_page_cannot_act_for_the_admin(server: HttpServer, page: Any) -> None:
    """Logged in as admin in this browser, the user visits another site whose page posts
    to the admin API, as a form and with fetch: nothing may happen."""
    page.goto(url(server, "/admin/"))
    log_in(page, ADMIN, PASSWORD)
    page.wait_for_selector("#admin-view", state="visible")

    body = EVIL.format(target=url(server, "")).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_url(f"**{server.https_port}/api/v1/domains", timeout=15_000)
        page.wait_for_load_state()
    finally:
        evil.shutdown()
        evil.server_close()
    names = [d.name for d in store(server, lambda a, s: s.list_domains())]
    assert "evil-form.test" not in names and "evil-fetch.test" not in names
    # The admin is still logged in (nothing was broken either).
    page.goto(url(server, "/admin/"))
    page.wait_for_selector("#admin-view", state="visible")
