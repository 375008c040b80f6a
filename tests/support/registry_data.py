"""Test vectors that other projects publish in their PyPI source distributions.

Fetched at test time with pip (PyPI is reachable in CI; nothing comes from GitHub) and kept
in a cache folder inside the virtual environment, so a second run needs no network. The
files are not committed: their licences travel with the sdist they come from.

* ``spf_suite()``: the RFC 7208 SPF test suite (``test/rfc7208-tests.yml``, the openspf.org
  suite release 2014.04, BSD-style licence in ``test/rfc7208-tests.LICENSE``), shipped in
  the ``pyspf`` sdist.
* ``dkimpy_file(path)``: a file of the ``dkimpy`` sdist (zlib-style licence), whose test data
  holds the RFC 8463 appendix A example: a message signed with Ed25519 (selector
  ``brisbane``) and RSA (selector ``test``) for football.example.com.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

PYSPF = "pyspf==2.0.14"
DKIMPY = "dkimpy==1.1.8"
CACHE = Path(sys.prefix) / "share" / "postroom-test-vectors"


def _sdist(requirement: str) -> Path:
    name = requirement.split("==")[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"{name}-*.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-binary", ":all:", "--no-deps", requirement, "-d", str(CACHE)],
            check=True, capture_output=True, timeout=300,
        )
        found = sorted(CACHE.glob(f"{name}-*.tar.gz"))
    assert found, f"pip download {requirement} left no sdist in {CACHE}"
    return found[-1]


def spf_suite() -> bytes:
    """The bytes of rfc7208-tests.yml from the pyspf sdist."""
    target = CACHE / "rfc7208-tests.yml"
    if not target.exists():
        with tarfile.open(_sdist(PYSPF)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("test/rfc7208-tests.yml"))
            f = tar.extractfile(member)
            assert f is not None
            target.write_bytes(f.read())
    return target.read_bytes()


def dkimpy_file(path: str) -> bytes:
    """``path`` inside the dkimpy sdist, e.g. "dkim/tests/data/rfc6376.signed.msg"."""
    target = CACHE / "dkimpy" / path
    if not target.exists():
        with tarfile.open(_sdist(DKIMPY)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/" + path))
            f = tar.extractfile(member)
            assert f is not None
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read())
    return target.read_bytes()
