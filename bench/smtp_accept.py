#!/usr/bin/env python3
"""SMTP accept rate of postroom's MX listener vs Postfix, with Postfix's own smtp-source.

The job, identical for both servers in the same run: ``smtp-source -s 20`` (20 parallel
sessions, one message per connection, as an MX sees the Internet) sends N messages of a
given size to one local user, fsync on. For each mix and run it prints:

* accept msg/s: N / time until smtp-source exits (every message got its 250);
* e2e msg/s: N / time until N more messages are in the mailbox (postroom: rows in the
  store, which its 250 already guarantees; Postfix: files in the Maildir, after its queue
  manager and virtual(8) ran);
* srv cpu-s/1k: CPU seconds the server used per 1,000 messages (postroom: its one process,
  all threads; Postfix: its whole process tree, reaped children included);
* then medians over the runs and the ratio postroom/Postfix (ratio of the medians, and the
  median of the per-run paired ratios; runs alternate which server goes first).

Mixes: 5 KB (the headline), 1 KB and 100 KB, 20 sessions each. ``--count`` shortens the
5 KB and 1 KB mixes (the 100 KB mix sends a tenth of it). The reference Postfix comes from
``../shared/bench/postfix_ref.sh`` (a private instance on 127.0.0.1 with Maildir delivery);
without it, or without root, only postroom is measured and the peer is reported as skipped.

Usage: bench/smtp_accept.py [--count 20000] [--runs 3] [--mix 5120,20,20000]... [--no-peer]
       [--profile FILE.svg|FILE.txt]  (py-spy record of postroom during its first run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
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

from support.server import Server  # noqa: E402

# ../shared/bench of the development workspace; from a git worktree it is further up.
SHARED = next(
    (p / "shared" / "bench" for p in ROOT.parents if (p / "shared" / "bench").is_dir()),
    ROOT.parent / "shared" / "bench",
)
DOMAIN = "bench.test"
RCPT = f"u1@{DOMAIN}"
HZ = os.sysconf("SC_CLK_TCK")


# -- measuring -------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int]:
    """(ppid, utime+stime+cutime+cstime in ticks) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, reaped children included."""
    stats: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stats[int(d)] = _proc_stat(int(d))
            except (OSError, IndexError, ValueError):
                pass
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total / HZ


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
    accept: float
    e2e: float | None
    cpu_per_1k: float
    error: str = ""


@dataclass
class Target:
    label: str
    port: int
    pid: int
    delivered: object  # () -> int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def run_once(target: Target, mix: Mix, source: str, timeout: float = 900) -> Run:
    d0 = target.delivered()  # type: ignore[operator]
    cpu0 = tree_cpu(target.pid)
    cmd = [
        source, "-4", "-s", str(mix.sessions), "-m", str(mix.count), "-l", str(mix.size),
        "-f", "bench@client.test", "-t", RCPT, "-M", "client.test", f"127.0.0.1:{target.port}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.perf_counter()
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
    if n < want:
        error += f" only {n - d0}/{mix.count} delivered"
    return Run(mix.count / (t1 - t0), (n - d0) / (t2 - t0), 1000 * cpu / mix.count, error.strip())


# -- postroom ---------------------------------------------------------------------------


def start_postroom(work: Path) -> tuple[Server, Target]:
    srv = Server(work / "postroom", roles=("mx",), fsync=True, hostname=f"mail.{DOMAIN}")
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


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, p: int = 0) -> str:
    return "-" if x is None else f"{x:.{p}f}"


def summary(runs: list[Run]) -> tuple[float | None, float | None, float | None]:
    good = [r for r in runs if not r.error]
    return (
        median([r.accept for r in good]),
        median([r.e2e for r in good if r.e2e is not None]),
        median([r.cpu_per_1k for r in good]),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000, help="messages per 5 KB / 1 KB run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mix", action="append", help="SIZE,SESSIONS,COUNT (repeatable)")
    ap.add_argument("--no-peer", action="store_true", help="measure postroom only")
    ap.add_argument("--profile", help="py-spy output file (.svg flame graph or .txt)")
    a = ap.parse_args()
    mixes = (
        [Mix(*map(int, m.split(","))) for m in a.mix]
        if a.mix
        else [Mix(5120, 20, a.count), Mix(1024, 20, a.count), Mix(102400, 20, max(1, a.count // 10))]
    )
    source = smtp_source()
    work = Path(tempfile.mkdtemp(prefix="smtp_accept."))
    problem = None if not a.no_peer else "--no-peer"
    problem = problem or peer_problem()
    srv, ours = start_postroom(work)
    postfix = None
    targets = [ours]
    try:
        if problem is None:
            postfix = Postfix(work)
            targets.append(postfix.target)
            version = subprocess.run(["postconf", "-h", "-d", "mail_version"], capture_output=True, text=True).stdout.strip()
            print(f"# peer: Postfix {version} on 127.0.0.1:{postfix.port} (private instance, Maildir)")
        else:
            print(f"# peer skipped: {problem}")
        print(f"# postroom on 127.0.0.1:{ours.port} (fsync on, uvloop); {os.cpu_count()} CPUs; runs={a.runs}")
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
                    r = run_once(t, mix, source)
                    if spy is not None:
                        stop_profile(spy)
                    t.runs[str(mix)].append(r)
                    print(
                        f"{t.label:>9} {str(mix):>16} run {i + 1}: accept {r.accept:7.0f} msg/s"
                        f"  e2e {fmt(r.e2e):>7} msg/s  srv {r.cpu_per_1k:5.2f} cpu-s/1k {r.error}",
                        flush=True,
                    )
        print("\n# RESULT (medians; ratio = postroom/Postfix; paired = median of per-run ratios)")
        print(f"{'mix':>16} | {'postroom acc':>12} {'postfix acc':>11} {'ratio':>5} {'paired':>6} |"
              f" {'postroom e2e':>12} {'postfix e2e':>11} {'ratio':>5} | {'cpu-s/1k postroom':>17} {'postfix':>7}")
        for mix in mixes:
            key = str(mix)
            pa, pe, pc = summary(ours.runs[key])
            fa = fe = fc = None
            ratio_a = ratio_e = paired = None
            if postfix is not None:
                fa, fe, fc = summary(postfix.target.runs[key])
                if pa and fa:
                    ratio_a = pa / fa
                if pe and fe:
                    ratio_e = pe / fe
                pairs = [
                    o.accept / p.accept
                    for o, p in zip(ours.runs[key], postfix.target.runs[key], strict=True)
                    if not o.error and not p.error
                ]
                paired = median(pairs)
            print(f"{key:>16} | {fmt(pa):>12} {fmt(fa):>11} {fmt(ratio_a, 2):>5} {fmt(paired, 2):>6} |"
                  f" {fmt(pe):>12} {fmt(fe):>11} {fmt(ratio_e, 2):>5} | {fmt(pc, 2):>17} {fmt(fc, 2):>7}")
    finally:
        if postfix is not None:
            postfix.stop()
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def start_profile(out: str, pid: int) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fmt_ = "flamegraph" if out.endswith(".svg") else "raw"
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--threads", "--rate", "200", "--format", fmt_, "--output", out],
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
