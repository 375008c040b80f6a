"""The configuration file: TOML in, frozen validated settings out.

Why hand-written validation rather than a schema library: the one thing users need from a
config loader is a single clear message naming the file, the key and what is allowed, and
that is easiest to guarantee when every key is declared in one table below (``_SCHEMA``).
The same table drives ``docs/configuration.md`` checks in the tests, so a key cannot be
added without being documented.

Durations accept an integer number of seconds or a string with a unit (``"30s"``, ``"5m"``,
``"4h"``, ``"5d"``); sizes accept bytes or ``"50M"``/``"10K"``/``"1G"``. Relative paths are
resolved against the folder that holds the config file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
IMPLICIT_TLS_ROLES = frozenset({"submissions", "imaps", "pop3s", "https"})
HTTP_ROLES = frozenset({"http", "https"})
MTA_STS_MODES = ("enforce", "testing", "none")
TLS_POLICIES = ("none", "may", "require", "verify")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A configuration problem, already phrased for the user (file, key, what is allowed)."""


# --------------------------------------------------------------------------------------
# Value parsers. Each takes the raw TOML value and returns the typed value or raises
# ValueError with the "what is allowed" part of the message.

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration: seconds as a number, or a string like \"30s\", \"5m\", \"4h\", \"5d\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration >= 0")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("a duration: seconds as a number, or a string like \"30s\", \"5m\", \"4h\", \"5d\"")


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a size: bytes as an integer, or a string like \"50M\", \"512K\", \"1G\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size >= 0")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError("a size: bytes as an integer, or a string like \"50M\", \"512K\", \"1G\"")


def _at_least_f(value: float, lo: float, what: str) -> float:
    if value < lo:
        raise ValueError(what)
    return value


def _at_least(value: int, lo: int, what: str) -> int:
    if value < lo:
        raise ValueError(what)
    return value


def _int_range(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("one of " + ", ".join(repr(a) for a in allowed))
        return value

    return parse


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$"
)


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.match(value):
        raise ValueError("a DNS host name such as \"mail.example.org\"")
    return value.rstrip(".").lower()


_ACCOUNT_RE = re.compile(r"^(|[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?)$")


def _node_name(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9._:@/-]{0,100}$", value):
        raise ValueError("a name of letters, digits and . _ : @ / - (at most 100)")
    return value


def _account_name(value: object) -> str:
    if not isinstance(value, str) or not _ACCOUNT_RE.match(value):
        raise ValueError("a user or group name such as \"postroom\" (or \"\" for none)")
    return value


