"""IMAP first sync: what a mail client asks for when it meets a big mailbox, against Dovecot.

One user, one INBOX of ``--messages`` messages (default 5,000; bench/mailgen sizes: mostly
a few KB, every tenth a multipart with an attachment), the same on both servers. One
imaplib client, logged in and with INBOX selected before the clock, runs each step alone:

* ``headers``: ``UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)])``,
  the header download of Thunderbird and most desktop clients;
* ``structure``: ``UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE
  BODYSTRUCTURE)``, what Apple Mail and K-9/FairEmail ask;
* ``flags``: ``UID FETCH 1:* (FLAGS)``, a flag resync;
* ``bodies``: ``UID FETCH 1:* (BODY.PEEK[])``, a full download (mbsync, offlineimap);
* ``search``: ``UID SEARCH FROM sender7`` then ``UID SEARCH SUBJECT <word>``.

Prints, per step, the time of the first ("cold") request after start, then the median
wall time of ``--runs`` further runs (servers alternate first) and the server's CPU time,
with the ratio Dovecot time / postroom time (>1: postroom is faster).
Run: ``.venv/bin/python bench/imap_sync.py`` (needs ``dovecot-imapd`` for the peer).
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import dovecot as dc  # noqa: E402
from support.mailgen import WORDS, mailbox  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

DOMAIN = "bench.test"
USER = "u1"
HEADER_FIELDS = (
    "FROM TO CC BCC SUBJECT DATE MESSAGE-ID PRIORITY X-PRIORITY REFERENCES NEWSGROUPS "
    "IN-REPLY-TO CONTENT-TYPE REPLY-TO"
)
STEPS: dict[str, list[tuple[str, ...]]] = {
    "headers": [("FETCH", "1:*", f"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])")],
    "structure": [("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)")],
    "flags": [("FETCH", "1:*", "(FLAGS)")],
    "bodies": [("FETCH", "1:*", "(BODY.PEEK[])")],
    "search": [("SEARCH", "FROM", "sender7@"), ("SEARCH", "SUBJECT", WORDS[3])],
}


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in dc.process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks
    return total


def run_step(port: int, pid: int, step: str, user: str) -> tuple[float, float, int]:
    """(wall seconds, server CPU seconds, response bytes) of one step on a fresh session."""
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, PASSWORD)
    m.select("INBOX")
    size = 0
    cpu0 = cpu_seconds(pid)
    t = time.perf_counter()
    for command in STEPS[step]:
        typ, data = m.uid(*command)
        assert typ == "OK", (step, typ, data)
        for item in data:
            if isinstance(item, tuple):
                size += len(item[0]) + len(item[1])
            elif item:
                size += len(item)
    wall = time.perf_counter() - t
    cpu = cpu_seconds(pid) - cpu0
    m.logout()
    return wall, cpu, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--workers", default="auto", help="postroom's server.workers (auto or N)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="postroom-imapsync-"))
    address = f"{USER}@{DOMAIN}"
    msgs = mailbox(args.messages, address, seed=7)
    server = Server(base / "postroom", roles=("imap",), fsync=True,
                    workers=int(args.workers) if args.workers.isdigit() else args.workers,
                    extra="[imap]\nallow_plaintext_auth = true\n")
    server.add_user(address)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from imap_load import deliver_all

    deliver_all(server, address, msgs)
    targets: list[tuple[str, int, int, str]] = []
    dovecot = None
    server.start()
    assert server.proc is not None
    targets.append(("postroom", server.ports["imap"], server.proc.pid, address))
    if not args.no_dovecot:
        why = dc.available()
        if why:
            print(f"Dovecot skipped: {why}")
        else:
            dovecot = dc.Dovecot(base / "dovecot", [USER], PASSWORD, DOMAIN, hashed=True)
            dovecot.setup()
            dovecot.write_maildir(USER, msgs)
            dovecot.start()
            targets.append(("dovecot", dovecot.port, dovecot.pid, address))
    total = sum(len(x) for x in msgs)
    print(f"INBOX: {len(msgs)} messages, {total / 1e6:.1f} MB; {args.runs} runs per step")
    try:
        # The first run of each step right after start is "cold": no server-side cache yet
        # (Dovecot builds its index cache file on these requests, postroom its in-memory
        # structure cache). The runs after it are "warm".
        cold: dict[str, dict[str, float]] = {t[0]: {} for t in targets}
        for name, port, pid, user in targets:
            for step in STEPS:
                cold[name][step] = run_step(port, pid, step, user)[0]
        results: dict[str, dict[str, list[tuple[float, float]]]] = {t[0]: {} for t in targets}
        for r in range(args.runs):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for step in STEPS:
                for name, port, pid, user in order:
                    wall, cpu, _ = run_step(port, pid, step, user)
                    results[name].setdefault(step, []).append((wall, cpu))
        print()
        print("cold (first request after start), seconds:")
        for step in STEPS:
            walls = [cold[n][step] for n, *_ in targets]
            line = f"  {step:<10}" + "".join(f"{n} {w:.3f}   " for (n, *_), w in zip(targets, walls, strict=True))
            if len(walls) == 2:
                line += f"ratio {walls[1] / walls[0]:.2f}x"
            print(line)
        print("warm, medians:")
        head = f"{'step':<10}" + "".join(f"{n + ' s':>14}{n + ' CPU s':>16}" for n, *_ in targets)
        print(head + ("       ratio" if len(targets) == 2 else ""))
        for step in STEPS:
            line = f"{step:<10}"
            walls = []
            for name, *_ in targets:
                runs = results[name][step]
                wall = statistics.median(w for w, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                walls.append(wall)
                line += f"{wall:>14.3f}{cpu:>16.2f}"
            if len(walls) == 2:
                line += f"{walls[1] / walls[0]:>11.2f}x"
            print(line)
        if len(targets) == 2:
            print("ratio = Dovecot time / postroom time (>1: postroom is faster); medians")
    finally:
        server.stop()
        if dovecot is not None:
            dovecot.stop()


if __name__ == "__main__":
    main()
