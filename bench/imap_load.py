#!/usr/bin/env python3
"""IMAP mixed-load throughput: postroom against Dovecot, measured in the same run.

What it does, and why this way:

* Mailboxes are prepared the same way on both servers: ``--users`` users (default: one per
  client) with ``--messages`` messages each (default 2,000, sizes 1 KB-256 KB, mean ~18 KB,
  every tenth a multipart; ``tests/support/mailgen.py``), the same bytes on both sides:
  into postroom through the store API (``Store.deliver``, the path SMTP delivery uses, with
  the parse summary computed by ``deliver.summarize``), into Dovecot as Maildir files.
* postroom runs with ``fsync = true``; Dovecot with its default ``mail_fsync = optimized``
  (fsync when saving mail, i.e. APPEND and flag/expunge index writes are not all synced).
  Both serve plain IMAP on 127.0.0.1 (no TLS), and both verify passwords against an
  argon2id hash: postroom its own (t=3, 32 MiB, p=2), Dovecot ``doveadm pw -s ARGON2ID``
  (libsodium: t=3, 64 MiB, p=1). postroom remembers successful logins (AuthCache in
  auth/directory.py) and verifies a user's hash once; Dovecot gets ``auth_cache_size = 1M``
  too, but its cache keeps the passdb lookup and still runs argon2 on every login, in its
  one auth process: the login figures differ mostly by that design choice.
* ``--clients`` asyncio sessions (default 20, one process, uvloop when installed) each
  LOGIN, SELECT INBOX, FETCH 1:* (FLAGS UID) to learn the UIDs, then loop for
  ``--duration`` seconds picking commands at random with the weights in ``MIX``: header and
  body fetches of random messages (BODY.PEEK), STORE +FLAGS/-FLAGS, UID SEARCH (UNSEEN,
  FROM, SUBJECT), APPEND (synchronising literal) of a fresh message which is later
  flagged \\Deleted and EXPUNGEd (mailboxes keep their size across runs), IDLE enter and
  leave, re-SELECT, FETCH 1:* again.
* Logins are measured apart (each client: ``--logins`` x connect, LOGIN, SELECT, LOGOUT),
  because a password hash costs tens of milliseconds of CPU by design and would otherwise
  decide the whole mix.
* One client process drives both servers, so a slow client would slow both alike; the
  figures include the client's CPU use to show it was not the limit (a second core is
  left for the server), and server CPU-seconds per 1,000 commands, which does not depend on
  the client.

Prints commands/s per command and overall for each server (median of ``--runs`` runs,
alternating which server goes first), mean latency, and the ratio postroom/Dovecot (the
ratio of the medians and the median of the per-run ratios).

Also printed: every overall figure as ``median [min..max]`` over the runs and the machine
(``bench/benchlib.py``). ``--workers`` sets postroom's ``server.workers`` (default "auto").

Usage (as root, for Dovecot): .venv/bin/python bench/imap_load.py [--clients 20]
    [--messages 2000] [--duration 20] [--runs 5] [--workers auto|N] [--no-dovecot]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "bench"))

from benchlib import machine_line, paired, spread  # noqa: E402
from support import dovecot as dc  # noqa: E402
from support.imap_async import ImapClient, ImapError  # noqa: E402
from support.mailgen import WORDS, mailbox, message  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

DOMAIN = "bench.test"

# Command weights per loop iteration: what a mail client does between its reconnects
# (reading dominates; flag changes, searches, new mail and deletions are regular).
MIX: dict[str, int] = {
    "fetch_header": 25,  # UID FETCH u (UID RFC822.SIZE BODY.PEEK[HEADER])
    "fetch_body": 18,  # UID FETCH u (BODY.PEEK[])
    "store": 15,  # UID STORE u +FLAGS/-FLAGS (\Flagged) or (\Seen)
    "search": 10,  # UID SEARCH UNSEEN | FROM x | SUBJECT y
    "append": 7,  # APPEND INBOX (\Seen) {n}
    "expunge": 6,  # UID STORE <appended> +FLAGS.SILENT (\Deleted), then EXPUNGE
    "idle": 6,  # IDLE, DONE
    "select": 4,  # SELECT INBOX again
    "fetch_all": 4,  # FETCH 1:* (FLAGS UID)
}
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


@dataclass
class Stats:
    count: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def add(self, name: str, dt: float) -> None:
        self.count[name] = self.count.get(name, 0) + 1
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def error(self, name: str, e: BaseException) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{name}: {type(e).__name__}: {e}")


@dataclass
class RunResult:
    duration: float
    stats: Stats
    client_cpu: float  # fraction of one core
    server_cpu: float  # CPU-seconds

    @property
    def total(self) -> int:
        return sum(self.stats.count.values())


@dataclass
class Target:
    name: str
    port: int
    pid: int
    users: list[str]


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime (and reaped children's) over a process tree: Dovecot's imap processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in dc.process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


class Session:
    """One simulated mail client; every command is timed and counted under its name."""

    def __init__(self, target: Target, user: str, rng: random.Random, stats: Stats) -> None:
        self.target = target
        self.user = user
        self.rng = rng
        self.stats = stats
        self.client: ImapClient | None = None
        self.uids: list[int] = []
        self.appended: list[int] = []
        self.n_appends = 0

    async def timed(self, name: str, coro):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        r = await coro
        self.stats.add(name, time.perf_counter() - t)
        return r

    async def open(self) -> None:
        self.client = await ImapClient.connect("127.0.0.1", self.target.port, timeout=60)
        await self.client.login(self.user, PASSWORD)
        await self.client.command("SELECT INBOX")
        r = await self.client.command("FETCH 1:* (FLAGS UID)")
        self.uids = sorted(set(r.uids()))
        if not self.uids:
            raise ImapError(f"{self.user}: empty mailbox")

    async def logins(self, count: int) -> None:
        """The login phase: connect, LOGIN, SELECT, LOGOUT, ``count`` times."""
        for _ in range(count):
            try:
                t = time.perf_counter()
                c = await ImapClient.connect("127.0.0.1", self.target.port, timeout=60)
                await c.login(self.user, PASSWORD)
                await c.command("SELECT INBOX")
                await c.command("LOGOUT")
                c.close()
                self.stats.add("login", time.perf_counter() - t)
            except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                self.stats.error("login", e)

    async def step(self, op: str) -> None:
        c = self.client
        assert c is not None
        rng = self.rng
        if op == "fetch_header":
            u = rng.choice(self.uids)
            await self.timed(op, c.command(f"UID FETCH {u} (UID RFC822.SIZE BODY.PEEK[HEADER])"))
        elif op == "fetch_body":
            u = rng.choice(self.uids)
            await self.timed(op, c.command(f"UID FETCH {u} (BODY.PEEK[])"))
        elif op == "store":
            u = rng.choice(self.uids)
            sign = rng.choice("+-")
            flag = rng.choice(("\\Flagged", "\\Seen"))
            await self.timed(op, c.command(f"UID STORE {u} {sign}FLAGS ({flag})"))
        elif op == "search":
            kind = rng.randrange(3)
            if kind == 0:
                q = "UNSEEN"
            elif kind == 1:
                q = f"FROM sender{rng.randint(1, 50)}@example.org"
            else:
                q = f"SUBJECT {rng.choice(WORDS)}"
            await self.timed(op, c.command(f"UID SEARCH {q}"))
        elif op == "append":
            self.n_appends += 1
            data = message(rng, 100000 + self.n_appends, f"{self.user}")
            r = await self.timed(op, c.command_literal(b"APPEND INBOX (\\Seen)", data))
            m = _APPENDUID.search(r.text)
            if m:
                self.appended.append(int(m.group(1)))
        elif op == "expunge":
            if not self.appended:
                return
            uids = ",".join(str(u) for u in self.appended)
            self.appended.clear()
            await self.timed("store", c.command(f"UID STORE {uids} +FLAGS.SILENT (\\Deleted)"))
            await self.timed(op, c.command("EXPUNGE"))
        elif op == "idle":
            t = time.perf_counter()
            await c.idle_start()
            await c.idle_done()
            self.stats.add(op, time.perf_counter() - t)
        elif op == "select":
            await self.timed(op, c.command("SELECT INBOX"))
        elif op == "fetch_all":
            await self.timed(op, c.command("FETCH 1:* (FLAGS UID)"))

    async def run(self, start: asyncio.Event, deadline_box: list[float], mix: dict[str, int]) -> None:
        ops = list(mix)
        weights = list(mix.values())
        await start.wait()
        while time.monotonic() < deadline_box[0]:
            op = self.rng.choices(ops, weights)[0]
            try:
                if self.client is None:
                    await self.open()
                await self.step(op)
            except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                self.stats.error(op, e)
                if self.client is not None:
                    self.client.close()
                self.client = None
                await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        """Expunge what this session appended, so every run starts from the same mailboxes."""
        try:
            if self.client is None:
                await self.open()
            assert self.client is not None
            if self.appended:
                uids = ",".join(str(u) for u in self.appended)
                await self.client.command(f"UID STORE {uids} +FLAGS.SILENT (\\Deleted)")
                await self.client.command("EXPUNGE")
            await self.client.logout()
        except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError):
            pass


async def run_load(
    target: Target, clients: int, duration: float, seed: int, mix: dict[str, int] = MIX
) -> RunResult:
    stats = Stats()
    sessions = [
        Session(target, target.users[i % len(target.users)], random.Random(seed * 1000 + i), stats)
        for i in range(clients)
    ]
    # Setup (not timed): connect, log in, select, learn the UIDs.
    await asyncio.gather(*(s.open() for s in sessions))
    start = asyncio.Event()
    deadline = [0.0]
    tasks = [asyncio.create_task(s.run(start, deadline, mix)) for s in sessions]
    cpu0 = time.process_time()
    server0 = tree_cpu_seconds(target.pid)
    t0 = time.monotonic()
    deadline[0] = t0 + duration
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    client_cpu = (time.process_time() - cpu0) / elapsed
    server_cpu = tree_cpu_seconds(target.pid) - server0
    await asyncio.gather(*(s.cleanup() for s in sessions))
    return RunResult(elapsed, stats, client_cpu, server_cpu)


async def run_logins(target: Target, clients: int, per_client: int) -> tuple[float, Stats]:
    """Sessions per second: connect + LOGIN (argon2id verify) + SELECT + LOGOUT."""
    stats = Stats()
    sessions = [Session(target, target.users[i % len(target.users)], random.Random(i), stats) for i in range(clients)]
    t0 = time.monotonic()
    await asyncio.gather(*(s.logins(per_client) for s in sessions))
    return time.monotonic() - t0, stats


async def warm_up(target: Target) -> None:
    """First SELECT per mailbox (Dovecot builds its index; both fill the page cache)."""
    for user in target.users:
        c = await ImapClient.connect("127.0.0.1", target.port, timeout=120)
        await c.login(user, PASSWORD)
        await c.command("SELECT INBOX")
        await c.command("FETCH 1:* (FLAGS UID RFC822.SIZE)")
        await c.command("UID SEARCH UNSEEN")
        await c.logout()


# -- preparing the two servers ------------------------------------------------------------------
def prepare(args: argparse.Namespace, base: Path) -> tuple[Server | None, dc.Dovecot | None, list[str]]:
    users = [f"u{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    server = None
    dovecot = None
    if not args.no_postroom:
        server = Server(
            base / "postroom",
            roles=("imap",),
            fsync=True,
            workers=int(args.workers) if args.workers.isdigit() else args.workers,
            extra=(
                "[imap]\nallow_plaintext_auth = true\n"
                "[limits]\nauth_delay = \"10ms\"\nconnections_per_ip = 1000\n"
            ),
        )
        for u in users:
            server.add_user(u)
    if not args.no_dovecot:
        why = dc.available()
        if why:
            print(f"Dovecot skipped: {why}")
        else:
            dovecot = dc.Dovecot(
                base / "dovecot", [u.split("@")[0] for u in users], PASSWORD, DOMAIN,
                hashed=True,
                # postroom remembers successful logins (auth/directory.py AuthCache); the
                # nearest Dovecot setting (off by default) caches the passdb lookup only.
                extra="auth_cache_size = 1M\nauth_cache_ttl = 1 hour\n",
            )
            dovecot.setup()
    t = time.monotonic()
    for k, user in enumerate(users):
        msgs = mailbox(args.messages, user, seed=k + 1)
        if server is not None:
            deliver_all(server, user, msgs)
        if dovecot is not None:
            dovecot.write_maildir(user.split("@")[0], msgs)
    print(f"prepared {len(users)} mailboxes x {args.messages} messages in {time.monotonic() - t:.0f}s")
    return server, dovecot, users


def deliver_all(server: Server, address: str, msgs: list[bytes]) -> None:
    from postroom.deliver import summarize
    from postroom.store.api import Delivery

    async def fn(admin, store):  # type: ignore[no-untyped-def]
        user = await store.get_user(address)
        sem = asyncio.Semaphore(64)

        async def one(i: int, data: bytes) -> None:
            async with sem:
                await store.deliver(
                    Delivery(data=data, summary=summarize(data), user_ids=(user.id,),
                             internaldate=1_700_000_000 + i * 37)
                )

        # Concurrent deliveries share commits (group commit); UID order then follows
        # completion order, as Dovecot's follows directory order: neither matters here.
        await asyncio.gather(*(one(i, data) for i, data in enumerate(msgs)))

    server.admin(fn)


# -- reporting ----------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def report_logins(logins: dict[str, list[tuple[float, Stats]]]) -> None:
    rates = {}
    for n, rs in logins.items():
        rates[n] = med([st.count.get("login", 0) / dt for dt, st in rs])
        errs = sum(st.errors.get("login", 0) for _, st in rs)
        lat = med([st.seconds.get("login", 0) / max(st.count.get("login", 0), 1) * 1000 for _, st in rs])
        print(f"{n}: {rates[n]:,.1f} logins/s (connect+LOGIN+SELECT+LOGOUT), mean {lat:.0f} ms, errors {errs}")
        for _, st in rs:
            for e in st.first_errors:
                print(f"  error: {e}")
    names = list(rates)
    if len(names) == 2 and rates[names[1]]:
        print(f"ratio {names[0]}/{names[1]} logins/s: {rates[names[0]] / rates[names[1]]:.2f}x")


def report_single(single: dict[str, dict[str, list[RunResult]]]) -> None:
    """One command at a time (all clients): rate and server CPU per command."""
    names = list(next(iter(single.values())))
    print("\none command type at a time (expunge: append+expunge pairs), median of runs:")
    header = f"{'command':<14}" + "".join(f"{n + ' ops/s':>18}{n + ' CPU ms/op':>20}" for n in names)
    print(header + (f"{'ratio':>9}" if len(names) == 2 else ""))
    for op, by_name in single.items():
        row = f"{op:<14}"
        rates = []
        for n in names:
            rs = by_name[n]
            rate = med([r.stats.count.get(op, 0) / r.duration for r in rs])
            cpu = med([r.server_cpu / max(r.stats.count.get(op, 0), 1) * 1000 for r in rs])
            rates.append(rate)
            row += f"{rate:>18,.1f}{cpu:>20.2f}"
        if len(names) == 2 and rates[1]:
            row += f"{rates[0] / rates[1]:>8.2f}x"
        print(row)


def report(results: dict[str, list[RunResult]]) -> None:
    names = list(results)
    cmds = sorted({c for rs in results.values() for r in rs for c in r.stats.count}, key=lambda c: list(MIX).index(c) if c in MIX else 99)
    print()
    header = f"{'command':<14}" + "".join(f"{n + ' ops/s':>18}{n + ' ms':>14}" for n in names)
    if len(names) == 2:
        header += f"{'ratio':>9}"
    print(header)
    for cmd in cmds + ["TOTAL"]:
        row = f"{cmd:<14}"
        rates = []
        for n in names:
            if cmd == "TOTAL":
                per_run = [r.total / r.duration for r in results[n]]
                lat = [sum(r.stats.seconds.values()) / max(r.total, 1) * 1000 for r in results[n]]
            else:
                per_run = [r.stats.count.get(cmd, 0) / r.duration for r in results[n]]
                lat = [r.stats.seconds.get(cmd, 0) / max(r.stats.count.get(cmd, 0), 1) * 1000 for r in results[n]]
            rates.append(med(per_run))
            row += f"{med(per_run):>18,.1f}{med(lat):>14.2f}"
        if len(names) == 2 and rates[1]:
            row += f"{rates[0] / rates[1]:>8.2f}x"
        print(row)
    print()
    for n in names:
        rs = results[n]
        cpu_per_k = [r.server_cpu / max(r.total, 1) * 1000 for r in rs]
        errs = sum(sum(r.stats.errors.values()) for r in rs)
        print(
            f"{n}: overall {spread([r.total / r.duration for r in rs])} commands/s "
            f"(runs: {', '.join(f'{r.total / r.duration:,.0f}' for r in rs)}); "
            f"server CPU {spread(cpu_per_k, 2)} s per 1000 commands, "
            f"{med([r.server_cpu / r.duration for r in rs]) * 100:.0f}% of a core; "
            f"load-generator CPU {med([r.client_cpu for r in rs]) * 100:.0f}% of a core; errors {errs}"
        )
        for r in rs:
            for e in r.stats.first_errors:
                print(f"  error: {e}")
    if len(names) == 2:
        a, b = (results[n] for n in names)
        pairs = paired([x.total / x.duration for x in a], [y.total / y.duration for y in b])
        ratio_of_medians = med([x.total / x.duration for x in a]) / med([y.total / y.duration for y in b])
        print(
            f"ratio {names[0]}/{names[1]} overall commands/s: {ratio_of_medians:.2f}x "
            f"(per-run ratios {spread(pairs, 2)}; runs {', '.join(f'{p:.2f}' for p in pairs)})"
        )
        cpu_pairs = paired(
            [y.server_cpu / max(y.total, 1) for y in b], [x.server_cpu / max(x.total, 1) for x in a]
        )
        print(f"server CPU per command {names[1]}/{names[0]}: per-run {spread(cpu_pairs, 2)}")
        if names[0] == "postroom":
            print(f"goal (postroom >= 0.5x Dovecot): {'met' if med(pairs) >= 0.5 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--users", type=int, default=0, help="default: one per client")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", default="auto", help="postroom's server.workers (auto or N)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--logins", type=int, default=3, help="login-phase sessions per client and run")
    ap.add_argument("--per-command", type=float, default=0.0, metavar="SECONDS",
                    help="also run each command type alone for SECONDS per run (0: skip)")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--no-postroom", action="store_true", help="Dovecot alone (to test the bench)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a new temp folder, removed)")
    args = ap.parse_args()
    args.users = args.users or args.clients
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = None
    if args.dir:
        base = Path(args.dir)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="postroom-imapbench-")
        base = Path(tmp.name)
    server, dovecot, users = prepare(args, base)
    targets: list[Target] = []
    try:
        if server is not None:
            server.start()
            assert server.proc is not None
            targets.append(Target("postroom", server.ports["imap"], server.proc.pid, users))
        if dovecot is not None:
            dovecot.start()
            targets.append(Target("dovecot", dovecot.port, dovecot.pid, users))
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            for t in targets:
                tw = time.monotonic()
                runner.run(warm_up(t))
                print(f"{t.name}: warm-up (first SELECT of {len(users)} mailboxes) {time.monotonic() - tw:.1f}s")
            results: dict[str, list[RunResult]] = {t.name: [] for t in targets}
            logins: dict[str, list[tuple[float, Stats]]] = {t.name: [] for t in targets}
            for run in range(args.runs):
                order = targets if run % 2 == 0 else list(reversed(targets))
                for t in order:
                    r = runner.run(run_load(t, args.clients, args.duration, args.seed + run))
                    results[t.name].append(r)
                    print(
                        f"run {run + 1} {t.name}: {r.total / r.duration:,.0f} commands/s, "
                        f"server CPU {r.server_cpu / r.duration * 100:.0f}%, client CPU {r.client_cpu * 100:.0f}%, "
                        f"errors {sum(r.stats.errors.values())}",
                        flush=True,
                    )
                    logins[t.name].append(runner.run(run_logins(t, args.clients, args.logins)))
            single: dict[str, dict[str, list[RunResult]]] = {}
            if args.per_command:
                for op in MIX:
                    mix = {"append": 1, "expunge": 1} if op == "expunge" else {op: 1}
                    single[op] = {t.name: [] for t in targets}
                    for run in range(args.runs):
                        order = targets if run % 2 == 0 else list(reversed(targets))
                        for t in order:
                            r = runner.run(run_load(t, args.clients, args.per_command, args.seed + run, mix))
                            single[op][t.name].append(r)
        print("\n" + machine_line())
        print(
            f"{args.clients} clients, {len(users)} users x {args.messages} messages, workers={args.workers}, "
            f"{args.duration:.0f}s per run, median of {args.runs} runs; postroom fsync=true, "
            "Dovecot mail_fsync=optimized (default)"
        )
        report(results)
        print()
        report_logins(logins)
        if single:
            report_single(single)
    finally:
        if server is not None:
            server.stop()
        if dovecot is not None:
            dovecot.stop()
        if tmp is not None:
            subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
