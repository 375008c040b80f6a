"""The free-space guard on a really full file system: a small tmpfs holds the data folder.

As root (CI and the development machine) the test mounts a 48 MiB tmpfs, fills it with a
file until less than the threshold (4 x message_size = 8 MiB) is free, and checks that new
mail is refused (SMTP 452 4.3.1 at MAIL and at end of data, APPEND NO) while reading,
flag changes and expunges still work, that the log says so once, and that mail flows again
once space is freed. Without root it cannot mount: then a threshold larger than any disk
makes the real free space count as low, and the recovery part is left out.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
import time
from pathlib import Path

from support.server import PASSWORD, Server
from support.smtp_e2e import ALICE, RawSmtp, message

SENDER = "sender@remote.example"


def _fill(path: Path, leave: int) -> Path:
    """Write a file in ``path`` until only about ``leave`` octets are free."""
    filler = path / "filler"
    st = os.statvfs(path)
    todo = st.f_bavail * st.f_frsize - leave
    chunk = b"\0" * (1 << 20)
    with filler.open("wb") as f:
        while todo > 0:
            f.write(chunk[: min(len(chunk), todo)])
            todo -= len(chunk)
    return filler


def _imap(srv: Server) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context(), timeout=15)
    m.login(ALICE, PASSWORD)
    return m


def test_free_space_guard(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    root.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(root)], check=True)
        limits = '[limits]\nmessage_size = "2M"\nauth_delay = "10ms"\n'  # threshold: 8 MiB
    else:
        limits = '[limits]\nmessage_size = "2M"\nmin_free_space = "1000000G"\nauth_delay = "10ms"\n'
    srv = Server(root / "srv", roles=("mx", "imaps"), extra=limits)
    try:
        srv.add_user(ALICE)
        srv.start()
        if as_root:
            with RawSmtp(srv.ports["mx"]) as c:
                c.ehlo()
                assert c.mail(SENDER, [ALICE], message("before")).code == 250
        else:
            srv.admin(lambda admin, store: _deliver(store, message("before")))
        # A transaction already under way when the disk fills up.
        pending = RawSmtp(srv.ports["mx"])
        pending.ehlo()
        if as_root:
            pending.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            pending.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            pending.expect("DATA", "354")
            filler = _fill(root, 3 << 20)
            time.sleep(1.2)  # the guard measures at most once a second
            pending.send(message("during") + b".\r\n")
            assert pending.reply().status == "452 4.3.1"  # at the end of data
        pending.close()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.cmd(f"MAIL FROM:<{SENDER}>").status == "452 4.3.1"
            assert c.cmd(f"MAIL FROM:<{SENDER}>").status == "452 4.3.1"
        m = _imap(srv)
        typ, data = m.append("INBOX", "", None, message("appended"))  # type: ignore[arg-type]
        assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
        # Reading, flags and deletions keep working in the space left.
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and b"Subject: before" in data[0][1]  # type: ignore[index]
        assert m.store("1", "+FLAGS", "(\\Seen \\Deleted)")[0] == "OK"
        assert m.expunge() == ("OK", [b"1"])
        m.logout()
        log = srv.logs()
        assert log.count("event=free_space_low") == 1, log[-2000:]  # once, not per refusal
        if as_root:
            filler.unlink()
            time.sleep(1.2)
            with RawSmtp(srv.ports["mx"]) as c:
                c.ehlo()
                assert c.mail(SENDER, [ALICE], message("after")).code == 250
            assert "event=free_space_ok" in srv.logs()
            assert [b"Subject: after" in m for m in srv.messages(ALICE)] == [True]
    finally:
        srv.stop()
        if as_root:
            subprocess.run(["umount", str(root)], check=False)


async def _deliver(store, data: bytes) -> None:  # type: ignore[no-untyped-def]
    from postroom.deliver import normalize, summarize
    from postroom.store.api import Delivery

    user = await store.get_user(ALICE)
    d = normalize(data)
    await store.deliver(Delivery(data=d, summary=summarize(d), user_ids=(user.id,)))
