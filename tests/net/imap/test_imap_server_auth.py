"""Connecting and logging in: greeting, CAPABILITY, STARTTLS, LOGINDISABLED, LOGIN,
AUTHENTICATE (PLAIN with and without SASL-IR, LOGIN, SCRAM-SHA-256), failures delayed and
counted, ID, NOOP, LOGOUT."""

from __future__ import annotations

import base64
import imaplib
import ssl
import time

import pytest
from imap_raw import RawImap

from postroom.proto.sasl import client_mechanism
from support.server import PASSWORD, Server


def test_greeting_advertises_capabilities(raw) -> None:
    c = raw()
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    caps = c.greeting.split(b"]")[0].split()[3:]
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"SEARCHRES",
                b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"NAMESPACE", b"UNSELECT",
                b"CHILDREN", b"SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"SORT",
                b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"COMPRESS=DEFLATE",
                b"AUTH=SCRAM-SHA-256", b"AUTH=PLAIN", b"MULTIAPPEND"):
        assert cap in caps, cap
    assert any(c.startswith(b"APPENDLIMIT=") for c in caps)
    # Implicit TLS: no STARTTLS, no LOGINDISABLED.
    assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps


def test_plain_port_disables_login_until_starttls(server: Server, user: str, raw) -> None:
    c = raw(tls=False)
    caps = c.ok("CAPABILITY")[0]
    assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps
    assert b"AUTH=PLAIN" not in caps and b"AUTH=SCRAM-SHA-256" in caps
    _, done = c.cmd(f'LOGIN "{user}" "{PASSWORD}"')
    assert done.startswith(b"t2 NO [PRIVACYREQUIRED]")
    _, done = c.cmd("AUTHENTICATE PLAIN " + base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode())
    assert b"NO [PRIVACYREQUIRED]" in done
    # STARTTLS; anything pipelined behind it is discarded (CVE-2011-0411).
    c.send(b"t9 STARTTLS\r\nt10 NOOP\r\n")
    assert c.line().startswith(b"t9 OK")
    assert c.buf == b""
    ctx = server.client_context()
    c.sock = ctx.wrap_socket(c.sock, server_hostname="mail.example.test")
    caps = c.ok("CAPABILITY")[0]
    assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps
    c.login(user, PASSWORD)
    assert c.ok("NOOP") == []
    _, done = c.cmd("STARTTLS")  # not valid once authenticated
    assert b"BAD" in done


