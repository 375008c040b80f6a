#!/usr/bin/env python3
"""Cost of mail authentication: inbound checks on the MX, and DKIM signing.

1. Signing: ``policy.dkim.sign`` of a 5 KB message, Ed25519 and RSA-2048, in-process
   (ms per message, and messages/s on one core).
2. MX acceptance: a real ``postroom serve`` (fsync off, to measure the checks rather than
   the disk) receives N messages of 5 KB over ``--sessions`` parallel smtplib sessions, one
   message per connection, from a sender whose SPF, DKIM (RSA-2048, signed by postroom's
   signer) and DMARC records are served by a local DNS server (dnslib, loopback):
   * checks off (``[auth_checks] enabled = false``): the baseline;
   * checks on, warm cache (``[dns] cache_entries = 10000``, records TTL 3600);
   * checks on, cold cache (``cache_entries = 0``: every message asks DNS again).
   It prints msg/s per mode and the cost relative to the baseline (goal: warm < 20 %).
   Runs alternate the order of modes. The machine is shared while developing: read ratios
   from one run, not absolute figures.

Usage: bench/auth_checks.py [--count 2000] [--sessions 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from postroom.policy import dkim  # noqa: E402
from support.dns_server import DnsServer  # noqa: E402
from support.server import Server  # noqa: E402

SENDER_DOMAIN = "sender.test"


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
        t = time.perf_counter()
        for _ in range(count):
            dkim.sign(msg, key)
        ms = (time.perf_counter() - t) * 1000 / count
        print(f"sign {alg:8} 5 KB: {ms:.3f} ms/msg ({1000 / ms:,.0f} msg/s on one core)")


def send_all(port: int, msgs: list[bytes], sessions: int) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    bench_signing(2000)

    rsa = dkim.generate_key("rsa")
    signer = dkim.PrivateKey(SENDER_DOMAIN, "s1", "rsa", rsa)
    msgs = [dkim.sign(m, signer) + m for m in (message(5120, i) for i in range(args.count))]
    dns = DnsServer(ttl=3600).start()
    dns.set(SENDER_DOMAIN, "TXT", ["v=spf1 ip4:127.0.0.0/8 -all"])
    dns.set(f"s1._domainkey.{SENDER_DOMAIN}", "TXT", [dkim.public_record(rsa)])
    dns.set(f"_dmarc.{SENDER_DOMAIN}", "TXT", ["v=DMARC1; p=reject"])
    modes = {
        "off": "[auth_checks]\nenabled = false\n",
        "warm": "[auth_checks]\nenabled = true\nreports = false\n[dns]\ncache_entries = 10000\n",
        "cold": "[auth_checks]\nenabled = true\nreports = false\n[dns]\ncache_entries = 0\n",
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for name, extra in modes.items():
            srv = Server(Path(tmp) / name, roles=("mx",), hostname="mail.bench.test",
                         extra=f'[outbound]\nresolver = "{dns.address}"\n{extra}')
            srv.add_user("u1@bench.test")
            servers[name] = srv.start()
        try:
            for run in range(args.runs):
                order = list(modes) if run % 2 == 0 else list(reversed(modes))
                for name in order:
                    send_all(servers[name].ports["mx"], msgs[:50], args.sessions)  # warm-up
                    rate = send_all(servers[name].ports["mx"], msgs, args.sessions)
                    results[name].append(rate)
                    print(f"run {run + 1} {name:5}: {rate:,.0f} msg/s", flush=True)
            inbox = servers["warm"].messages("u1@bench.test")
            assert b"dkim=pass" in inbox[-1] and b"dmarc=pass" in inbox[-1], inbox[-1][:800]
        finally:
            for srv in servers.values():
                srv.stop()
            dns.stop()
    base = statistics.median(results["off"])
    for name in modes:
        med = statistics.median(results[name])
        cost = (1 - med / base) * 100
        print(f"median {name:5}: {med:,.0f} msg/s" + ("" if name == "off" else f"  cost vs off: {cost:.1f} %"))


if __name__ == "__main__":
    main()
