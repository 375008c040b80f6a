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

Prints per run: submission rate (all 250s received), end-to-end rate (all N at the sink),
server CPU per relayed message, the cores the server kept busy and msg/s per core (= 1000 /
CPU ms per message), and the share of the machine's CPU that other processes (not the
servers, the sink or this client) and the hypervisor took meanwhile. Then every figure as
``median [min..max]`` over the runs, and the ratio postroom/Postfix of the end-to-end
medians with the median and spread of the per-run paired ratios (runs alternate which
server goes first). Destination concurrency is 20 on both (Postfix's
default_destination_concurrency_limit). ``--workers`` sets postroom's ``server.workers``
(default "auto"); ``--cores N`` pins both servers to N CPUs (the client and sink to the rest).

Needs root and the Debian ``postfix`` package (smtp-sink, and a private Postfix instance
from tests/support/postfix.py); without Postfix it measures postroom alone and says so.

Usage: bench/relay.py [--messages 3000] [--sessions 20] [--runs 5] [--size 5120]
       [--workers auto|N] [--cores N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402
    MachineSample,
    machine_line,
    paired,
    pin_tree,
    split_cpus,
    spread,
    tree_cpu,
    tree_pids,
)
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


@dataclass
class RelayRun:
    submitted: float  # msg/s until every 250
    relayed: float  # msg/s until the sink has every message
    cpu_ms: float  # server CPU per message
    login_s: float  # connect + EHLO (+ AUTH) of the sessions, before the clock
    cores: float  # server CPU seconds / wall seconds
    other_pct: float
    steal_pct: float

    @property
    def per_core(self) -> float:
        return 1000.0 / self.cpu_ms if self.cpu_ms else 0.0


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_run(
    name: str, port: int, auth: bool, sink: Sink, n: int, sessions: int, size: int, pid: int
) -> RelayRun:
    """The clock and the CPU count start once all sessions are logged in."""
    messages = [message(i, size) for i in range(n)]
    base = sink.count
    started: list[float] = []
    cpu0: list[float] = []

    def when_started() -> None:  # CPU baseline after the logins (sampled by a thread)
        while not started:
            time.sleep(0.0005)
        cpu0.extend((tree_cpu(pid), _own_cpu() + tree_cpu(sink.proc.pid)))
        samples.append(MachineSample())

    samples: list[MachineSample] = []
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
    server = tree_cpu(pid) - cpu0[0]
    clients = _own_cpu() + tree_cpu(sink.proc.pid) - cpu0[1]
    use = samples[0].stop()
    return RelayRun(
        submitted=n / accepted, relayed=n / total, cpu_ms=server * 1000 / n, login_s=started[1],
        cores=server / total, other_pct=use.other_pct(server + clients), steal_pct=use.steal_pct,
    )


