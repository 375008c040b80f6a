"""postroom as its own unprivileged user on ports below 1024, both supported ways.

1. As the systemd unit runs it (packaging/postroom.service): started directly as the
   service user with only CAP_NET_BIND_SERVICE (ambient, bounding set reduced to it,
   no_new_privs). systemd is not PID 1 here, so ``setpriv`` (util-linux) applies exactly
   the unit's ``User=``, ``AmbientCapabilities=``, ``CapabilityBoundingSet=`` and
   ``NoNewPrivileges=``, read from the unit file itself so that the two cannot drift.
2. Started as root with ``server.user``: binds, then switches user for good.

Either way the test checks the running process in /proc (user ids, capabilities), sends a
message over SMTP on port < 1024 and reads it back over IMAPS on port < 1024, and checks
that every file the server created in its data folder belongs to the service user.

Needs root (to create the user and bind low ports), as CI runs. The user is created with
``useradd --system`` if missing (one per xdist worker) and removed afterwards. The Python
interpreter must be reachable by that user: when the test's own interpreter lives in a
private folder (pyenv under /root), the system's python3 of the same version runs
postroom with the test's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dovecot import scratch_root
from support.imap_state import account_state

from postroom.tls import write_self_signed

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "postroom.service"
PASSWORD = "correct horse battery"
USER_ADDRESS = "alice@example.test"
CAP_NET_BIND_SERVICE = 10

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, binds ports < 1024")


def unit_settings() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


def world_executable(path: Path) -> bool:
    path = path.resolve()
    if not os.stat(path).st_mode & 0o001:
        return False
    return all(os.stat(p).st_mode & 0o001 for p in path.parents)


def interpreter() -> tuple[str, dict[str, str]]:
    """A python the service user can run, with the environment that finds postroom."""
    paths = [str(REPO / "src"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONUNBUFFERED="1")
    hidden = [p for p in paths if not world_executable(Path(p))]
    if hidden:  # e.g. a clone in a `mktemp -d` folder (mode 0700)
        pytest.fail(f"the service user cannot reach {hidden[0]}: a folder above it is closed to "
                    "other users (chmod o+x it, or check out the project where others can read)")
    if world_executable(Path(sys.executable)):
        return sys.executable, env
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if system is None or not world_executable(Path(system)):
        pytest.fail(f"no {version} the service user can run (the test's is {sys.executable})")
    return system, env


@pytest.fixture(scope="module")
def service_user(worker_id: str) -> Iterator[pwd.struct_passwd]:
    name = f"postroom-t-{worker_id}"[:32]
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--user-group", name], check=True, timeout=30)
        created = True
    try:
        yield pwd.getpwnam(name)
    finally:
        if created:
            subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture
def root(service_user: pwd.struct_passwd) -> Iterator[Path]:
    with scratch_root("postroom-unpriv-") as base:
        yield base


def free_low_ports(n: int) -> list[int]:
    ports: list[int] = []
    for port in random.sample(range(600, 1000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    pytest.fail("no free ports below 1024")


def setup(root: Path, user: pwd.struct_passwd, extra: str = "") -> tuple[Path, dict[str, int]]:
    """Config, certificate and a data folder with one user, all owned by ``user``."""
    smtp, imaps = free_low_ports(2)
    write_self_signed(root / "cert.pem", root / "key.pem", "mail.example.test")
    data = root / "data"
    data.mkdir(mode=0o700)
    config = root / "postroom.toml"
    config.write_text(
        f'hostname = "mail.example.test"\ndata_dir = "data"\nfsync = false\n{extra}'
        f'[tls]\ncert = "{root}/cert.pem"\nkey = "{root}/key.pem"\n'
        '[smtp]\ngreeting_delay = "0s"\n[limits]\nauth_delay = "10ms"\n'
        f'[[listener]]\naddress = "127.0.0.1:{smtp}"\nrole = "mx"\n'
        f'[[listener]]\naddress = "127.0.0.1:{imaps}"\nrole = "imaps"\n'
    )
    py, env = interpreter()
    for args in (["domain", "add", "example.test"], ["user", "add", USER_ADDRESS, "--password-stdin"]):
        r = subprocess.run([py, "-m", "postroom", "-c", str(config), *args], input=PASSWORD + "\n",
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)
    return config, {"mx": smtp, "imaps": imaps}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("wb"), env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        if line.strip() == b"ready":
            return proc
    proc.kill()
    raise AssertionError("server did not become ready")


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def exchange_mail(ports: dict[str, int], cert: Path) -> None:
    msg = b"From: x@remote.example\r\nSubject: low ports\r\n\r\nhello from port 25's cousin\r\n"
    with smtplib.SMTP("127.0.0.1", ports["mx"], timeout=30) as s:
        s.sendmail("x@remote.example", [USER_ADDRESS], msg)
    ctx = ssl.create_default_context(cafile=str(cert))
    state = account_state(ports["imaps"], USER_ADDRESS, PASSWORD, tls=ctx)
    assert [m.data.endswith(msg) for m in state[("INBOX",)]] == [True]


def owned_by(data: Path, uid: int) -> None:
    files = [Path(d) / n for d, _, names in os.walk(data) for n in names]
    assert any(f.name == "server.key" for f in files)  # created by the running server
    wrong = [str(f) for f in files if os.stat(f).st_uid != uid and f.name != "postroom.lock"]
    assert not wrong, wrong


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    assert proc.wait(30) == 0


def test_systemd_way_user_with_one_capability(service_user: pwd.struct_passwd, root: Path) -> None:
    unit = unit_settings()
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["NoNewPrivileges"] == "yes"
    config, ports = setup(root, service_user)
    py, env = interpreter()
    cap = unit["AmbientCapabilities"].lower().removeprefix("cap_")
    setpriv = ["setpriv", f"--reuid={service_user.pw_uid}", f"--regid={service_user.pw_gid}",
               "--init-groups", f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
               f"--bounding-set=-all,+{cap}", "--no-new-privs", "--"]
    # Without the capability the low ports are refused, with a message that says why.
    bare = subprocess.run(
        ["setpriv", f"--reuid={service_user.pw_uid}", f"--regid={service_user.pw_gid}",
         "--init-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
         py, "-m", "postroom", "-c", str(config), "serve"],
        capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode == 1 and "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)" in bare.stderr
    proc = start([*setpriv, py, "-m", "postroom", "-c", str(config), "serve"], env, root / "server.log")
    try:
        st = status(proc.pid)
        assert st["Uid"].split() == [str(service_user.pw_uid)] * 4
        assert st["Gid"].split() == [str(service_user.pw_gid)] * 4
        only_bind = f"{1 << CAP_NET_BIND_SERVICE:016x}"
        assert (st["CapEff"], st["CapPrm"], st["CapBnd"], st["CapAmb"]) == (only_bind,) * 4
        assert st["NoNewPrivs"] == "1"
        exchange_mail(ports, root / "cert.pem")
    finally:
        stop(proc)
    owned_by(root / "data", service_user.pw_uid)


def test_server_user_drops_root_after_binding(service_user: pwd.struct_passwd, root: Path) -> None:
    config, ports = setup(root, service_user, extra=f'[server]\nuser = "{service_user.pw_name}"\n')
    py, env = interpreter()
    proc = start([py, "-m", "postroom", "-c", str(config), "serve"], env, root / "server.log")
    try:
        st = status(proc.pid)
        assert st["Uid"].split() == [str(service_user.pw_uid)] * 4
        assert st["Gid"].split() == [str(service_user.pw_gid)] * 4
        assert st["CapEff"] == st["CapPrm"] == st["CapAmb"] == "0" * 16
        assert "privileges_dropped" in (root / "server.log").read_text()
        exchange_mail(ports, root / "cert.pem")
    finally:
        stop(proc)
    owned_by(root / "data", service_user.pw_uid)
    # A data folder the user cannot write is refused before anything is bound.
    os.chown(root / "data", 0, 0)
    r = subprocess.run([py, "-m", "postroom", "-c", str(config), "serve"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 1 and "is not writable by" in r.stderr and "chown" in r.stderr
