"""Let's Encrypt's test CA, ``pebble`` (Debian package ``pebble``), on loopback for tests.

Pebble validates challenges for real: it resolves the names through ``dns`` (the tests'
dnslib server) and connects to 127.0.0.1 on ``http_port`` (HTTP-01) or ``tls_port``
(TLS-ALPN-01), i.e. the postroom listeners under test. Its own HTTPS certificate comes from a
trustme CA (``ca_file``, for postroom's ``tls.acme_ca_file``); the root it signs with is
created at start and read from the management API (:meth:`root_pem`).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import trustme

from support import reap
from support.dns_server import DnsServer, free_port_on


def pebble_binary() -> str | None:
    return shutil.which("pebble")


class Pebble:
    def __init__(self, root: Path, dns: DnsServer, http_port: int, tls_port: int, validity: int = 0) -> None:
        self.root = root
        self.dns = dns
        self.http_port = http_port
        self.tls_port = tls_port
        self.validity = validity  # certificate lifetime in seconds (0: pebble's default)
        self.port = free_port_on(["127.0.0.1"])
        self.management_port = free_port_on(["127.0.0.1"])
        self.proc: subprocess.Popen[bytes] | None = None
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        root.mkdir(parents=True, exist_ok=True)
        self.ca_file = root / "pebble-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(root / "pebble-key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "pebble-cert.pem"))
        self.log_path = root / "pebble.log"

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        binary = pebble_binary()
        assert binary is not None, "pebble is missing: install the Debian package pebble"
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.root / "pebble-cert.pem"),
            "privateKey": str(self.root / "pebble-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if self.validity:
            config["pebble"]["certificateValidityPeriod"] = self.validity
        path = self.root / "pebble.json"
        path.write_text(json.dumps(config))
        # No sleeps before validating, and never reject a nonce on purpose: the test is
        # about our flow, not about pebble's chaos settings.
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [pebble_binary() or "pebble", "-config", str(path), "-dnsserver", self.dns.address],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.root_pem()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pebble exited: {self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)
        raise RuntimeError("pebble did not start")

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def root_pem(self) -> bytes:
        """The root CA pebble signs with (management API, ``/roots/0``)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as resp:
            return bytes(resp.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            reap(self.proc)
            self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")
