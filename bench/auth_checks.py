#!/usr/bin/env python3
"""Cost of mail authentication: DKIM signing, inbound checks on the MX, and the same jobs
done by Postfix with OpenDKIM (run as milters, as in production) on the same messages.

1. Signing in-process: ``policy.dkim.sign`` of a 5 KB message, Ed25519 and RSA-2048. The
   figure is CPU time per message (``time.process_time``, best of several rounds: what a
   signature costs a core); the wall-clock time is printed beside it, and on a shared,
   loaded machine it is the larger one by the time spent waiting for a core.
2. MX acceptance, N messages of 5 KB over ``--sessions`` parallel smtplib sessions, one
   message per connection, from a sender whose SPF, DKIM (RSA-2048) and DMARC records a
   local DNS server serves (dnslib, loopback):
   * postroom (fsync off, to measure the checks rather than the disk): checks off (the
     baseline), checks on with a warm cache, checks on with no cache (every message asks
     DNS again); goal: warm costs < 20 % of the baseline;
   * Postfix 3.7 (private instance) without milter and with an OpenDKIM 2.11 milter
     verifying the same signatures (its keys from a file: OpenDKIM's resolver only speaks
     to port 53, so this is its "warm cache"). OpenDKIM checks DKIM only; postroom's warm
     figure also has SPF, DMARC and ARC.
3. Submission with signing, end to end: ``--relay`` messages over 20 sessions relayed to an
   ``smtp-sink`` (``bench/relay.py``'s harness): postroom without and with DKIM keys (it
   signs with Ed25519 and RSA-2048), Postfix without milter and with two OpenDKIM signing
   milters chained (Ed25519-SHA256 and RSA-SHA256: one algorithm per OpenDKIM instance).
   Both queue durably (fsync on).

Every mode prints msg/s and the servers' CPU milliseconds per message (the whole process
tree: Postfix's daemons, the OpenDKIM milters, postroom's process); runs alternate the
order of the modes. On the shared development machine only the ratios of one run, and the
CPU figures, carry over; the load average is printed with the results.

Needs root and the Debian packages postfix and opendkim for the Postfix figures; without
them it measures postroom alone and says why.

Usage: bench/auth_checks.py [--count 2000] [--sessions 10] [--runs 3] [--relay 2000]
       [--groups sign,mx,relay]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from postroom.policy import dkim  # noqa: E402
from relay import USER, Sink, one_run, start_postroom, tree_cpu  # noqa: E402
from support.dns_server import DnsServer, free_port_on  # noqa: E402
from support.opendkim import OpenDkim  # noqa: E402
from support.opendkim import available as opendkim_missing  # noqa: E402
from support.postfix import Postfix  # noqa: E402
from support.postfix import available as postfix_missing  # noqa: E402
from support.server import Server  # noqa: E402

SENDER_DOMAIN = "sender.test"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def message(size: int, i: int) -> bytes:
    head = (
        f"From: <news@{SENDER_DOMAIN}>\r\nTo: <u1@bench.test>\r\nSubject: bench {i}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{i}@{SENDER_DOMAIN}>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def bench_signing(n: int) -> None:
    msg = message(5120, 0)
    for alg in ("ed25519", "rsa"):
        key = dkim.PrivateKey("bench.test", "s", alg, dkim.generate_key(alg))
        dkim.sign(msg, key)
        count = n if alg == "ed25519" else max(50, n // 10)
        cpu, wall = [], []
        for _ in range(7):
            c, w = time.process_time(), time.perf_counter()
            for _ in range(count // 7 + 1):
                dkim.sign(msg, key)
            cpu.append((time.process_time() - c) * 1000 / (count // 7 + 1))
            wall.append((time.perf_counter() - w) * 1000 / (count // 7 + 1))
        print(f"sign {alg:8} 5 KB: {min(cpu):.3f} ms CPU/msg (best of 7; median {statistics.median(cpu):.3f}), "
              f"wall {statistics.median(wall):.3f} ms/msg; {1000 / min(cpu):,.0f} msg/s per core", flush=True)


def send_all(port: int, msgs: list[bytes], sessions: int) -> float:
    """Each message on its own smtplib connection, ``sessions`` at a time; msg/s."""
    import smtplib

    queue = list(enumerate(msgs))
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i, m = queue.pop()
            try:
                with smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.test", timeout=60) as s:
                    s.sendmail(f"bounce@{SENDER_DOMAIN}", ["u1@bench.test"], m)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        raise SystemExit(f"{len(errors)} messages failed, first: {errors[0]}")
    return len(msgs) / elapsed


class Target:
    """One server set-up to measure: a port, and the processes whose CPU it uses."""

    def __init__(self, name: str, port: int, pids: Callable[[], list[int]]) -> None:
        self.name = name
        self.port = port
        self.pids = pids

    def cpu(self) -> float:
        return sum(tree_cpu(p) for p in self.pids() if p > 1)


def measure(targets: list[Target], runs: int, run_one: Callable[[Target], float]) -> dict[str, list[tuple[float, float]]]:
    """(msg/s, CPU ms per message) per run per target, the order alternating run by run.
    ``run_one`` sends one batch and returns (msg/s, messages sent)."""
    results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    for run in range(runs):
        order = targets if run % 2 == 0 else list(reversed(targets))
        for t in order:
            before = t.cpu()
            rate, count = run_one(t)
            ms = (t.cpu() - before) * 1000 / count
            results[t.name].append((rate, ms))
            print(f"run {run + 1} {t.name:22}: {rate:7,.0f} msg/s  server CPU {ms:.2f} ms/msg", flush=True)
    return results


def summary(results: dict[str, list[tuple[float, float]]], base: str, pairs: list[tuple[str, str]]) -> None:
    med = {n: statistics.median(r[0] for r in rows) for n, rows in results.items() if rows}
    cpu = {n: statistics.median(r[1] for r in rows) for n, rows in results.items() if rows}
    for name in results:
        if name in med:
            extra = "" if name == base or base not in med else f"  ({(1 - med[name] / med[base]) * 100:+.1f} % slower than {base})"
            print(f"median {name:22}: {med[name]:7,.0f} msg/s  CPU {cpu[name]:.2f} ms/msg{extra}")
    for a, b in pairs:
        if a in med and b in med:
            print(f"ratio {a} / {b}: throughput {med[a] / med[b]:.2f}x, CPU per message {cpu[a] / cpu[b]:.2f}x")
    print(f"# {load()}", flush=True)


def peers_missing() -> str | None:
    return postfix_missing() or opendkim_missing()


def mx_group(args: argparse.Namespace, work: Path) -> None:
    rsa = dkim.generate_key("rsa")
    signer = dkim.PrivateKey(SENDER_DOMAIN, "s1", "rsa", rsa)
    msgs = [dkim.sign(m, signer) + m for m in (message(5120, i) for i in range(args.count))]
    dns = DnsServer(ttl=3600).start()
    dns.set(SENDER_DOMAIN, "TXT", ["v=spf1 ip4:127.0.0.0/8 -all"])
    dns.set(f"s1._domainkey.{SENDER_DOMAIN}", "TXT", [dkim.public_record(rsa)])
    dns.set(f"_dmarc.{SENDER_DOMAIN}", "TXT", ["v=DMARC1; p=reject"])
    modes = {
        "postroom checks off": "[auth_checks]\nenabled = false\n",
        "postroom checks warm": "[auth_checks]\nenabled = true\nreports = false\n[dns]\ncache_entries = 10000\n",
        "postroom checks cold": "[auth_checks]\nenabled = true\nreports = false\n[dns]\ncache_entries = 0\n",
    }
    servers: dict[str, Server] = {}
    stop: list[Callable[[], None]] = []
    targets: list[Target] = []
    try:
        for name, extra in modes.items():
            srv = Server(work / name.replace(" ", "-"), roles=("mx",), hostname="mail.bench.test",
                         extra=f'[outbound]\nresolver = "{dns.address}"\n{extra}')
            srv.add_user("u1@bench.test")
            servers[name] = srv.start()
            stop.append(srv.stop)
            proc = srv.proc
            assert proc is not None
            targets.append(Target(name, srv.ports["mx"], lambda p=proc.pid: [p]))
        reason = peers_missing()
        if reason is None:
            verifier = OpenDkim(work / "odk-verify", mode="v",
                                public_keys={f"s1._domainkey.{SENDER_DOMAIN}": dkim.public_record(rsa)})
            verifier.setup().start()
            stop.append(verifier.stop)
            for name, milters in (("postfix", ""), ("postfix+opendkim verify", verifier.socket)):
                pf = Postfix(work / name.replace(" ", "-").replace("+", "-"), port=free_port_on(["127.0.0.1"]),
                             domain="bench.test",
                             extra={"smtpd_milters": milters, "milter_default_action": "tempfail"} if milters else {})
                pf.setup().start()
                stop.append(pf.stop)
                pids: Callable[[], list[int]] = (
                    (lambda pf=pf: [pf.pid(), *([verifier.proc.pid] if verifier.proc else [])]) if milters
                    else (lambda pf=pf: [pf.pid()]))
                targets.append(Target(name, pf.port, pids))
        else:
            print(f"peer: Postfix+OpenDKIM skipped ({reason})")
        for t in targets:  # warm-up: caches, Postfix's processes
            send_all(t.port, msgs[:50], args.sessions)
        print(f"# MX acceptance: {args.count} messages of 5 KB, {args.sessions} sessions, one per connection")
        results = measure(targets, args.runs, lambda t: (send_all(t.port, msgs, args.sessions), len(msgs)))
        inbox = servers["postroom checks warm"].messages("u1@bench.test")
        assert b"dkim=pass" in inbox[-1] and b"dmarc=pass" in inbox[-1], inbox[-1][:800]
        if reason is None:
            got = [f for f in (work / "postfix-opendkim-verify" / "mail" / "bench.test" / "u1" / "new").iterdir()][:1]
            assert got and b"dkim=pass" in got[0].read_bytes(), "OpenDKIM did not verify"
        summary(results, "postroom checks off", [
            ("postroom checks off", "postfix"), ("postroom checks warm", "postfix+opendkim verify"),
        ])
        if "postfix" in results and results["postfix"]:
            pf = statistics.median(r[0] for r in results["postfix"])
            pfo = statistics.median(r[0] for r in results["postfix+opendkim verify"])
            print(f"OpenDKIM verify costs Postfix {(1 - pfo / pf) * 100:.1f} % of its MX throughput")
    finally:
        for fn in reversed(stop):
            fn()
        dns.stop()


def relay_group(args: argparse.Namespace, work: Path) -> None:
    sink = Sink()
    stop: list[Callable[[], None]] = [sink.stop]
    targets: list[tuple[Target, bool]] = []
    try:
        for name, sign in (("postroom no signing", False), ("postroom signing", True)):
            srv = start_postroom(work / name.replace(" ", "-"), sink, 20)
            stop.append(srv.stop)
            if sign:
                for alg in ("ed25519", "rsa"):
                    r = srv.cli("dkim", "generate", "bench.test", "--algorithm", alg)
                    assert r.returncode == 0, r.stderr
            proc = srv.proc
            assert proc is not None
            targets.append((Target(name, srv.ports["submission"], lambda p=proc.pid: [p]), True))
        reason = peers_missing()
        if reason is None:
            signers = [
                OpenDkim(work / f"odk-sign-{alg}", domain="bench.test", selector=alg,
                         key_pem=dkim.private_pem(dkim.generate_key(alg)),
                         algorithm=f"{alg}-sha256").setup().start()
                for alg in ("ed25519", "rsa")
            ]
            for s in signers:
                stop.append(s.stop)
            for name, milters in (("postfix", ""), ("postfix+opendkim signing", ", ".join(s.socket for s in signers))):
                extra = {"smtpd_milters": milters, "milter_default_action": "tempfail"} if milters else {}
                pf = Postfix(work / name.replace(" ", "-").replace("+", "-"), port=free_port_on(["127.0.0.1"]),
                             mode="relay", relayhost=f"127.0.0.1:{sink.port}", extra=extra)
                pf.setup().start()
                stop.append(pf.stop)
                pids: Callable[[], list[int]] = (
                    (lambda pf=pf: [pf.pid(), *(s.proc.pid for s in signers if s.proc)]) if milters
                    else (lambda pf=pf: [pf.pid()]))
                targets.append((Target(name, pf.port, pids), False))
        else:
            print(f"peer: Postfix+OpenDKIM skipped ({reason})")
        auth = {t.name: a for t, a in targets}

        def run_one(t: Target) -> tuple[float, int]:
            # relay.one_run counts its own CPU from the first pid; ours counts the whole set.
            result = one_run(t.name, t.port, auth[t.name], sink, args.relay, 20, 5120, t.pids()[0])
            return result[1], args.relay

        for t, a in targets:  # warm-up
            one_run(t.name, t.port, a, sink, 100, 20, 5120, t.pids()[0])
        print(f"# submission + relay to smtp-sink: {args.relay} messages of 5 KB from {USER}, 20 sessions")
        results = measure([t for t, _ in targets], args.runs, run_one)
        summary(results, "postroom no signing", [
            ("postroom no signing", "postfix"), ("postroom signing", "postfix+opendkim signing"),
        ])
        for name, base in (("postroom signing", "postroom no signing"), ("postfix+opendkim signing", "postfix")):
            if results.get(name) and results.get(base):
                extra_cpu = (statistics.median(r[1] for r in results[name])
                             - statistics.median(r[1] for r in results[base]))
                print(f"signing (Ed25519 + RSA) costs {name.split()[0]} {extra_cpu:.2f} CPU ms/msg")
    finally:
        for fn in reversed(stop):
            fn()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000, help="messages per MX run")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--relay", type=int, default=2000, help="messages per relay run")
    ap.add_argument("--groups", default="sign,mx,relay")
    args = ap.parse_args()
    groups = set(args.groups.split(","))
    print(f"# {load()}")
    if "sign" in groups:
        bench_signing(2000)
    # Postfix's users must reach the directories: not under a private tmp.
    work = Path(tempfile.mkdtemp(prefix="postroom-auth-bench-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        if "mx" in groups:
            mx_group(args, work)
        if "relay" in groups:
            relay_group(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
