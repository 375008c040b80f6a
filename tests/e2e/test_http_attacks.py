"""The HTTP service as an attacker sees it (issue 9, hardening part 4): slow and huge
requests, JSON bombs, path and Host tricks, open redirects, many keep-alive connections.
Every check is bytes on a real socket to a running ``postroom serve``."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from support.http import ADMIN, HttpServer, split_response
from support.server import PASSWORD

TIMEOUT = 2.0  # http.request_timeout here (30 s by default)
PER_IP = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    srv = HttpServer(tmp_path_factory.mktemp("http-attacks"),
                     extra=f'[http]\nrequest_timeout = "{TIMEOUT:g}s"\n'
                           f'[limits]\nauth_delay = "10ms"\nconnections_per_ip = {PER_IP}\n')
    srv.setup_admin()
    srv.start()
    yield srv
    srv.stop()


def _connect(server: HttpServer, plain: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.ports["http" if plain else "https"]), timeout=30)
    if plain:
        return sock
    return server.tls().wrap_socket(sock, server_hostname="localhost")


def _until_closed(s: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the server closes; (seconds it took, what came)."""
    started = time.monotonic()
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - started, data


def _healthy(server: HttpServer) -> float:
    started = time.monotonic()
    raw = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:100]
    return time.monotonic() - started


def test_slowloris_headers_are_cut(server: HttpServer) -> None:
    """Headers one byte at a time: the connection is closed once a whole request has not
    arrived within http.request_timeout, however steadily the bytes come."""
    for plain in (True, False):
        s = _connect(server, plain=plain)
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        s.settimeout(0.2)
        try:
            for i in range(100):
                s.sendall(b"X-Slow-%d: %d\r\n" % (i, i))
                assert _healthy(server) < 1.5  # others are served meanwhile
                try:
                    if s.recv(1000) == b"":
                        break  # closed (over TLS: close_notify) with no answer
                except (TimeoutError, ssl.SSLWantReadError):
                    pass
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        took = time.monotonic() - started
        s.close()
        assert took < TIMEOUT + 3, (plain, took)


def test_slow_and_missing_bodies_are_cut(server: HttpServer) -> None:
    """A body promised and trickled (or never sent) ends in 408 and a closed connection
    within request_timeout plus the data-rate allowance; it held the connection for ever."""
    s = _connect(server)
    s.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"address\":")
    took, data = _until_closed(s, 30)
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert took < TIMEOUT + 100 / 500 + 2
    # The same on the unauthenticated Outlook endpoint.
    s = _connect(server)
    s.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n<A")
    took, data = _until_closed(s, 30)
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert took < TIMEOUT + 3


def test_huge_bodies_are_refused_before_reading(server: HttpServer) -> None:
    s = _connect(server)
    started = time.monotonic()
    s.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000000\r\n\r\n")
    s.settimeout(10)
    head = s.recv(65536)
    s.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert time.monotonic() - started < 2
    # Chunked (no length declared): cut at http.request_size while reading.
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    raw = server.raw(b"POST /api/v1/domains HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + server.token.encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    assert split_response(raw)[0] == 413, raw[:200]
    # Huge headers: aiohttp's line and field bounds answer 400.
    raw = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 400") or raw.startswith(b"HTTP/1.1 400"), raw[:100]
    raw = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(500)) + b"\r\n")
    assert b" 400 " in raw[:20], raw[:100]


@pytest.mark.parametrize("body", [
    b"[" * 500_000 + b"]" * 500_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"address": "' + b"[" * 100 + b'", "password": [[[[[[[[[[1]]]]]]]]]]}',  # brackets in a string do not count
    b'{"address": ' + b"9" * 900_000 + b', "password": "x"}',
    b'{"address": 1e999999, "password": "x"}',
], ids=["deep-array", "deep-object", "string-brackets", "huge-int", "huge-float"])
def test_json_bombs_are_client_errors(server: HttpServer, body: bytes) -> None:
    """Deep nesting raised RecursionError inside json.loads: a 500 and a traceback in the
    log for an unauthenticated request. Every bomb is a 400 now, on the login and the
    admin API alike."""
    for path, token in (("/api/v1/login", ""), ("/api/v1/domains", None)):
        started = time.monotonic()
        status, _, answer = server.call("POST", path, raw_body=body, token=token,
                                        headers={"Content-Type": "application/json"})
        assert status == 400, (path, status, answer)
        assert isinstance(answer, dict) and answer["error"], answer
        assert time.monotonic() - started < 3
    assert "Traceback" not in server.logs()


