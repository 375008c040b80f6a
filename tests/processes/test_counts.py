"""Shared connection counts: a row per worker, read by the others, cleared by the supervisor."""

from __future__ import annotations

import os
import subprocess
import sys

from postroom.processes.counts import SharedCounts


def test_each_worker_sees_the_others_but_counts_itself_exactly() -> None:
    sup = SharedCounts.create(3)
    one, two, three = (SharedCounts(sup.fd, 3, i) for i in (1, 2, 3))
    one.add("192.0.2.1", 1)
    one.add("192.0.2.1", 1)
    two.add("192.0.2.1", 1)
    two.add("198.51.100.7", 1)
    assert three.others_total() == 4
    assert three.others_from("192.0.2.1") == 3
    assert one.others_total() == 2 and one.others_from("192.0.2.1") == 1
    assert two.others_from("198.51.100.7") == 0  # its own row is not "others"
    assert one.others_from("198.51.100.7") == 1
    two.add("198.51.100.7", -1)
    assert one.others_from("198.51.100.7") == 0
    sup.clear(1)  # worker 1 died with its connections
    assert three.others_total() == 1 and three.others_from("192.0.2.1") == 1
    for c in (one, two, three, sup):
        c.close()
    os.close(sup.fd)


def test_rows_are_shared_with_another_process() -> None:
    sup = SharedCounts.create(2)
    code = (
        "import sys\n"
        "from postroom.processes.counts import SharedCounts\n"
        f"c = SharedCounts({sup.fd}, 2, 2)\n"
        "c.add('203.0.113.9', 1); c.add('203.0.113.9', 1); c.add('203.0.113.10', 1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, pass_fds=[sup.fd], timeout=60)
    one = SharedCounts(sup.fd, 2, 1)
    assert one.others_total() == 3
    assert one.others_from("203.0.113.9") == 2
    sup.clear(2)
    assert one.others_total() == 0 and one.others_from("203.0.113.9") == 0
    one.close()
    sup.close()
    os.close(sup.fd)
