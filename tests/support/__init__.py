"""Helpers shared by the tests: running servers, clients, generated mail."""

import os
import subprocess

# POSTROOM_SLOW=1 selects the long versions of soak/fuzz tests (tests/conftest.py reads the
# same switch for hypothesis). Import it from here: "from conftest import ..." resolves to
# whichever conftest.py pytest imported under that name first.
SLOW = os.environ.get("POSTROOM_SLOW") == "1"


def reap(proc: "subprocess.Popen[bytes]", timeout: float = 10) -> None:
    """Wait for a process told to stop; kill it if it has not within ``timeout``."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
