"""Event-loop cost of one delivery with heavy watchers (issue 9, hardening part 4).

One user owns a ``--messages`` INBOX and ``--mailboxes`` other mailboxes. Two of their
sessions wait in IDLE: one with ``NOTIFY SET`` over every personal mailbox (MessageNew,
MessageExpunge, FlagChange), one with INBOX selected and ``--contexts`` live SORT
contexts (``SORT RETURN (UPDATE)``, RFC 5267) on different criteria. Then ``--deliveries``
messages arrive over SMTP, one every ``--pace`` seconds; each makes the NOTIFY session
send a STATUS and the SORT session re-evaluate every context and send ADDTO.

Measured: the server's CPU time per delivery (all its threads: the loop and the store's
readers), NOOP latency of a probe user's IMAP and SMTP connections (the loop's
responsiveness to everyone else) without watchers, and with them during the deliveries;
how long each watcher took to see each delivery (from the 250 to its ADDTO / STATUS).
Prints one line per figure and the load average (compare only on a quiet machine).

Run: ``.venv/bin/python bench/notify_contexts.py`` (``--messages 2000`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import hostile  # noqa: E402
from support.mailgen import mailbox  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

DOMAIN = "bench.test"
OWNER = f"owner@{DOMAIN}"
PROBE = f"probe@{DOMAIN}"
CRITERIA = ["SUBJECT", "FROM", "DATE", "ARRIVAL", "SIZE", "TO", "CC", "REVERSE SUBJECT",
            "REVERSE DATE", "REVERSE SIZE"]


class Session:
    """A raw IMAP session that records when each untagged line arrived."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.n = 0
        self.seen: list[tuple[float, bytes]] = []
        self._reader: threading.Thread | None = None

    def cmd(self, text: str) -> list[bytes]:
        self.n += 1
        tag = f"b{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(text)
            lines.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text[:60]}: {line!r}")
                return lines

    def idle(self) -> None:
        self.sock.sendall(b"i IDLE\r\n")
        assert self.file.readline().startswith(b"+")

        def read() -> None:
            for line in self.file:
                self.seen.append((time.monotonic(), line))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        try:
            self.sock.sendall(b"DONE\r\n")
            self.sock.close()
        except OSError:
            pass


def lateness(events: list[tuple[float, bytes]], sent: list[float], marker: bytes) -> list[float]:
    """For each delivery time, the delay to the first ``marker`` line after it."""
    out = []
    for when in sent:
        later = [t for t, line in events if t >= when and marker in line]
        if later:
            out.append(later[0] - when)
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--mailboxes", type=int, default=1994)  # + 6 defaults: NOTIFY's 2,000
    ap.add_argument("--contexts", type=int, default=10)
    ap.add_argument("--deliveries", type=int, default=40)
    ap.add_argument("--pace", type=float, default=0.25)
    args = ap.parse_args()
    from imap_load import deliver_all

    base = Path(tempfile.mkdtemp(prefix="postroom-notifyctx-"))
    server = Server(base, roles=("mx", "imap"), fsync=True, extra=(
        '[limits]\nauth_delay = "10ms"\nconnections_per_ip = 500\n'
        f'mailboxes_per_user = {args.mailboxes + 100}\n[imap]\nallow_plaintext_auth = true\n'))
    server.add_user(OWNER)
    server.add_user(PROBE)
    started = time.monotonic()
    deliver_all(server, OWNER, mailbox(args.messages, OWNER, seed=5))
    deliver_all(server, PROBE, mailbox(20, PROBE, seed=6))

    async def boxes(admin: Any, store: Any) -> None:
        user = await store.get_user(OWNER)
        for i in range(args.mailboxes):
            await store.create_mailbox(user.id, f"box-{i}", None)

    server.admin(boxes)
    print(f"INBOX {args.messages} messages, {args.mailboxes} mailboxes "
          f"(prepared in {time.monotonic() - started:.0f} s)", flush=True)
    server.start()
    port = server.ports["imap"]

    def deliver_phase(label: str) -> list[float]:
        probe = hostile.Probe(imap=port, smtp=server.ports["mx"], user=PROBE, password=PASSWORD)
        probe.connect()
        probe.start()
        assert server.proc is not None
        cpu = cpu_seconds(server.proc.pid)
        sent = []
        with smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=60) as s:
            for i in range(args.deliveries):
                body = f"Subject: pace {label} {i}\r\nFrom: x{i}@remote.example\r\n\r\nhello\r\n"
                s.sendmail(f"x{i}@remote.example", [OWNER], body.encode())
                sent.append(time.monotonic())
                time.sleep(args.pace)
        time.sleep(2.0)  # let the last re-evaluations finish
        probe.stop()
        used = cpu_seconds(server.proc.pid) - cpu
        print(f"{label:<9} server CPU: {used:.2f} s for {args.deliveries} deliveries, "
              f"{used / args.deliveries * 1000:.0f} ms per delivery (probes included)", flush=True)
        for name in ("imap", "smtp"):
            n, p50, p99, worst = probe.summary(name)
            print(f"{label:<9} {name} NOOP: {n} probes, p50 {p50 * 1000:.1f} ms, "
                  f"p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms", flush=True)
        probe.close()
        return sent

    load_before = os.getloadavg()
    try:
        deliver_phase("plain")
        notify = Session(port)
        notify.cmd(f"LOGIN {OWNER} \"{PASSWORD}\"")
        notify.cmd("ENABLE CONDSTORE")
        t = time.monotonic()
        notify.cmd("NOTIFY SET STATUS (PERSONAL (MessageNew MessageExpunge FlagChange))")
        print(f"NOTIFY SET over {args.mailboxes + 6} mailboxes: {(time.monotonic() - t) * 1000:.0f} ms")
        sorter = Session(port)
        sorter.cmd(f"LOGIN {OWNER} \"{PASSWORD}\"")
        sorter.cmd("SELECT INBOX")
        t = time.monotonic()
        for i in range(args.contexts):
            sorter.cmd(f"SORT RETURN (UPDATE COUNT) ({CRITERIA[i % len(CRITERIA)]}) UTF-8 ALL")
        print(f"{args.contexts} SORT contexts over {args.messages} messages: "
              f"{(time.monotonic() - t) * 1000:.0f} ms")
        notify.idle()
        sorter.idle()
        sent = deliver_phase("watched")
        for label, session, marker in (("NOTIFY", notify, b"STATUS"), ("SORT", sorter, b"ADDTO")):
            late = lateness(session.seen, sent, marker)
            print(f"{label} sees a delivery after: {len(late)}/{len(sent)}, p50 "
                  f"{statistics.median(late) * 1000 if late else 0:.1f} ms, p99 "
                  f"{pct(late, 0.99) * 1000:.1f} ms, max {max(late, default=0) * 1000:.1f} ms")
        notify.close()
        sorter.close()
        print(f"load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
              f"{os.cpu_count()} CPUs")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
