"""The command line, run as a subprocess against a real data folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def pr(tmp: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(tmp / "postroom.toml"), *args],
        capture_output=True, text=True, input=stdin, timeout=60,
    )


def ok(tmp: Path, *args: str, stdin: str | None = None) -> str:
    r = pr(tmp, *args, stdin=stdin)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(tmp: Path, *args: str, code: int = 1) -> str:
    r = pr(tmp, *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if code == 1:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("postroom: error: "), r.stderr
    return r.stderr


@pytest.fixture()
def inited(tmp_path: Path) -> Path:
    out = ok(tmp_path, "init", "--domain", "example.test", "--user", "demo", "--ports", "unprivileged", "--json")
    report = json.loads(out)
    assert report["user"] == "demo@example.test" and len(report["password"]) >= 16
    return tmp_path


def test_init_writes_working_setup(inited: Path) -> None:
    assert (inited / "postroom.toml").exists()
    assert (inited / "data" / "tls" / "cert.pem").exists()
    assert oct((inited / "data" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    out = ok(inited, "check-config")
    assert "ok" in out and "2525 (mx)" in out and "2993 (imaps)" in out
    assert json.loads(ok(inited, "domain", "list", "--json")) == [
        {"name": "example.test", "created": json.loads(ok(inited, "domain", "list", "--json"))[0]["created"]}
    ]
    assert "demo@example.test" in ok(inited, "user", "list")
    fails(inited, "init")  # refuses to overwrite


def test_domain_user_alias_cycle(inited: Path) -> None:
    ok(inited, "domain", "add", "Other.Test")
    assert "other.test" in ok(inited, "domain", "list")
    out = json.loads(ok(inited, "user", "add", "Bob@Other.Test", "--generate", "--json"))
    assert out["user"] == "bob@other.test" and len(out["password"]) >= 16
    ok(inited, "user", "add", "carol@other.test", "--password-stdin", stdin="s3cret-pw\n")
    ok(inited, "user", "passwd", "carol@other.test", "--password", "new-pw")
    users = json.loads(ok(inited, "user", "list", "--domain", "other.test", "--json"))
    assert [u["address"] for u in users] == ["bob@other.test", "carol@other.test"]
    ok(inited, "alias", "add", "team@other.test", "bob@other.test", "carol@other.test", "x@far.example")
    ok(inited, "alias", "add", "@other.test", "bob@other.test")
    aliases = json.loads(ok(inited, "alias", "list", "--json"))
    assert {"source": "@other.test", "target": "bob@other.test"} in aliases
    assert len([a for a in aliases if a["source"] == "team@other.test"]) == 3
    table = ok(inited, "alias", "list")
    assert table.splitlines()[0].split() == ["ALIAS", "TARGET"]
    assert "removing a domain that still has users" and "user(s)" in fails(inited, "domain", "remove", "other.test")
    ok(inited, "alias", "remove", "team@other.test", "x@far.example")
    ok(inited, "alias", "remove", "team@other.test")
    ok(inited, "alias", "remove", "@other.test")
    ok(inited, "user", "remove", "bob@other.test")
    ok(inited, "user", "remove", "carol@other.test")
    ok(inited, "domain", "remove", "other.test")
    assert "other.test" not in ok(inited, "domain", "list")


def test_user_sendas_grants(inited: Path) -> None:
    ok(inited, "user", "add", "ann@example.test", "--generate")
    assert "may now send as news@example.test" in ok(inited, "user", "sendas", "add", "Ann@example.test", "News@Example.Test")
    ok(inited, "user", "sendas", "add", "ann@example.test", "@Lists.Example")
    ok(inited, "user", "sendas", "add", "demo@example.test", "news@example.test")
    grants = json.loads(ok(inited, "user", "sendas", "list", "--json"))
    assert grants == [
        {"user": "ann@example.test", "address": "@lists.example"},
        {"user": "ann@example.test", "address": "news@example.test"},
        {"user": "demo@example.test", "address": "news@example.test"},
    ]
    table = ok(inited, "user", "sendas", "list", "demo@example.test")
    assert table.splitlines()[0].split() == ["USER", "MAY", "SEND", "AS"]
    assert "demo@example.test  news@example.test" in table
    assert "already" in fails(inited, "user", "sendas", "add", "ann@example.test", "news@example.test")
    assert "no user" in fails(inited, "user", "sendas", "add", "ghost@example.test", "news@example.test")
    assert "invalid" in fails(inited, "user", "sendas", "add", "ann@example.test", "@bad_domain")
    ok(inited, "user", "sendas", "remove", "ann@example.test", "news@example.test")
    assert "no grant" in fails(inited, "user", "sendas", "remove", "ann@example.test", "news@example.test")
    assert [g["address"] for g in json.loads(ok(inited, "user", "sendas", "list", "ann@example.test", "--json"))] == [
        "@lists.example"
    ]
    fails(inited, "user", "sendas", "add", "ann@example.test", code=2)  # usage


@pytest.mark.parametrize(
    "args, message",
    [
        (("user", "add", "not-an-address", "--password", "x"), "not an address"),
        (("user", "add", "a@b@example.test", "--password", "x"), "invalid local part"),
        (("user", "add", "demo@example.test", "--password", "x"), "already exists"),
        (("user", "add", "x@unknown.test", "--password", "x"), "not a local domain"),
        (("user", "add", "x@example.test", "--password", ""), "empty"),
        (("user", "remove", "ghost@example.test"), "no user"),
        (("domain", "add", "example.test"), "already exists"),
        (("domain", "add", "bad_domain"), "invalid domain"),
        (("domain", "remove", "example.test"), "still has 1 user"),
        (("alias", "add", "a@unknown.test", "demo@example.test"), "not a local domain"),
        (("alias", "add", "a@example.test", "a@example.test"), "itself"),
        (("queue", "show", "NOPE"), "no queued message"),
    ],
)
def test_bad_input_one_line_error(inited: Path, args: tuple[str, ...], message: str) -> None:
    before = ok(inited, "user", "list", "--json")
    err = fails(inited, *args)
    assert message in err, err
    assert ok(inited, "user", "list", "--json") == before, "a failed command changed nothing"


def test_usage_errors_exit_2(inited: Path) -> None:
    fails(inited, "user", code=2)
    fails(inited, "frobnicate", code=2)
    fails(inited, "user", "add", code=2)


def test_no_password_without_tty(inited: Path) -> None:
    r = pr(inited, "user", "add", "new@example.test", stdin="")
    assert r.returncode == 1 and "no password given" in r.stderr


def test_config_errors(tmp_path: Path) -> None:
    err = fails(tmp_path, "check-config")
    assert "no such file" in err
    (tmp_path / "postroom.toml").write_text("hostname = [\n")
    assert "TOML syntax error" in fails(tmp_path, "check-config")
    (tmp_path / "postroom.toml").write_text(
        'hostname = "h.example"\n[tls]\ncert="c.pem"\nkey="k.pem"\n[[listener]]\naddress="127.0.0.1:0"\nrole="mx"\n'
    )
    assert "tls.cert: file not found" in fails(tmp_path, "check-config")
    assert "tls.cert: file not found" in fails(tmp_path, "serve")


def test_init_into_unwritable_place(tmp_path: Path) -> None:
    """/proc refuses new folders even to root: init fails cleanly and leaves no config."""
    err = fails(tmp_path, "init", "--data-dir", "/proc/postroom-test-data")
    assert "/proc/postroom-test-data" in err
    assert not (tmp_path / "postroom.toml").exists()


def test_unwritable_data_dir_as_any_user(tmp_path: Path) -> None:
    """A data folder that is a file (root can't write into it either)."""
    (tmp_path / "data").write_text("not a folder")
    (tmp_path / "postroom.toml").write_text('hostname = "h.example"\n[[listener]]\naddress="127.0.0.1:0"\nrole="mx"\n')
    assert "is not a folder" in fails(tmp_path, "check-config")


def test_serve_port_in_use(tmp_path: Path) -> None:
    """A port already taken: one clear line, exit code 1, nothing half-started."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        (tmp_path / "data").mkdir()
        (tmp_path / "postroom.toml").write_text(
            f'hostname = "h.example"\n[[listener]]\naddress="127.0.0.1:{port}"\nrole="mx"\n'
        )
        err = fails(tmp_path, "serve")
        assert f"cannot listen on 127.0.0.1:{port} (mx): address already in use" in err
    finally:
        blocker.close()


def test_user_quota_set_show_and_clear(inited: Path) -> None:
    out = ok(inited, "user", "quota", "demo@example.test", "500M", "--messages", "1000")
    assert out.strip() == "quota of demo@example.test: 0 / 500M, 0 / 1000 messages"
    rows = json.loads(ok(inited, "user", "list", "--json"))
    assert rows[0]["storage_limit"] == 500 * 1024 * 1024 and rows[0]["messages_limit"] == 1000
    assert rows[0]["storage_used"] == 0 and rows[0]["messages_used"] == 0
    table = ok(inited, "user", "list")
    assert "QUOTA (used / limit)" in table and "0 / 500M, 0 / 1000 messages" in table
    got = json.loads(ok(inited, "user", "quota", "demo@example.test", "none", "--json"))
    assert got["storage_limit"] is None and got["messages_limit"] == 1000
    ok(inited, "user", "quota", "demo@example.test", "2G", "--messages", "none")
    assert "0 / 2G" in ok(inited, "user", "list")
    assert "not a quota" in fails(inited, "user", "quota", "demo@example.test", "lots")
    assert "no user" in fails(inited, "user", "quota", "nobody@example.test", "1M")


def test_token_add_list_remove(inited: Path) -> None:
    out = json.loads(ok(inited, "token", "add", "monitoring", "--json"))
    assert out["name"] == "monitoring" and out["token"].startswith("prt_") and len(out["token"]) > 40
    human = ok(inited, "token", "add", "backup")
    assert "created token backup: prt_" in human
    listed = json.loads(ok(inited, "token", "list", "--json"))
    assert [t["name"] for t in listed] == ["backup", "monitoring"]
    assert out["token"] not in ok(inited, "token", "list")  # secrets are never shown again
    assert "already exists" in fails(inited, "token", "add", "backup")
    ok(inited, "token", "remove", "monitoring")
    assert "no token monitoring" in fails(inited, "token", "remove", "monitoring")
    assert [t["name"] for t in json.loads(ok(inited, "token", "list", "--json"))] == ["backup"]
    fails(inited, "token", "add", "x" * 65)


def test_user_admin_flag(inited: Path) -> None:
    # postroom init makes its user an admin; others are not until `user admin`.
    ok(inited, "user", "add", "bob@example.test", "--generate")
    users = {u["address"]: u["admin"] for u in json.loads(ok(inited, "user", "list", "--json"))}
    assert users == {"demo@example.test": True, "bob@example.test": False}
    assert "may now use the web admin" in ok(inited, "user", "admin", "bob@example.test")
    ok(inited, "user", "admin", "demo@example.test", "--off")
    users = {u["address"]: u["admin"] for u in json.loads(ok(inited, "user", "list", "--json"))}
    assert users == {"demo@example.test": False, "bob@example.test": True}
    assert "no user" in fails(inited, "user", "admin", "nobody@example.test")
