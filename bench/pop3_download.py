#!/usr/bin/env python3
"""POP3 download: RETR every message of a 10,000-message maildrop (5 KB each), postroom
against Dovecot's POP3 in the same run.

Both servers hold the same messages: postroom in its store (delivered through the store
API before it starts), Dovecot in a Maildir (LF line ends, as Maildir writers store them;
Dovecot converts to CRLF on the wire, so both send the same bytes). Both run without TLS
and accept USER/PASS in clear (Dovecot's reference set-up has ``ssl = no``; postroom gets
``pop3.allow_plaintext_auth``), each on a port the kernel picked, on 127.0.0.1.

Two client modes, each timed from the first RETR to the last byte (no DELE, so the
maildrop can be read again):

* ``poplib``: Python's poplib, one RETR at a time: what a simple client does. Latency
  bound, and poplib's own line handling costs client CPU, so it flattens differences.
* ``pipelined``: a raw socket keeping ``--depth`` RETRs in flight (RFC 2449 PIPELINING),
  counting ``CRLF.CRLF`` terminators: this measures the servers.

Every (mode, server) pair is run once to warm up (Dovecot builds its index and size cache,
both fill the page cache), then ``--runs`` times, alternating which server goes first.
Printed per run: msgs/s, MB/s, server CPU ms per 1000 messages; then medians, and the ratio
postroom/Dovecot as the ratio of the medians and the median of the per-run ratios.

Dovecot comes from ../shared/bench/dovecot_ref.sh (needs root and dovecot-pop3d); without
it, only postroom is measured and the peer is skipped with a message.

Usage: bench/pop3_download.py [--count 10000] [--size 5120] [--runs 5] [--depth 32]
                              [--modes poplib,pipelined] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import poplib
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from postroom.deliver import summarize  # noqa: E402

# ../shared/bench of the development workspace; from a git worktree it is further up.
SHARED = next(
    (p / "shared" / "bench" for p in ROOT.parents if (p / "shared" / "bench").is_dir()),
    ROOT.parent / "shared" / "bench",
)
DOVECOT_REF = SHARED / "dovecot_ref.sh"
USER, DOMAIN, PASSWORD = "pop", "bench.test", "pass"
HZ = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- messages


def make_messages(count: int, size: int) -> list[bytes]:
    """Deterministic messages of about ``size`` octets, CRLF, unique Message-IDs; a few
    body lines start with "." so byte-stuffing is exercised as in real mail."""
    words = (b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             b"incididunt ut labore et dolore magna aliqua mail server pop3 download").split()
    out = []
    for i in range(count):
        head = (
            f"Return-Path: <sender{i % 50}@example.org>\r\n"
            f"From: Sender {i % 50} <sender{i % 50}@example.org>\r\nTo: <{USER}@{DOMAIN}>\r\n"
            f"Subject: benchmark message {i}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <bench.{i}@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        lines, total, k = [], len(head), i
        while total < size - 2:
            line = b" ".join(words[(k + j) % len(words)] for j in range(11))
            if k % 37 == 0:
                line = b"." + line
            line = line[: max(1, size - 2 - total - 2)]
            lines.append(line + b"\r\n")
            total += len(line) + 2
            k += 1
        out.append(head + b"".join(lines))
    return out


def free_port() -> int:
    """A port the kernel says is free now (Dovecot needs a number in its config)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, plus their reaped children."""
    info: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2 :].split()
        info[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    kids: dict[int, list[int]] = {}
    for p, (ppid, _) in info.items():
        kids.setdefault(ppid, []).append(p)
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen or p not in info:
            continue
        seen.add(p)
        total += info[p][1]
        stack.extend(kids.get(p, ()))
    return total / HZ


# ----------------------------------------------------------------------------- servers


class Postroom:
    name = "postroom"

    def __init__(self, work: Path, messages: list[bytes]) -> None:
        self.work = work
        data = work / "data"
        data.mkdir(parents=True)
        self.config = work / "postroom.toml"
        self.config.write_text(
            f'hostname = "mail.{DOMAIN}"\ndata_dir = "data"\n'
            "[pop3]\nallow_plaintext_auth = true\n"
            '[logging]\nlevel = "warning"\n'
            '[[listener]]\naddress = "127.0.0.1:0"\nrole = "pop3"\n'
        )
        asyncio.run(self._fill(data, messages))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postroom", "-c", str(self.config), "serve"],
            stdout=subprocess.PIPE, stderr=(work / "server.log").open("wb"),
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        )
        assert self.proc.stdout is not None
        self.port = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError((work / "server.log").read_text()[-2000:])
            m = re.match(r"listening pop3 \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError("postroom did not start")
        self.pid = self.proc.pid

    @staticmethod
    async def _fill(data: Path, messages: list[bytes]) -> None:
        from postroom.admin.service import AdminService
        from postroom.store.api import Delivery
        from postroom.store.sqlite import open_store

        store = open_store(data, fsync=False)
        try:
            admin = AdminService(store)
            await admin.domain_add(DOMAIN)
            await admin.user_add(f"{USER}@{DOMAIN}", PASSWORD)
            user = await store.get_user(f"{USER}@{DOMAIN}")
            assert user is not None
            for start in range(0, len(messages), 250):  # concurrent: group commit
                part = messages[start : start + 250]
                await asyncio.gather(*(
                    store.deliver(Delivery(data=m, summary=summarize(m), user_ids=(user.id,)))
                    for m in part
                ))
        finally:
            await store.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Dovecot:
    name = "dovecot"

    def __init__(self, work: Path, messages: list[bytes]) -> None:
        self.work = work
        self.port = free_port()
        mailroot = work / "mail"
        env = dict(os.environ)
        subprocess.run(
            ["bash", str(DOVECOT_REF), "setup", str(work), str(free_port()), str(self.port),
             str(mailroot), DOMAIN],
            check=True, capture_output=True, env=env,
        )
        md = mailroot / DOMAIN / USER
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        t0 = 1_700_000_000
        for i, m in enumerate(messages):
            path = md / "cur" / f"{t0 + i}.M{i}P1.bench:2,"
            path.write_bytes(m.replace(b"\r\n", b"\n"))
            os.utime(path, (t0 + i, t0 + i))
        nobody = pwd.getpwnam("nobody")
        for dirpath, _, files in os.walk(mailroot):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), nobody.pw_uid, nobody.pw_gid)
        subprocess.run(["bash", str(DOVECOT_REF), "start", str(work)], check=True)
        self.pid = int((work / "run" / "master.pid").read_text())

    def stop(self) -> None:
        subprocess.run(["bash", str(DOVECOT_REF), "stop", str(self.work)], check=False)


# ----------------------------------------------------------------------------- clients


@dataclass
class Run:
    messages: int
    octets: int
    seconds: float
    cpu: float  # server CPU seconds during the RETR phase
    login: float  # seconds from connect to the STAT answer (snapshot of the maildrop)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def run_poplib(port: int, cpu: Callable[[], float], depth: int) -> Run:
    start = time.perf_counter()
    p = poplib.POP3("127.0.0.1", port, timeout=120)
    p.user(f"{USER}@{DOMAIN}")
    p.pass_(PASSWORD)
    n, _ = p.stat()
    c0, t0 = cpu(), time.perf_counter()
    got = 0
    for i in range(1, n + 1):
        _, _, octets = p.retr(i)
        got += octets
    t1 = time.perf_counter()
    c1 = cpu()
    p.quit()
    return Run(n, got, t1 - t0, c1 - c0, t0 - start)


def _until(sock: socket.socket, buf: bytearray, token: bytes, start: int = 0) -> int:
    while True:
        pos = buf.find(token, start)
        if pos >= 0:
            return pos + len(token)
        start = max(0, len(buf) - len(token) + 1)
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk


def run_pipelined(port: int, cpu: Callable[[], float], depth: int) -> Run:
    start = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    buf = bytearray()
    end = _until(s, buf, b"\r\n")
    del buf[:end]
    status = b""
    for line in (f"USER {USER}@{DOMAIN}", f"PASS {PASSWORD}", "STAT"):
        s.sendall(line.encode() + b"\r\n")
        end = _until(s, buf, b"\r\n")
        status = bytes(buf[:end])
        del buf[:end]
        if not status.startswith(b"+OK"):
            raise RuntimeError(f"{line.split()[0]}: {status!r}")
    n = int(status.split()[1])
    c0, t0 = cpu(), time.perf_counter()
    sent = done = got = 0
    while done < n:
        batch = []
        while sent < n and sent - done < depth:
            sent += 1
            batch.append(b"RETR %d\r\n" % sent)
        if batch:
            s.sendall(b"".join(batch))
        end = _until(s, buf, b"\r\n.\r\n")
        if not buf.startswith(b"+OK"):
            raise RuntimeError(bytes(buf[:200]))
        got += end
        del buf[:end]
        done += 1
    t1 = time.perf_counter()
    c1 = cpu()
    s.sendall(b"QUIT\r\n")
    s.close()
    return Run(n, got, t1 - t0, c1 - c0, t0 - start)


MODES = {"poplib": run_poplib, "pipelined": run_pipelined}


# ----------------------------------------------------------------------------- main


def fmt(run: Run) -> str:
    return (f"{run.rate:8.0f} msg/s {run.octets / run.seconds / 1e6:7.1f} MB/s "
            f"CPU {1000 * run.cpu / run.messages * 1000:6.1f} ms/1000 msgs  "
            f"login+STAT {1000 * run.login:5.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=5 * 1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--modes", default="poplib,pipelined")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="pop3bench-"))
    work.mkdir(parents=True, exist_ok=True)
    peer_ok = DOVECOT_REF.exists() and shutil.which("dovecot") is not None and os.geteuid() == 0
    if not peer_ok:
        print(f"peer skipped: Dovecot needs {DOVECOT_REF}, the dovecot binary and root", flush=True)
    if peer_ok:
        # Dovecot drops to nobody: every parent of its Maildir must be searchable.
        p = work
        while p != p.parent:
            os.chmod(p, os.stat(p).st_mode | 0o001)
            p = p.parent
    t = time.perf_counter()
    messages = make_messages(args.count, args.size)
    total = sum(len(m) for m in messages)
    print(f"maildrop: {args.count} messages, {total / 1e6:.1f} MB "
          f"(made in {time.perf_counter() - t:.1f} s)", flush=True)

    servers: list[Postroom | Dovecot] = []
    try:
        t = time.perf_counter()
        servers.append(Postroom(work / "postroom", messages))
        print(f"postroom: ready on port {servers[0].port} ({time.perf_counter() - t:.1f} s)", flush=True)
        if peer_ok:
            t = time.perf_counter()
            servers.append(Dovecot(work / "dovecot", messages))
            print(f"dovecot: ready on port {servers[1].port} ({time.perf_counter() - t:.1f} s)", flush=True)

        for mode in modes:
            fn = MODES[mode]
            results: dict[str, list[Run]] = {s.name: [] for s in servers}
            for s in servers:  # warm-up: index/size caches, page cache
                run = fn(s.port, lambda s=s: proc_cpu(s.pid), args.depth)
                assert run.messages == args.count, (s.name, run.messages)
                print(f"{mode:9} {s.name:8} warm-up {fmt(run)}", flush=True)
            for r in range(args.runs):
                order = servers if r % 2 == 0 else list(reversed(servers))
                for s in order:
                    run = fn(s.port, lambda s=s: proc_cpu(s.pid), args.depth)
                    assert run.messages == args.count, (s.name, run.messages)
                    results[s.name].append(run)
                    print(f"{mode:9} {s.name:8} run {r}  {fmt(run)}", flush=True)
            octets = {name: {run.octets for run in runs} for name, runs in results.items()}
            if len(octets) == 2 and octets["postroom"] != octets["dovecot"]:
                print(f"WARNING: octets differ {octets}", flush=True)
            medians = {}
            for name, runs in results.items():
                rates = [run.rate for run in runs]
                medians[name] = statistics.median(rates)
                cpu = statistics.median(1e6 * run.cpu / run.messages for run in runs)
                print(f"SUMMARY {mode} {name}: median {medians[name]:.0f} msg/s "
                      f"[{min(rates):.0f}..{max(rates):.0f}], "
                      f"{statistics.median(run.octets / run.seconds / 1e6 for run in runs):.1f} MB/s, "
                      f"server CPU {cpu:.0f} ms/1000 msgs, "
                      f"login+STAT {1000 * statistics.median(run.login for run in runs):.0f} ms",
                      flush=True)
            if "dovecot" in results:
                paired = [
                    a.rate / b.rate
                    for a, b in zip(results["postroom"], results["dovecot"], strict=True)
                ]
                print(f"RATIO {mode} postroom/dovecot: {medians['postroom'] / medians['dovecot']:.2f}x "
                      f"(median of per-run ratios {statistics.median(paired):.2f}x)", flush=True)
    finally:
        for s in servers:
            s.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
