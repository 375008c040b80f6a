"""The SMTP shell's own helpers (net/smtp.py); sessions are tested end to end in tests/e2e."""

from __future__ import annotations

from postroom.net.smtp import _pass_key


def test_greeting_pass_key_groups_ipv6_by_64() -> None:
    assert _pass_key("192.0.2.7") == "192.0.2.7"
    assert _pass_key("2001:db8:1:2:aaaa::1") == _pass_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::"
    assert _pass_key("2001:db8:1:3::1") != _pass_key("2001:db8:1:2::1")
    assert _pass_key("fe80::1%eth0") == "fe80::"
