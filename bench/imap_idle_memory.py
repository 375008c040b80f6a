#!/usr/bin/env python3
"""Server memory with thousands of authenticated IMAP connections in IDLE: postroom vs Dovecot.

For each server: ``--users`` users (default 500) with ``--messages`` small messages each
(default 100) in INBOX; then ``--connections`` sessions (default 5,000, spread evenly over
the users) connect, log in, SELECT INBOX and enter IDLE. The server's memory is read from
/proc before the first connection and once every session idles (after a short settle):

* postroom is one process: its RSS (and PSS, which is the same for a lone process);
* Dovecot runs one ``imap`` process per session plus the master, auth, anvil, config, log
  and short-lived ``imap-login`` processes: the sum of RSS over its process tree counts
  shared pages (libraries, mmapped indexes) once per process, so the sum of PSS (shared
  pages split among their sharers) is reported too and is the fairer per-connection cost.

Then, with every session still idle, one message goes to one user: for postroom through
SMTP (the mx listener, fsync on), for Dovecot as a Maildir file (tmp/ then rename into
new/, as an MDA does). Reported: the time from the start of the delivery until each of that
user's sessions sees ``* n EXISTS`` (goal for postroom: < 1 s), and that sessions of other
users saw nothing. Note for Dovecot: IDLE notification uses inotify, one instance per imap
process, and the kernel's fs.inotify.max_user_instances (128 by default; all imap processes
run as one user) caps how many get one; the others poll every mailbox_idle_check_interval
(30 s), so its wake time depends on which session is picked.

Limits raised for the run: RLIMIT_NOFILE of this process (inherited by both servers) to its
hard limit; postroom's limits.connections_total/connections_per_ip; Dovecot's
default_process_limit, default_client_limit, service imap process_limit and
mail_max_userip_connections. With ``--sources N`` the sessions come from 127.0.0.1..N
(each has ~28,000 ephemeral ports towards one server port).

Logins: postroom sessions authenticate with SCRAM-SHA-256 (the client caches the salted
password, so the server's cost per login is a few HMACs rather than an argon2 verify);
Dovecot ones with LOGIN against a plain passwd-file (equally cheap). ``--auth login`` makes
postroom use LOGIN too (argon2id: ~40 ms of CPU each, minutes for 5,000).

Usage (as root for Dovecot): .venv/bin/python bench/imap_idle_memory.py [--connections 5000]
    [--users 500] [--no-dovecot] [--no-postroom]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from support import dovecot as dc  # noqa: E402
from support.imap_async import ImapClient, ImapError  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

DOMAIN = "bench.test"


def small_message(i: int, to: str) -> bytes:
    return (
        f"From: Sender {i % 50} <sender{i % 50}@example.org>\r\nTo: <{to}>\r\n"
        f"Subject: message {i}\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        f"Message-ID: <idle.{i}@example.org>\r\n\r\n" + "body line of text\r\n" * (40 + i % 60)
    ).encode()


@dataclass
class Result:
    name: str
    connections: int
    connect_seconds: float
    rss_before: int  # KiB
    rss_after: int
    pss_before: int
    pss_after: int
    processes: int
    wake: list[float]  # seconds, per session of the woken user (inf = not woken)
    others_quiet: bool

    @property
    def per_conn_rss(self) -> float:
        return (self.rss_after - self.rss_before) / self.connections

    @property
    def per_conn_pss(self) -> float:
        return (self.pss_after - self.pss_before) / self.connections


# -- opening the sessions -------------------------------------------------------------------
async def open_sessions(
    port: int, users: list[str], n: int, auth: str, sources: int, parallel: int
) -> list[tuple[str, ImapClient]]:
    sem = asyncio.Semaphore(parallel)
    cache: dict[tuple[str, bytes, int], bytes] = {}
    out: list[tuple[str, ImapClient] | None] = [None] * n
    failures: list[str] = []

    async def one(i: int) -> None:
        user = users[i % len(users)]
        src = f"127.0.0.{1 + i % sources}"
        async with sem:
            for attempt in range(3):
                try:
                    c = await ImapClient.connect("127.0.0.1", port, local_addr=(src, 0), timeout=120)
                    if auth == "scram":
                        await c.authenticate_scram(user, PASSWORD, cache)
                    else:
                        await c.login(user, PASSWORD)
                    await c.command("SELECT INBOX")
                    await c.idle_start()
                    out[i] = (user, c)
                    return
                except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    if attempt == 2:
                        failures.append(f"session {i}: {type(e).__name__}: {e}")
                    await asyncio.sleep(0.5)

    # The first session alone fills the SCRAM cache, so the rest never pay PBKDF2.
    await one(0)
    await asyncio.gather(*(one(i) for i in range(1, n)))
    if failures:
        print(f"{len(failures)} sessions failed; first: {failures[:3]}")
    return [s for s in out if s is not None]


async def close_sessions(sessions: list[tuple[str, ImapClient]]) -> None:
    for _, c in sessions:
        c.close()
    await asyncio.sleep(0.5)


async def wake_test(
    sessions: list[tuple[str, ImapClient]], user: str, deliver, timeout: float  # type: ignore[no-untyped-def]
) -> tuple[list[float], bool]:
    """Deliver one message to ``user``; seconds until each of its sessions saw EXISTS."""
    mine = [c for u, c in sessions if u == user]
    others = [c for u, c in sessions if u != user][:: max(1, len(sessions) // 200)]
    t0 = time.monotonic()

    async def watch(c: ImapClient) -> float:
        end = t0 + timeout
        while True:
            line = await c.idle_wait(max(0.0, end - time.monotonic()))
            if line is None:
                return float("inf")
            if line.rstrip().endswith(b"EXISTS"):
                return time.monotonic() - t0

    watchers = [asyncio.create_task(watch(c)) for c in mine]
    await asyncio.to_thread(deliver)
    wake = await asyncio.gather(*watchers)
    quiet = True  # keep-alives ("* OK Still here") are fine; mailbox updates are not
    for c in others:
        for _ in range(10):
            line = await c.idle_wait(0.01)
            if line is None:
                break
            if line.split(b" ")[2:3] in ([b"EXISTS\r\n"], [b"FETCH"], [b"EXPUNGE\r\n"]):
                quiet = False
    return list(wake), quiet


async def measure(
    name: str, port: int, pid: int, users: list[str], args: argparse.Namespace, auth: str, deliver  # type: ignore[no-untyped-def]
) -> Result:
    await asyncio.sleep(1.0)
    rss0, pss0, _ = dc.tree_memory_kib(pid)
    t = time.monotonic()
    sessions = await open_sessions(port, users, args.connections, auth, args.sources, args.parallel)
    connect_s = time.monotonic() - t
    print(f"{name}: {len(sessions)} sessions in IDLE after {connect_s:.0f}s", flush=True)
    await asyncio.sleep(args.settle)
    rss1, pss1, nproc = dc.tree_memory_kib(pid)
    target = users[len(users) // 2]
    wake, quiet = await wake_test(sessions, target, lambda: deliver(target), args.wake_timeout)
    await close_sessions(sessions)
    return Result(name, len(sessions), connect_s, rss0, rss1, pss0, pss1, nproc, wake, quiet)


# -- the two servers ------------------------------------------------------------------------------
def postroom_server(
    base: Path, users: list[str], messages: int, connections: int, workers: str = "auto"
) -> Server:
    limit = connections + 1000
    server = Server(
        base / "postroom",
        roles=("imap", "mx"),
        fsync=True,
        workers=int(workers) if workers.isdigit() else workers,
        extra=(
            "[imap]\nallow_plaintext_auth = true\n"
            f"[limits]\nauth_delay = \"10ms\"\nconnections_total = {limit}\n"
            f"connections_per_ip = {limit}\n"
        ),
    )
    server.add_user(users[0])

    async def fn(admin, store):  # type: ignore[no-untyped-def]
        from postroom.deliver import summarize
        from postroom.store.api import Delivery

        first = await store.get_user(users[0])
        ids = [first.id]
        for u in users[1:]:
            # One argon2id/SCRAM derivation shared by all: the users' passwords are equal.
            ids.append((await store.add_user(u, first.password_hash, first.scram)).id)
        for i in range(messages):
            data = small_message(i, "users@bench.test")
            await store.deliver(Delivery(data=data, summary=summarize(data), user_ids=tuple(ids)))

    server.admin(fn)
    return server


def smtp_deliver(port: int) -> object:
    def deliver(user: str) -> None:
        msg = small_message(999999, user)
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.org", timeout=30) as s:
            s.sendmail("sender@example.org", [user], msg)

    return deliver


def maildir_deliver(d: dc.Dovecot) -> object:
    def deliver(user: str) -> None:
        base = d.maildir(user.split("@")[0])
        name = f"{int(time.time())}.M1P{os.getpid()}.wake"
        tmp = base / "tmp" / name
        tmp.write_bytes(small_message(999999, user))
        os.chown(tmp, d.uid, d.gid)
        os.rename(tmp, base / "new" / name)

    return deliver


DOVECOT_LIMITS = """
default_process_limit = {procs}
default_client_limit = {clients}
default_vsz_limit = 256M
service imap {{
  process_limit = {procs}
}}
service imap-login {{
  process_limit = 512
}}
"""


# -- report ------------------------------------------------------------------------------------------
def report(results: list[Result]) -> None:
    print()
    for r in results:
        finite = [w for w in r.wake if w != float("inf")]
        print(
            f"{r.name}: {r.connections} IDLE sessions (opened in {r.connect_seconds:.0f}s), "
            f"{r.processes} server processes"
        )
        print(
            f"  RSS {r.rss_before / 1024:,.1f} MiB before -> {r.rss_after / 1024:,.1f} MiB after: "
            f"{r.per_conn_rss:,.1f} KiB per connection"
        )
        print(
            f"  PSS {r.pss_before / 1024:,.1f} MiB before -> {r.pss_after / 1024:,.1f} MiB after: "
            f"{r.per_conn_pss:,.1f} KiB per connection"
        )
        print(
            f"  delivery to one user woke {len(finite)}/{len(r.wake)} of its sessions; "
            + (
                f"wake time median {statistics.median(finite) * 1000:.0f} ms, max {max(finite) * 1000:.0f} ms"
                if finite
                else "none woke"
            )
            + ("; other users' sessions stayed quiet" if r.others_quiet else "; OTHER SESSIONS GOT DATA")
        )
    for r in results:
        if r.name == "postroom":
            worst = max(r.wake) if r.wake else float("inf")
            print(
                f"goals (postroom): RSS with {r.connections} IDLE sessions well under 1 GiB: "
                f"{'met' if r.rss_after < 1024 * 1024 else 'NOT met'} ({r.rss_after / 1024:,.0f} MiB); "
                f"delivery wakes IDLE within 1 s: {'met' if worst < 1.0 else 'NOT met'}"
            )
    if len(results) == 2:
        a, b = results
        print(
            f"ratio {a.name}/{b.name} memory per connection: PSS {a.per_conn_pss / b.per_conn_pss:.3f}x, "
            f"RSS {a.per_conn_rss / b.per_conn_rss:.3f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--messages", type=int, default=100, help="messages per INBOX")
    ap.add_argument("--sources", type=int, default=1, help="client addresses 127.0.0.1..N")
    ap.add_argument("--parallel", type=int, default=100, help="logins in flight")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--wake-timeout", type=float, default=40.0)
    ap.add_argument("--auth", choices=("scram", "login"), default="scram", help="postroom's login")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--workers", default="auto", help="postroom's server.workers (auto or N)")
    ap.add_argument("--no-postroom", action="store_true")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} < {need}; sessions may fail")
    tmp = None
    if args.dir:
        base = Path(args.dir)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="postroom-idlebench-")
        base = Path(tmp.name)
    users = [f"i{k}@{DOMAIN}" for k in range(1, args.users + 1)]
    results: list[Result] = []
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            if not args.no_postroom:
                t = time.monotonic()
                server = postroom_server(base, users, args.messages, args.connections, args.workers)
                print(f"postroom: prepared {len(users)} users x {args.messages} messages in {time.monotonic() - t:.0f}s")
                server.start()
                try:
                    assert server.proc is not None
                    results.append(
                        runner.run(
                            measure("postroom", server.ports["imap"], server.proc.pid, users, args,
                                    args.auth, smtp_deliver(server.ports["mx"]))
                        )
                    )
                finally:
                    server.stop()
            if not args.no_dovecot:
                why = dc.available()
                if why:
                    print(f"Dovecot skipped: {why}")
                else:
                    procs = args.connections + 600
                    d = dc.Dovecot(
                        base / "dovecot", [u.split("@")[0] for u in users], PASSWORD, DOMAIN,
                        extra=DOVECOT_LIMITS.format(procs=procs, clients=2 * args.connections + 1000),
                    )
                    d.setup()
                    for u in users:
                        local = u.split("@")[0]
                        d.write_maildir(local, [small_message(i, u) for i in range(args.messages)])
                    d.start()
                    try:
                        runner.run(warm_dovecot(d.port, users))
                        results.append(
                            runner.run(measure("dovecot", d.port, d.pid, users, args, "login", maildir_deliver(d)))
                        )
                    finally:
                        d.stop()
                    n = d.log().count("Inotify instance limit")
                    if n:
                        print(
                            f"dovecot: {n} imap processes found fs.inotify.max_user_instances exhausted "
                            "and poll for IDLE changes instead (mailbox_idle_check_interval)"
                        )
        print(
            f"\n{args.connections} connections over {args.users} users ({args.messages} messages each), "
            f"each: LOGIN/AUTHENTICATE, SELECT INBOX, IDLE"
        )
        report(results)
    finally:
        if tmp is not None:
            subprocess.run(["rm", "-rf", str(base)], check=False)


async def warm_dovecot(port: int, users: list[str]) -> None:
    """First SELECT per user builds Dovecot's index (postroom's store needs no such step)."""
    sem = asyncio.Semaphore(20)

    async def one(u: str) -> None:
        async with sem:
            c = await ImapClient.connect("127.0.0.1", port, timeout=60)
            await c.login(u, PASSWORD)
            await c.command("SELECT INBOX")
            await c.logout()

    await asyncio.gather(*(one(u) for u in users))


if __name__ == "__main__":
    main()
