#!/usr/bin/env python3
"""Messages per second relayed end to end: submission in, SMTP out to a sink, vs Postfix.

The job, identical for both servers in the same run:
* 20 client sessions (one connection each, many transactions) submit N messages of ~5 KB
  to external recipients; postroom's sessions authenticate (AUTH PLAIN, as submission
  requires), Postfix's are trusted by ``mynetworks`` (it has no SASL back end here, which
  only saves Postfix work);
* the server queues each message durably (postroom: fsync on; Postfix: its queue files are
  fsynced) and relays it to a smarthost (``[outbound] smarthost`` / ``relayhost``): one
  ``smtp-sink`` (Postfix's C test server) on 127.0.0.1, shared by both, counting arrivals;
* the clock starts once all 20 sessions are connected and logged in (AUTH is a per-session
  cost, paid once, and only postroom pays it here: 20 argon2id verifications, ~80 ms CPU
  each, which would otherwise be half of postroom's CPU in a 2000-message run; the login
  time is printed with each run), and stops when the sink has counted all N messages.

Prints per run and as medians: submission rate (all 250s received), end-to-end rate (all N at
the sink), and the ratio postroom/Postfix of the end-to-end medians plus the median of the
per-run paired ratios (runs alternate which server goes first). Destination concurrency is
20 on both (Postfix's default_destination_concurrency_limit).

Needs root and the Debian ``postfix`` package (smtp-sink, and a private Postfix instance
from tests/support/postfix.py); without Postfix it measures postroom alone and says so.

Usage: bench/relay.py [--messages 3000] [--sessions 20] [--runs 3] [--size 5120]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from support.dns_server import free_port_on  # noqa: E402
from support.postfix import Postfix, available  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

USER = "bench@bench.test"


class Sink:
    """smtp-sink on 127.0.0.1:port, its running counter read from stdout."""

    def __init__(self) -> None:
        self.port = free_port_on(["127.0.0.1"])
        self.count = 0
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 5
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                return
            buf += chunk
            *records, buf = buf.split(b"\r")
            for rec in records[-1:]:
                for field in rec.split():
                    if field.startswith(b"mesg="):
                        self.count = int(field[5:])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (reaped children included)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15]) / tick
    total = 0.0
    for p, t in times.items():
        q = p
        while q > 1 and q != pid:
            q = parents.get(q, 0)
        if q == pid:
            total += t
    return total


def message(i: int, size: int) -> bytes:
    head = (
        f"From: {USER}\r\nTo: r{i}@sink.test\r\nSubject: relay bench {i}\r\n"
        f"Message-ID: <relay-{i}-{time.time_ns()}@bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _session(
    port: int, auth: bool, jobs: list[bytes], done: list[float], ready: asyncio.Barrier,
    go: asyncio.Event,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    async def cmd(text: bytes, expect: bytes) -> None:
        writer.write(text)
        r = await reply()
        if not r.startswith(expect):
            raise RuntimeError(f"{text!r} -> {r!r}")

    await reply()
    await cmd(b"EHLO bench.client\r\n", b"250")
    if auth:
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        await cmd(b"AUTH PLAIN " + token + b"\r\n", b"235")
    await ready.wait()  # every session is logged in: the clock starts
    await go.wait()
    for i, data in enumerate(jobs):
        writer.write(b"MAIL FROM:<" + USER.encode() + b">\r\nRCPT TO:<r%d@sink.test>\r\nDATA\r\n" % i)
        for _ in range(2):
            r = await reply()
            if not r.startswith(b"250"):
                raise RuntimeError(f"envelope refused: {r!r}")
        r = await reply()
        if not r.startswith(b"354"):
            raise RuntimeError(f"DATA refused: {r!r}")
        writer.write(data + b".\r\n")
        r = await reply()
        if not r.startswith(b"250"):
            raise RuntimeError(f"message refused: {r!r}")
        done.append(time.monotonic())
    await cmd(b"QUIT\r\n", b"221")
    writer.close()


def submit(
    port: int, auth: bool, messages: list[bytes], sessions: int, started: list[float]
) -> float:
    """Submit over ``sessions`` connections (pipelined envelope). The sessions connect and
    authenticate first; then ``started`` gets the start time and the messages flow.
    Returns seconds from that start until all 250s."""
    done: list[float] = []
    shares = [messages[i::sessions] for i in range(sessions)]

    async def main() -> None:
        ready = asyncio.Barrier(sessions + 1)
        go = asyncio.Event()
        tasks = [asyncio.create_task(_session(port, auth, s, done, ready, go)) for s in shares]
        t_login = time.monotonic()
        await ready.wait()
        started.append(time.monotonic())
        started.append(started[0] - t_login)
        go.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return time.monotonic() - started[0]


def one_run(
    name: str, port: int, auth: bool, sink: Sink, n: int, sessions: int, size: int, pid: int
) -> tuple[float, float, float, float]:
    """(submission msg/s, end-to-end msg/s, server CPU ms per message, login seconds).

    The clock and the CPU count start once all sessions are logged in."""
    messages = [message(i, size) for i in range(n)]
    base = sink.count
    started: list[float] = []
    cpu0: list[float] = []

    def when_started() -> None:  # CPU baseline after the logins (sampled by a thread)
        while not started:
            time.sleep(0.0005)
        cpu0.append(tree_cpu(pid))

    sampler = threading.Thread(target=when_started, daemon=True)
    sampler.start()
    accepted = submit(port, auth, messages, sessions, started)
    deadline = time.monotonic() + 300
    while sink.count < base + n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: only {sink.count - base} of {n} reached the sink")
        time.sleep(0.002)
    total = time.monotonic() - started[0]
    sampler.join()
    return n / accepted, n / total, (tree_cpu(pid) - cpu0[0]) * 1000 / n, started[1]


def start_postroom(root: Path, sink: Sink, sessions: int) -> Server:
    extra = (
        "[limits]\nauth_delay = \"10ms\"\nconnections_per_ip = 1000\n"
        "[smtp]\nrequire_tls_for_auth = false\n"
        f'[outbound]\nsmarthost = "127.0.0.1:{sink.port}"\nsmarthost_tls = "none"\n'
        f"concurrency = {max(20, sessions)}\nper_destination = 20\n"
    )
    server = Server(root, roles=("submission",), extra=extra, fsync=True, hostname="relay.bench.test")
    server.add_user(USER)
    return server.start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=5120)
    args = ap.parse_args()
    if shutil.which("smtp-sink") is None:
        print("relay: smtp-sink not found (Debian package postfix): cannot run", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="postroom-relay-", dir="/tmp"))
    os.chmod(work, 0o755)
    sink = Sink()
    pf_reason = available()
    postfix: Postfix | None = None
    postroom: Server | None = None
    results: dict[str, list[tuple[float, float, float, float]]] = {"postroom": [], "postfix": []}
    try:
        postroom = start_postroom(work / "postroom", sink, args.sessions)
        if pf_reason is None:
            port = free_port_on(["127.0.0.1"])
            postfix = Postfix(work / "postfix", port=port, mode="relay", relayhost=f"127.0.0.1:{sink.port}")
            postfix.setup().start()
        else:
            print(f"peer: Postfix skipped ({pf_reason})")
        assert postroom.proc is not None
        targets = [("postroom", postroom.ports["submission"], True, postroom.proc.pid)]
        if postfix is not None:
            targets.append(("postfix", postfix.port, False, postfix.pid()))
        # warm-up (caches, connection pools, Postfix's processes)
        for name, port, auth, pid in targets:
            one_run(name, port, auth, sink, min(200, args.messages), args.sessions, args.size, pid)
        for run in range(args.runs):
            order = targets if run % 2 == 0 else list(reversed(targets))
            for name, port, auth, pid in order:
                result = one_run(name, port, auth, sink, args.messages, args.sessions, args.size, pid)
                results[name].append(result)
                print(
                    f"run {run + 1} {name:8s} submitted {result[0]:7.0f} msg/s  relayed end-to-end "
                    f"{result[1]:7.0f} msg/s  server CPU {result[2]:.2f} ms/msg  "
                    f"(connect+EHLO{'+AUTH' if auth else ''} of {args.sessions} sessions "
                    f"before the clock: {result[3] * 1000:.0f} ms)", flush=True,
                )
                time.sleep(1)
        print(f"# {args.messages} messages of {args.size} bytes, {args.sessions} sessions, {args.runs} runs, medians:")
        med: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name in results:
            if results[name]:
                sub = statistics.median(r[0] for r in results[name])
                med[name] = statistics.median(r[1] for r in results[name])
                cpu[name] = statistics.median(r[2] for r in results[name])
                print(f"{name:8s} submission {sub:7.0f} msg/s   relay end-to-end {med[name]:7.0f} msg/s"
                      f"   server CPU {cpu[name]:.2f} ms/msg")
        with_login = {
            name: statistics.median(args.messages / (args.messages / r[1] + r[3]) for r in rows)
            for name, rows in results.items() if rows
        }
        for name, rate in with_login.items():
            print(f"{name:8s} relay end-to-end counting the logins too: {rate:7.0f} msg/s")
        if "postfix" in med:
            pairs = list(zip(results["postroom"], results["postfix"], strict=True))
            paired = statistics.median(a[1] / b[1] for a, b in pairs)
            print(f"ratio postroom/postfix end-to-end: {med['postroom'] / med['postfix']:.2f}x "
                  f"(median of paired runs {paired:.2f}x)")
            print(f"ratio postroom/postfix counting the logins: "
                  f"{with_login['postroom'] / with_login['postfix']:.2f}x")
            print(f"ratio CPU per message postfix/postroom: {cpu['postfix'] / cpu['postroom']:.2f}x "
                  "(>1: postroom uses less CPU per relayed message)")
    finally:
        if postroom is not None:
            postroom.stop()
        if postfix is not None:
            postfix.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