def parse_hostport(value: object, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:25"``, ``"[::1]:25"``, ``"mail.example.org:587"``, ``"*:25"`` (all IPv4+IPv6)."""
    allowed = "\"HOST:PORT\" such as \"0.0.0.0:25\", \"[::]:25\" or \"[::1]:2525\""
    if not isinstance(value, str) or not value:
        raise ValueError(allowed)
    host: str
    port_s: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(allowed)
        host = value[1:end]
        rest = value[end + 1 :]
        if rest.startswith(":"):
            port_s = rest[1:]
        elif rest == "":
            port_s = None
        else:
            raise ValueError(allowed)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(allowed) from None
    else:
        if value.count(":") > 1:
            raise ValueError(allowed + " (write IPv6 addresses in brackets)")
        host, sep, port_s_ = value.partition(":")
        port_s = port_s_ if sep else None
        if host != "*":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                if not _HOSTNAME_RE.match(host):
                    raise ValueError(allowed) from None
    if port_s is None:
        if default_port is None:
            raise ValueError(allowed)
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(allowed + " with a port from 0 to 65535")
    return host, int(port_s)


def _auto_or_size(value: object) -> int | None:
    if value == "auto":
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError("\"auto\" or a size: bytes as an integer, or a string like \"200M\"") from None


def _optional_address(value: object) -> str:
    allowed = "an address such as \"admin@example.org\", or \"\" for the first user"
    if not isinstance(value, str):
        raise ValueError(allowed)
    if value == "":
        return ""
    from postroom.address import AddressError, normalize_address

    try:
        return normalize_address(value)
    except AddressError:
        raise ValueError(allowed) from None


MAX_WORKERS = 256


def _workers(value: object) -> int:
    """``"auto"`` (0: one per CPU this process may run on) or a number of processes."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"\"auto\" or an integer from 1 to {MAX_WORKERS}")
    return value


def _resolver_address(value: object) -> tuple[str, int] | None:
    if value == "":
        return None
    host, port = parse_hostport(value, default_port=53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("an IP address with optional port, such as \"127.0.0.1:5353\"") from None
    return host, port


def _optional_hostport(value: object) -> tuple[str, int] | None:
    if value == "":
        return None
    return parse_hostport(value, default_port=25)


def _string_list(parse_item: Callable[[str], str], allowed: str) -> Callable[[object], tuple[str, ...]]:
    """A list of strings, each checked (and normalised) by ``parse_item``."""

    def parse(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(allowed)
        try:
            return tuple(parse_item(item) for item in value)
        except ValueError:
            raise ValueError(allowed) from None

    return parse


def _mx_pattern(item: str) -> str:
    """An MTA-STS ``mx`` pattern (RFC 8461 3.2): a host name, optionally ``*.``-prefixed."""
    rest = item[2:] if item.startswith("*.") else item
    if not _HOSTNAME_RE.match(rest) or "." not in rest.strip("."):
        raise ValueError(item)
    return item.rstrip(".").lower()


_mx_patterns = _string_list(
    _mx_pattern, "a list of MX host names, such as [\"mail.example.org\", \"*.example.net\"]"
)


def _mta_sts_max_age(value: object) -> float:
    seconds = parse_duration(value)
    if not 0 <= seconds <= 31557600:  # RFC 8461 3.2: at most 31557600 (about a year)
        raise ValueError("a duration up to one year (31557600 s), such as \"7d\"")
    return seconds


def _duration_list(value: object) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("a non-empty list of durations, such as [\"1m\", \"5m\", \"15m\"]")
    return tuple(parse_duration(v) for v in value)


def _forwarder(item: str) -> str:
    """A network ("192.0.2.0/24", "2001:db8::/32", an address) or a domain name."""
    try:
        return str(ipaddress.ip_network(item, strict=False))
    except ValueError:
        if not _HOSTNAME_RE.match(item):
            raise
        return item.lower().rstrip(".")


_forwarders = _string_list(
    _forwarder,
    "a list of IP networks or domain names, such as [\"192.0.2.0/24\", \"lists.example.org\"]",
)


def _networks(value: object) -> tuple[str, ...]:
    """IP networks ("127.0.0.1", "10.0.0.0/8", "2001:db8::/32")."""
    allowed = "a list of IP networks, such as [\"127.0.0.1\", \"10.0.0.0/8\"]"
    if not isinstance(value, list):
        raise ValueError(allowed)
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(allowed)
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(allowed) from None
    return tuple(out)


def _address(value: object) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or not _HOSTNAME_RE.match(value.split("@")[1]):
        raise ValueError("an email address such as \"postmaster@example.org\"")
    return value


def _report_address(value: object) -> str:
    """``tls_reports.address``: a local part ("postmaster": at every hosted domain) or an
    address; kept in lower case, as recipients are compared."""
    allowed = "a local part such as \"tls-reports\" or an address such as \"tls@example.org\""
    if not isinstance(value, str) or not value or value.count("@") > 1 or any(c in value for c in " <>,;\""):
        raise ValueError(allowed)
    if "@" in value:
        return _address(value).lower()
    return value.lower()


def _https_url(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^https://[^\s/]+(/\S*)?$", value):
        raise ValueError("an https:// URL (the ACME directory)")
    return value


def _str_map(parse_value: Callable[[object], Any]) -> Callable[[object], dict[str, Any]]:
    def parse(value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError("a table of \"domain\" = value")
        out: dict[str, Any] = {}
        for k, v in value.items():
            out[_hostname(k)] = parse_value(v)
        return out

    return parse


# --------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True, slots=True)
class Listener:
    host: str  # "*" = every address, IPv4 and IPv6
    port: int
    role: str

    @property
    def implicit_tls(self) -> bool:
        return self.role in IMPLICIT_TLS_ROLES

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} ({self.role})"


@dataclass(frozen=True, slots=True)
class Limits:
    message_size: int = 50 * 1024 * 1024
    recipients: int = 100
    connections_total: int = 2000
    connections_per_ip: int = 50
    smtp_idle_timeout: float = 300.0
    smtp_data_timeout: float = 600.0
    imap_idle_timeout: float = 1800.0
    pop3_idle_timeout: float = 600.0
    login_timeout: float = 180.0
    min_data_rate: int = 500
    connections_per_user_ip: int = 10
    min_free_space: int | None = None  # None: FREE_SPACE_FACTOR x message_size
    auth_failures: int = 3
    auth_delay: float = 1.0
    auth_cache_ttl: float = 300.0
    auth_ip_failures: int = 10
    auth_ip_window: float = 600.0
    auth_user_failures: int = 30
    auth_user_window: float = 900.0
    auth_exempt: tuple[str, ...] = ()
    shutdown_grace: float = 10.0
    metadata_size: int = 16 * 1024
    metadata_entries: int = 200
    metadata_entries_per_user: int = 2000
    metadata_size_per_user: int = 1024 * 1024
    mailboxes_per_user: int = 1000
    command_time: float = 60.0
    cpu_workers: int = 2

    @property
    def free_space_threshold(self) -> int:
        """Free octets below which no new mail is accepted (see postroom.diskguard)."""
        if self.min_free_space is not None:
            return self.min_free_space
        return FREE_SPACE_FACTOR * self.message_size


# Default free-space guard: room for a few maximum-size messages plus their WAL copies
# (Postfix insists on queue_minfree >= 1.5 x message_size_limit; we keep more margin).
FREE_SPACE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    greeting_delay: float = 1.0
    greeting_pass_time: float = 86400.0
    require_tls_for_auth: bool = True
    line_length: int = 4096
    postmaster: str = ""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    allow_plaintext_auth: bool = False
    fetch_cache: int = 64 * 1024 * 1024  # octets of rendered FETCH items kept in memory


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    allow_plaintext_auth: bool = False


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    smarthost: tuple[str, int] | None = None
    smarthost_username: str = ""
    smarthost_password: str = field(default="", repr=False)
    smarthost_tls: str = "may"
    resolver: tuple[str, int] | None = None
    port: int = 25
    helo_name: str = ""
    transport: dict[str, tuple[str, int]] = field(default_factory=dict)
    tls_policy: dict[str, str] = field(default_factory=dict)
    default_tls_policy: str = "may"
    concurrency: int = 20
    per_destination: int = 5
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
    max_queue_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0
    connect_timeout: float = 30.0
    max_received_headers: int = 50
    read_timeout: float = 600.0
    tls_ca_file: str = ""
    connection_cache_time: float = 2.0
    queue_poll_interval: float = 5.0
    lease_time: float = 120.0
    dane: bool = True
    mta_sts: bool = True
    mta_sts_port: int = 443


@dataclass(frozen=True, slots=True)
class DnsSettings:
    cache_entries: int = 10000
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DkimSettings:
    sign: bool = True


@dataclass(frozen=True, slots=True)
class AuthChecksSettings:
    enabled: bool = True
    enforce: bool = True
    trusted_forwarders: tuple[str, ...] = ()
    timeout: float = 20.0
    max_signatures: int = 10
    arc_seal: bool = True
    reports: bool = True
    report_from: str = ""
    report_org: str = ""
    report_interval: float = 86400.0


@dataclass(frozen=True, slots=True)
class TlsReportsSettings:
    """TLS-RPT (RFC 8460): reports about our outbound TLS, and the reports we receive."""

    send: bool = True
    report_from: str = ""  # "" = auth_checks.report_from, else postmaster@<hostname's domain>
    report_org: str = ""  # "" = auth_checks.report_org, else the hostname
    report_contact: str = ""  # "" = the report_from address
    report_interval: float = 86400.0
    receive: bool = True
    address: str = "postmaster"  # a local part (at every hosted domain) or a full address


@dataclass(frozen=True, slots=True)
class ServerSettings:
    user: str = ""  # switch to this account after binding the listeners (started as root)
    group: str = ""  # its group; empty: the account's primary group
    node_name: str = ""  # this node among those sharing a database; "" = host:data folder
    workers: int = 0  # serving processes; 0 = "auto"

    def worker_count(self) -> int:
        """How many serving processes to run: 1 means one process does everything."""
        if self.workers:
            return self.workers
        import os

        try:
            cpus = len(os.sched_getaffinity(0))  # honours taskset and cgroup cpusets
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        quota = cgroup_cpu_quota()  # a container limited to N CPUs (docker run --cpus)
        if quota is not None:
            cpus = min(cpus, quota)
        return max(1, min(cpus, MAX_WORKERS))


def cgroup_cpu_quota(path: str | None = None) -> int | None:
    """The CPUs the cgroup v2 quota of this process allows (``cpu.max``: a container's
    ``--cpus``, systemd's ``CPUQuota=``), rounded up; None: no quota."""
    if path is None:
        try:  # "0::/system.slice/postroom.service"; in a container usually "0::/"
            with open("/proc/self/cgroup") as f:
                own = next((line[3:].strip() for line in f if line.startswith("0::")), "/")
        except OSError:
            own = "/"
        path = "/sys/fs/cgroup" + own.rstrip("/") + "/cpu.max"
    try:
        with open(path) as f:
            quota, _, period = f.read().strip().partition(" ")
    except OSError:
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return max(1, -(-int(quota) // int(period)))


STORE_BACKENDS = ("sqlite", "postgresql")
BLOB_STORES = ("database", "s3")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str = "sqlite"
    url: str = ""  # libpq URL of the PostgreSQL database, without a password
    password_file: str = ""  # the database password (first line); else PGPASSWORD or none
    pool_size: int = 10
    auto_migrate: bool = True
    blob_store: str = "database"
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key_file: str = ""  # else POSTROOM_S3_SECRET_KEY
    s3_prefix: str = "postroom/"
    s3_min_size: int = 0

    def password(self, base: Path) -> str | None:
        """The database password from ``password_file`` (None: libpq's PGPASSWORD,
        .pgpass, or no password). Read when the store opens, never kept in settings."""
        if not self.password_file:
            return None
        return _first_line(base / self.password_file, "store.password_file")

    def s3_secret_key(self, base: Path) -> str:
        import os

        if self.s3_secret_key_file:
            return _first_line(base / self.s3_secret_key_file, "store.s3_secret_key_file")
        return os.environ.get("POSTROOM_S3_SECRET_KEY", "")


def _first_line(path: Path, key: str) -> str:
    try:
        return path.read_text().splitlines()[0].strip()
    except IndexError:
        raise ConfigError(f"{key}: {path} is empty") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def _database_url(value: object) -> str:
    """A PostgreSQL URL without a password (it would show in logs and error messages)."""
    from urllib.parse import urlsplit

    what = 'a PostgreSQL URL like "postgresql://postroom@db.example.org:5432/postroom"'
    if not isinstance(value, str):
        raise ValueError(what)
    if value == "":
        return value
    url = urlsplit(value)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(what)
    if url.password is not None or "password=" in url.query:
        raise ValueError(what + " without a password (use store.password_file or PGPASSWORD)")
    return value


def _http_url(value: object) -> str:
    what = 'an http(s) URL like "https://s3.example.org" or "http://127.0.0.1:9000"'
    if not isinstance(value, str) or not (value == "" or re.match(r"^https?://[^/\s]+/?$", value)):
        raise ValueError(what)
    return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: str = "text"
    delivery_log: int = 10000


@dataclass(frozen=True, slots=True)
class HttpSettings:
    session_lifetime: float = 12 * 3600.0
    request_size: int = 1024 * 1024
    request_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class MtaStsSettings:
    mode: str = "testing"
    mx: tuple[str, ...] = ()  # empty: the server's own hostname
    max_age: float = 7 * 86400.0


ACME_CHALLENGES = ("auto", "http-01", "tls-alpn-01")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """Automatic certificates (``tls.acme``, RFC 8555); see postroom.acme."""

    enabled: bool = False
    contact: str = ""
    directory: str = LETS_ENCRYPT
    ca_file: Path | None = None  # CA bundle for the directory's HTTPS; None: the system's
    challenge: str = "auto"
    domain_names: bool = True  # also mta-sts./autoconfig. of the hosted domains


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    hostname: str
    data_dir: Path
    listeners: tuple[Listener, ...]
    tls_cert: Path | None
    tls_key: Path | None
    limits: Limits = Limits()
    smtp: SmtpSettings = SmtpSettings()
    imap: ImapSettings = ImapSettings()
    pop3: Pop3Settings = Pop3Settings()
    outbound: OutboundSettings = OutboundSettings()
    dns: DnsSettings = DnsSettings()
    dkim: DkimSettings = DkimSettings()
    auth_checks: AuthChecksSettings = AuthChecksSettings()
    tls_reports: TlsReportsSettings = TlsReportsSettings()
    logging: LoggingSettings = LoggingSettings()
    http: HttpSettings = HttpSettings()
    mta_sts: MtaStsSettings = MtaStsSettings()
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    acme: AcmeSettings = AcmeSettings()
    fsync: bool = True

    @property
    def database_path(self) -> Path:
        return self.data_dir / "postroom.sqlite3"


# Schema: section -> key -> (parser, documentation). Section "" is the top level.
# Keep in the same order as docs/configuration.md.
_Parser = Callable[[object], Any]
_SCHEMA: dict[str, dict[str, _Parser]] = {
    "": {"hostname": _hostname, "data_dir": _string, "fsync": _boolean},
    "tls": {
        "cert": _string,
        "key": _string,
        "acme": _boolean,
        "acme_contact": lambda v: "" if v == "" else _address(v),
        "acme_directory": _https_url,
        "acme_ca_file": _string,
        "acme_challenge": _choice(*ACME_CHALLENGES),
        "acme_domain_names": _boolean,
    },
    "limits": {
        "message_size": parse_size,
        "recipients": _int_range(1, 100000),
        "connections_total": _int_range(1, 1000000),
        "connections_per_ip": _int_range(1, 1000000),
        "smtp_idle_timeout": parse_duration,
        "smtp_data_timeout": parse_duration,
        "imap_idle_timeout": parse_duration,
        "pop3_idle_timeout": parse_duration,
        "login_timeout": parse_duration,
        "min_data_rate": parse_size,
        "connections_per_user_ip": _int_range(1, 1000000),
        "min_free_space": _auto_or_size,
        "auth_failures": _int_range(1, 1000),
        "auth_delay": parse_duration,
        "auth_cache_ttl": parse_duration,
        "auth_ip_failures": _int_range(0, 1000000),
        "auth_ip_window": parse_duration,
        "auth_user_failures": _int_range(0, 1000000),
        "auth_user_window": parse_duration,
        "auth_exempt": _networks,
        "shutdown_grace": parse_duration,
        # RFC 5464 4.1: at least 1024 octets per value and 10 entries per mailbox.
        "metadata_size": lambda v: _at_least(parse_size(v), 1024, "a size of at least 1K"),
        "metadata_entries": _int_range(10, 100000),
        "metadata_entries_per_user": _int_range(10, 10000000),
        "metadata_size_per_user": lambda v: _at_least(parse_size(v), 1024, "a size of at least 1K"),
        # Room for the default mailboxes (DEFAULT_MAILBOXES) and a few of the user's own.
        "mailboxes_per_user": _int_range(10, 10000000),
        "command_time": parse_duration,
        "cpu_workers": _int_range(0, 64),
    },
    "smtp": {
        "greeting_delay": parse_duration,
        "greeting_pass_time": parse_duration,
        "require_tls_for_auth": _boolean,
        "line_length": _int_range(512, 65536),
        "postmaster": _optional_address,
    },
    "imap": {"allow_plaintext_auth": _boolean, "fetch_cache": parse_size},
    "pop3": {"allow_plaintext_auth": _boolean},
    "outbound": {
        "smarthost": _optional_hostport,
        "smarthost_username": _string,
        "smarthost_password": _string,
        "smarthost_tls": _choice(*TLS_POLICIES),
        "resolver": _resolver_address,
        "port": _int_range(1, 65535),
        "helo_name": lambda v: "" if v == "" else _hostname(v),
        "transport": _str_map(lambda v: parse_hostport(v, default_port=25)),
        "tls_policy": _str_map(_choice(*TLS_POLICIES)),
        "default_tls_policy": _choice(*TLS_POLICIES),
        "concurrency": _int_range(1, 10000),
        "per_destination": _int_range(1, 1000),
        "retry_schedule": _duration_list,
        "max_queue_lifetime": parse_duration,
        "delay_warning": parse_duration,
        "connect_timeout": parse_duration,
        "max_received_headers": _int_range(5, 1000),
        "read_timeout": parse_duration,
        "tls_ca_file": _string,
        "connection_cache_time": parse_duration,
        "queue_poll_interval": parse_duration,
        "lease_time": lambda v: _at_least_f(parse_duration(v), 3.0, "a duration of at least 3s"),
        "dane": _boolean,
        "mta_sts": _boolean,
        "mta_sts_port": _int_range(1, 65535),
    },
    "dns": {"cache_entries": _int_range(0, 10_000_000), "timeout": parse_duration},
    "dkim": {"sign": _boolean},
    "auth_checks": {
        "enabled": _boolean,
        "enforce": _boolean,
        "trusted_forwarders": _forwarders,
        "timeout": parse_duration,
        "max_signatures": _int_range(1, 100),
        "arc_seal": _boolean,
        "reports": _boolean,
        "report_from": lambda v: "" if v == "" else _address(v),
        "report_org": _string,
        "report_interval": parse_duration,
    },
    "tls_reports": {
        "send": _boolean,
        "report_from": lambda v: "" if v == "" else _address(v),
        "report_org": _string,
        "report_contact": _string,
        "report_interval": parse_duration,
        "receive": _boolean,
        "address": _report_address,
    },
    "logging": {
        "level": _choice(*LOG_LEVELS),
        "format": _choice(*LOG_FORMATS),
        "delivery_log": _int_range(0, 10_000_000),
    },
    "http": {
        "session_lifetime": parse_duration,
        "request_size": parse_size,
        "request_timeout": parse_duration,
    },
    "mta_sts": {"mode": _choice(*MTA_STS_MODES), "mx": _mx_patterns, "max_age": _mta_sts_max_age},
    "server": {"user": _account_name, "group": _account_name, "workers": _workers,
               "node_name": _node_name},
    "store": {
        "backend": _choice(*STORE_BACKENDS),
        "url": _database_url,
        "password_file": _string,
        "pool_size": _int_range(2, 1000),
        "auto_migrate": _boolean,
        "blob_store": _choice(*BLOB_STORES),
        "s3_endpoint": _http_url,
        "s3_bucket": _string,
        "s3_region": _string,
        "s3_access_key": _string,
        "s3_secret_key_file": _string,
        "s3_prefix": _string,
        "s3_min_size": parse_size,
    },
}
_LISTENER_KEYS: dict[str, _Parser] = {"address": parse_hostport, "role": _choice(*ROLES)}
_SECTION_CLASSES = {
    "limits": Limits,
    "smtp": SmtpSettings,
    "imap": ImapSettings,
    "pop3": Pop3Settings,
    "outbound": OutboundSettings,
    "dns": DnsSettings,
    "dkim": DkimSettings,
    "auth_checks": AuthChecksSettings,
    "tls_reports": TlsReportsSettings,
    "logging": LoggingSettings,
    "http": HttpSettings,
    "mta_sts": MtaStsSettings,
    "server": ServerSettings,
    "store": StoreSettings,
}


def documented_keys() -> list[str]:
    """Every accepted key as written in the file ("limits.recipients", "listener.role")."""
    keys = [k if not s else f"{s}.{k}" for s, table in _SCHEMA.items() for k in table]
    keys += [f"listener.{k}" for k in _LISTENER_KEYS]
    return keys


def _fail(path: Path, key: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {what}")


def _check(path: Path, key: str, parser: _Parser, value: object) -> Any:
    try:
        return parser(value)
    except ValueError as e:
        return_value = e.args[0] if e.args else "a valid value"
        shown = redact_url(value) if key == "store.url" and isinstance(value, str) else value
        raise _fail(path, key, f"got {shown!r}; allowed: {return_value}") from None


def redact_url(url: str) -> str:
    """A database URL fit to print: any password replaced by ``***``."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", re.sub(r"(password=)[^&]*", r"\1***", url))


def load(path: str | Path) -> Settings:
    """Read and validate the file; raise :class:`ConfigError` with one clear message."""
    path = Path(path).absolute()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `postroom init`)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    return from_mapping(doc, path)


def from_mapping(doc: Mapping[str, Any], path: Path) -> Settings:
    base = path.parent
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    listeners: list[Listener] = []
    for key, value in doc.items():
        if key == "listener":
            if not isinstance(value, list):
                raise _fail(path, "listener", "must be an array of tables: write [[listener]]")
            for i, item in enumerate(value):
                listeners.append(_listener(path, i, item))
        elif key in _SCHEMA and key != "":
            if not isinstance(value, dict):
                raise _fail(path, key, f"must be a table: write [{key}]")
            table = _SCHEMA[key]
            parsed: dict[str, Any] = {}
            for k, v in value.items():
                if k not in table:
                    raise _fail(path, f"{key}.{k}", "unknown key; allowed: " + ", ".join(table))
                parsed[k] = _check(path, f"{key}.{k}", table[k], v)
            sections[key] = parsed
        elif key in _SCHEMA[""]:
            top[key] = _check(path, key, _SCHEMA[""][key], value)
        else:
            allowed = list(_SCHEMA[""]) + [s for s in _SCHEMA if s] + ["listener"]
            raise _fail(path, key, "unknown key; allowed: " + ", ".join(allowed))
    if "hostname" not in top:
        raise _fail(path, "hostname", "missing; set it to this server's DNS name, e.g. \"mail.example.org\"")
    if not listeners:
        raise _fail(path, "listener", "no listeners; add at least one [[listener]] with address and role")
    seen: set[tuple[str, int]] = set()
    for lst in listeners:
        if (lst.host, lst.port) in seen and lst.port != 0:
            raise _fail(path, "listener", f"{lst.host}:{lst.port} is listed twice")
        seen.add((lst.host, lst.port))
    data_dir = base / top.get("data_dir", "data")
    tls = sections.get("tls", {})
    cert = base / tls["cert"] if tls.get("cert") else None
    key_path = base / tls["key"] if tls.get("key") else None
    if (cert is None) != (key_path is None):
        raise _fail(path, "tls", "set both tls.cert and tls.key, or neither")
    acme = _acme(path, base, tls)
    if acme.enabled:
        if cert is not None:
            raise _fail(path, "tls.acme", "set tls.acme or tls.cert/tls.key, not both")
        # Kept in the data folder (backed up with it); postroom.acme writes them.
        cert, key_path = data_dir / "acme" / "cert.pem", data_dir / "acme" / "key.pem"
    needs_tls = [lst for lst in listeners if lst.implicit_tls]
    if needs_tls and cert is None:
        raise _fail(path, "tls.cert", f"required by the listener {needs_tls[0]} (implicit TLS)")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTION_CLASSES.items():
        if name in sections:
            kwargs[name] = cls(**sections[name])
    settings = Settings(
        path=path,
        hostname=top["hostname"],
        data_dir=data_dir,
        listeners=tuple(listeners),
        tls_cert=cert,
        tls_key=key_path,
        acme=acme,
        fsync=top.get("fsync", True),
        **kwargs,
    )
    _check_store(path, settings.store)
    return settings


def _check_store(path: Path, store: StoreSettings) -> None:
    if store.backend == "postgresql" and not store.url:
        raise _fail(path, "store.url", "required with store.backend = \"postgresql\"")
    if store.blob_store == "s3":
        if store.backend != "postgresql":
            raise _fail(path, "store.blob_store", "\"s3\" needs store.backend = \"postgresql\"")
        for key in ("s3_endpoint", "s3_bucket", "s3_access_key"):
            if not getattr(store, key):
                raise _fail(path, f"store.{key}", "required with store.blob_store = \"s3\"")


def _acme(path: Path, base: Path, tls: Mapping[str, Any]) -> AcmeSettings:
    if not tls.get("acme", False):
        return AcmeSettings()
    if not tls.get("acme_contact"):
        raise _fail(path, "tls.acme_contact", "required with tls.acme: an address the CA may write to")
    ca = tls.get("acme_ca_file", "")
    return AcmeSettings(
        enabled=True,
        contact=tls["acme_contact"],
        directory=tls.get("acme_directory", LETS_ENCRYPT),
        ca_file=base / ca if ca else None,
        challenge=tls.get("acme_challenge", "auto"),
        domain_names=tls.get("acme_domain_names", True),
    )


def _listener(path: Path, index: int, item: object) -> Listener:
    where = f"listener[{index}]"
    if not isinstance(item, dict):
        raise _fail(path, where, "must be a table with address and role")
    for k in item:
        if k not in _LISTENER_KEYS:
            raise _fail(path, f"{where}.{k}", "unknown key; allowed: address, role")
    for k in _LISTENER_KEYS:
        if k not in item:
            raise _fail(path, f"{where}.{k}", "missing")
    host, port = _check(path, f"{where}.address", parse_hostport, item["address"])
    role = _check(path, f"{where}.role", _LISTENER_KEYS["role"], item["role"])
    return Listener(host=host, port=port, role=role)


def check_files(settings: Settings) -> None:
    """Checks that need the file system: certificate files readable, data folder writable."""
    import os

    for label, p in (("tls.cert", settings.tls_cert), ("tls.key", settings.tls_key)):
        if settings.acme.enabled:
            break  # postroom.acme writes them (a placeholder until the first certificate)
        if p is not None and not p.is_file():
            raise _fail(settings.path, label, f"file not found: {p}")
    if settings.tls_cert is not None and settings.tls_key is not None and not settings.acme.enabled:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (ssl.SSLError, OSError) as e:
            raise _fail(settings.path, "tls", f"cannot load certificate and key: {e}") from None
    if settings.server.user:
        from postroom.privileges import PrivilegeError, account, check_target

        try:
            account(settings.server.user, settings.server.group)
            if os.geteuid() == 0:
                check_target(settings.server.user, settings.server.group, settings.data_dir)
        except PrivilegeError as e:
            raise _fail(settings.path, "server.user", str(e)) from None
    d = settings.data_dir
    if d.exists() and not d.is_dir():
        raise _fail(settings.path, "data_dir", f"{d} exists and is not a folder")
    if not d.exists():
        raise _fail(settings.path, "data_dir", f"{d} does not exist (run `postroom init`)")
    if not os.access(d, os.W_OK | os.X_OK):
        raise _fail(settings.path, "data_dir", f"{d} is not writable by this user")
