"""Configuration validation: every error names the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom import config

BASE = """
hostname = "mail.example.test"
[[listener]]
address = "127.0.0.1:2525"
role = "mx"
"""


def _load(tmp_path: Path, text: str) -> config.Settings:
    p = tmp_path / "postroom.toml"
    p.write_text(text)
    return config.load(p)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, text)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "postroom.toml")), msg
    assert "\n" not in msg
    return msg


def test_minimal_defaults(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE)
    assert s.hostname == "mail.example.test"
    assert s.data_dir == tmp_path / "data"
    assert s.listeners == (config.Listener("127.0.0.1", 2525, "mx"),)
    assert s.limits.message_size == 50 * 1024 * 1024 and s.limits.recipients == 100
    assert s.limits.smtp_idle_timeout == 300 and s.outbound.max_queue_lifetime == 5 * 86400


def test_units_and_sections(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + """
[[listener]]
address = "[::1]:2143"
role = "imap"
[[listener]]
address = "*:2110"
role = "pop3"
[limits]
message_size = "10M"
smtp_idle_timeout = "2m"
auth_delay = 0.5
[outbound]
smarthost = "relay.example.test:587"
resolver = "127.0.0.1:5353"
transport = { "example.org" = "127.0.0.2:2526" }
tls_policy = { "bank.example" = "verify" }
retry_schedule = ["1s", "2s"]
[logging]
format = "json"
""")
    assert s.limits.message_size == 10 * 1024 * 1024
    assert s.limits.smtp_idle_timeout == 120 and s.limits.auth_delay == 0.5
    assert s.listeners[1] == config.Listener("::1", 2143, "imap")
    assert s.listeners[2].host == "*"
    assert s.outbound.smarthost == ("relay.example.test", 587)
    assert s.outbound.resolver == ("127.0.0.1", 5353)
    assert s.outbound.transport == {"example.org": ("127.0.0.2", 2526)}
    assert s.outbound.tls_policy == {"bank.example": "verify"}
    assert s.outbound.retry_schedule == (1.0, 2.0)
    assert s.logging.format == "json"


@pytest.mark.parametrize(
    "extra, key, allowed",
    [
        ("bogus = 1", "bogus", "unknown key"),
        ("[limits]\nrecipients = \"many\"", "limits.recipients", "an integer from 1"),
        ("[limits]\nrecipients = 0", "limits.recipients", "an integer from 1"),
        ("[limits]\nmessage_size = \"ten\"", "limits.message_size", "a size"),
        ("[limits]\nsmtp_idle_timeout = \"soon\"", "limits.smtp_idle_timeout", "a duration"),
        ("[limits]\nfoo = 1", "limits.foo", "unknown key; allowed: message_size"),
        ("[logging]\nlevel = \"loud\"", "logging.level", "one of 'debug'"),
        ("[outbound]\nresolver = \"dns.example\"", "outbound.resolver", "an IP address"),
        ("[outbound]\ntls_policy = { \"x.example\" = \"maybe\" }", "outbound.tls_policy", "one of 'none'"),
        ("[[listener]]\naddress = \"127.0.0.1:99999\"\nrole = \"imap\"", "listener[1].address", "port from 0 to 65535"),
        ("[[listener]]\naddress = \"::1:25\"\nrole = \"imap\"", "listener[1].address", "brackets"),
        ("[[listener]]\naddress = \"127.0.0.1:2143\"\nrole = \"web\"", "listener[1].role", "one of 'mx'"),
        ("[[listener]]\naddress = \"127.0.0.1:2143\"", "listener[1].role", "missing"),
        ("[[listener]]\naddress = \"127.0.0.1:2525\"\nrole = \"imap\"", "listener", "listed twice"),
        ("[[listener]]\naddress = \"127.0.0.1:2465\"\nrole = \"submissions\"", "tls.cert", "required by the listener"),
        ("[tls]\ncert = \"c.pem\"", "tls", "both tls.cert and tls.key"),
        ("hostname = \"bad name\"", "hostname", "a DNS host name"),
        ("[[listener]]\naddress = \"127.0.0.1:2443\"\nrole = \"https\"", "tls.cert", "required by the listener"),
        ("[mta_sts]\nmode = \"strict\"", "mta_sts.mode", "one of 'enforce'"),
        ("[mta_sts]\nmx = \"mail.example.test\"", "mta_sts.mx", "a list of MX host names"),
        ("[mta_sts]\nmx = [\"bad host\"]", "mta_sts.mx", "a list of MX host names"),
        ("[mta_sts]\nmx = [\"*.\"]", "mta_sts.mx", "a list of MX host names"),
        ("[mta_sts]\nmax_age = \"400d\"", "mta_sts.max_age", "up to one year"),
        ("[http]\nsession_lifetime = \"forever\"", "http.session_lifetime", "a duration"),
        ("[logging]\ndelivery_log = -1", "logging.delivery_log", "an integer from 0"),
        ("[server]\nworkers = 0", "server.workers", "\"auto\" or an integer from 1 to 256"),
        ("[server]\nworkers = \"many\"", "server.workers", "\"auto\" or an integer"),
    ],
)
def test_errors_name_key_and_allowed(tmp_path: Path, extra: str, key: str, allowed: str) -> None:
    if extra.startswith("hostname"):
        text = extra + BASE.replace('hostname = "mail.example.test"', "")
    elif not extra.startswith("["):
        text = extra + "\n" + BASE  # top-level keys come before any table
    else:
        text = BASE + "\n" + extra
    msg = _error(tmp_path, text)
    assert f": {key}:" in msg, msg
    assert allowed in msg, msg


def test_server_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert _load(tmp_path, BASE + "[server]\nworkers = 3\n").server.worker_count() == 3
    auto = _load(tmp_path, BASE).server
    assert auto.workers == 0  # "auto", the default
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})
    assert auto.worker_count() == 4  # the CPUs this process may run on, not all of them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert _load(tmp_path, BASE + "[server]\nworkers = \"auto\"\n").server.worker_count() == 1
    # a container's CPU quota (cgroup v2 cpu.max) caps it too, rounded up
    cpu_max = tmp_path / "cpu.max"
    for text, cpus in (("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1), ("junk", None)):
        cpu_max.write_text(text)
        assert config.cgroup_cpu_quota(str(cpu_max)) == cpus
    assert config.cgroup_cpu_quota(str(tmp_path / "missing")) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda: 3)
    assert auto.worker_count() == 3


def test_syntax_error_and_missing(tmp_path: Path) -> None:
    assert "TOML syntax error" in _error(tmp_path, "hostname = \n")
    assert ": hostname: missing" in _error(tmp_path, "[[listener]]\naddress=\"127.0.0.1:1\"\nrole=\"mx\"\n")
    assert ": listener: no listeners" in _error(tmp_path, "hostname = \"a.example\"\n")
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_check_files(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n")
    with pytest.raises(config.ConfigError, match="tls.cert: file not found"):
        config.check_files(s)
    from postroom.tls import write_self_signed

    write_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mail.example.test")
    with pytest.raises(config.ConfigError, match="data_dir: .* does not exist"):
        config.check_files(s)
    (tmp_path / "data").mkdir()
    config.check_files(s)
    (tmp_path / "k.pem").write_text("garbage")
    with pytest.raises(config.ConfigError, match="cannot load certificate"):
        config.check_files(s)


def test_every_key_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    missing = [k for k in config.documented_keys() if f"`{k}`" not in doc]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"


def test_http_and_mta_sts_settings(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + '[[listener]]\naddress = "127.0.0.1:2080"\nrole = "http"\n'
              '[mta_sts]\nmode = "enforce"\nmx = ["Mail.Example.Test", "*.example.net"]\nmax_age = "1d"\n'
              '[http]\nsession_lifetime = "1h"\n')
    assert [lst.role for lst in s.listeners] == ["mx", "http"]
    assert not s.listeners[1].implicit_tls
    assert s.mta_sts.mode == "enforce" and s.mta_sts.mx == ("mail.example.test", "*.example.net")
    assert s.mta_sts.max_age == 86400 and s.http.session_lifetime == 3600
    d = _load(tmp_path, BASE)
    assert d.mta_sts.mode == "testing" and d.mta_sts.mx == () and d.logging.delivery_log == 10000


def test_server_user(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + "[server]\nuser = \"nobody\"\n")
    assert s.server.user == "nobody" and s.server.group == ""
    assert "server.user: got 'a b'" in _error(tmp_path, BASE + "[server]\nuser = \"a b\"\n")
    assert "server.group: got 5" in _error(tmp_path, BASE + "[server]\ngroup = 5\n")
    (tmp_path / "data").mkdir()
    missing = _load(tmp_path, BASE + "[server]\nuser = \"no-such-user-x\"\n")
    with pytest.raises(config.ConfigError, match="server.user: no such user 'no-such-user-x'"):
        config.check_files(missing)
    root = _load(tmp_path, BASE + "[server]\nuser = \"root\"\n")
    with pytest.raises(config.ConfigError, match="is root"):
        config.check_files(root)


def test_acme_settings(tmp_path: Path) -> None:
    tls = BASE.replace("[[listener]]", '[tls]\nacme = true\nacme_contact = "hostmaster@example.test"\n'
                       'acme_directory = "https://ca.example.test/dir"\nacme_ca_file = "ca.pem"\n'
                       'acme_challenge = "tls-alpn-01"\n[[listener]]', 1)
    s = _load(tmp_path, tls + '[[listener]]\naddress = "127.0.0.1:9993"\nrole = "imaps"\n')
    assert s.acme.enabled and s.acme.contact == "hostmaster@example.test"
    assert s.acme.directory == "https://ca.example.test/dir" and s.acme.ca_file == tmp_path / "ca.pem"
    assert s.acme.challenge == "tls-alpn-01" and s.acme.domain_names
    # The certificate lives in the data folder; implicit TLS listeners are allowed without tls.cert.
    assert s.tls_cert == tmp_path / "data" / "acme" / "cert.pem"
    assert s.tls_key == tmp_path / "data" / "acme" / "key.pem"
    d = _load(tmp_path, BASE)
    assert not d.acme.enabled and d.acme.directory == config.LETS_ENCRYPT


@pytest.mark.parametrize(
    ("tls", "key", "allowed"),
    [
        ("acme = true", "tls.acme_contact", "required with tls.acme"),
        ('acme = true\nacme_contact = "a@example.test"\ncert = "c.pem"\nkey = "k.pem"', "tls.acme", "not both"),
        ('acme_directory = "http://ca.example.test/dir"', "tls.acme_directory", "https://"),
        ('acme_challenge = "dns-01"', "tls.acme_challenge", "'http-01'"),
        ('acme_contact = "nobody"', "tls.acme_contact", "email address"),
    ],
)
def test_acme_errors(tmp_path: Path, tls: str, key: str, allowed: str) -> None:
    msg = _error(tmp_path, BASE + f"[tls]\n{tls}\n")
    assert f": {key}: " in msg and allowed in msg, msg
