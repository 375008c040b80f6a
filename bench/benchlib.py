"""What every side-by-side benchmark here needs to be read on another machine.

A throughput figure from a shared 2-core virtual machine moves by a factor of two from one
run to the next (docs/performance.md, "Why the figures move"), so each benchmark prints,
besides its medians:

* the spread of every figure over the runs: ``median [min..max]``;
* the server's CPU per message and the cores it used (CPU seconds / wall seconds), and
  from them **msg/s per core** (= 1000 / CPU ms per message): a figure that a faster or
  slower machine changes, but the number of cores, the client and the other tenants do not;
* the machine during the run: CPU model and count, and the share of CPU time that went
  to other processes (``other``) and to the hypervisor (``steal``), from ``/proc/stat``;
* with ``--cores N``, the servers run pinned to N CPUs (the client on the others when
  there are some), so machines with different core counts can be compared on equal terms.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

HZ = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int]:
    """(ppid, utime+stime+cutime+cstime in ticks) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, reaped children included
    (postroom's supervisor and workers; Postfix's master and its daemons)."""
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


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = _proc_stat(int(d))[0]
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return out


# -- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )


class MachineSample:
    """CPU time of the whole machine over an interval (``/proc/stat``, in CPU-seconds)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def stop(self) -> MachineUse:
        now = self._read()
        d = [b - a for a, b in zip(self._start, now, strict=False)]
        # user nice system idle iowait irq softirq steal guest guest_nice
        busy = sum(d[i] for i in (0, 1, 2, 5, 6) if i < len(d))
        steal = d[7] if len(d) > 7 else 0
        total = sum(d[:8])
        return MachineUse(busy / HZ, steal / HZ, total / HZ)


@dataclass
class MachineUse:
    busy: float  # CPU-seconds not idle (user, system, interrupts), everyone's
    steal: float  # CPU-seconds the hypervisor gave to other guests
    total: float  # CPU-seconds that passed (wall time x CPUs)

    def other_pct(self, ours: float) -> float:
        """Share of the machine busy with something else than ``ours`` CPU-seconds."""
        return 100.0 * max(0.0, self.busy - ours) / self.total if self.total else 0.0

    @property
    def steal_pct(self) -> float:
        return 100.0 * self.steal / self.total if self.total else 0.0


# -- pinning ---------------------------------------------------------------------------------


def split_cpus(cores: int | None) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs) for ``--cores N``: the first N usable CPUs for the
    servers, the rest (if any) for the load generator. (None, None): no pinning."""
    if not cores:
        return None, None
    usable = sorted(os.sched_getaffinity(0))
    if cores > len(usable):
        raise SystemExit(f"--cores {cores}: only {len(usable)} CPUs available")
    servers, rest = set(usable[:cores]), set(usable[cores:])
    return servers, (rest or set(usable))


def pin_tree(root: int, cpus: set[int] | None) -> None:
    """Pin a running server's processes (and so the children it starts later) to ``cpus``."""
    if cpus is None:
        return
    for pid in tree_pids(root):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def preexec_pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


# -- figures ---------------------------------------------------------------------------------


def spread(xs: Sequence[float], p: int = 0) -> str:
    """``median [min..max]`` of the runs."""
    if not xs:
        return "-"
    med = statistics.median(xs)
    return f"{med:,.{p}f} [{min(xs):,.{p}f}..{max(xs):,.{p}f}]"


def median(xs: Iterable[float]) -> float | None:
    values = list(xs)
    return statistics.median(values) if values else None


def paired(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Per-run ratios (runs alternate which server goes first, so each pair shares the
    machine's state of that moment)."""
    return [a / b for a, b in zip(ours, theirs, strict=False) if b]


def serve_under_callgrind(
    config: str, out: str, log: str, role: str, *, children: bool = False,
) -> tuple[object, int | None]:
    """Start ``postroom serve`` under valgrind's callgrind (``--callgrind-out-file=OUT.%p``,
    its worker processes too with ``children``); wait for ``ready``. Returns (the process,
    the port of the first ``role`` listener), or (the process, None) when it exited first
    (the end of valgrind's log printed)."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
         *(["--trace-children=yes"] if children else []),
         sys.executable, "-m", "postroom", "-c", config, "serve"],
        stdout=subprocess.PIPE, stderr=open(log, "wb"),  # noqa: SIM115 (the child owns it)
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    port = None
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            with open(log, errors="replace") as f:
                print(f.read()[-3000:], file=sys.stderr)
            return proc, None
        m = re.match(rf"listening {role} \S+:(\d+)", line)
        if m and port is None:
            port = int(m.group(1))
        if line.strip() == "ready":
            return proc, port
