"""Which process serves a connection: for the tests of the worker-process model.

A supervisor's workers all accept on the same sockets, so a test that needs two sessions
in two different processes opens connections and asks the kernel which process holds
the server side of each: ``/proc/net/tcp{,6}`` gives the socket's inode for the pair of
ports, ``/proc/PID/fd`` which process has that inode open. Linux only, like the server's
deployment target.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the supervisor's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return sorted(out)


def wait_children(pid: int, n: int, timeout: float = 60.0, exclude: Iterable[int] = ()) -> list[int]:
    """Wait until ``pid`` has ``n`` live children, none of them in ``exclude``."""
    skip = set(exclude)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in children(pid) if k not in skip]
        if len(kids) == n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"{pid} has children {children(pid)}, wanted {n} (not {sorted(skip)})")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Iterable[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.05)
    assert not left, f"processes still running: {left}"


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the TCP socket with these ports (server side: local = server port)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, inode = cols[1], cols[2], int(cols[9])
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port and inode:
                return inode
    return None


def serving_pid(sock: socket.socket, pids: Iterable[int], timeout: float = 5.0) -> int:
    """The process among ``pids`` that holds the server side of the client ``sock``."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    candidates = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = _inode(server_port, client_port)
        if inode is not None:
            want = f"socket:[{inode}]"
            for pid in candidates:
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                            return pid
                    except OSError:
                        continue
        time.sleep(0.02)  # not accepted by a worker yet
    raise AssertionError(f"no process among {candidates} serves port {client_port}")
