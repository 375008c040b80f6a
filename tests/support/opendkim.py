"""A private OpenDKIM milter (Debian package ``opendkim``) for tests and benchmarks.

OpenDKIM runs the way it runs in production: as a milter that Postfix's smtpd calls
(``smtpd_milters``), in the foreground as a child of the test, listening on
``inet:PORT@127.0.0.1``, with its own configuration file, and nothing of the system's
OpenDKIM touched. Two modes:

* ``mode="s"``: signs mail whose From: domain is ``domain`` with one key (``algorithm``
  ``rsa-sha256`` or ``ed25519-sha256``, ``relaxed/relaxed``); OpenDKIM's configuration has
  one ``SignatureAlgorithm``, so a domain signed with both algorithms (what postroom does)
  takes two instances, chained in ``smtpd_milters``, as in real dual-signing set-ups;
* ``mode="v"``: verifies signatures and adds an ``Authentication-Results`` field; the keys
  come from a file of ``name record`` lines (``TestPublicKeys``) rather than DNS, because
  OpenDKIM's resolver only talks to port 53.

``RequireSafeKeys no``: the files live under /tmp, which OpenDKIM otherwise refuses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from support import reap

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"


def available() -> str | None:
    """None when OpenDKIM can run here, else the reason it cannot."""
    if not Path(OPENDKIM).exists():
        return "OpenDKIM is not installed (Debian package opendkim)"
    return None


def milter_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenDkim:
    def __init__(
        self,
        root: Path,
        *,
        mode: str = "s",
        domain: str = "",
        selector: str = "",
        key_pem: bytes = b"",
        algorithm: str = "rsa-sha256",
        public_keys: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.root = root.absolute()
        self.mode = mode
        self.domain = domain
        self.selector = selector
        self.key_pem = key_pem
        self.algorithm = algorithm
        self.public_keys = public_keys or {}
        self.port = port or milter_port()
        self.conf = self.root / "opendkim.conf"
        self.log = self.root / "opendkim.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        """The value for Postfix's ``smtpd_milters``."""
        return f"inet:127.0.0.1:{self.port}"

    def setup(self) -> OpenDkim:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [
            f"Mode {self.mode}",
            f"Socket inet:{self.port}@127.0.0.1",
            f"PidFile {self.root / 'opendkim.pid'}",
            "Background no",
            "Syslog no",
            "RequireSafeKeys no",
            "Canonicalization relaxed/relaxed",
            "AuthservID opendkim.test",
            # Sign what comes from loopback (the test client); verify everything else, and
            # in verify mode treat loopback as external (a TEST-NET address is "internal").
            f"InternalHosts {'127.0.0.1' if self.mode == 's' else '192.0.2.255'}",
        ]
        if self.mode == "s":
            key = self.root / "signing.pem"
            key.write_bytes(self.key_pem)
            key.chmod(0o600)
            lines += [
                f"Domain {self.domain}",
                f"Selector {self.selector}",
                f"KeyFile {key}",
                f"SignatureAlgorithm {self.algorithm}",
            ]
        else:
            keys = self.root / "keys.txt"
            keys.write_text("".join(f"{n} {r}\n" for n, r in self.public_keys.items()))
            lines += [f"TestPublicKeys {keys}", "AlwaysAddARHeader yes"]
        self.conf.write_text("\n".join(lines) + "\n")
        return self

    def start(self, timeout: float = 15.0) -> OpenDkim:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [OPENDKIM, "-f", "-x", str(self.conf)], stdout=log, stderr=log,
            env=dict(os.environ),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opendkim exited: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"opendkim does not listen on port {self.port}: {self.logs()}")

    def terminate(self) -> None:
        """Ask it to stop without waiting (libmilter takes ~5 s to notice): call this on
        every instance first, then :meth:`stop` each, to wait once rather than per instance."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.terminate()
        reap(self.proc)
        self.proc = None

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
