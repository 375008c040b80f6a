#!/usr/bin/env python3
"""Instructions per SMTP message, counted by valgrind's callgrind: repeatable on a busy machine.

CPU time per message moves by a factor of two on a shared virtual machine (context
switches, wake-ups and cache misses cost what the neighbours make them cost; see
docs/performance.md), so a change of a few percent cannot be seen in it. The number of
instructions a message costs in user space does not depend on the neighbours: two runs
agree within about 1%. This runs ``postroom serve`` (and its worker processes) under
callgrind, sends a warm-up batch with smtp-source, zeroes the counters, sends ``--count``
messages, and prints instructions per message for each process and in total.

What it does not count: the kernel (socket reads and writes, fsync, futex and scheduler
work), which is a third of postroom's CPU per message on the 2-core development VM
(``perf``), and waiting. Use it to compare two versions of the code, not two servers.

Needs valgrind (Debian package ``valgrind``) and smtp-source (``postfix``). Under
callgrind everything runs ~50x slower: keep ``--count`` in the hundreds.

Usage: bench/smtp_instructions.py [--count 300] [--size 5120] [--sessions 5] [--workers 1]
       [--keep DIR]
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import serve_under_callgrind  # noqa: E402
from support.server import Server  # noqa: E402

DOMAIN = "bench.test"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=300, help="messages counted")
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--workers", default="1", help="server.workers (auto or N)")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind files of the measured "
                    "part here (for callgrind_annotate: where the instructions go)")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "smtp-source"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (Debian: valgrind, postfix)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="smtp_instr."))
    srv = Server(
        work / "postroom", roles=("mx",), fsync=True, hostname=f"mail.{DOMAIN}",
        workers=int(a.workers) if a.workers.isdigit() else a.workers,
    )
    from postroom.admin.service import _hash

    creds = _hash("bench password")

    async def users(admin, store):  # type: ignore[no-untyped-def]
        await admin.domain_add(DOMAIN)
        await store.add_user(f"u1@{DOMAIN}", creds.password_hash, creds.scram)

    srv.admin(users)
    out = work / "cg.out"
    proc, port = serve_under_callgrind(
        str(srv.config), str(out), str(work / "valgrind.log"), "mx", children=True,
    )
    try:
        if port is None:
            return 1

        def send(n: int) -> None:
            subprocess.run(
                ["smtp-source", "-4", "-s", str(a.sessions), "-m", str(n), "-l", str(a.size),
                 "-f", "bench@client.test", "-t", f"u1@{DOMAIN}", "-M", "client.test",
                 f"127.0.0.1:{port}"], check=True,
            )

        send(max(50, a.sessions * 10))  # warm-up: imports, caches, first pages
        time.sleep(1)
        subprocess.run(["callgrind_control", "--zero"], check=True, capture_output=True)
        started = time.monotonic()
        send(a.count)
        took = time.monotonic() - started
        time.sleep(1)
        subprocess.run(["callgrind_control", "--dump=measured"], check=True, capture_output=True)
        time.sleep(2)
    finally:
        proc.terminate()
        proc.wait(300)
    total = 0
    print(f"# {a.count} messages of {a.size} bytes, {a.sessions} sessions, workers={a.workers} "
          f"(sent in {took:.0f} s under callgrind)")
    for f in sorted(glob.glob(f"{out}.*")):
        text = Path(f).read_text(errors="replace")
        if "measured" not in text[:2000]:
            continue
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        cmd = re.search(r"^cmd: (.*)$", text, re.M)
        pid = re.search(r"^pid: (\d+)", text, re.M)
        if m is None:
            continue
        n = int(m.group(1))
        total += n
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, a.keep)
        what = "worker" if cmd and "processes.worker" in cmd.group(1) else "serve"
        print(f"  pid {pid.group(1) if pid else '?':>7} ({what}): {n / a.count / 1e6:6.3f} M instructions per message")
    print(f"instructions per message (user space, all processes): {total / a.count / 1e6:.3f} M")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
