"""The packaging files: the systemd unit, the Dockerfile and its entrypoint.

* ``systemd-analyze verify`` accepts the unit (when systemd's tools are installed), and
  ``systemd-analyze security --offline`` rates its sandbox at most 2.0 ("OK"; 10 is an
  unsandboxed root service).
* The Dockerfile cannot be built here (no Docker engine): its COPY sources must exist and
  the ports it exposes must be the ones ``postroom init --ports standard`` configures. The
  entrypoint is a shell script and runs here for real: a first start writes a working
  config that switches to the service user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from postroom.admin.init import STANDARD_PORTS

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "postroom.service"
ENTRYPOINT = REPO / "packaging" / "docker-entrypoint.sh"


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's postroom (verify checks it exists)."""
    exe = Path(sys.executable).with_name("postroom")
    text = UNIT.read_text().replace("/opt/postroom/bin/postroom", str(exe))
    path = tmp_path / "postroom.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "postroom.service" not in r.stderr, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for postroom.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_systemd_unit_settings() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["User"] == ["postroom"] and settings["ProtectSystem"] == ["strict"]
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["ReadWritePaths"] == ["/var/lib/postroom"] and settings["NoNewPrivileges"] == ["yes"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads the certificate


def test_dockerfile_consistent() -> None:
    text = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for part in src.split():
            assert (REPO / part).exists(), part
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.MULTILINE).group(1).split()}  # type: ignore[union-attr]
    assert exposed == set(STANDARD_PORTS.values())
    assert os.access(ENTRYPOINT, os.X_OK)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint runs as root (chown)")
def test_entrypoint_first_start(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               POSTROOM_CONFIG=str(tmp_path / "etc" / "postroom.toml"),
               POSTROOM_DATA_DIR=str(tmp_path / "data"), POSTROOM_USER="nobody")
    r = subprocess.run([str(ENTRYPOINT), "check-config"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "set POSTROOM_HOSTNAME" in r.stderr
    env.update(POSTROOM_HOSTNAME="mail.example.org", POSTROOM_DOMAIN="example.org")
    r = subprocess.run([str(ENTRYPOINT), "check-config"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "25 (mx)" in r.stdout and "993 (imaps)" in r.stdout
    config = tomllib.loads((tmp_path / "etc" / "postroom.toml").read_text())
    assert config["server"] == {"user": "nobody"} and config["hostname"] == "mail.example.org"
    nobody = pwd.getpwnam("nobody").pw_uid
    assert all(os.stat(p).st_uid == nobody for p in (tmp_path / "data").rglob("*"))
    # Later starts keep the config and run the command given.
    r = subprocess.run([str(ENTRYPOINT), "domain", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "example.org" in r.stdout, r.stderr
