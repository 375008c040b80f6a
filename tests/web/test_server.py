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


def test_json_bodies_have_a_depth_bound() -> None:
    import json
    import time

    import pytest

    from postroom.web.server import MAX_JSON_DEPTH, parse_json
    from postroom.web.session import ApiError

    ok = {"a": [{"b": [1, 2, {"c": '[[[[{{{{"]]]' * 20}]}]}
    assert parse_json(json.dumps(ok).encode()) == ok
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    started = time.process_time()  # CPU time: the test processes next to us do not count
    for bomb in (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
                 b"[" * 1_000_000, b'{"a":' * 200_000, b"9" * 900_000, b'"' + b"\\" * 100_001,
                 b'"unterminated' + b"x" * 500_000):
        with pytest.raises(ApiError) as caught:
            parse_json(bomb)
        assert caught.value.status == 400
    assert time.process_time() - started < 2  # linear scans, no recursion
