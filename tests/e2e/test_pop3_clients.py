"""Real POP3 clients against ``postroom serve``: fetchmail and getmail6 download a mailbox.

Each downloaded file is compared byte for byte with the stored message, after undoing
exactly what the client documents it does to a message:

* both write LF line ends (the local convention) where POP3 carries CRLF;
* both end a header-only message with the empty line that closes its header section;
* fetchmail adds one ``Received:`` field (``from 127.0.0.1 [127.0.0.1] by HOST with
  POP3 (fetchmail-VERSION) for <USER> (single-drop); DATE``, folded over three lines) at
  the top, or just below the message's ``Return-Path:`` when that is the first field;
* getmail prepends ``Return-Path:`` (moving the message's own one to the top, or
  ``<unknown>`` when there is none), ``Delivered-To: unknown`` and ``Received:`` (``from
  127.0.0.1 (127.0.0.1:PORT) by HOST with POP3-SSL getmail6 msgid:N; DATE``, folded
  where its length makes it fold).

Those fields are matched by pattern and removed only at the top of the file; everything
else, dot-stuffed lines, 8-bit text and long lines included, must be identical.

Keep mode is run twice: the second run must fetch nothing (the clients remember UIDLs),
and after one more delivery exactly that message. Delete mode must leave the mailbox empty.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3_e2e import TRICKY, deliver, mailbox, message, new_user, running
from support.server import PASSWORD, Server

from postroom.store.api import FLAG_SEEN


FETCHMAIL = shutil.which("fetchmail")
GETMAIL = shutil.which("getmail")
GETMAIL_WRAPPER = Path(__file__).parent.parent / "support" / "getmail_wrapper.py"

_FETCHMAIL_RECEIVED = re.compile(
    rb"\A(?P<rp>Return-Path: <[^>\n]*>\n)?"
    rb"Received: from 127\.0\.0\.1 \[127\.0\.0\.1\]\n"
    rb"\tby \S+ with POP3S? \(fetchmail-[0-9.]+\)\n"
    rb"\tfor <[^>\n]+> \(single-drop\); [^\n]+\n"
)
_GETMAIL_FIELDS = re.compile(
    rb"\A(?P<rp>Return-Path: <[^>\n]*>\n)"
    rb"Delivered-To: unknown\n"
    rb"Received: from 127\.0\.0\.1 \(127\.0\.0\.1:\d+\) by \S+ with POP3(?:-SSL)?"
    rb"(?:\n )? +getmail6(?:\n )? +msgid:[0-9a-f]+; [^\n]+\n"  # folded where it fits
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("pop3clients")) as s:
        yield s


def smtp_like(i: int) -> bytes:
    """A message as SMTP delivery stores it: our Return-Path and Received on top."""
    return (
        b"Return-Path: <sender%d@example.org>\r\n"
        b"Received: from client.example.org (client.example.org [192.0.2.1])\r\n"
        b"\tby mail.example.test (postroom) with ESMTPS id Q%d\r\n"
        b"\tfor <rcpt@example.test>; Mon, 01 Jan 2024 00:00:00 +0000\r\n" % (i, i)
    ) + message(i)


def mail_set(count: int = 0) -> list[bytes]:
    return [*TRICKY, smtp_like(1), smtp_like(2), *(message(100 + i, size=3000) for i in range(count))]


def local_form(stored: bytes) -> bytes:
    """What a client writes for a stored message: LF line ends, a complete header."""
    if not stored.startswith(b"\r\n") and b"\r\n\r\n" not in stored:
        stored += b"\r\n"  # header-only: the empty line that ends the header section
    return stored.replace(b"\r\n", b"\n")


def expected(server: Server, user: str, ids: set[int] | None = None) -> list[bytes]:
    return sorted(local_form(d) for m, d in mailbox(server, user) if ids is None or m.id in ids)


# ----------------------------------------------------------------------------- fetchmail


def run_fetchmail(server: Server, user: str, home: Path, mode: str, keep: bool) -> list[bytes]:
    """One fetchmail poll; the messages it delivered (its Received field checked and
    removed). ``mode``: ``stls`` (port 110, TLS required) or ``ssl`` (port 995)."""
    assert FETCHMAIL, "fetchmail is not installed (scripts/run-tests installs it)"
    out = home / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = server.ports["pop3s" if mode == "ssl" else "pop3"]
    tls = "ssl" if mode == "ssl" else "sslproto 'tls1.2+'"  # tls1.2+: STLS is mandatory
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll 127.0.0.1 service {port} protocol POP3 uidl timeout 30\n"
        f'  user "{user}" there with password "{PASSWORD}" is "tester" here\n'
        f'  {tls} sslcertck sslcertfile "{server.cert}" sslcommonname "mail.example.test"\n'
        f"  {'keep' if keep else 'nokeep fetchall'}\n"
        f"  mda \"sh -c 'cat > $(mktemp {out}/msg.XXXXXX)'\"\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    proc = subprocess.run(
        [FETCHMAIL, "-f", str(rc), "--nodetach", "--pidfile", str(home / "fm.pid"), "-v"],
        env=env, capture_output=True, timeout=120,
    )
    log = (proc.stdout + proc.stderr).decode(errors="replace")
    # Exit status 0: mail delivered; 1: no mail (RFC-free fetchmail convention).
    assert proc.returncode in (0, 1), log
    assert b"POP3> STLS" in proc.stdout or mode == "ssl", log
    got = []
    for path in out.iterdir():
        data = path.read_bytes()
        m = _FETCHMAIL_RECEIVED.match(data)
        assert m, data[:300]
        got.append((m.group("rp") or b"") + data[m.end() :])  # it goes below a Return-Path
    assert (proc.returncode == 1) == (not got), log
    return sorted(got)


@pytest.mark.parametrize("mode", ["stls", "ssl"])
def test_fetchmail_keep_then_delete(server: Server, tmp_path: Path, mode: str) -> None:
    user = new_user(server)
    deliver(server, user, mail_set(20))
    first = expected(server, user)

    assert run_fetchmail(server, user, tmp_path, mode, keep=True) == first
    stored = mailbox(server, user)
    assert len(stored) == len(first)  # keep: nothing deleted
    # In keep mode fetchmail downloads with "TOP n 99999999" on purpose, so that the
    # messages stay unread on the server: TOP is a peek, it sets no \Seen.
    assert not any(m.flags & FLAG_SEEN for m, _ in stored)

    assert run_fetchmail(server, user, tmp_path, mode, keep=True) == []  # UIDL remembered
    new = deliver(server, user, [message(999)])[-1]
    assert run_fetchmail(server, user, tmp_path, mode, keep=True) == expected(server, user, {new.id})

    everything = expected(server, user)
    assert run_fetchmail(server, user, tmp_path, mode, keep=False) == everything
    assert mailbox(server, user) == []


# ----------------------------------------------------------------------------- getmail6


def maildir_owner() -> tuple[int, int] | None:
    """getmail refuses to deliver as root: as root, deliver as ``nobody``."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def run_getmail(
    server: Server, user: str, root: Path, *, delete: bool, ssl: bool = True
) -> list[bytes]:
    """One getmail run into a fresh Maildir; the messages (its fields checked, removed)."""
    assert GETMAIL, "getmail (getmail6) is not installed (scripts/run-tests installs it)"
    gdir = root / "getmail"
    gdir.mkdir(exist_ok=True)
    md = root / "Maildir"
    shutil.rmtree(md, ignore_errors=True)
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    owner = maildir_owner()
    if owner is not None:
        for p in (md, *md.iterdir()):
            os.chown(p, *owner)
    retriever = "SimplePOP3SSLRetriever" if ssl else "SimplePOP3Retriever"
    rc = gdir / "getmailrc"
    rc.write_text(
        f"[retriever]\ntype = {retriever}\nserver = 127.0.0.1\n"
        f"port = {server.ports['pop3s' if ssl else 'pop3']}\n"
        f"username = {user}\npassword = {PASSWORD}\n"
        + (f"ca_certs = {server.cert}\n" if ssl else "")
        + f"\n[destination]\ntype = Maildir\npath = {md}/\n"
        + ("user = nobody\n" if owner is not None else "")
        + f"\n[options]\nverbose = 1\nread_all = {delete}\ndelete = {delete}\n"
    )
    proc = subprocess.run(
        # Through the wrapper that closes getmail6's own fork/SIGCHLD race (see there).
        ["/usr/bin/python3", str(GETMAIL_WRAPPER), "--getmaildir", str(gdir), "--rcfile", str(rc)],
        env=dict(os.environ, HOME=str(root)), capture_output=True, timeout=120,
    )
    log = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, log
    assert "error" not in log.lower(), log
    assert not any((md / "cur").iterdir()) and not any((md / "tmp").iterdir())
    got = []
    for path in (md / "new").iterdir():
        data = path.read_bytes()
        m = _GETMAIL_FIELDS.match(data)
        assert m, data[:300]
        rest = data[m.end() :]
        if m.group("rp") != b"Return-Path: <unknown>\n":
            rest = m.group("rp") + rest  # the message's own Return-Path, moved to the top
        got.append(rest)
    return sorted(got)


