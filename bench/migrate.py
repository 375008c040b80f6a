#!/usr/bin/env python3
"""Migration and backup speed: import (Maildir, IMAP from Dovecot), export, backup, restore.

One synthetic mailbox (tests/support/mailgen.py: mean ~12 KB per message) is
* imported from a Maildir (``postroom import maildir``), and from a private Dovecot over
  IMAP (``postroom import imap``), each into a fresh user of an embedded store with
  fsync on, through the CLI as a user runs it; mbsync (isync), the usual tool for copying
  an IMAP account to a Maildir, copies the same Dovecot account in the same run for the
  peer ratio (mbsync time / postroom time: >1 means postroom is faster);
* exported back to a Maildir (``postroom export``);
* backed up (``postroom backup``) and restored (``postroom restore``).

Prints one line per figure: messages/s and MB/s. Needs root and dovecot-imapd for the IMAP
part (skipped with a message otherwise). Usage: bench/migrate.py [--n 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from support import dovecot as dc  # noqa: E402
from support.mailgen import mailbox  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

USER = "bench"
DOMAIN = "bench.test"


def cli(config: Path, *args: str, stdin: str | None = None) -> tuple[float, dict]:  # type: ignore[type-arg]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "postroom", "-c", str(config), *args, "--json", "--quiet"],
                       capture_output=True, text=True, input=stdin, timeout=3600)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {r.stderr}")
    return dt, json.loads(r.stdout)


def line(name: str, n: int, octets: int, seconds: float, extra: str = "") -> None:
    print(f"{name:<34} {n / seconds:8.0f} msg/s  {octets / seconds / 1e6:7.1f} MB/s  "
          f"({n} messages, {seconds:.2f} s){extra}", flush=True)


def mbsync_copy(port: int, target: Path, home: Path) -> float:
    target.mkdir(parents=True)
    rc = home / ".mbsyncrc"
    rc.write_text(
        f"IMAPAccount src\nHost 127.0.0.1\nPort {port}\nUser {USER}@{DOMAIN}\nPass \"{PASSWORD}\"\n"
        "SSLType None\nAuthMechs LOGIN\n\nIMAPStore src-remote\nAccount src\n\n"
        f"MaildirStore local\nPath {target}/\nInbox {target}/INBOX\n\n"
        "Channel c\nFar :src-remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\n"
    )
    t = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(rc), "c"], check=True, timeout=3600,
                   env=dict(os.environ, HOME=str(home)))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    msgs = mailbox(args.n, f"{USER}@{DOMAIN}")
    octets = sum(len(m) for m in msgs)
    print(f"{args.n} messages, {octets / 1e6:.1f} MB; machine: {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        srv = Server(base / "srv", roles=("imap",), fsync=True)
        for i in range(3):
            srv.add_user(f"u{i}@example.test")
        maildir = base / "maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for i, data in enumerate(msgs):
            p = maildir / "cur" / f"{1_700_000_000 + i}.M{i}P1.bench:2,S"
            p.write_bytes(data)
        dt, rep = cli(srv.config, "import", "maildir", "u0@example.test", str(maildir))
        assert rep["copied"] == args.n
        line("import maildir", args.n, octets, dt)

        why = dc.available()
        if why is not None:
            print(f"import imap: skipped ({why})")
        else:
            with dc.scratch_root() as root:
                dove = dc.Dovecot(root, [USER], PASSWORD, DOMAIN)
                dove.setup()
                dove.write_maildir(USER, msgs)
                dove.start()
                try:
                    # Let Dovecot index the folder first (both copies then read the same).
                    subprocess.run(["doveadm", "-c", str(dove.conf), "force-resync", "-u",
                                    f"{USER}@{DOMAIN}", "INBOX"], check=False, timeout=600)
                    dt, rep = cli(srv.config, "import", "imap", "u1@example.test", "--host",
                                  "127.0.0.1", "--port", str(dove.port), "--login",
                                  f"{USER}@{DOMAIN}", "--password-stdin", "--tls", "none",
                                  stdin=PASSWORD + "\n")
                    assert rep["copied"] == args.n
                    extra = ""
                    if shutil.which("mbsync"):
                        home = base / "home"
                        home.mkdir()
                        peer = mbsync_copy(dove.port, base / "mbsync", home)
                        extra = f"; mbsync {peer:.2f} s, ratio {peer / dt:.2f}"
                    line("import imap (from Dovecot)", args.n, octets, dt, extra)
                finally:
                    dove.stop()

        dt, rep = cli(srv.config, "export", "u0@example.test", str(base / "export"))
        line("export maildir", args.n, octets, dt)
        srv.start()
        try:
            dt, rep = cli(srv.config, "backup", str(base / "backup"))
            size = rep["database_octets"]
            print(f"{'backup (server running)':<34} {size / dt / 1e6:8.1f} MB/s of database "
                  f"({size / 1e6:.0f} MB, {dt:.2f} s)")
        finally:
            srv.stop()
        other = Server(base / "restored", roles=("imap",))
        dt, rep = cli(other.config, "restore", str(base / "backup"))
        print(f"{'restore (verify + copy)':<34} {size / dt / 1e6:8.1f} MB/s of database ({dt:.2f} s)")


if __name__ == "__main__":
    main()
