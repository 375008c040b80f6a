#!/usr/bin/env python3
"""Several postroom nodes on one PostgreSQL: throughput with 1, 2 and 3 nodes, and one node
on SQLite for comparison (issue 11).

Configurations, each on fresh data: ``sqlite`` (one node, the embedded store) and
``pg1``, ``pg2``, ``pg3`` (1, 2, 3 ``postroom serve`` nodes sharing one private PostgreSQL
server). Everything runs on this machine, with fsync on for both stores. Workloads, the
same for every configuration, spread round-robin over the nodes (as DNS or a load balancer
would):

* **smtp**: ``--smtp`` messages of 5 KB to local users over 20 sessions in total, one
  message per connection (Postfix's ``smtp-source``, one per node); msg/s until every
  message got its 250;
* **imap**: 20 clients on already filled mailboxes running ``bench/imap_load.py``'s command
  mix (fetches, STORE, SEARCH, APPEND+EXPUNGE, IDLE, re-SELECT) for ``--duration`` s;
  commands/s;
* **relay**: ``--relay`` messages of 5 KB to an alias that forwards to a remote address,
  routed to ``smtp-sink``; msg/s from the first injection until the sink has them all.

For each it prints the rate, the CPU milliseconds per message (or command) of every node
and of PostgreSQL (its whole process tree), the ratio against ``pg1`` and, for ``pg1``,
against ``sqlite``. On a machine with few cores the nodes and the database share them:
compare CPU per message to see what a node costs and how much of each message is the
database's, and the rates to see where the machine (not the design) saturates. The load
average is printed, since other work on the machine changes every figure.

``--node-cpu F`` gives every node a CPU quota of F cores (a cgroup v1 ``cpu`` group per
node with ``cfs_quota_us``; root needed), which makes each node a small machine of its
own: the rate is then bound by the nodes' CPU, as on a deployment where each node has its
own cores, and the database and the load generators keep the rest of this machine. That
is how "2 nodes >= 1.7x one node on the CPU-bound paths" can be measured on few cores:
without it, every configuration shares the same two cores and more nodes cannot add
throughput. Pick F so that F x nodes plus the database's and clients' share fits the
machine (0.3 on 2 cores for up to 2 nodes). The offered load then grows with the nodes
(20 SMTP sessions and 20 IMAP clients per node, not in all), so that every configuration
is saturated: with 10 sessions each, two quota-bound nodes wait on round trips rather
than on their CPU.

Usage: .venv/bin/python bench/cluster.py [--smtp 3000] [--relay 1000] [--duration 15]
       [--nodes 1,2,3] [--no-sqlite] [--node-cpu F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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

import imap_load  # noqa: E402
from benchlib import tree_pids  # noqa: E402
from relay import Sink, tree_cpu  # noqa: E402
from smtp_accept import smtp_source  # noqa: E402
from support.mailgen import mailbox  # noqa: E402
from support.postgres import PgCluster  # noqa: E402
from support.server import Server  # noqa: E402

DOMAIN = "bench.test"
USERS = [f"u{i}@{DOMAIN}" for i in range(1, 21)]
RELAY = f"fwd@{DOMAIN}"
SESSIONS = 20
CLIENTS = 20
PER_NODE_LOAD = False  # --node-cpu: SESSIONS and CLIENTS per node (see the docstring)


@dataclass
class Figure:
    rate: float
    node_ms: list[float]  # CPU ms per unit, per node
    db_ms: float  # PostgreSQL CPU ms per unit (0 for SQLite)
    note: str = ""


@dataclass
class Setup:
    name: str
    nodes: list[Server]
    cluster: PgCluster | None
    results: dict[str, Figure] = field(default_factory=dict)

    def cpu(self) -> tuple[list[float], float]:
        nodes = [tree_cpu(n.proc.pid) for n in self.nodes if n.proc]
        db = tree_cpu(self.cluster.proc.pid) if self.cluster and self.cluster.proc else 0.0
        return nodes, db


def start(name: str, count: int, base: Path, sink: Sink, cluster: PgCluster | None,
          quota: CpuQuota | None = None) -> Setup:
    from postroom.admin.service import _hash

    database = cluster.create_database(name) if cluster else ""
    extra = (f'[outbound]\ntransport = {{ "sink.test" = "127.0.0.1:{sink.port}" }}\n'
             'connection_cache_time = "2s"\n[imap]\nallow_plaintext_auth = true\n')
    nodes = []
    for i in range(count):
        node_extra = extra + f'[server]\nnode_name = "{name}-{i}"\n'
        nodes.append(Server(base / f"{name}-{i}", roles=("mx", "imap"), fsync=True,
                            hostname=f"mail.{DOMAIN}", extra=node_extra,
                            backend="postgresql" if cluster else "sqlite", database=database))
    creds = _hash(imap_load.PASSWORD)

    async def users(admin, store):  # type: ignore[no-untyped-def]
        await admin.domain_add(DOMAIN)
        for address in USERS:
            await store.add_user(address, creds.password_hash, creds.scram)
        await store.add_alias(RELAY, ["r@sink.test"])

    nodes[0].admin(users)
    for k, address in enumerate(USERS):  # 200 messages each for the IMAP mix
        imap_load.deliver_all(nodes[0], address, mailbox(200, address, seed=k + 1))
    for i, n in enumerate(nodes):
        n.start()
        if quota is not None and n.proc is not None:
            quota.confine(f"{name}-{i}", n.proc.pid)
    return Setup(name, nodes, cluster)


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


class CpuQuota:
    """One cgroup v1 ``cpu`` group per node, limited to ``cores`` CPUs (see --node-cpu)."""

    def __init__(self, cores: float) -> None:
        if not (CGROUP_CPU / "cgroup.procs").exists():
            raise SystemExit(f"--node-cpu needs the cgroup v1 cpu controller at {CGROUP_CPU}")
        self.cores = cores
        self.groups: list[Path] = []

    def confine(self, name: str, pid: int) -> None:
        """Move ``pid`` and its descendants (a node's supervisor and workers) into a group
        of their own; processes they start later are born in it."""
        group = CGROUP_CPU / f"postroom-bench-{os.getpid()}-{name}"
        group.mkdir(exist_ok=True)
        # A short period (10 ms): with the default 100 ms a node that used its quota early
        # would stall for the rest of the period, adding up to 70 ms to every reply.
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text(str(int(self.cores * 10000)))
        self.groups.append(group)
        for p in tree_pids(pid):
            try:
                (group / "cgroup.procs").write_text(str(p))
            except OSError:  # exited meanwhile
                pass

    def throttled(self) -> float:
        """Seconds the groups were held back by their quota so far (all groups)."""
        total = 0
        for g in self.groups:
            for line in (g / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":
                    total += int(value)
        return total / 1e9

    def remove(self) -> None:
        for g in self.groups:
            for _ in range(50):  # the node's processes must have left it first
                try:
                    g.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        self.groups.clear()


def measure(setup: Setup, units: int, run: object) -> Figure:
    nodes0, db0 = setup.cpu()
    t0 = time.perf_counter()
    note = run()  # type: ignore[operator]
    dt = time.perf_counter() - t0
    nodes1, db1 = setup.cpu()
    done = units if not isinstance(note, int) else note
    per = max(done, 1)
    return Figure(done / dt, [1000 * (b - a) / per for a, b in zip(nodes0, nodes1, strict=True)],
                  1000 * (db1 - db0) / per, "" if not isinstance(note, str) else note)


def smtp(setup: Setup, count: int, rcpt: str | None = None, wait: object = None) -> str:
    """smtp-source against every node at once, sessions and messages split evenly."""
    procs = []
    n = len(setup.nodes)
    for i, node in enumerate(setup.nodes):
        to = rcpt or USERS[i % len(USERS)]
        share = count // n + (i < count % n)  # every message is sent: 500 over 3 nodes too
        procs.append(subprocess.Popen(
            [smtp_source(), "-4", "-s", str(SESSIONS if PER_NODE_LOAD else SESSIONS // n),
             "-m", str(share), "-l", "5120",
             "-f", "bench@client.test", "-t", to, "-M", "client.test",
             f"127.0.0.1:{node.ports['mx']}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))
    errors = [p.communicate()[1][-200:] for p in procs if p.wait() != 0]
    if wait is not None:
        wait()  # type: ignore[operator]
    return "; ".join(errors)


def imap(setup: Setup, duration: float) -> int:
    targets = [imap_load.Target(f"n{i}", node.ports["imap"], node.proc.pid, USERS)  # type: ignore[union-attr]
               for i, node in enumerate(setup.nodes)]

    async def main() -> int:
        stats = imap_load.Stats()
        clients = CLIENTS * len(targets) if PER_NODE_LOAD else CLIENTS
        sessions = [imap_load.Session(targets[i % len(targets)], USERS[i % len(USERS)],
                                      random.Random(i), stats) for i in range(clients)]
        await asyncio.gather(*(s.open() for s in sessions))
        start_ev = asyncio.Event()
        deadline = [time.monotonic() + duration]
        tasks = [asyncio.create_task(s.run(start_ev, deadline, imap_load.MIX)) for s in sessions]
        start_ev.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(s.cleanup() for s in sessions))
        return sum(stats.count.values())

    return asyncio.run(main())


def fmt(f: Figure, base: Figure | None, label: str) -> str:
    """Rate, then CPU ms per message (or command) of all nodes together [each node's share]
    and of PostgreSQL, then the ratio against the base configuration."""
    nodes = " ".join(f"{x:.2f}" for x in f.node_ms)
    ratio = f"  {label} {f.rate / base.rate:.2f}x" if base else ""
    note = f" ({f.note})" if f.note else ""
    return (f"{f.rate:7.0f}/s  nodes {sum(f.node_ms):5.2f} ms [{nodes}]  db {f.db_ms:5.2f} ms  "
            f"total {sum(f.node_ms) + f.db_ms:5.2f} ms{ratio}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smtp", type=int, default=3000)
    ap.add_argument("--relay", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--node-cpu", type=float, default=0.0,
                    help="CPU quota per node in cores (cgroup v1; root): nodes as small machines")
    args = ap.parse_args()
    quota = CpuQuota(args.node_cpu) if args.node_cpu > 0 else None
    global PER_NODE_LOAD
    PER_NODE_LOAD = quota is not None
    base = Path(tempfile.mkdtemp(prefix="postroom-cluster-"))
    sink = Sink()
    cluster = PgCluster(durable=True, settings={"max_connections": "400"}).start()
    configs = ([] if args.no_sqlite else [("sqlite", 1)]) + [
        (f"pg{n}", n) for n in (int(x) for x in args.nodes.split(","))]
    setups: list[Setup] = []
    try:
        for name, count in configs:
            setup = start(name, count, base, sink, None if name == "sqlite" else cluster, quota)
            setups.append(setup)
            try:
                setup.results["smtp"] = measure(setup, args.smtp, lambda s=setup: smtp(s, args.smtp))
                setup.results["imap"] = measure(setup, 0, lambda s=setup: imap(s, args.duration))
                target = sink.count + args.relay

                def drained(want: int = target) -> None:
                    end = time.monotonic() + 600
                    while sink.count < want and time.monotonic() < end:
                        time.sleep(0.05)

                setup.results["relay"] = measure(
                    setup, args.relay, lambda s=setup, w=drained: smtp(s, args.relay, RELAY, w))
            finally:
                for node in setup.nodes:
                    node.stop()
            print(f"{name}: done", file=sys.stderr, flush=True)
    finally:
        sink.stop()
        cluster.destroy()
        if quota is not None:
            quota.remove()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"# postroom cluster bench: {len(os.sched_getaffinity(0))} cores, load average {load} "
          f"at the end; fsync on; smtp {args.smtp} x 5 KB, imap {CLIENTS} clients x "
          f"{args.duration:.0f} s, relay {args.relay} x 5 KB"
          + (f"; every node limited to {args.node_cpu:g} cores (cgroup quota), "
             f"{SESSIONS} SMTP sessions and {CLIENTS} IMAP clients per node" if quota else ""))
    by = {s.name: s for s in setups}
    for work in ("smtp", "imap", "relay"):
        unit = "command" if work == "imap" else "message"
        print(f"{work}: rate; CPU ms per {unit}: all nodes [each node], PostgreSQL, total")
        for s in setups:
            f = s.results.get(work)
            if f is None:
                continue
            if s.name == "sqlite":
                print(f"  {s.name:6} {fmt(f, None, '')}")
            elif s.name == "pg1":
                other = by.get("sqlite")
                print(f"  {s.name:6} {fmt(f, other.results.get(work) if other else None, 'vs sqlite')}")
            else:
                one = by.get("pg1")
                print(f"  {s.name:6} {fmt(f, one.results.get(work) if one else None, 'vs pg1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
