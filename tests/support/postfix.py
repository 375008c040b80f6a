"""A private Postfix instance (Debian package) for tests and benchmarks.

Same recipe as ``../shared/bench/postfix_ref.sh`` (own main.cf/master.cf, queue and data
directories, log file; no change to the system's Postfix), kept here so that the tests do
not depend on ``../shared``. Two modes:

* ``mode="mx"``: smtpd on ``address:port`` accepts mail for ``domain`` (users u1..u20 and
  bench) and virtual(8) delivers it into Maildirs under ``root/mail/DOMAIN/USER/``;
* ``mode="relay"``: smtpd accepts mail from 127.0.0.0/8 for any domain and relays all of it
  to ``relayhost`` (``"127.0.0.1:2525"``), like a submission server with a smarthost.

Needs root (Postfix drops privileges to the ``postfix`` user) and ``/usr/sbin/postfix``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"


def available() -> str | None:
    """None when a private Postfix can run here, else the reason it cannot."""
    if not Path(POSTFIX).exists():
        return "Postfix is not installed (Debian package postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group is missing"
    return None


class Postfix:
    def __init__(
        self,
        root: Path,
        *,
        address: str = "127.0.0.1",
        port: int,
        mode: str = "mx",
        domain: str = "postfix.test",
        relayhost: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.root = root.absolute()
        self.address = address
        self.port = port
        self.mode = mode
        self.domain = domain
        self.relayhost = relayhost
        self.extra = extra or {}
        self.etc = self.root / "etc"
        self.mail = self.root / "mail"
        self.log = self.root / "log" / "maillog"

    def setup(self) -> Postfix:
        root = self.root
        for sub in ("etc", "spool", "data", "mail", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for p in (root, root / "etc", root / "log"):
            p.chmod(0o755)
        pf = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
        nogroup = grp.getgrnam("nogroup")
        os.chown(root / "data", pf.pw_uid, pf.pw_gid)
        os.chown(root / "mail", nobody.pw_uid, nogroup.gr_gid)
        p = root  # every parent must be traversable by the postfix and vmail users
        while p != p.parent:
            try:
                p.chmod(p.stat().st_mode | 0o001)
            except OSError:
                pass
            p = p.parent
        main = {
            "compatibility_level": "3.6",
            "queue_directory": f"{root}/spool",
            "data_directory": f"{root}/data",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-test.localdomain",
            "mydomain": "localdomain",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "maillog_file_prefixes": f"{root}/log",
            "maillog_file": str(self.log),
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
        }
        if self.mode == "mx":
            main.update({
                "relay_domains": "",
                "default_transport": "error:outbound disabled in test instance",
                "relay_transport": "error:outbound disabled in test instance",
                "virtual_mailbox_domains": self.domain,
                "virtual_mailbox_base": str(self.mail),
                "virtual_mailbox_maps": f"texthash:{self.etc}/vmailbox",
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nogroup.gr_gid}",
                "virtual_minimum_uid": "1",
            })
            users = [f"u{i}" for i in range(1, 21)] + ["bench"]
            (self.etc / "vmailbox").write_text(
                "".join(f"{u}@{self.domain} {self.domain}/{u}/\n" for u in users)
            )
        else:
            assert self.relayhost is not None
            host, _, port = self.relayhost.rpartition(":")
            main.update({
                "relay_domains": "",
                "relayhost": f"[{host}]:{port}",
                "default_transport": "smtp",
                "relay_transport": "smtp",
                "smtpd_relay_restrictions": "permit_mynetworks, reject",
                "smtp_connection_cache_on_demand": "yes",
            })
        main.update(self.extra)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        services = [
            f"{self.address}:{self.port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (self.etc / "master.cf").write_text("\n".join(services) + "\n")
        self._postfix("check")
        return self

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60,
            check=False,
        )

    def start(self) -> Postfix:
        proc = self._postfix("start")
        if proc.returncode != 0:
            raise RuntimeError(f"postfix start failed: {proc.stderr}{self.logs()}")
        pid = self.root / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (pid.exists() and pid.read_text().strip()):
            time.sleep(0.05)
        # wait until smtpd accepts connections
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"postfix does not listen on {self.address}:{self.port}: {self.logs()}")

    def stop(self) -> None:
        self._postfix("stop")
        pid_file = self.root / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                return
            time.sleep(0.1)

    def pid(self) -> int:
        return int((self.root / "spool" / "pid" / "master.pid").read_text().strip())

    def delivered(self, user: str | None = None) -> list[bytes]:
        """Messages delivered to the Maildirs (of one user), oldest first."""
        base = self.mail / self.domain
        users = [user] if user else [p.name for p in base.iterdir()] if base.exists() else []
        files = []
        for u in users:
            for sub in ("new", "cur"):
                d = base / u / sub
                if d.is_dir():
                    files.extend(d.iterdir())
        files.sort(key=lambda p: p.stat().st_mtime)
        return [f.read_bytes() for f in files]

    def queued(self) -> int:
        n = 0
        for q in ("incoming", "active", "deferred", "maildrop", "hold"):
            d = self.root / "spool" / q
            if d.is_dir():
                n += sum(1 for p in d.rglob("*") if p.is_file())
        return n

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
