"""When to ask for a certificate, where it is kept, and putting it in service.

Files (``DATA/acme/``, backed up with the data folder): ``account.json`` (account key and
URL), ``key.pem`` and ``cert.pem`` (what ``tls.cert``/``tls.key`` would name; the TLS
listeners load them), ``state.json`` (names the CA refused recently).

Before the first certificate the listeners need something to present, so
:func:`prepare` writes a self-signed placeholder; it is replaced as soon as the CA answers.

A certificate is ordered when:

* the current one is the placeholder (first start), or
* it lacks a wanted name (a domain was added) that the CA has not refused in the last day, or
* two thirds of its lifetime have passed (Let's Encrypt's advice: renew with a third left,
  30 days of a 90-day certificate; short-lived certificates scale down with it).

A failed order is retried with backoff (1 min, 5 min, 15 min, 1 h, 3 h, 6 h, then every
12 h) while the old certificate keeps serving. If the CA refuses only some of the extra names
(``mta-sts.``/``autoconfig.``/``autodiscover.`` of a domain whose DNS does not point here yet) the order is
repeated at once without them, so the host name is never held back by a domain's DNS; those
names are tried again a day later or at the next renewal.

Putting it in service: both files are replaced by rename (key first), then the one TLS
context is reloaded in place (:meth:`postroom.tls.TlsContexts.reload`): new connections and
STARTTLS get the new certificate, running connections keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from pathlib import Path

from cryptography import x509

from postroom import logs
from postroom.acme.challenges import Responder
from postroom.acme.client import AcmeFailure, Issued, issue
from postroom.config import Settings
from postroom.services import Services
from postroom.tls import write_self_signed
from postroom.waits import wait_event

log = logging.getLogger("postroom.acme")

RENEW_AT = 2 / 3  # of the lifetime
RETRY = (60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0)
RECHECK = 12 * 3600.0  # look for new names at least this often
DROPPED_FOR = 86400.0  # a name the CA refused is left out this long


def acme_dir(settings: Settings) -> Path:
    return settings.data_dir / "acme"


def prepare(settings: Settings, owner: tuple[int, int] | None = None) -> None:
    """Make sure ``DATA/acme/`` has a certificate to serve before the first order: a
    self-signed placeholder. ``owner`` (uid, gid): the account the server drops to, which
    must be able to replace the files later."""
    assert settings.tls_cert is not None and settings.tls_key is not None
    folder = acme_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not settings.tls_cert.exists() or not settings.tls_key.exists():
        write_self_signed(settings.tls_cert, settings.tls_key, settings.hostname, days=30)
        logs.event(log, "acme_placeholder", cert=str(settings.tls_cert))
    if owner is not None:
        for path in (folder, settings.tls_cert, settings.tls_key, *folder.glob("*.json")):
            os.chown(path, *owner)


def wanted_names(settings: Settings, domains: list[str]) -> list[str]:
    """The host name first, then (with an https listener, which serves them) the MTA-STS
    policy host and the Thunderbird and Outlook auto-configuration hosts of every hosted
    domain: the names ``postroom dns`` asks to point here."""
    names = [settings.hostname]
    if settings.acme.domain_names and any(lst.role == "https" for lst in settings.listeners):
        for domain in sorted(domains):
            names += [f"mta-sts.{domain}", f"autoconfig.{domain}", f"autodiscover.{domain}"]
    return list(dict.fromkeys(n.lower() for n in names))


def methods(settings: Settings) -> tuple[str, ...]:
    """The challenge types we can answer (``tls.acme_challenge``; ``auto``: HTTP-01 when an
    http listener exists, TLS-ALPN-01 when an implicit-TLS listener exists)."""
    choice = settings.acme.challenge
    if choice != "auto":
        return (choice,)
    roles = {lst.role for lst in settings.listeners}
    out = []
    if "http" in roles:
        out.append("http-01")
    if any(lst.implicit_tls for lst in settings.listeners):
        out.append("tls-alpn-01")
    return tuple(out)


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)}


def due(cert_path: Path, names: list[str], dropped: dict[str, float], now: float) -> tuple[float, str]:
    """(when to order, why): ``now`` for a placeholder, a missing or unreadable file, or
    a new name; otherwise at :data:`RENEW_AT` of the lifetime."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return now, "no certificate"
    if cert.issuer == cert.subject:
        return now, "placeholder"
    missing = [n for n in names if n not in _names_of(cert) and now - dropped.get(n, 0.0) >= DROPPED_FOR]
    if missing:
        return now, "new names " + ",".join(missing)
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return start + (end - start) * RENEW_AT, "renewal"


