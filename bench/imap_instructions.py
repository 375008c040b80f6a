#!/usr/bin/env python3
"""Instructions per IMAP command, counted by valgrind's callgrind: repeatable on a busy machine.

The single-message figures of ``bench/imap_load.py`` (NOOP, ``UID FETCH`` of one header
or one body) move with the machine's load as much as with the code; the number of
user-space instructions the server spends per command does not (two runs agree within
about 1%). This runs ``postroom serve`` under callgrind, fills a mailbox, warms up, and
then, for each command kind, zeroes the counters, sends ``--count`` commands one at a time
(each waits for its answer, as a mail client does) and dumps the counters.

Use it to compare two versions of the code (``git stash``, or two worktrees), not two
servers: the kernel's share (socket system calls, wake-ups) is not counted. Needs
valgrind (Debian package ``valgrind``). Under callgrind everything runs ~50x slower.

Usage: bench/imap_instructions.py [--count 300] [--messages 200]
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import socket
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
from support.server import PASSWORD, Server  # noqa: E402

USER = "bench@bench.test"
KINDS = {
    "noop": lambda uid: b"NOOP",
    "uid-fetch-header": lambda uid: b"UID FETCH %d (BODY.PEEK[HEADER])" % uid,
    "uid-fetch-body": lambda uid: b"UID FETCH %d (BODY.PEEK[])" % uid,
    "uid-fetch-flags": lambda uid: b"UID FETCH %d (FLAGS)" % uid,
}


class Client:
    """A minimal IMAP client: one command at a time, read to its tagged answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.buf = b""
        self.n = 0
        self._until(b"* OK")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _until(self, prefix: bytes) -> bytes:
        """Lines up to and including the first that starts with ``prefix`` (literals in
        FETCH answers end with a line of their own: they never start with the tag)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if line.startswith(prefix):
                return b"\r\n".join(lines)

    def command(self, text: bytes) -> bytes:
        self.n += 1
        tag = b"a%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        answer = self._until(tag + b" ")
        if not answer.rsplit(b"\r\n", 1)[-1].startswith(tag + b" OK"):
            raise RuntimeError(answer[-300:])
        return answer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=300, help="commands counted per kind")
    ap.add_argument("--messages", type=int, default=200, help="messages in the INBOX")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (Debian: valgrind)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="imap_instr."))
    srv = Server(work / "postroom", roles=("imap",), hostname="mail.bench.test", workers=1,
                 extra="[imap]\nallow_plaintext_auth = true\n")
    srv.add_user(USER)

    async def fill(admin, store):  # type: ignore[no-untyped-def]
        from postroom.deliver import summarize
        from postroom.store.api import Delivery

        user = await store.get_user(USER)
        for i in range(a.messages):
            data = (f"From: sender{i}@far.test\r\nTo: {USER}\r\nSubject: message {i}\r\n"
                    f"Date: Mon, 7 Dec 2026 00:00:{i % 60:02d} +0000\r\nMessage-ID: <{i}@far.test>\r\n"
                    "\r\n" + "Some text of a message body, line after line.\r\n" * 60).encode()
            await store.deliver(Delivery(data=data, summary=summarize(data), user_ids=(user.id,),
                                         internaldate=1_700_000_000 + i))

    srv.admin(fill)
    out = work / "cg.out"
    proc, port = serve_under_callgrind(str(srv.config), str(out), str(work / "valgrind.log"), "imap")
    results: dict[str, float] = {}
    try:
        if port is None:
            return 1
        c = Client(port)
        c.command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        c.command(b"SELECT INBOX")
        uids = list(range(1, a.messages + 1))
        for make in KINDS.values():  # warm-up: imports, caches, first pages
            for i in range(30):
                c.command(make(uids[i % len(uids)]))
        for kind, make in KINDS.items():
            subprocess.run(["callgrind_control", "--zero"], check=True, capture_output=True)
            for i in range(a.count):
                c.command(make(uids[i % len(uids)]))
            subprocess.run(["callgrind_control", f"--dump={kind}"], check=True, capture_output=True)
            time.sleep(1)
        c.command(b"LOGOUT")
    finally:
        proc.terminate()
        proc.wait(300)
    for f in sorted(glob.glob(f"{out}.*")):
        text = Path(f).read_text(errors="replace")
        desc = re.search(r"^desc: Trigger: dump (.*)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if desc is None or total is None or desc.group(1) not in KINDS:
            continue
        results[desc.group(1)] = int(total.group(1)) / a.count
    print(f"# {a.count} commands per kind, INBOX of {a.messages} messages of ~3 KB, one process")
    for kind in KINDS:
        if kind in results:
            print(f"{kind:18s} {results[kind] / 1000:8.1f} K instructions per command")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
