"""``postroom import maildir`` and ``import mbox`` into a running server, read back over IMAP.

The expected state is computed independently from the files (flags from the Maildir
names and ``dovecot-keywords``, dates from file times and From_ lines, bytes with CRLF
line endings), then compared with what an IMAP client sees: every folder, message, flag,
keyword and INTERNALDATE.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.data_cli import fails, ok_json, postroom
from support.imap_state import account_state, contents
from support.server import PASSWORD, Server

ALICE = "alice@example.test"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv", roles=("imaps",),
                 extra='[limits]\nauth_delay = "10ms"\nmessage_size = "100K"\n')
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def state(srv: Server) -> dict:  # type: ignore[type-arg]
    return contents(account_state(srv.ports["imaps"], ALICE, PASSWORD, tls=srv.client_context()))


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def put(folder: Path, sub: str, name: str, data: bytes, mtime: int) -> None:
    for d in ("cur", "new", "tmp"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    path = folder / sub / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def msg(subject: str, extra: bytes = b"") -> bytes:
    return b"From: someone@remote.example\nSubject: " + subject.encode() + b"\n\nbody of " + subject.encode() + b"\n" + extra


def test_import_maildir(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    put(root, "cur", "1000.M1P1.old:2,FRSac", msg("flagged"), 1_000_000_000)
    put(root, "cur", "1001.M2P1.old:2,", msg("plain"), 1_000_000_100)
    put(root, "new", "1002.M3P1.old", msg("new one"), 1_000_000_200)
    put(root, "tmp", "1003.M4P1.old", msg("being written"), 1_000_000_300)  # ignored
    put(root, "cur", "1004.M5P1.old:2,S", msg("too big", b"x" * 200_000), 1_000_000_400)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 unused\n2 project-x\n")
    put(root / ".Sent", "cur", "2000.M1P1.old:2,ST", msg("sent"), 1_100_000_000)
    put(root / ".Lists.python", "cur", "3000.M1P1.old:2,PD", msg("list"), 1_200_000_000)
    put(root / ".v1\\2e2", "cur", "4000.M1P1.old:2,S", msg("dotted"), 1_300_000_000)
    put(root / ".&AMU-rsrapport", "cur", "5000.M1P1.old:2,S", msg("unicode"), 1_400_000_000)
    put(root / "Projects" / "x", "cur", "6000.M1P1.old:2,S", msg("fs layout"), 1_500_000_000)
    os.symlink("/etc/passwd", root / "cur" / "1005.M6P1.old:2,S")  # never followed

    r = postroom(server.config, "import", "maildir", ALICE, str(root), "--json", "--quiet")
    assert r.returncode == 1 and "1 folder(s) not copied completely" in r.stderr  # the big one
    got = state(server)
    assert got == {
        ("INBOX",): [
            (frozenset({"\\Flagged", "\\Answered", "\\Seen", "$Label1", "project-x"}), 1_000_000_000,
             crlf(msg("flagged"))),
            (frozenset(), 1_000_000_100, crlf(msg("plain"))),
            (frozenset(), 1_000_000_200, crlf(msg("new one"))),
        ],
        ("Sent",): [(frozenset({"\\Seen", "\\Deleted"}), 1_100_000_000, crlf(msg("sent")))],
        ("Lists", "python"): [(frozenset({"\\Draft", "$Forwarded"}), 1_200_000_000, crlf(msg("list")))],
        ("v1.2",): [(frozenset({"\\Seen"}), 1_300_000_000, crlf(msg("dotted")))],
        ("Årsrapport",): [(frozenset({"\\Seen"}), 1_400_000_000, crlf(msg("unicode")))],
        ("Projects", "x"): [(frozenset({"\\Seen"}), 1_500_000_000, crlf(msg("fs layout")))],
    }

    # Resuming: files renamed by a mail client (new flags, new/ -> cur/) are the same
    # messages; only the one added since is copied.
    os.rename(root / "new" / "1002.M3P1.old", root / "cur" / "1002.M3P1.old:2,S")
    put(root, "new", "1006.M7P1.old", msg("arrived later"), 1_000_000_500)
    os.unlink(root / "cur" / "1004.M5P1.old:2,S")
    again = ok_json(server.config, "import", "maildir", ALICE, str(root))
    assert again["copied"] == 1 and again["already"] == 8 and again["ok"]
    inbox = state(server)[("INBOX",)]
    assert len(inbox) == 4 and inbox[-1][2] == crlf(msg("arrived later"))


def test_import_maildir_into_prefix_and_errors(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "md"
    put(root, "cur", "1.M1.h:2,S", msg("a"), 1_000_000_000)
    put(root / ".x", "cur", "2.M1.h:2,", msg("b"), 1_000_000_001)
    put(root / ".a..b", "cur", "3.M1.h:2,", msg("c"), 1_000_000_002)  # an empty level
    r = postroom(server.config, "import", "maildir", ALICE, str(root), "--into", "Old/Mail", "--json", "--quiet")
    assert r.returncode == 1, r.stderr
    got = state(server)
    assert got[("Old", "Mail", "INBOX")][0][2] == crlf(msg("a"))
    assert got[("Old", "Mail", "x")][0][2] == crlf(msg("b"))
    assert not any("b" in levels for levels in got)  # "a//b" refused, like IMAP CREATE does
    assert "no Maildir here" in fails(server.config, "import", "maildir", ALICE, str(tmp_path / "srv"))
    assert "not a folder" in fails(server.config, "import", "maildir", ALICE, str(tmp_path / "none"))
    assert "--into '../x'" in fails(server.config, "import", "maildir", ALICE, str(root), "--into", "../x")


def from_line(when: str) -> bytes:
    return f"From sender@remote.example {when}\n".encode()


def test_import_mbox(server: Server, tmp_path: Path) -> None:
    mail = tmp_path / "Mail"
    (mail / "Lists.sbd").mkdir(parents=True)
    (mail / "Inbox").write_bytes(
        from_line("Thu Jan  1 00:00:00 1970")
        + b"Date: 01 Jan 2020 00:00:00 +0000\nFrom: Mail System Internal Data <MAILER-DAEMON@x>\n"
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\nX-IMAP: 1234 0000000002\n\n"
        b"This text is part of the internal format of your mail folder.\n\n"
        + from_line("Mon Jan  1 10:00:00 2001")
        + b"Status: RO\nX-Status: A\nX-Keywords: $Label1\nX-UID: 1\nSubject: first\n\nhello\n>From the past\n\n"
        + from_line("Tue Jan  2 10:00:00 2001")
        + b"Subject: second\n\nbye\n"
    )
    (mail / "Lists.sbd" / "python").write_bytes(
        from_line("Wed Jan  3 10:00:00 2001") + b"Status: R\nSubject: list\n\nlist mail\n\n")
    report = ok_json(server.config, "import", "mbox", ALICE, str(mail))
    assert report["copied"] == 3 and report["ok"]
    got = state(server)
    assert got == {
        ("INBOX",): [
            (frozenset({"\\Seen", "\\Answered", "$Label1"}), 978343200,
             b"Subject: first\r\n\r\nhello\r\nFrom the past\r\n"),
            (frozenset(), 978343200 + 86400, b"Subject: second\r\n\r\nbye\r\n"),
        ],
        ("Lists", "python"): [(frozenset({"\\Seen"}), 978343200 + 2 * 86400,
                               b"Subject: list\r\n\r\nlist mail\r\n")],
    }
    # The mbox grew: only the new message is copied.
    with (mail / "Inbox").open("ab") as f:
        f.write(b"\n" + from_line("Thu Jan  4 10:00:00 2001") + b"Subject: third\n\nnew\n")
    again = ok_json(server.config, "import", "mbox", ALICE, str(mail))
    assert again["copied"] == 1 and again["already"] == 3
    # One file into a named mailbox.
    single = tmp_path / "archive.mbox"
    single.write_bytes(from_line("Fri Jan  5 10:00:00 2001") + b"Subject: old\n\nold\n")
    one = ok_json(server.config, "import", "mbox", ALICE, str(single), "--mailbox", "Archive/2001")
    assert one["copied"] == 1
    assert state(server)[("Archive", "2001")][0][2] == b"Subject: old\r\n\r\nold\r\n"
    assert "--mailbox names the target of one mbox file" in fails(
        server.config, "import", "mbox", ALICE, str(mail), "--mailbox", "X")
    # A file that is not an mbox is reported and left out; the others are still copied.
    (tmp_path / "notes.txt").write_bytes(b"Subject: not mbox\n\nx\n")
    r = postroom(server.config, "import", "mbox", ALICE, str(tmp_path / "notes.txt"), str(single),
                 "--json", "--quiet")
    assert r.returncode == 1 and "1 folder(s) not copied completely" in r.stderr
    assert "no such file or folder" in fails(server.config, "import", "mbox", ALICE, str(tmp_path / "nope"))


def test_import_respects_quota_and_resumes_after_raise(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "md"
    for i in range(5):
        put(root, "cur", f"{i}.M{i}.h:2,S", msg(f"m{i}"), 1_000_000_000 + i)
    r = postroom(server.config, "user", "quota", ALICE, "none", "--messages", "3")
    assert r.returncode == 0, r.stderr
    err = fails(server.config, "import", "maildir", ALICE, str(root))
    assert "over quota" in err and "postroom user quota" in err
    # Nothing of the refused batch was stored (a batch is all or nothing).
    assert state(server).get(("INBOX",), []) == []
    r = postroom(server.config, "user", "quota", ALICE, "none", "--messages", "none")
    assert r.returncode == 0, r.stderr
    done = ok_json(server.config, "import", "maildir", ALICE, str(root))
    assert done["copied"] == 5 and done["ok"]
    assert [m[2] for m in state(server)[("INBOX",)]] == [crlf(msg(f"m{i}")) for i in range(5)]