def test_starttls_with_imaplib(server: Server, user: str) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    try:
        assert "LOGINDISABLED" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login(user, PASSWORD)
        m.starttls(ssl_context=server.client_context())
        assert "LOGINDISABLED" not in m.capabilities
        assert m.login(user, PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()


def test_plaintext_auth_allowed_by_config(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imap",), extra="[imap]\nallow_plaintext_auth = true\n").start()
    try:
        srv.add_user("p@example.test")
        m = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=10)
        assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
        assert m.login("p@example.test", PASSWORD)[0] == "OK"
        m.logout()
    finally:
        srv.stop()


def test_login_with_literals_and_capability_after_login(user: str, raw) -> None:
    c = raw()
    c.send(b"a LOGIN {%d}\r\n" % len(user))
    assert c.line().startswith(b"+ ")
    c.send(user.encode() + b" {%d+}\r\n" % len(PASSWORD) + PASSWORD.encode() + b"\r\n")
    _, done = c.until_tagged("a")
    assert done.startswith(b"a OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert b"AUTH=" not in done


def test_authenticate_plain_with_and_without_initial_response(user: str, connect, raw) -> None:
    m = connect()
    assert m.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())[0] == "OK"
    c = raw()
    ir = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    _, done = c.cmd(f"AUTHENTICATE PLAIN {ir}")  # SASL-IR (RFC 4959)
    assert done.startswith(b"t1 OK")


def test_authenticate_login_mechanism(user: str, raw) -> None:
    c = raw()
    c.send(b"a AUTHENTICATE LOGIN\r\n")
    assert c.line().startswith(b"+ ")
    c.send(base64.b64encode(user.encode()) + b"\r\n")
    assert c.line().startswith(b"+ ")
    c.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
    _, done = c.until_tagged("a")
    assert done.startswith(b"a OK")


def _scram(c: RawImap, user: str, password: str, *, sasl_ir: bool) -> bytes:
    mech = client_mechanism("SCRAM-SHA-256", user, password, nonce_source=lambda: "fixedclientnonce123")
    first = mech.start()
    assert first.data is not None
    if sasl_ir:
        c.send(b"a AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(first.data) + b"\r\n")
    else:
        c.send(b"a AUTHENTICATE SCRAM-SHA-256\r\n")
        assert c.line() == b"+ \r\n"
        c.send(base64.b64encode(first.data) + b"\r\n")
    while True:
        line = c.line()
        if not line.startswith(b"+ "):
            return line
        challenge = base64.b64decode(line[2:].strip())
        if challenge.startswith(b"v="):
            mech.finish(challenge)  # raises unless the server proved it knows the password
            c.send(b"\r\n")
            continue
        step = mech.respond(challenge)
        c.send(base64.b64encode(step.data or b"") + b"\r\n")


def test_authenticate_scram_sha256(user: str, raw) -> None:
    assert _scram(raw(), user, PASSWORD, sasl_ir=True).startswith(b"a OK")
    # On the plain port before TLS too: SCRAM does not reveal the password.
    c = raw(tls=False)
    assert _scram(c, user, PASSWORD, sasl_ir=False).startswith(b"a OK")
    assert c.ok("SELECT INBOX")


def test_authenticate_scram_wrong_password(user: str, raw) -> None:
    line = _scram(raw(), user, "wrong", sasl_ir=True)
    assert line.startswith(b"a NO [AUTHENTICATIONFAILED]")


def test_authenticate_cancel_and_unknown_mechanism(raw) -> None:
    c = raw()
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.line().startswith(b"+")
    c.send(b"*\r\n")
    assert c.line().startswith(b"a BAD")
    _, done = c.cmd("AUTHENTICATE CRAM-MD5")
    assert b" NO " in done
    c.send(b"b AUTHENTICATE PLAIN\r\n")
    assert c.line().startswith(b"+")
    c.send(b"not base64!\r\n")
    assert c.line().startswith(b"b BAD")
    assert c.ok("NOOP") == []  # still in sync


def test_login_failures_are_delayed_counted_and_close(tmp_path) -> None:
    srv = Server(tmp_path, roles=("imaps",),
                 extra='[limits]\nauth_delay = "200ms"\nauth_failures = 3\n').start()
    try:
        srv.add_user("f@example.test")
        c = RawImap(srv.ports["imaps"], context=srv.client_context())
        started = time.monotonic()
        _, done = c.cmd('LOGIN "f@example.test" "nope"')
        assert done.startswith(b"t1 NO [AUTHENTICATIONFAILED]")
        first = time.monotonic() - started
        assert first >= 0.2
        _, done = c.cmd('LOGIN "nobody@example.test" "nope"')
        assert done.startswith(b"t2 NO [AUTHENTICATIONFAILED]")
        assert time.monotonic() - started >= 0.2 + 0.4  # doubling delay
        c.send(b"t3 LOGIN f@example.test nope\r\n")
        assert c.line().startswith(b"t3 NO [AUTHENTICATIONFAILED]")
        assert c.line().startswith(b"* BYE")
        assert c.closed()
        assert "result=failed" in srv.logs() and "nope" not in srv.logs()
    finally:
        srv.stop()


def test_id_noop_logout_and_state_errors(user: str, raw) -> None:
    c = raw()
    untagged = c.ok('ID ("name" "test-client" "version" "1.0")')
    assert untagged[0].startswith(b'* ID ("name" "postroom"')
    _, done = c.cmd("SELECT INBOX")  # not authenticated yet
    assert b"BAD" in done
    _, done = c.cmd("FETCH 1 FLAGS")
    assert b"BAD" in done
    c.login(user, PASSWORD)
    _, done = c.cmd("FETCH 1 FLAGS")  # nothing selected
    assert b"BAD" in done
    _, done = c.cmd(f'LOGIN "{user}" "{PASSWORD}"')  # already logged in
    assert b"BAD" in done
    untagged, done = c.cmd("LOGOUT")
    assert untagged[0].startswith(b"* BYE") and done.startswith(b"t") and b" OK " in done
    assert c.closed()


def test_implicit_tls_rejects_plain_bytes(server: Server) -> None:
    import socket

    s = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=5)
    s.sendall(b"a LOGIN x y\r\n")
    data = b""
    try:
        while chunk := s.recv(1024):
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    s.close()
    assert b"OK" not in data
    # and the server still serves TLS clients
    RawImap(server.ports["imaps"], context=server.client_context()).close()


def test_tls_versions(server: Server) -> None:
    ctx = server.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    c = RawImap(server.ports["imaps"], context=ctx)
    assert c.greeting.startswith(b"* OK")
    c.close()
