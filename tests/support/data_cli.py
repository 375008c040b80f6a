"""Running ``postroom import/export/backup/restore`` as a subprocess in the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def postroom(config: Path, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(config), *args],
        capture_output=True, text=True, input=stdin, timeout=timeout,
    )


def ok_json(config: Path, *args: str, stdin: str | None = None) -> Any:
    r = postroom(config, *args, "--json", "--quiet", stdin=stdin)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def fails(config: Path, *args: str, stdin: str | None = None) -> str:
    """Exit status 1 with one ``postroom: error:`` line (progress hidden)."""
    r = postroom(config, *args, "--quiet", stdin=stdin)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("postroom: error: "), r.stderr
    return lines[-1]