def test_static_path_tricks(server: HttpServer) -> None:
    """Pages come from a fixed set of names in the package; nothing else is reachable."""
    status, _, page = split_response(server.raw(b"GET /static/admin.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert status == 200 and page
    for path in (b"/static/../../../etc/passwd", b"/static/%2e%2e/%2e%2e/etc/passwd",
                 b"/static/..%2f..%2fpyproject.toml", b"/static/%2e%2e%2fserver.py",
                 b"/static//etc/passwd", b"/static/admin.js%00.css", b"/static/..%5c..%5cserver.py",
                 b"/static/ADMIN.JS", b"/static/admin.js/", b"/admin/../../etc/passwd",
                 b"/.well-known/acme-challenge/..%2f..%2fpostroom.sqlite3"):
        raw = server.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = split_response(raw)
        assert status in (400, 404), (path, raw[:200])
        assert b"root:" not in body and b"SQLite" not in body and b"import" not in body


def test_host_tricks_on_mta_sts_and_autoconfig(server: HttpServer) -> None:
    """The policy and client settings are only served for hosted domains, whatever the
    Host header says."""
    ok = server.raw(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\nConnection: close\r\n\r\n")
    assert split_response(ok)[0] == 200
    for host in (b"mta-sts.evil.test", b"mta-sts.example.test.evil.test", b"evil.test",
                 b"mta-sts.evil.test:443", b"mta-sts.", b"MTA-STS.EVIL.TEST", b"mta-sts.example.test@evil.test",
                 b"mta-sts.ex\xc3\xa4mple.test", b"[::1]", b"mta-sts.example.test/../evil"):
        raw = server.raw(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert split_response(raw)[0] in (400, 404), (host, raw[:200])
    for query in (b"emailaddress=a@evil.test", b"emailaddress=a@example.test.evil.test",
                  b"emailaddress=a@example.test@evil.test", b"emailaddress=%00"):
        raw = server.raw(b"GET /mail/config-v1.1.xml?" + query + b" HTTP/1.1\r\nHost: autoconfig.example.test\r\n"
                         b"Connection: close\r\n\r\n")
        assert split_response(raw)[0] in (400, 404), (query, raw[:200])


def test_no_open_redirects(server: HttpServer) -> None:
    """Redirects go to fixed local paths; the plain-HTTP upgrade goes to the same host only
    for pages (GET), and the path cannot turn into another host."""
    for path in (b"/account?next=//evil.test", b"/admin?next=https://evil.test", b"/?url=//evil.test"):
        raw = server.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = split_response(raw)
        assert status == 302 and headers["location"] in ("/account/", "/admin/"), raw[:200]
    for path in (b"//evil.test/admin/", b"/\\evil.test", b"/%2f%2fevil.test"):
        raw = server.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = split_response(raw)
        assert status == 404 or not headers.get("location", "/").startswith(("//", "/\\", "http")), raw[:200]


def test_many_keepalive_connections_share_the_limits(server: HttpServer) -> None:
    """Keep-alive connections count against connections_per_ip together with the mail
    sessions: over it, 503 and closed; idle ones are closed after request_timeout, which
    frees the slots."""
    held = []
    for _ in range(PER_IP):
        s = _connect(server, plain=True)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        held.append(s)
    imap = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10)
    assert b"too many" in imap.recv(1000).lower()  # the mail roles share the count
    imap.close()
    raw = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", plain=True)
    assert raw.startswith(b"HTTP/1.1 503"), raw[:100]
    took, _ = _until_closed(held[0], 10)  # idle keep-alive: closed after request_timeout
    assert took < TIMEOUT + 2
    for s in held:
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", plain=True).startswith(b"HTTP/1.1 200"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("slots not freed")


def test_login_never_adopts_a_planted_session(server: HttpServer) -> None:
    """Session fixation: a login always makes a new random session id; one the client
    brings (made up, or the attacker's own valid session) is neither kept nor upgraded."""
    server.add_user("fixed@example.test")
    status, headers, body = server.call("POST", "/api/v1/login", {"address": ADMIN, "password": PASSWORD}, token="")
    assert status == 200
    attacker = headers["set-cookie"].split(";")[0]  # the attacker's own valid session
    for planted in (attacker, "__Host-postroom=made-up-value"):
        status, headers, body = server.call(
            "POST", "/api/v1/login", {"address": "fixed@example.test", "password": PASSWORD},
            token="", headers={"Cookie": planted})
        assert status == 200
        fresh = headers["set-cookie"].split(";")[0]
        assert fresh != planted and len(fresh) > 40
        # The planted session is still whoever it was, not the victim.
        status, _, who = server.call("GET", "/api/v1/session", token="", headers={"Cookie": planted})
        if planted == attacker:
            assert status == 200 and who["address"] == ADMIN
        else:
            assert status == 401
        status, _, who = server.call("GET", "/api/v1/session", token="", headers={"Cookie": fresh})
        assert status == 200 and who["address"] == "fixed@example.test"
