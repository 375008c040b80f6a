"""HTTP service rules that do not need a socket to check."""

from __future__ import annotations


def test_credentials_need_tls_except_from_loopback() -> None:
    from postroom.web.server import needs_tls

    assert needs_tls(False, "192.0.2.7", "/api/v1/login", False)
    assert needs_tls(False, "192.0.2.7", "/admin/", False)
    assert needs_tls(False, "2001:db8::7", "/account/", False)
    assert needs_tls(False, "192.0.2.7", "/metrics", True)  # a token in clear
    assert not needs_tls(False, "192.0.2.7", "/mail/config-v1.1.xml", False)  # autoconfig over http
    assert not needs_tls(False, "192.0.2.7", "/.well-known/mta-sts.txt", False)
    assert not needs_tls(True, "192.0.2.7", "/api/v1/login", True)
    assert not needs_tls(False, "127.0.0.1", "/api/v1/login", True)  # a local reverse proxy
    assert not needs_tls(False, "::1", "/admin/", False)
