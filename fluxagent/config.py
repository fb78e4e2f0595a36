"""TOML configuration → frozen dataclasses; every problem reported at once with its dotted path.

Each key is described once, in its dataclass field: its value type (parser, written form, type
name), its default and what it means. The loader, `to_mapping`, fluxagent.example.toml,
docs/CONFIG.md and the config `fluxagent init` writes are all derived from these fields
(fluxagent/configdoc.py renders the last three; a test checks the files agree).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fluxagent.configvalues import (
    BOOL,
    DATABASE_URL,
    DOMAIN,
    OPT_HOSTNAME,
    OPT_PATH,
    OPT_VERSION,
    PATH,
    PROXY_URL,
    SERVER_URL,
    SQL,
    STRING_LIST,
    USER_NAME,
    VENDOR_KEYS,
    ValueType,
    decode_public_key,
    duration_range,
    format_duration,
    int_range,
    is_loopback_host,
    one_of,
    parse_duration,
    parse_size,
    size_range,
)
from fluxagent.errors import ConfigError

__all__ = [
    "Config", "ConfigError", "HostConfig", "InstanceConfig", "Key", "LogConfig", "PlatformConfig", "Queries",
    "ScheduleConfig", "ServerConfig", "SpoolConfig", "UpdatesConfig", "decode_public_key", "format_duration",
    "from_mapping", "is_loopback_host", "load", "parse_duration", "parse_size", "to_mapping",
]

DEFAULT_PATH = Path("/etc/fluxagent/fluxagent.toml")
REQUEST_SLACK = 5.0  # at most this beyond connect + read (no more than read_timeout): TLS and a slow body
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; --config /dev/zero must not read for ever
_MAX_PROBLEM = 300  # a 5 MB bad value is quoted in its problem, but not in full


@dataclass(frozen=True)
class Key:
    """The one description of a config key: value type, meaning, and how the written files show it."""

    type: ValueType
    doc: str  # what the key means, for the comment above it and the docs/CONFIG.md table
    example: Any = None  # TOML value the example file shows instead of a default that is no use as it is
    required: bool = False
    optional: bool = False  # an override: written commented out while it holds its default


def key(
    vtype: ValueType, doc: str, *, example: Any = None, required: bool = False, optional: bool = False
) -> dict[str, Key]:
    """Return the field metadata describing one config key."""
    return {"key": Key(vtype, doc, example, required, optional)}


def section(doc: str) -> dict[str, str]:
    """Return the field metadata of a field holding a config section (a TOML table)."""
    return {"section": doc}


@dataclass(frozen=True)
class InstanceConfig:
    bound_domain: str = field(default="", metadata=key(
        DOMAIN, "The domain the FluxBilling license is bound to. Sent in the clear (clause 08, License validation).",
        example="billing.example.com", required=True))
    state_dir: Path = field(default=Path("/var/lib/fluxagent"), metadata=key(
        PATH, "Where the identity, spool, ledger and status files live (created 0700)."))
    license_file: Path = field(default=Path("/etc/fluxagent/license.json"), metadata=key(
        PATH, "The vendor-signed license file (a DSSE envelope)."))
    service_user: str = field(default="", metadata=key(
        USER_NAME, "The user the service runs as (the package's is fluxagent). `fluxagent init` run as root "
        "creates the state directory and identity owned by this user. Empty: the owner of an existing state "
        "directory, else the user running init.", example="fluxagent"))


@dataclass(frozen=True)
class ServerConfig:
    url: str = field(default="https://licensing.fluxbilling.example", metadata=key(
        SERVER_URL, "The vendor's licensing server. https:// only; http:// is accepted for loopback addresses "
        "(tests)."))
    vendor_keys: tuple[bytes, ...] = field(default=(), metadata=key(
        VENDOR_KEYS, "Pinned vendor Ed25519 public keys (base64). Receipts and license files must verify against "
        "one of them. List at least two (current and next) so the vendor can rotate without an outage. Use the "
        "keys from your license delivery (the example's two are placeholders).",
        example=["k1Jmbhyr7mwdEZnCYsQvMkgSp1gYQb6RmsZQrm2M1sU=", "WZ1Z8+dnbdK1v2fOZJvFyLA4rpB4JHhHoGJSrrQmfRU="]))
    ca_bundle: Path | None = field(default=None, metadata=key(
        OPT_PATH, "PEM bundle of CA certificates to trust for the server instead of the system trust store."))
    proxy: str | None = field(default=None, metadata=key(
        PROXY_URL, "Proxy URL (http://user:pass@proxy.example:3128). Empty: HTTPS_PROXY / NO_PROXY from the "
        "environment."))
    connect_timeout: float = field(default=5.0, metadata=key(
        duration_range(0.1, 300), "Time allowed to open a connection to the server."))
    read_timeout: float = field(default=20.0, metadata=key(
        duration_range(0.1, 600), "Time allowed to wait for each read from the server."))
    max_response_bytes: int = field(default=1048576, metadata=key(
        size_range(1024, 64 * 2**20), "Largest response accepted (counted after decompression); larger ones are "
        "cut off and retried later."))

    @property
    def audience(self) -> str:
        """The server host the payload `aud` names (lowercase, no port)."""
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def request_deadline(self) -> float:
        """Seconds one request may take in all: connect, read, and slack for TLS and the body (≤ 5 s, ≤ read)."""
        return self.connect_timeout + self.read_timeout + min(REQUEST_SLACK, self.read_timeout)


@dataclass(frozen=True)
class ScheduleConfig:
    heartbeat: float = field(default=3600.0, metadata=key(
        duration_range(60, 7 * 86400), "How often the heartbeat (aggregate counts) is sent."))
    license_check: float = field(default=6 * 3600.0, metadata=key(
        duration_range(60, 30 * 86400), "How often the license is checked with the server."))
    digest: float = field(default=24 * 3600.0, metadata=key(
        duration_range(60, 30 * 86400), "How often the infrastructure digest is sent."))
    jitter: float = field(default=600.0, metadata=key(
        duration_range(0, 86400), "Random spread added to every timer so a fleet does not call in at the same "
        "second."))
    offline_grace: float = field(default=14 * 86400.0, metadata=key(
        duration_range(3600, 365 * 86400), "How long the license stays \"offline\" (still good) when the server "
        "cannot be reached."))

    def interval(self, kind: str) -> float:
        """Return the interval of a scheduled kind ("license", "heartbeat", "digest"); raises KeyError."""
        return {"license": self.license_check, "heartbeat": self.heartbeat, "digest": self.digest}[kind]

    def spans(self) -> dict[str, float]:
        """Return per scheduled kind its interval plus jitter: the furthest ahead a run sets its timer itself."""
        return {k: self.interval(k) + self.jitter for k in ("license", "heartbeat", "digest")}


@dataclass(frozen=True)
class Queries:
    active_clients: str = field(default="SELECT COUNT(*) FROM clients WHERE status = 'active'", metadata=key(
        SQL, "Counts the active clients: one non-negative integer.", optional=True))
    total_users: str = field(default="SELECT COUNT(*) FROM users", metadata=key(
        SQL, "Counts the users: one non-negative integer.", optional=True))
    servers_total: str = field(default="SELECT COUNT(*) FROM servers", metadata=key(
        SQL, "Counts the inventory servers: one non-negative integer.", optional=True))
    version: str = field(default="SELECT value FROM settings WHERE name = 'version'", metadata=key(
        SQL, "Reads the platform version (used when platform.version is empty).", optional=True))
    servers: str = field(default="SELECT hostname, ip_address FROM servers", metadata=key(
        SQL, "Lists the inventory servers: (hostname, ip_address) rows.", optional=True))
    networks: str = field(default="SELECT cidr FROM network_ranges", metadata=key(
        SQL, "Lists the network ranges: one CIDR per row.", optional=True))


@dataclass(frozen=True)
class PlatformConfig:
    # repr=False: a server URL may carry a password, and a dataclass repr ends up in logs and tracebacks
    database: str = field(default="sqlite:////var/lib/fluxbilling/fluxbilling.db", repr=False, metadata=key(
        DATABASE_URL, "The FluxBilling database, opened read-only: sqlite:////absolute/path.db, "
        "postgresql://user@host:5432/db (extra fluxagent[postgres]) or mysql://user@host:3306/db, also "
        "mariadb://… (extra fluxagent[mysql]); a unix socket: postgresql://user@/db?host=/run/postgresql or "
        "mysql://user@localhost/db?unix_socket=/run/mysqld/mysqld.sock. Use an account that may only SELECT. "
        "Keep the password out of this file: use password_file, or the driver's own PGPASSFILE / ~/.pgpass "
        "(PostgreSQL) or ~/.my.cnf [client] (MySQL/MariaDB) of the user fluxagent runs as."))
    password_file: Path | None = field(default=None, metadata=key(
        OPT_PATH, "File whose first line is the database password; refused unless only its owner can read it "
        "(0600)."))
    connect_timeout: float = field(default=10.0, metadata=key(
        duration_range(1, 300), "How long to wait for the database server to answer."))
    statement_timeout: float = field(default=60.0, metadata=key(
        duration_range(1, 3600), "How long any one query may run."))
    version: str = field(default="", metadata=key(
        OPT_VERSION, "Platform version to report: numbers like 4.12.3, optionally one short release tag (-rc2, "
        "+build.17, ~deb12u1); never a name, mail address or host name. Empty: read from the database "
        "(platform.queries.version)."))
    hostname: str = field(default="", metadata=key(
        OPT_HOSTNAME, "Host name to report in the heartbeat. Empty: this host's FQDN."))
    queries: Queries = field(default_factory=Queries, metadata=section(
        "Optional overrides of the reference-schema queries. Count queries must return exactly one non-negative "
        "integer; `servers` returns (hostname, ip_address) rows; `networks` returns CIDRs. The queries run "
        "read-only: a query that tries to write fails."))


@dataclass(frozen=True)
class HostConfig:
    include_interfaces: bool = field(default=True, metadata=key(
        BOOL, "Add the networks of this host's interfaces to the digest (as keyed tokens)."))
    exclude_interfaces: tuple[str, ...] = field(default=("lo", "docker*", "veth*", "br-*"), metadata=key(
        STRING_LIST, "Interfaces left out (shell-style patterns)."))


@dataclass(frozen=True)
class SpoolConfig:
    max_messages: int = field(default=2000, metadata=key(
        int_range(10, 1_000_000), "Most unsent messages kept; when full, the oldest heartbeat is dropped "
        "(and counted)."))
    max_bytes: int = field(default=64_000_000, metadata=key(
        size_range(64 * 1024, 10 * 2**30), "Most bytes of unsent messages kept, with the same rule. A message "
        "larger than this is not sent (and said so once): the default holds the full digest of ~1.3 million "
        "inventory servers and ranges."))


@dataclass(frozen=True)
class LogConfig:
    format: str = field(default="auto", metadata=key(
        one_of("auto", "json", "console"), "auto: console on a terminal, JSON lines otherwise (with `<N>` priority "
        "prefixes under journald)."))
    level: str = field(default="info", metadata=key(
        one_of("debug", "info", "warning", "error"), "The least severe events logged."))


@dataclass(frozen=True)
class UpdatesConfig:
    apt_auth_file: Path = field(default=Path("/etc/apt/auth.conf.d/fluxagent.conf"), metadata=key(
        PATH, "Where `fluxagent credentials apt` writes the registry's credentials (mode 0600); removed once "
        "they expire. The only place update credentials are ever stored."))
    min_remaining: float = field(default=10.0, metadata=key(
        duration_range(0, 3600), "Credentials with less lifetime left than this are not handed out; fresh ones "
        "are requested."))
    registry: str = field(default="", metadata=key(
        OPT_HOSTNAME, "The vendor's update registry. The docker and git helpers answer \"not found\" at once, "
        "without asking the server, for every other host. Empty: the registry the server last issued "
        "credentials for (until the first issuance, the server is asked)."))


@dataclass(frozen=True)
class Config:
    instance: InstanceConfig = field(default_factory=InstanceConfig, metadata=section(
        "This instance: the domain its license is bound to, its state directory and its license file."))
    server: ServerConfig = field(default_factory=ServerConfig, metadata=section(
        "The vendor's licensing server and how to reach it."))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata=section(
        "How often each message is sent. A server may ask for longer intervals, never shorter ones."))
    platform: PlatformConfig = field(default_factory=PlatformConfig, metadata=section(
        "The FluxBilling platform database the counts and identifiers are read from."))
    host: HostConfig = field(default_factory=HostConfig, metadata=section(
        "This host's own network interfaces."))
    spool: SpoolConfig = field(default_factory=SpoolConfig, metadata=section(
        "Bounds of the queue of messages waiting to be sent."))
    log: LogConfig = field(default_factory=LogConfig, metadata=section(
        "The agent's log (events on stdout)."))
    updates: UpdatesConfig = field(default_factory=UpdatesConfig, metadata=section(
        "Short-lived update credentials (`fluxagent credentials`). They are never stored anywhere except, for "
        "apt, the auth.conf.d entry below."))
    source: Path | None = None


# ---- the sections and keys, read off the dataclasses ----


def section_class(f: Field[Any]) -> type[Any]:
    """Return the dataclass a section field holds."""
    factory = f.default_factory
    if not isinstance(factory, type):  # a section's default_factory is its dataclass
        raise TypeError(f"section {f.name} has no dataclass default_factory")
    return factory


def sections(cls: type[Any] = Config, at: str = "") -> Iterator[tuple[str, str, type[Any]]]:
    """Yield (dotted name, description, dataclass) of every section under cls, in file order."""
    for f in fields(cls):
        if "section" in f.metadata:
            name = f"{at}.{f.name}" if at else f.name
            yield name, f.metadata["section"], section_class(f)
            yield from sections(section_class(f), name)


def keys(cls: type[Any]) -> list[tuple[Field[Any], Key]]:
    """Return (field, description) of each key of one section dataclass, in file order."""
    return [(f, f.metadata["key"]) for f in fields(cls) if "key" in f.metadata]


Parser = Callable[[Any], Any]
SCHEMA: dict[str, dict[str, Parser]] = {
    name: {f.name: k.type.parse for f, k in keys(cls)} for name, _, cls in sections()
}
_REQUIRED = [(name, f.name) for name, _, cls in sections() for f, k in keys(cls) if k.required]


def from_mapping(doc: Mapping[str, Any], source: Path | None = None) -> Config:
    """Build a Config from a parsed TOML mapping; raises ConfigError listing every problem."""
    where = f"{source}: " if source else ""
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {name: {} for name in SCHEMA}
    _read_table(doc, "", values, problems, where)
    for name, key_name in _REQUIRED:
        if key_name not in values[name] and not any(p.startswith(f"{where}{name}.{key_name}:") for p in problems):
            problems.append(f"{where}{name}.{key_name}: is required")
    if problems:
        raise ConfigError(problems)
    cfg: Config = _build(Config, "", values, source=source)
    return cfg


def _read_table(
    table: Mapping[str, Any], at: str, values: dict[str, dict[str, Any]], problems: list[str], where: str
) -> None:
    for name, value in table.items():
        dotted = f"{at}.{name}" if at else name
        if dotted in values and "." not in name:
            if isinstance(value, Mapping):
                _read_table(value, dotted, values, problems, where)
            else:
                problems.append(f"{where}{dotted}: expected a table [{dotted}], got {type(value).__name__}")
        elif not at:
            problems.append(f"{where}{name}: unknown section")
        else:
            _take(values, problems, where, at, name, value)


def _build(cls: type[Any], at: str, values: dict[str, dict[str, Any]], **extra: Any) -> Any:
    kwargs = dict(values.get(at, {}), **extra)
    for f in fields(cls):
        if "section" in f.metadata:
            kwargs[f.name] = _build(section_class(f), f"{at}.{f.name}" if at else f.name, values)
    return cls(**kwargs)


def _take(
    values: dict[str, dict[str, Any]], problems: list[str], where: str, section: str, key: str, value: Any
) -> None:
    parser = SCHEMA[section].get(key)
    if parser is None:
        near = [k for k in SCHEMA[section] if k.startswith(key[:3])] if key else []
        tip = f" (did you mean {near[0]!r}?)" if near else ""
        problems.append(f"{where}{section}.{key}: unknown key{tip}")
        return
    try:
        values[section][key] = parser(value)
    except ValueError as exc:
        why = str(exc)
        why = why if len(why) <= _MAX_PROBLEM else why[: _MAX_PROBLEM - 1] + "…"
        problems.append(f"{where}{section}.{key}: {why}")


def load(path: Path) -> Config:
    """Read and validate the TOML file at path; raises ConfigError (exit 78) naming the file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: file not found"], hint="run `fluxagent init` to write one, or pass --config PATH"
        ) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse(raw, path)


def parse(raw: bytes, path: Path) -> Config:
    """Validate config file content read from path; raises ConfigError (exit 78) naming the file.

    The daemon's workers parse the text the supervisor accepted, so a file broken on disk after a
    reload was refused does not reach them.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a fluxagent config"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 (byte {exc.start})"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays and inline tables
        raise ConfigError([f"{path}: TOML syntax: arrays or tables nested too deeply"]) from None
    return from_mapping(doc, path)


def to_mapping(cfg: Config) -> dict[str, Any]:
    """Return the TOML-ready mapping of cfg (the inverse of from_mapping, for `init` and reloads)."""
    return _render(cfg)


def _render(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if "key" in f.metadata:
            out[f.name] = f.metadata["key"].type.render(getattr(obj, f.name))
        elif "section" in f.metadata:
            out[f.name] = _render(getattr(obj, f.name))
    return out
