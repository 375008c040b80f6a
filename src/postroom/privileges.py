"""Dropping root after binding the listening sockets (``server.user``).

Two ways run postroom on ports below 1024 without keeping root, and both are supported:

* systemd (or another supervisor) starts it as its own user with the one capability it
  needs, ``CAP_NET_BIND_SERVICE`` (``packaging/postroom.service``). Then ``server.user``
  stays empty.
* postroom is started as root (a container's entrypoint, an init script), binds every
  listener, and then switches to ``server.user`` for good: supplementary groups from the
  account (so a group such as ``ssl-cert`` still gives access to a key), then the group,
  then the user (real, effective and saved ids, so there is no way back). Everything else
  (opening the store, creating files, serving) happens after the switch, so every file
  in the data folder belongs to that user.

The switch happens before any thread is started and is checked: getting root back must
fail, or postroom stops.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


class PrivilegeError(Exception):
    pass


def account(user: str, group: str = "") -> tuple[int, int]:
    """(uid, gid) of ``user`` (and ``group``, default its primary group)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r} (create it, e.g. `useradd --system {user}`)") from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"{user!r} is root: name an unprivileged account")
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"no such group {group!r}") from None
    return pw.pw_uid, gid


def groups_of(user: str, gid: int) -> list[int]:
    return sorted(set(os.getgrouplist(user, gid)))


def may_write(path: Path, uid: int, gids: list[int]) -> bool:
    """Whether ``uid`` (with ``gids``) may create files in the folder ``path`` (mode bits)."""
    st = os.stat(path)
    if uid == 0:
        return True
    if st.st_uid == uid:
        return st.st_mode & (stat.S_IWUSR | stat.S_IXUSR) == (stat.S_IWUSR | stat.S_IXUSR)
    if st.st_gid in gids:
        return st.st_mode & (stat.S_IWGRP | stat.S_IXGRP) == (stat.S_IWGRP | stat.S_IXGRP)
    return st.st_mode & (stat.S_IWOTH | stat.S_IXOTH) == (stat.S_IWOTH | stat.S_IXOTH)


def check_target(user: str, group: str, data_dir: Path) -> None:
    """Before binding: the switch will work and the user can write the data folder."""
    uid, gid = account(user, group)
    if os.geteuid() == uid:
        return  # already that user: nothing to switch
    if os.geteuid() != 0:
        raise PrivilegeError(f"server.user = {user!r} needs postroom to be started as root")
    if data_dir.exists() and not may_write(data_dir, uid, groups_of(user, gid)):
        raise PrivilegeError(
            f"{data_dir} is not writable by {user} (e.g. `chown -R {user}: {data_dir}`)"
        )


def drop(user: str, group: str = "") -> bool:
    """Become ``user`` for good; False when already running as that user."""
    uid, gid = account(user, group)
    if os.geteuid() == uid and os.getegid() == gid:
        return False
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot switch to {user}: not running as root")
    os.setgroups(groups_of(user, gid))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would mean the kernel ignored setresuid
        raise PrivilegeError("switching user failed: root could be regained")
    os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user
    return True