class AcmeManager:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.responder = Responder(self.settings.data_dir)
        self.failures = 0
        self.issued = 0  # certificates put in service since start (tests and logs)
        self._wake = asyncio.Event()

    @property
    def state_path(self) -> Path:
        return acme_dir(self.settings) / "state.json"

    def _dropped(self) -> dict[str, float]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): float(v) for k, v in data.get("dropped", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_dropped(self, dropped: dict[str, float]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dropped": dropped}))
        os.replace(tmp, self.state_path)

    def check_now(self) -> None:
        """Re-evaluate at once (SIGHUP, a domain added)."""
        self._wake.set()

    async def run(self) -> None:
        self.services.tls.serve_challenges(self.responder)
        while True:
            try:
                delay = await self.step()
            except Exception:  # a store or file error: log it, keep the loop alive
                log.exception("event=acme_error")
                delay = RETRY[-1]
            self._wake.clear()
            await wait_event(self._wake, delay)

    async def step(self) -> float:
        """Order if due; return how long to sleep before looking again."""
        domains = [d.name for d in await self.services.store.list_domains()]
        names = wanted_names(self.settings, domains)
        dropped = self._dropped()
        now = time.time()
        when, why = due(self.settings.tls_cert or Path(), names, dropped, now)
        if when > now:
            return max(1.0, min(when - now, RECHECK))
        # A name refused within the last day stays out of this order too.
        names = [n for n in names if n == names[0] or now - dropped.get(n, 0.0) >= DROPPED_FOR]
        logs.event(log, "acme_order", reason=why, names=",".join(names))
        try:
            issued = await self._order(names, dropped)
        except AcmeFailure as e:
            delay = RETRY[min(self.failures, len(RETRY) - 1)]
            self.failures += 1
            logs.event(log, "acme_failed", logging.WARNING, error=str(e), retry_in=f"{delay:.0f}s")
            return delay
        self.failures = 0
        self._install(issued)
        return 1.0

    async def _order(self, names: list[str], dropped: dict[str, float]) -> Issued:
        acme = self.settings.acme
        kwargs = dict(
            directory=acme.directory, ca_file=acme.ca_file, contact=acme.contact,
            account_path=acme_dir(self.settings) / "account.json",
            methods=methods(self.settings), responder=self.responder,
        )
        try:
            return await asyncio.to_thread(issue, names=names, **kwargs)  # type: ignore[arg-type]
        except AcmeFailure as e:
            refused = [n for n in e.failed if n != names[0]]
            rest = [n for n in names if n not in e.failed]
            if not refused or names[0] in e.failed or not rest:
                raise
            now = time.time()
            self._save_dropped({**dropped, **{n: now for n in refused}})
            logs.event(log, "acme_names_dropped", logging.WARNING, names=",".join(refused), error=str(e))
            return await asyncio.to_thread(issue, names=rest, **kwargs)  # type: ignore[arg-type]

    def _install(self, issued: Issued) -> None:
        cert_path, key_path = self.settings.tls_cert, self.settings.tls_key
        assert cert_path is not None and key_path is not None
        tmp_key = key_path.with_suffix(".new")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(issued.key_pem)
            os.fsync(f.fileno())
        tmp_cert = cert_path.with_suffix(".new")
        with tmp_cert.open("wb") as f:
            f.write(issued.chain_pem)
            os.fsync(f.fileno())
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
        reloaded = self.services.tls.reload()
        self.issued += 1
        leaf = x509.load_pem_x509_certificate(issued.chain_pem)
        logs.event(
            log, "acme_certificate", names=",".join(sorted(_names_of(leaf))), reloaded=reloaded,
            serial=f"{leaf.serial_number:x}",
            expires=leaf.not_valid_after_utc.isoformat(timespec="seconds"),
            renew_at=datetime.datetime.fromtimestamp(
                due(cert_path, [], {}, 0.0)[0], datetime.UTC).isoformat(timespec="seconds"),
        )
