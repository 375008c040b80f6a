"""A private Dovecot (Debian dovecot-imapd) for benchmarks that compare postroom with it.

Everything lives under one scratch folder: its own dovecot.conf, base_dir, state_dir, log,
passwd-file and Maildirs, so it never touches the system's Dovecot. It listens on
127.0.0.1 only, on a port picked free by the kernel. Plain-text IMAP (``ssl = no``) so it
is compared with postroom's plain IMAP listener under equal conditions.

Needs root (Dovecot drops privileges to ``mail_uid``); mail files belong to nobody/nogroup.
The layout and settings follow the reference kit in ../shared/bench/dovecot_ref.sh; the
``extra`` text is appended to the config (e.g. the process limits of the 5,000-connection
memory benchmark).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (tiny race with other binders: acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_root(prefix: str = "postroom-dovecot-") -> Iterator[Path]:
    """A folder outside pytest's base temp folder that other users can traverse.

    Dovecot's mail processes run as nobody (and the unprivileged-server tests as their own
    user): they must traverse every parent folder; pytest keeps ``/tmp/pytest-of-USER`` at
    mode 0700 and resets it whenever a pytest session starts (another run on the same
    machine), which would lock them out midway.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def available() -> str | None:
    """None when a private Dovecot can run here, else why not."""
    if shutil.which("dovecot") is None:
        return "dovecot not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "a private Dovecot needs root (it switches to mail_uid)"
    return None


class Dovecot:
    def __init__(
        self,
        root: Path,
        users: list[str],
        password: str,
        domain: str = "bench.test",
        extra: str = "",
        hashed: bool = False,
    ) -> None:
        self.root = root.absolute()
        self.domain = domain
        self.users = users  # local parts
        self.password = password
        self.extra = extra
        self.hashed = hashed
        self.uid = pwd.getpwnam("nobody").pw_uid
        self.gid = grp.getgrnam("nogroup").gr_gid
        self.mailroot = self.root / "mail"
        self.conf = self.root / "etc" / "dovecot.conf"
        self.port = 0

    def maildir(self, user: str) -> Path:
        return self.mailroot / self.domain / user

    def setup(self) -> None:
        for sub in ("etc", "run", "state", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.mailroot.mkdir(parents=True, exist_ok=True)
        os.chown(self.mailroot, self.uid, self.gid)
        # Dovecot's unprivileged processes must reach the scratch folders.
        p = self.root
        while p != p.parent:
            try:
                os.chmod(p, os.stat(p).st_mode | 0o001)
            except OSError:
                pass
            p = p.parent
        os.chmod(self.root / "run", 0o755)
        passwd = self.root / "etc" / "passwd"
        secret = f"{{PLAIN}}{self.password}"
        if self.hashed:
            # One argon2id hash (libsodium defaults) shared by every user: same cost per LOGIN.
            secret = subprocess.run(
                ["doveadm", "pw", "-s", "ARGON2ID", "-p", self.password],
                check=True, capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        passwd.write_text("".join(f"{u}@{self.domain}:{secret}::::::\n" for u in self.users))
        os.chmod(passwd, 0o644)
        self.port = free_port()
        r = self.root
        self.conf.write_text(
            f"""base_dir = {r}/run
state_dir = {r}/state
instance_name = postroom-bench-{self.port}
protocols = imap
listen = 127.0.0.1
log_path = {r}/log/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login scram-sha-256
mail_location = maildir:{self.mailroot}/%d/%n
mail_uid = {self.uid}
mail_gid = {self.gid}
first_valid_uid = 1
first_valid_gid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.mailroot}/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 10000
}}
{self.extra}
"""
        )
        subprocess.run(["doveconf", "-c", str(self.conf), "-n"], check=True, capture_output=True, timeout=30)

    def write_maildir(self, user: str, messages: list[bytes], mtime0: int = 1_700_000_000) -> None:
        """Messages as Maildir files in new/ (Dovecot assigns UIDs on first SELECT)."""
        base = self.maildir(user)
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(messages):
            path = base / "new" / f"{mtime0 + i}.M{i}P1.bench,S={len(data)}"
            path.write_bytes(data)
            os.utime(path, (mtime0 + i, mtime0 + i))
        for d in (self.mailroot / self.domain, base):
            os.chown(d, self.uid, self.gid)
        for dirpath, _dirnames, filenames in os.walk(base):
            os.chown(dirpath, self.uid, self.gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)

    def start(self, timeout: float = 15.0) -> None:
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"dovecot did not start: {self.log()[-2000:]}")

    @property
    def pid(self) -> int:
        return int((self.root / "run" / "master.pid").read_text().strip())

    def stop(self, timeout: float = 15.0) -> None:
        try:
            pid = self.pid
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return (self.root / "log" / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""


# -- process memory, for the idle-connection benchmark ----------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS splits shared pages among their sharers."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, number of processes) over ``pid``'s process tree."""
    rss = pss = 0
    pids = process_tree(pid)
    for p in pids:
        r, s = memory_kib(p)
        rss += r
        pss += s
    return rss, pss, len(pids)
