"""Bad input is answered with BAD/NO/BYE and never hurts other clients; COMPRESS=DEFLATE
round trip; timeouts (autologout, IDLE keepalive); shutdown says BYE."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from imap_raw import RawImap
from imap_util import deliver, simple

from support.server import PASSWORD, Server


def test_garbage_and_errors_keep_the_session_in_sync(user: str, raw) -> None:
    c = raw(user)
    for junk, expect in (
        (b"\r\n", None),  # empty lines are ignored
        (b"+ what\r\n", b"* BAD"),  # no valid tag
        (b"a\r\n", b"a BAD"),
        (b"a FROBNICATE\r\n", b"a BAD"),
        (b"a SELECT\r\n", b"a BAD"),
        (b"a SELECT INBOX extra junk\r\n", b"a BAD"),
        (b"a FETCH 1:* FLAGS\r\n", b"a BAD"),  # nothing selected
        (b"\x00\xff\xfe garbage \x01\r\n", b"* BAD"),
        (b"a LIST \"\" \"\xff\xfe\"\r\n", b"a BAD"),
        (b"a CAPABILITY extra\r\n", b"a BAD"),
        (b"a LOGIN x y\r\n", b"a BAD"),  # already authenticated
    ):
        c.send(junk)
        if expect is not None:
            assert c.line().startswith(expect), junk
    c.ok("SELECT INBOX")
    for junk in (b"a FETCH 0 FLAGS", b"a FETCH 1:x FLAGS", b"a FETCH 1 (FLAGS", b"a STORE 1 FLAGS",
                 b"a FETCH 1 BODY[1.0]", b"a SEARCH OR SEEN", b"a FETCH 4294967296 FLAGS",
                 b"a UID FETCH 1 (FLAGS) (VANISHED)", b'a SEARCH SENTON "32-Jan-2020"'):
        c.send(junk + b"\r\n")
        line = c.line()
        assert line.startswith(b"a BAD") or line.startswith(b"a NO"), (junk, line)
    assert c.ok("NOOP") == []


def test_overlong_line_gets_bye_and_others_keep_working(user: str, raw) -> None:
    bystander = raw(user)
    bystander.ok("SELECT INBOX")
    c = raw(user)
    c.send(b"a NOOP " + b"x" * (70 * 1024) + b"\r\n")
    assert c.line().startswith(b"* BYE [TOOBIG]")
    assert c.closed()
    assert bystander.ok("NOOP") == []


def test_huge_literals_are_refused(user: str, raw) -> None:
    c = raw(user)
    # synchronising literal over the limit: refused before the client sends it
    c.send(b"a LOGIN {999999999}\r\n")
    # (already authenticated: LOGIN is BAD in this state, refused on the command head)
    assert c.line().startswith(b"a BAD")
    c.send(b"b CREATE {999999}\r\n")
    assert c.line().startswith(b"b BAD [TOOBIG]")
    # non-synchronising literal just over the limit: read, discarded, answered
    c.send(b"c CREATE {70000+}\r\n" + b"x" * 70000 + b"\r\n")
    assert c.line().startswith(b"c BAD [TOOBIG]")
    # APPEND over APPENDLIMIT: NO [TOOBIG], no continuation
    c.send(b"d APPEND INBOX {999999999}\r\n")
    assert c.line().startswith(b"d NO [TOOBIG]")
    assert c.ok("NOOP") == []
    # a literal far too large to discard closes the connection
    c.send(b"e APPEND INBOX {999999999999+}\r\n")
    assert c.line().startswith(b"* BYE")
    assert c.closed()


def test_preauth_literal_limit(raw) -> None:
    c = raw()
    c.send(b"a LOGIN {100000}\r\n")
    assert c.line().startswith(b"a BAD [TOOBIG]")
    assert c.ok("CAPABILITY")


def test_deep_nesting_and_huge_lists(user: str, raw) -> None:
    c = raw(user)
    c.ok("SELECT INBOX")
    c.send(b"a SEARCH " + b"(" * 200 + b"ALL" + b")" * 200 + b"\r\n")
    assert c.line().startswith(b"a BAD")
    c.send(b"b SEARCH " + b"NOT " * 500 + b"ALL\r\n")
    assert c.line().startswith(b"b BAD")
    c.send(b"c FETCH 1:* (" + b" ".join([b"UID"] * 12000) + b")\r\n")  # > 10,000 items
    assert c.line().startswith(b"c BAD")
    assert c.ok("NOOP") == []


def test_too_many_bad_commands_hang_up(user: str, raw) -> None:
    c = raw(user)
    c.send(b"x BOGUS\r\n" * 30)
    lines = []
    while True:
        line = c.line()
        lines.append(line)
        if line.startswith(b"* BYE"):
            break
    assert len(lines) == 21  # 20 BADs, then BYE
    assert c.closed()


def test_idle_protocol_errors(user: str, raw) -> None:
    c = raw(user)
    c.ok("SELECT INBOX")
    c.send(b"i IDLE\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"NOOP\r\n")  # anything but DONE ends IDLE with BAD
    assert c.line().startswith(b"i BAD")
    assert c.ok("NOOP") == []
    c.send(b"j IDLE\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"done\r\n")  # case-insensitive
    assert c.line().startswith(b"j OK")


def test_compress_deflate_round_trip(server: Server, user: str, raw) -> None:
    # 600 KB: a response big enough to be compressed on a thread (session.COMPRESS_IN_THREAD)
    deliver(server, user, simple("compressed", body="z" * 600_000))
    c = raw(user)
    c.start_compress()
    assert c.ok("SELECT INBOX")
    untagged = c.ok("FETCH 1 (BODY.PEEK[])")
    assert untagged[0].count(b"z") >= 600_000
    _, done = c.cmd("COMPRESS DEFLATE")
    assert b"NO [COMPRESSIONACTIVE]" in done
    c.send(b"i IDLE\r\n")
    assert c.line().startswith(b"+ ")
    deliver(server, user, simple("while compressed"))
    assert c.response() == b"* 2 EXISTS\r\n"
    c.send(b"DONE\r\n")
    untagged, done = c.until_tagged("i")
    assert untagged == [b"* 2 RECENT\r\n"] and done.startswith(b"i OK")
    # compressed data pipelined right after the command, in the same packet
    c2 = raw(user)
    import zlib

    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    c2.sock.sendall(b"z COMPRESS DEFLATE\r\n" + deflate.compress(b"y NOOP\r\n")
                    + deflate.flush(zlib.Z_SYNC_FLUSH))
    assert c2.line().startswith(b"z OK")
    c2.inflate = zlib.decompressobj(-15)
    c2.deflate = deflate
    c2.buf = c2.inflate.decompress(c2.buf)
    assert c2.line().startswith(b"y OK")
    # a corrupt stream closes the connection
    c2.sock.sendall(b"\xff" * 64)
    assert c2.closed()


def test_autologout_and_idle_keepalive(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imaps",),
                 extra='[limits]\nauth_delay = "10ms"\nimap_idle_timeout = "1s"\n').start()
    try:
        srv.add_user("t@example.test")
        c = RawImap(srv.ports["imaps"], context=srv.client_context())
        c.login("t@example.test", PASSWORD)
        started = time.monotonic()
        assert c.line().startswith(b"* BYE")
        assert 0.8 < time.monotonic() - started < 5
        assert c.closed()
        c = RawImap(srv.ports["imaps"], context=srv.client_context())
        c.login("t@example.test", PASSWORD)
        c.ok("SELECT INBOX")
        c.send(b"i IDLE\r\n")
        assert c.line().startswith(b"+ ")
        # IDLE is exempt from the timeout; a keepalive comes instead
        assert c.line() == b"* OK Still here\r\n"
        assert c.line() == b"* OK Still here\r\n"
        c.send(b"DONE\r\n")
        assert c.line().startswith(b"i OK")
    finally:
        srv.stop()


def test_shutdown_says_bye(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imaps",)).start()
    srv.add_user("s@example.test")
    idle = RawImap(srv.ports["imaps"], context=srv.client_context())
    idle.login("s@example.test", PASSWORD)
    idle.ok("SELECT INBOX")
    idle.send(b"i IDLE\r\n")
    assert idle.line().startswith(b"+ ")
    quiet = RawImap(srv.ports["imaps"], context=srv.client_context())
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGTERM)
    assert idle.line().startswith(b"* BYE")
    assert quiet.line().startswith(b"* BYE")
    assert srv.proc.wait(20) == 0
    srv.stop()


def test_connection_limit_refusal_says_bye(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imap",),
                 extra='[limits]\nauth_delay = "10ms"\nconnections_per_ip = 2\n').start()
    try:
        keep = [RawImap(srv.ports["imap"]) for _ in range(2)]
        extra = RawImap(srv.ports["imap"], greeting=False)
        assert extra.line().startswith(b"* BYE [UNAVAILABLE]")
        for k in keep:
            assert k.ok("NOOP") == []
    finally:
        srv.stop()


@pytest.mark.parametrize("chunk", [1, 7])
def test_commands_split_across_packets(user: str, raw, chunk: int) -> None:
    c = raw(user)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b"a SELECT INBOX\r\nb APPEND INBOX {5+}\r\nhello\r\nc NOOP\r\n"
    for i in range(0, len(data), chunk):
        c.sock.sendall(data[i:i + chunk])
    _, done = c.until_tagged("c")
    assert done.startswith(b"c OK")


def test_client_that_stops_reading_is_dropped(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imap",), extra=(
        '[imap]\nallow_plaintext_auth = true\n'
        '[limits]\nauth_delay = "10ms"\nimap_idle_timeout = "1s"\n'))
    srv.start()
    try:
        srv.add_user("slow@example.test")
        c = RawImap(srv.ports["imap"])
        c.login("slow@example.test", PASSWORD)
        big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 4000  # 4 MB
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        c.until_tagged("a")
        c.ok("SELECT INBOX")
        c.send(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(20)))  # 80 MB
        time.sleep(3)  # not reading: the server's writes stall, then it gives up
        received = 0
        deadline = time.monotonic() + 20
        c.sock.settimeout(5)
        with pytest.raises((ConnectionError, EOFError)):
            while time.monotonic() < deadline:
                chunk = c.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError()
                received += len(chunk)
        assert received < 40 * 1024 * 1024  # far less than asked: the session was dropped
        other = RawImap(srv.ports["imap"])
        other.login("slow@example.test", PASSWORD)
        assert other.ok("NOOP") == []
    finally:
        srv.stop()
