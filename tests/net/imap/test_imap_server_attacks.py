"""Hostile uses of the IMAP extensions over a socket (issue 9's attack audit, part 3):
amplification through URLs (CATENATE, URLFETCH), where a few bytes of command make the
server read, hold and send many megabytes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from support.server import Server

MESSAGE_SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("imap-attacks"), roles=("imap", "imaps", "mx"),
                 extra=f'[limits]\nauth_delay = "10ms"\nmessage_size = {MESSAGE_SIZE}\n').start()
    try:
        yield srv
    finally:
        srv.stop()


def _big(size: int) -> bytes:
    line = b"x" * 998 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def _append(c, mailbox: str, data: bytes) -> bytes:
    tag = c.tag()
    c.send(b"%s APPEND %s {%d+}\r\n%s\r\n" % (tag.encode(), mailbox.encode(), len(data), data))
    return c.until_tagged(tag)[1]


def _messages(c, mailbox: str) -> int:
    line = b"".join(c.ok(f"STATUS {mailbox} (MESSAGES)"))
    m = re.search(rb"MESSAGES (\d+)", line)
    assert m is not None, line
    return int(m.group(1))


def test_catenate_cannot_multiply_a_stored_message(server: Server, user: str, raw) -> None:
    """A MULTIAPPEND of 40 CATENATEs of one 600 KB URL is 40 bytes of command per 600 KB
    the server must read and hold: the whole command is bounded like its literals
    (twice the APPENDLIMIT), not only each message."""
    c = raw(user)
    assert b" OK " in _append(c, "Drafts", _big(600 * 1024))
    parts = b" ".join(b'CATENATE (URL "/Drafts/;UID=1")' for _ in range(40))
    _, done = c.cmd(b"APPEND Drafts " + parts)
    assert re.fullmatch(rb"t\d+ NO \[TOOBIG\] .*\r\n", done), done
    assert _messages(c, "Drafts") == 1  # nothing stored
    # two copies are within the bound, as a literal MULTIAPPEND of them would be
    _, done = c.cmd(b'APPEND Drafts CATENATE (URL "/Drafts/;UID=1") CATENATE (URL "/Drafts/;UID=1")')
    assert b" OK [APPENDUID " in done, done
    assert _messages(c, "Drafts") == 3


def test_catenate_parts_of_one_url_read_once(server: Server, user: str, raw) -> None:
    """1,500 one-octet PARTIALs of a big message (as many as fit in the 64 KB command
    line): the answer is right and quick (the message is read once per command, not once
    per part)."""
    c = raw(user)
    assert b" OK " in _append(c, "Drafts", _big(900 * 1024))
    part = b'URL "/Drafts/;UID=1/;PARTIAL=0.1" '
    _, done = c.cmd(b"APPEND Drafts CATENATE (" + part * 1500 + b'TEXT {2+}\r\n\r\n)')
    assert b" OK [APPENDUID " in done, done
    c.ok("SELECT Drafts")
    got = b"".join(c.ok("UID FETCH 2 BODY.PEEK[]"))
    assert b"BODY[] {1502}\r\n" + b"S" * 1500 + b"\r\n)" in got


def test_urlfetch_response_is_bounded(server: Server, user: str, raw) -> None:
    """URLFETCH of 64 URLs of one 600 KB message would build a 38 MB response in memory."""
    c = raw(user)
    assert b" OK " in _append(c, "Drafts", _big(600 * 1024))
    (line,) = c.ok(f'GENURLAUTH "imap://{user}/Drafts/;uid=1;urlauth=authuser" INTERNAL')
    url = re.fullmatch(rb'\* GENURLAUTH "(.+)"\r\n', line).group(1)  # type: ignore[union-attr]
    _, done = c.cmd(b"URLFETCH " + b" ".join(b'"%s"' % url for _ in range(64)))
    assert re.fullmatch(rb"t\d+ NO \[LIMIT\] .*\r\n", done), done
    untagged, done = c.cmd(b'URLFETCH "%s" "%s"' % (url, url))  # two are fine
    assert b" OK " in done and len(b"".join(untagged)) > 2 * 600 * 1000


def test_urls_cannot_reach_another_users_mail(server: Server, user: str, raw) -> None:
    """CATENATE, URLFETCH and GENURLAUTH with URLs naming someone else's mailbox, written
    every way a client can write them: all refused, nothing of the victim's is copied."""
    victim = user.replace("@", "v@")
    server.add_user(victim)
    v = raw(victim)
    assert b" OK " in _append(v, "INBOX", b"Subject: secret\r\n\r\nsecret body\r\n")
    (line,) = v.ok(f'GENURLAUTH "imap://{victim}/INBOX/;uid=1;urlauth=user+{victim}" INTERNAL')
    victims_url = re.fullmatch(rb'\* GENURLAUTH "(.+)"\r\n', line).group(1)  # type: ignore[union-attr]
    c = raw(user)
    local = victim.partition("@")[0]
    for url in (f"imap://{victim}/INBOX/;UID=1", f"imap://{local}@example.test/INBOX/;UID=1",
                f"imap://{victim.upper()}/INBOX/;UID=1", f"/Shared/{victim}/INBOX/;UID=1",
                f"/Shared/{victim.upper()}/INBOX/;UID=1", "/../INBOX/;UID=1",
                f"imap://{user}/Shared/{victim}/INBOX/;UID=1", victims_url.decode()):
        _, done = c.cmd(f'APPEND INBOX CATENATE (URL "{url}")')
        assert b" NO [BADURL " in done, (url, done)
    # the victim's own URL for user+victim, and the same rump re-signed claims
    untagged, done = c.cmd(b'URLFETCH "%s"' % victims_url)
    assert b" OK " in done and untagged == [b'* URLFETCH "%s" NIL\r\n' % victims_url], untagged
    forged = victims_url.replace(b"user+" + victim.encode(), b"user+" + user.encode())
    untagged, done = c.cmd(b'URLFETCH "%s"' % forged)
    assert untagged == [b'* URLFETCH "%s" NIL\r\n' % forged], untagged
    _, done = c.cmd(f'GENURLAUTH "imap://{victim}/INBOX/;uid=1;urlauth=authuser" INTERNAL')
    assert b" NO " in done, done
    _, done = c.cmd(f'GENURLAUTH "imap://{user}/Shared/{victim}/INBOX/;uid=1;urlauth=authuser" INTERNAL')
    assert b" NO " in done, done
    assert _messages(c, "INBOX") == 0
