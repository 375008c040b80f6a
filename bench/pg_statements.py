#!/usr/bin/env python3
"""Where a PostgreSQL node's database work goes: statements, round trips and commits per
message (issue 11).

Starts one private PostgreSQL (fsync on) with ``pg_stat_statements``, one ``postroom
serve`` node on it, and runs ``bench/cluster.py``'s three workloads (SMTP accept, the IMAP
mix, relay). Before each it resets the statistics; after it prints, per message (or IMAP
command): the node's and PostgreSQL's CPU ms, the transactions committed, the WAL flushes
(``pg_stat_wal``), and every statement with its calls and database time per unit, most
called first. Statement calls include the pool's connection resets and BEGIN/COMMIT,
so their sum is the number of round trips.

With ``--profile DIR`` the node is sampled by ``py-spy`` (``pip install py-spy``; root or
ptrace rights) during each workload, into ``DIR/<workload>.txt`` (collapsed stacks: feed
them to a flame graph tool, or sort the leaf functions).

Usage: .venv/bin/python bench/pg_statements.py [--smtp 1000] [--relay 300] [--duration 8]
       [--top 25] [--only smtp,imap,relay] [--profile DIR]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # noqa: E402
from cluster import RELAY, Sink, imap, smtp, start  # noqa: E402
from support.postgres import PgCluster  # noqa: E402

SETTINGS = {
    "max_connections": "200",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.track_utility": "on",
    "pg_stat_statements.track_planning": "on",  # plans per call: custom plans cost CPU
}


def reset(pg: PgCluster, db: str) -> None:
    pg.psql("SELECT pg_stat_statements_reset(); SELECT pg_stat_reset(); "
            "SELECT pg_stat_reset_shared('wal')", db)


def report(pg: PgCluster, db: str, units: int, top: int, nested: bool = False) -> None:
    time.sleep(0.6)  # the statistics collector's last flush
    per = max(units, 1)
    commits = pg.psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'", db)
    wal = pg.psql("SELECT wal_sync, wal_records, wal_bytes FROM pg_stat_wal", db).strip().split("|")
    print(f"    transactions committed {int(commits) / per:.2f}, WAL flushes {int(wal[0]) / per:.2f}, "
          f"WAL records {int(wal[1]) / per:.1f}, WAL bytes {int(wal[2]) / per:.0f} per unit")
    rows = pg.psql(
        "SELECT calls, total_exec_time, plans, total_plan_time, "
        "regexp_replace(query, '\\s+', ' ', 'g') "
        "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = "
        f"current_database()) AND toplevel <> {nested} ORDER BY calls DESC, total_exec_time DESC", db)
    total = plans_total = plan_ms_total = 0.0
    lines = []
    for line in rows.splitlines():
        calls, ms, plans, plan_ms, query = line.split("|", 4)
        total += int(calls) / per
        plans_total += int(plans) / per
        plan_ms_total += float(plan_ms) / per
        lines.append((int(calls) / per, float(ms) / per, int(plans) / per, query))
    print(f"    statements (round trips) {total:.2f} per unit, plans {plans_total:.2f} "
          f"({plan_ms_total:.3f} ms); calls, execution ms, plans per unit:")
    for calls, ms, plans, query in lines[:top]:
        print(f"      {calls:6.2f}  {ms:6.3f} ms  {plans:5.2f}  {query[:140]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smtp", type=int, default=1000)
    ap.add_argument("--relay", type=int, default=300)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--only", default="smtp,imap,relay")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--nested", action="store_true", help="also list statements run inside "
                    "server-side functions and triggers")
    args = ap.parse_args()
    only = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="postroom-pgstat-"))
    sink = Sink()
    pg = PgCluster(durable=True, settings=SETTINGS).start()
    try:
        setup = start("pgstat", 1, base, sink, pg)
        db = "pgstat"
        pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db)
        try:
            runs = {
                "smtp": (args.smtp, lambda: smtp(setup, args.smtp)),
                "imap": (0, lambda: imap(setup, args.duration)),
            }
            for work in ("smtp", "imap", "relay"):
                if work not in only:
                    continue
                reset(pg, db)
                if work == "relay":
                    target = sink.count + args.relay

                    def drained(want: int = target) -> None:
                        end = time.monotonic() + 600
                        while sink.count < want and time.monotonic() < end:
                            time.sleep(0.05)

                    units, run = args.relay, (lambda w=drained: smtp(setup, args.relay, RELAY, w))
                else:
                    units, run = runs[work]
                counted: list[int] = []

                def counting(run: object = run, units: int = units,
                             counted: list[int] = counted) -> object:
                    note = run()  # type: ignore[operator]
                    counted.append(note if isinstance(note, int) else units)
                    return note

                spy = None
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                         "-r", "200", "-o", str(args.profile / f"{work}.txt"), "--pid",
                         str(setup.nodes[0].proc.pid)],  # type: ignore[union-attr]
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                f = cluster.measure(setup, units, counting)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                print(f"{work}: {cluster.fmt(f, None, '')}")
                report(pg, db, counted[0], args.top)
                if args.nested:
                    print("    statements run inside functions and triggers:")
                    report(pg, db, counted[0], args.top, nested=True)
        finally:
            for node in setup.nodes:
                node.stop()
    finally:
        sink.stop()
        pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
