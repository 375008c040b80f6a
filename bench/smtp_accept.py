#!/usr/bin/env python3
"""SMTP accept rate of postroom's MX listener vs Postfix, with Postfix's own smtp-source.

The job, identical for both servers in the same run: ``smtp-source -s 20`` (20 parallel
sessions, one message per connection, as an MX sees the Internet) sends N messages of a
given size to one local user, fsync on. For each mix and run it prints:

* accept msg/s: N / time until smtp-source exits (every message got its 250);
* e2e msg/s: N / time until N more messages are in the mailbox (postroom: rows in the
  store, which its 250 already guarantees; Postfix: files in the Maildir, after its queue
  manager and virtual(8) ran);
* CPU ms/msg: CPU the server used per message, until the last one was in the mailbox
  (postroom: the supervisor and its worker processes, all threads; Postfix: its whole
  process tree, reaped children included);
* cores: the cores the server kept busy (its CPU seconds / wall seconds) and msg/s/core
  (= 1000 / CPU ms per message), which shows what a faster or slower machine changes
  whatever the number of cores, the client or the other tenants;
* client: smtp-source's CPU per message; other / steal: the share of the machine's CPU
  time that went to other processes (neither server nor client) and to the hypervisor's
  other guests meanwhile (a busy machine is why runs differ);
* then, per mix: every figure as ``median [min..max]`` over the runs, the ratio
  postroom/Postfix of the medians and the median (and spread) of the per-run paired
  ratios; runs alternate which server goes first.

postroom's inbound SPF/DKIM/DMARC checks are off (the test harness's default), as Postfix
here runs without milters; bench/auth_checks.py measures them.

Mixes: 5 KB (the headline), 1 KB and 100 KB, 20 sessions each. ``--count`` shortens the
5 KB and 1 KB mixes (the 100 KB mix sends a tenth of it). ``--workers`` sets postroom's
``server.workers`` (default "auto": one worker per CPU). ``--cores N`` pins both servers
to N CPUs (smtp-source to the others). The reference Postfix comes from
``../shared/bench/postfix_ref.sh`` (a private instance on 127.0.0.1 with Maildir
delivery); without it, or without root, only postroom is measured and the peer is
reported as skipped.

Usage: bench/smtp_accept.py [--count 20000] [--runs 5] [--mix 5120,20,20000]... [--no-peer]
       [--workers auto|N] [--cores N] [--json FILE]
       [--profile FILE.svg|FILE.txt]  (py-spy record of postroom during its first run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import (  # noqa: E402
    MachineSample,
    machine_line,
    median,
    paired,
    pin_tree,
    preexec_pin,
    split_cpus,
    spread,
    tree_cpu,
    tree_pids,
)
from support.server import Server  # noqa: E402

# ../shared/bench of the development workspace; from a git worktree it is further up.
SHARED = next(
    (p / "shared" / "bench" for p in ROOT.parents if (p / "shared" / "bench").is_dir()),
    ROOT.parent / "shared" / "bench",
)
DOMAIN = "bench.test"
RCPT = f"u1@{DOMAIN}"


def smtp_source() -> str:
    path = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.path.exists(path):
        sys.exit("smtp-source not found (Debian: apt-get install postfix)")
    return path


@dataclass
class Mix:
    size: int
    sessions: int
    count: int

    def __str__(self) -> str:
        return f"{self.size // 1024}KBx{self.sessions}x{self.count}"


@dataclass
class Run:
    accept: float  # msg/s until every 250
    e2e: float | None  # msg/s until every message is in the mailbox
    cpu_ms: float  # server CPU per message
    cores: float  # server CPU seconds / wall seconds
    other_pct: float  # machine CPU used by other processes than the server and smtp-source
    steal_pct: float
    client_ms: float  # smtp-source's CPU per message
    error: str = ""

    @property
    def per_core(self) -> float:
        return 1000.0 / self.cpu_ms if self.cpu_ms else 0.0


@dataclass
class Target:
    label: str
    port: int
    pid: int
    delivered: object  # () -> int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def run_once(target: Target, mix: Mix, source: str, client_cpus: set[int] | None,
             timeout: float = 900) -> Run:
    d0 = target.delivered()  # type: ignore[operator]
    cpu0 = tree_cpu(target.pid)
    cmd = [
        source, "-4", "-s", str(mix.sessions), "-m", str(mix.count), "-l", str(mix.size),
        "-f", "bench@client.test", "-t", RCPT, "-M", "client.test", f"127.0.0.1:{target.port}",
    ]
    machine = MachineSample()
    c0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec_pin(client_cpus))
    t1 = time.perf_counter()
    c1 = os.times()
    client = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    error = "" if proc.returncode == 0 else f"smtp-source rc={proc.returncode}: {proc.stderr[-200:]}"
    want = d0 + mix.count
    n = target.delivered()  # type: ignore[operator]
    deadline = t1 + timeout
    last, last_t = n, time.perf_counter()
    while n < want and time.perf_counter() < deadline:
        time.sleep(0.05)
        n = target.delivered()  # type: ignore[operator]
        if n != last:
            last, last_t = n, time.perf_counter()
        elif time.perf_counter() - last_t > 30:
            break
    t2 = time.perf_counter()
    cpu = tree_cpu(target.pid) - cpu0
    use = machine.stop()
    if n < want:
        error += f" only {n - d0}/{mix.count} delivered"
    return Run(
        accept=mix.count / (t1 - t0), e2e=(n - d0) / (t2 - t0), cpu_ms=1000 * cpu / mix.count,
        cores=cpu / (t2 - t0), other_pct=use.other_pct(cpu + client), steal_pct=use.steal_pct,
        client_ms=1000 * client / mix.count, error=error.strip(),
    )


# -- postroom ---------------------------------------------------------------------------


def start_postroom(work: Path, workers: str = "auto") -> tuple[Server, Target]:
    srv = Server(
        work / "postroom", roles=("mx",), fsync=True, hostname=f"mail.{DOMAIN}",
        workers=int(workers) if workers.isdigit() else workers,
    )
    from postroom.admin.service import _hash

    creds = _hash("bench password")

    async def users(admin, store):  # type: ignore[no-untyped-def]
        await admin.domain_add(DOMAIN)
        for i in range(1, 101):
            await store.add_user(f"u{i}@{DOMAIN}", creds.password_hash, creds.scram)

    srv.admin(users)
    # The default logging (one line per transaction) stays on: it is part of the cost.
    srv.start()
    assert srv.proc is not None
    db = sqlite3.connect(f"file:{srv.data / 'postroom.sqlite3'}?mode=ro", uri=True, check_same_thread=False)

    def delivered() -> int:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    return srv, Target("postroom", srv.ports["mx"], srv.proc.pid, delivered)


# -- Postfix ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postfix:
    def __init__(self, work: Path) -> None:
        self.script = SHARED / "postfix_ref.sh"
        self.dir = work / "postfix"
        self.dir.mkdir(parents=True)
        os.chmod(work, 0o755)
        self.port = free_port()
        subprocess.run([str(self.script), "setup", str(self.dir), str(self.port)], check=True, capture_output=True)
        subprocess.run([str(self.script), "start", str(self.dir)], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        pid = int(subprocess.run([str(self.script), "pid", str(self.dir)], capture_output=True, text=True).stdout)
        self.maildir = self.dir / "mail"
        self.target = Target("postfix", self.port, pid, self.delivered)

    def delivered(self) -> int:
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.maildir):
            if os.path.basename(dirpath) in ("new", "cur"):
                n += len(filenames)
                dirnames[:] = []
        return n

    def stop(self) -> None:
        subprocess.run([str(self.script), "stop", str(self.dir)], capture_output=True)


def peer_problem() -> str | None:
    if not (SHARED / "postfix_ref.sh").exists():
        return f"{SHARED}/postfix_ref.sh not found"
    if os.geteuid() != 0:
        return "the reference Postfix needs root"
    if not shutil.which("postfix") and not os.path.exists("/usr/sbin/postfix"):
        return "postfix is not installed"
    return None


# -- report -------------------------------------------------------------------------------


def fmt(x: float | None, p: int = 0) -> str:
    return "-" if x is None else f"{x:.{p}f}"


def report(mixes: list[Mix], ours: Target, peer: Target | None) -> dict[str, object]:
    """Print the per-mix summary; return it for --json."""
    out: dict[str, object] = {}
    print("\n# RESULT: median [min..max] over the runs; ratio = postroom/Postfix")
    for mix in mixes:
        key = str(mix)
        rows = {"postroom": [r for r in ours.runs[key] if not r.error]}
        if peer is not None:
            rows["postfix"] = [r for r in peer.runs[key] if not r.error]
        print(f"{key}:")
        for name, runs in rows.items():
            print(
                f"  {name:>8}  accept {spread([r.accept for r in runs]):>26} msg/s"
                f"  e2e {spread([r.e2e for r in runs if r.e2e is not None]):>26} msg/s"
                f"  CPU {spread([r.cpu_ms for r in runs], 2):>20} ms/msg"
                f"  {spread([r.per_core for r in runs]):>22} msg/s/core"
                f"  cores {spread([r.cores for r in runs], 2)}"
            )
        summary: dict[str, object] = {n: [asdict(r) for r in rs] for n, rs in rows.items()}
        if peer is not None:
            both = [(a, b) for a, b in zip(ours.runs[key], peer.runs[key], strict=True) if not a.error and not b.error]
            acc = paired([a.accept for a, _ in both], [b.accept for _, b in both])
            e2e = paired([a.e2e or 0 for a, _ in both], [b.e2e or 0 for _, b in both])
            cpu = paired([a.cpu_ms for a, _ in both], [b.cpu_ms for _, b in both])
            pa, fa = median(r.accept for r in rows["postroom"]), median(r.accept for r in rows["postfix"])
            pc, fc = median(r.cpu_ms for r in rows["postroom"]), median(r.cpu_ms for r in rows["postfix"])
            print(
                f"  ratio accept {fmt(pa / fa if pa and fa else None, 2)}x (paired {spread(acc, 2)}),"
                f" e2e paired {spread(e2e, 2)},"
                f" CPU per message {fmt(pc / fc if pc and fc else None, 2)}x (paired {spread(cpu, 2)};"
                " < 1: postroom uses less)"
            )
            summary["paired_accept"] = acc
            summary["paired_cpu"] = cpu
        out[key] = summary
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000, help="messages per 5 KB / 1 KB run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mix", action="append", help="SIZE,SESSIONS,COUNT (repeatable)")
    ap.add_argument("--no-peer", action="store_true", help="measure postroom only")
    ap.add_argument("--workers", default="auto", help="postroom's server.workers (auto or N)")
    ap.add_argument("--cores", type=int, help="pin the servers to N CPUs (smtp-source to the rest)")
    ap.add_argument("--json", help="also write every run and the summary to this file")
    ap.add_argument("--profile", help="py-spy output file (.svg flame graph or .txt)")
    a = ap.parse_args()
    mixes = (
        [Mix(*map(int, m.split(","))) for m in a.mix]
        if a.mix
        else [Mix(5120, 20, a.count), Mix(1024, 20, a.count), Mix(102400, 20, max(1, a.count // 10))]
    )
    source = smtp_source()
    server_cpus, client_cpus = split_cpus(a.cores)
    work = Path(tempfile.mkdtemp(prefix="smtp_accept."))
    problem = None if not a.no_peer else "--no-peer"
    problem = problem or peer_problem()
    if server_cpus is not None:  # the servers and what they start inherit the pinning
        os.sched_setaffinity(0, server_cpus)
    srv, ours = start_postroom(work, a.workers)
    postfix = None
    targets = [ours]
    try:
        if problem is None:
            postfix = Postfix(work)
            targets.append(postfix.target)
            pin_tree(postfix.target.pid, server_cpus)
            version = subprocess.run(["postconf", "-h", "-d", "mail_version"], capture_output=True, text=True).stdout.strip()
            print(f"# peer: Postfix {version} on 127.0.0.1:{postfix.port} (private instance, Maildir)")
        else:
            print(f"# peer skipped: {problem}")
        if server_cpus is not None:
            os.sched_setaffinity(0, server_cpus | (client_cpus or set()))
        processes = len(tree_pids(ours.pid))
        print(machine_line())
        print(
            f"# postroom on 127.0.0.1:{ours.port} (fsync on, uvloop, workers={a.workers}: "
            f"{processes} processes); runs={a.runs}"
            + (f"; servers pinned to CPUs {sorted(server_cpus)}, smtp-source to {sorted(client_cpus or [])}"
               if server_cpus is not None else "")
        )
        profiled = False
        for mix in mixes:
            for t in targets:
                t.runs[str(mix)] = []
            for i in range(a.runs):
                order = targets if i % 2 == 0 else list(reversed(targets))
                for t in order:
                    spy = None
                    if a.profile and t is ours and not profiled:
                        spy = start_profile(a.profile, ours.pid)
                        profiled = True
                    time.sleep(1.0)  # let the previous run's writes settle
                    r = run_once(t, mix, source, client_cpus)
                    if spy is not None:
                        stop_profile(spy)
                    t.runs[str(mix)].append(r)
                    print(
                        f"{t.label:>9} {str(mix):>16} run {i + 1}: accept {r.accept:6.0f} msg/s"
                        f"  e2e {fmt(r.e2e):>6} msg/s  CPU {r.cpu_ms:5.2f} ms/msg"
                        f"  {r.per_core:5.0f} msg/s/core  cores {r.cores:4.2f}"
                        f"  client {r.client_ms:4.2f} ms/msg  other {r.other_pct:3.0f}%"
                        f"  steal {r.steal_pct:3.0f}% {r.error}",
                        flush=True,
                    )
        summary = report(mixes, ours, postfix.target if postfix is not None else None)
        if a.json:
            Path(a.json).write_text(json.dumps({
                "machine": machine_line(), "workers": a.workers, "cores": a.cores, "runs": a.runs,
                "mixes": summary,
            }, indent=1))
    finally:
        if postfix is not None:
            postfix.stop()
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def start_profile(out: str, pid: int) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt_ = "flamegraph" if out.endswith(".svg") else "raw"
    # --subprocesses: the worker processes too
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--subprocesses", "--threads", "--rate", "200",
         "--format", fmt_, "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()


if __name__ == "__main__":
    sys.exit(main())