@pytest.fixture
def gm_root() -> Iterator[Path]:
    """A folder for getmail's state and Maildir that ``nobody`` can reach.

    Not under pytest's tmp_path: pytest keeps /tmp/pytest-of-USER at mode 0700 (and puts
    it back whenever a test session starts), which ``nobody`` cannot search.
    """
    root = Path(tempfile.mkdtemp(prefix="postroom-getmail-"))
    os.chmod(root, 0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_getmail_keep_then_delete(server: Server, gm_root: Path) -> None:
    user = new_user(server)
    deliver(server, user, mail_set(20))
    first = expected(server, user)
    root = gm_root

    assert run_getmail(server, user, root, delete=False) == first
    stored = mailbox(server, user)
    assert len(stored) == len(first)  # nothing deleted, everything downloaded (RETR): \Seen
    assert all(m.flags & FLAG_SEEN for m, _ in stored)
    assert run_getmail(server, user, root, delete=False) == []  # only new messages
    new = deliver(server, user, [message(999)])[-1]
    assert run_getmail(server, user, root, delete=False) == expected(server, user, {new.id})

    everything = expected(server, user)
    assert run_getmail(server, user, root, delete=True) == everything
    assert mailbox(server, user) == []


def test_getmail_plain_pop3_when_allowed(tmp_path: Path, gm_root: Path) -> None:
    """getmail has no STLS: over port 110 it needs pop3.allow_plaintext_auth."""
    with running(tmp_path / "srv", "[pop3]\nallow_plaintext_auth = true\n") as server:
        user = new_user(server)
        deliver(server, user, mail_set())
        first = expected(server, user)
        assert run_getmail(server, user, gm_root, delete=True, ssl=False) == first
        assert mailbox(server, user) == []
