"""PostgreSQL restarted under load (issue 11): clients get temporary errors, never a 250
for a message that is not stored, and the node recovers on its own within seconds.

SMTP clients deliver numbered messages while an IMAP client polls and a POP3 client logs
in and out; the test's own PostgreSQL server is stopped (``fast``: sessions are
terminated, as in a restart or fail-over), stays down two seconds, and starts again.
Afterwards every message that got 250 is stored exactly once, every refusal was a
temporary one (4xx, ``NO``/``BYE [UNAVAILABLE]``, ``-ERR [SYS/TEMP]``), and deliveries
succeeded again soon after the database came back.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

from support.postgres import PgCluster
from support.server import PASSWORD, Server

USER = "pgr@example.test"
SENDERS = 6
DOWN = 2.0  # seconds the database stays away
_TOKEN = re.compile(rb"X-Token: (\S+)")


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[tuple[str, float]] = []
        self.temporary: list[tuple[str, float]] = []
        self.permanent: list[str] = []
        self.imap: Counter[str] = Counter()
        self.pop3: Counter[str] = Counter()


def _smtp(srv: Server, out: Outcomes, wid: int, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        token = f"w{wid}-{n}"
        data = f"Subject: {token}\r\nX-Token: {token}\r\n\r\nbody\r\n".encode()
        try:
            with smtplib.SMTP("127.0.0.1", srv.ports["mx"], timeout=30) as s:
                s.sendmail("x@client.test", [USER], data)
            with out.lock:
                out.acked.append((token, time.monotonic()))
        except smtplib.SMTPResponseException as e:
            with out.lock:
                if e.smtp_code >= 500:
                    out.permanent.append(f"{token}: {e.smtp_code} {e.smtp_error!r}")
                else:
                    out.temporary.append((token, time.monotonic()))
        except (OSError, smtplib.SMTPException):
            with out.lock:
                out.temporary.append((token, time.monotonic()))
        time.sleep(0.01)


def _imap(srv: Server, out: Outcomes, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context(),
                                  timeout=30)
            try:
                m.login(USER, PASSWORD)
                while not stop.is_set():
                    typ, data = m.select("INBOX")
                    if typ != "OK":
                        out.imap["unavailable" if b"[UNAVAILABLE]" in data[0] else f"error {data}"] += 1
                        break
                    out.imap["ok"] += 1
                    m.fetch("1:*", "(FLAGS)")
                    time.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    m.logout()
        except imaplib.IMAP4.abort as e:  # BYE [UNAVAILABLE] (imaplib: "socket error: EOF")
            out.imap["closed" if "UNAVAILABLE" in str(e) or "EOF" in str(e) else f"abort {e}"] += 1
        except imaplib.IMAP4.error as e:  # a tagged NO, e.g. on LOGIN
            out.imap["unavailable" if "UNAVAILABLE" in str(e) else f"error {e}"] += 1
        except OSError:
            out.imap["closed"] += 1
        time.sleep(0.05)


def _pop3(srv: Server, out: Outcomes, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=srv.client_context(),
                                timeout=30)
            try:
                p.user(USER)
                p.pass_(PASSWORD)
                p.stat()
                out.pop3["ok"] += 1
            finally:
                with contextlib.suppress(Exception):
                    p.quit()
        except poplib.error_proto as e:
            text = str(e)
            out.pop3["temporary" if "SYS/TEMP" in text or "IN-USE" in text else f"error {text}"] += 1
        except OSError:
            out.pop3["closed"] += 1
        time.sleep(0.1)


def test_postgresql_restart_under_load(tmp_path: Path) -> None:
    cluster = PgCluster().start()
    srv = None
    try:
        url = cluster.create_database("restart")
        srv = Server(tmp_path / "node", roles=("mx", "imaps", "pop3s"),
                     extra=f'[store]\nbackend = "postgresql"\nurl = "{url}"\n')
        srv.add_user(USER)
        srv.start()
        out = Outcomes()
        stop = threading.Event()
        threads = [threading.Thread(target=_smtp, args=(srv, out, w, stop), daemon=True)
                   for w in range(SENDERS)]
        threads += [threading.Thread(target=_imap, args=(srv, out, stop), daemon=True),
                    threading.Thread(target=_pop3, args=(srv, out, stop), daemon=True)]
        for t in threads:
            t.start()
        time.sleep(3)
        down_at = time.monotonic()
        cluster.restart("fast", down=DOWN)
        up_at = time.monotonic()
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)

        assert not out.permanent, out.permanent[:5]
        before = [t for t, at in out.acked if at < down_at]
        after = [at for _, at in out.acked if at > up_at]
        failed = [at for _, at in out.temporary if at >= down_at]
        assert before and after, "deliveries before and after the restart"
        assert failed, "the outage was seen as temporary failures"
        recovered = min(after) - up_at
        assert recovered < 10, f"first 250 only {recovered:.1f}s after the database came back"
        # Nothing acknowledged is missing, nothing is stored twice.
        stored = Counter(_TOKEN.search(d).group(1).decode() for d in srv.messages(USER))  # type: ignore[union-attr]
        acked = {t for t, _ in out.acked}
        assert not [t for t in acked if stored[t] != 1], "acknowledged mail lost or doubled"
        assert max(stored.values()) == 1
        # IMAP and POP3 saw temporary errors or a closed session, nothing else, and work again.
        assert out.imap["ok"] and not [k for k in out.imap if k.startswith(("error", "abort"))], out.imap
        assert "session crashed" not in srv.logs(), srv.logs()[-5000:]
        assert out.pop3["ok"] and not [k for k in out.pop3 if k.startswith("error")], out.pop3
        print(f"\nrestart: {len(acked)} acknowledged, {len(failed)} temporary failures, first 250 "
              f"{recovered:.2f}s after the database was back; IMAP {dict(out.imap)}; "
              f"POP3 {dict(out.pop3)}")
    finally:
        if srv is not None:
            srv.stop()
        cluster.destroy()
