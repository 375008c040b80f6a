"""``postroom init``: a working configuration, data folder and certificate in one step."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postroom.address import AddressError, normalize_domain
from postroom.admin.service import AdminError, AdminService

STANDARD_PORTS = {
    "mx": 25, "submission": 587, "submissions": 465,
    "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "http": 80, "https": 443,
}
UNPRIVILEGED_PORTS = {
    "mx": 2525, "submission": 2587, "submissions": 2465,
    "imap": 2143, "imaps": 2993, "pop3": 2110, "pop3s": 2995, "http": 2080, "https": 2443,
}


@dataclass(frozen=True, slots=True)
class InitOptions:
    config_path: Path
    hostname: str | None = None
    domain: str | None = None
    data_dir: str | None = None
    user: str | None = None
    ports: str = "auto"
    bind: str = "*"
    force: bool = False


def _default_hostname(domain: str | None) -> str:
    if domain:
        return f"mail.{domain}"
    fqdn = socket.getfqdn()
    try:
        return normalize_domain(fqdn)
    except AddressError:
        return "localhost.localdomain"


def render_config(hostname: str, data_dir: str, ports: dict[str, int], bind: str) -> str:
    host = f"[{bind}]" if ":" in bind else bind
    lines = [
        "# postroom configuration. Every key and its default: docs/configuration.md",
        f'hostname = "{hostname}"',
        f'data_dir = "{data_dir}"',
        "",
        "[tls]",
        'cert = "' + str(Path(data_dir) / "tls" / "cert.pem") + '"',
        'key = "' + str(Path(data_dir) / "tls" / "key.pem") + '"',
        "",
    ]
    for role, port in ports.items():
        lines += ["[[listener]]", f'address = "{host}:{port}"', f'role = "{role}"', ""]
    lines += [
        "[limits]",
        'message_size = "50M"',
        "recipients = 100",
        "",
        "[smtp]",
        "# Mail to postmaster@ every domain goes here (default: the first user created).",
        '# postmaster = "admin@example.org"',
        "",
        "[logging]",
        'level = "info"',
        'format = "text"',
        "",
    ]
    return "\n".join(lines)


def initialise(opts: InitOptions) -> dict[str, Any]:
    from postroom import config
    from postroom.auth import passwords
    from postroom.store.open import open_store
    from postroom.tls import write_self_signed

    path = opts.config_path.absolute()
    if path.exists() and not opts.force:
        raise AdminError(f"{path} already exists (use --force to overwrite)")
    domain = None
    if opts.domain:
        try:
            domain = normalize_domain(opts.domain)
        except AddressError as e:
            raise AdminError(str(e)) from None
    hostname = opts.hostname or _default_hostname(domain)
    try:
        hostname = normalize_domain(hostname) if "." in hostname else hostname
    except AddressError as e:
        raise AdminError(f"--hostname: {e}") from None
    ports_choice = opts.ports
    if ports_choice == "auto":
        ports_choice = "standard" if os.geteuid() == 0 else "unprivileged"
    ports = STANDARD_PORTS if ports_choice == "standard" else UNPRIVILEGED_PORTS
    data_dir_text = opts.data_dir or "data"
    data_dir = (path.parent / data_dir_text).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        if not os.access(data_dir, os.W_OK):
            raise AdminError(f"{data_dir} is not writable by this user")
        cert = data_dir / "tls" / "cert.pem"
        key = data_dir / "tls" / "key.pem"
        if not cert.exists() or opts.force:
            write_self_signed(cert, key, hostname)
        text = render_config(hostname, data_dir_text, ports, opts.bind)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except PermissionError as e:
        raise AdminError(f"permission denied: {e.filename}") from None
    except OSError as e:
        raise AdminError(f"{e.filename or path}: {e.strerror}") from None
    settings = config.load(path)
    report: dict[str, Any] = {
        "config": str(path),
        "data_dir": str(data_dir),
        "cert": str(cert),
        "hostname": hostname,
        "listeners": [str(lst) for lst in settings.listeners],
    }

    async def populate() -> None:
        store = await open_store(settings)
        try:
            admin = AdminService(store)
            if domain and await store.get_domain(domain) is None:
                await admin.domain_add(domain)
            if opts.user:
                address = opts.user if "@" in opts.user else f"{opts.user}@{domain}"
                if "@" not in opts.user and not domain:
                    raise AdminError("--user needs --domain or a full address")
                password = passwords.generate_password()
                user = await admin.user_add(address, password)
                # The first user may use the web admin (https://HOSTNAME/admin/).
                await admin.user_admin(user.address, True)
                report["user"] = user.address
                report["admin"] = True
                report["password"] = password
        finally:
            await store.close()

    asyncio.run(populate())
    if domain:
        report["domain"] = domain
    return report