def start_postroom(root: Path, sink: Sink, sessions: int, workers: str = "auto") -> Server:
    extra = (
        "[limits]\nauth_delay = \"10ms\"\nconnections_per_ip = 1000\n"
        "[smtp]\nrequire_tls_for_auth = false\n"
        f'[outbound]\nsmarthost = "127.0.0.1:{sink.port}"\nsmarthost_tls = "none"\n'
        f"concurrency = {max(20, sessions)}\nper_destination = 20\n"
    )
    server = Server(
        root, roles=("submission",), extra=extra, fsync=True, hostname="relay.bench.test",
        workers=int(workers) if workers.isdigit() else workers,
    )
    server.add_user(USER)
    return server.start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--workers", default="auto", help="postroom's server.workers (auto or N)")
    ap.add_argument("--cores", type=int, help="pin the servers to N CPUs (client and sink to the rest)")
    ap.add_argument("--json", help="also write every run and the summary to this file")
    args = ap.parse_args()
    if shutil.which("smtp-sink") is None:
        print("relay: smtp-sink not found (Debian package postfix): cannot run", file=sys.stderr)
        return 1
    server_cpus, client_cpus = split_cpus(args.cores)
    work = Path(tempfile.mkdtemp(prefix="postroom-relay-", dir="/tmp"))
    os.chmod(work, 0o755)
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # this client and the sink
    sink = Sink()
    pf_reason = available()
    postfix: Postfix | None = None
    postroom: Server | None = None
    results: dict[str, list[RelayRun]] = {"postroom": [], "postfix": []}
    try:
        if server_cpus is not None:  # the servers inherit it
            os.sched_setaffinity(0, server_cpus)
        postroom = start_postroom(work / "postroom", sink, args.sessions, args.workers)
        if pf_reason is None:
            port = free_port_on(["127.0.0.1"])
            postfix = Postfix(work / "postfix", port=port, mode="relay", relayhost=f"127.0.0.1:{sink.port}")
            postfix.setup().start()
            pin_tree(postfix.pid(), server_cpus)
        else:
            print(f"peer: Postfix skipped ({pf_reason})")
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)
        assert postroom.proc is not None
        targets = [("postroom", postroom.ports["submission"], True, postroom.proc.pid)]
        if postfix is not None:
            targets.append(("postfix", postfix.port, False, postfix.pid()))
        print(machine_line())
        print(
            f"# postroom workers={args.workers} ({len(tree_pids(postroom.proc.pid))} processes); "
            f"{args.messages} messages of {args.size} bytes, {args.sessions} sessions, {args.runs} runs"
            + (f"; servers pinned to CPUs {sorted(server_cpus)}" if server_cpus is not None else "")
        )
        # warm-up (caches, connection pools, Postfix's processes)
        for name, port, auth, pid in targets:
            one_run(name, port, auth, sink, min(200, args.messages), args.sessions, args.size, pid)
        for run in range(args.runs):
            order = targets if run % 2 == 0 else list(reversed(targets))
            for name, port, auth, pid in order:
                r = one_run(name, port, auth, sink, args.messages, args.sessions, args.size, pid)
                results[name].append(r)
                print(
                    f"run {run + 1} {name:8s} submitted {r.submitted:6.0f} msg/s  relayed end-to-end "
                    f"{r.relayed:6.0f} msg/s  CPU {r.cpu_ms:.2f} ms/msg  {r.per_core:5.0f} msg/s/core"
                    f"  cores {r.cores:4.2f}  other {r.other_pct:3.0f}%  steal {r.steal_pct:3.0f}%"
                    f"  (connect+EHLO{'+AUTH' if auth else ''} of {args.sessions} sessions before the"
                    f" clock: {r.login_s * 1000:.0f} ms)", flush=True,
                )
                time.sleep(1)
        print("\n# RESULT: median [min..max] over the runs")
        for name, rows in results.items():
            if rows:
                with_login = [args.messages / (args.messages / r.relayed + r.login_s) for r in rows]
                print(
                    f"{name:8s} submission {spread([r.submitted for r in rows]):>24} msg/s"
                    f"  relayed {spread([r.relayed for r in rows]):>24} msg/s"
                    f"  (counting the logins {spread(with_login)})"
                    f"  CPU {spread([r.cpu_ms for r in rows], 2)} ms/msg"
                    f"  {spread([r.per_core for r in rows])} msg/s/core"
                    f"  cores {spread([r.cores for r in rows], 2)}"
                )
        if results["postfix"]:
            ours, theirs = results["postroom"], results["postfix"]
            e2e = paired([r.relayed for r in ours], [r.relayed for r in theirs])
            logins = paired(
                [args.messages / (args.messages / r.relayed + r.login_s) for r in ours],
                [args.messages / (args.messages / r.relayed + r.login_s) for r in theirs],
            )
            cpu = paired([r.cpu_ms for r in theirs], [r.cpu_ms for r in ours])
            med_ratio = statistics.median(r.relayed for r in ours) / statistics.median(r.relayed for r in theirs)
            print(f"ratio postroom/postfix end-to-end: {med_ratio:.2f}x (paired {spread(e2e, 2)})")
            print(f"ratio postroom/postfix counting the logins: paired {spread(logins, 2)}")
            print(f"ratio CPU per message postfix/postroom: paired {spread(cpu, 2)} "
                  "(>1: postroom uses less CPU per relayed message)")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "machine": machine_line(), "workers": args.workers, "cores": args.cores,
                "runs": {k: [vars(r) for r in v] for k, v in results.items()},
            }, indent=1))
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
