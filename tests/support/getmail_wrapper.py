"""Run Debian's getmail (getmail6) with its child-reaping race closed.

getmail6 (6.18 in Debian 12, and later releases: upstream issues #52, #226, #245) forks a
child for every Maildir delivery, installs a SIGCHLD handler only after the fork, and
waits on a condition variable that the handler notifies. Both steps lose wake-ups: a
child that exits before the handler exists is never reaped by it, and a handler that
runs before the parent starts waiting notifies nobody. Either way getmail sits for its
socket timeout with the POP3 session idle, a client bug that made the getmail end-to-end
tests fail about one run in five on a busy 2-core machine.

This wrapper replaces only that wait with a plain blocking ``waitpid`` of the child
(no signal handler), with getmail's own checks of the exit status, then runs getmail's
entry point unchanged. Run it with the system Python that has getmailcore.
"""

import os
import runpy
import sys

from getmailcore import baseclasses
from getmailcore.exceptions import getmailOperationError


def _prepare_child(self):  # type: ignore[no-untyped-def]
    """No SIGCHLD handler: the parent reaps its child itself."""


def _wait_for_child(self, childpid):  # type: ignore[no-untyped-def]
    _, status = os.waitpid(childpid, 0)
    if os.WIFSIGNALED(status):
        raise getmailOperationError(
            f"child pid {childpid} killed by signal {os.WTERMSIG(status)}"
        )
    if not os.WIFEXITED(status):
        raise getmailOperationError(f"child pid {childpid} failed to exit")
    return os.WEXITSTATUS(status)


baseclasses.ForkingBase._prepare_child = _prepare_child
baseclasses.ForkingBase._wait_for_child = _wait_for_child
sys.argv[0] = "getmail"
runpy.run_path("/usr/bin/getmail", run_name="__main__")
