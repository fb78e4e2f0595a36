"""TOML configuration → frozen dataclasses; every problem reported at once with its dotted path."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fluxagent.errors import ConfigError

DEFAULT_PATH = Path("/etc/fluxagent/fluxagent.toml")
REQUEST_SLACK = 5.0  # request_deadline beyond connect + read: TLS handshake and a slow body
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; --config /dev/zero must not read for ever
_MAX_PROBLEM = 300  # a 5 MB bad value is quoted in its problem, but not in full

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE_UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Return seconds for "90s", "1h30m", "14d", "250ms" or a bare number of seconds; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"90s\", \"6h\" or \"14d\", got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # TOML integers are unbounded in tomllib
            raise ValueError(f"{value!r} is out of range (0 to 10 years)") from None
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not text:
            raise ValueError("expected a duration like \"90s\", \"6h\" or \"14d\", got an empty string")
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text):
            raise ValueError(
                f"{value!r} is not a duration: use a number with a unit ms, s, m, h, d or w (\"90s\", \"1h30m\")"
            )
    else:
        raise ValueError(f"expected a duration string like \"6h\", got {type(value).__name__}")
    if seconds < 0 or seconds != seconds or seconds > 10 * 365 * 86400:
        raise ValueError(f"{value!r} is out of range (0 to 10 years)")
    return seconds


def parse_size(value: object) -> int:
    """Return bytes for "20MB", "512KiB", "1GB" or a bare integer; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size like \"20MB\", got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size: use a number with B, KB, MB, GB, KiB, MiB or GiB")
        amount = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()]
        if amount > 2**63:  # also catches the inf a 400-digit number becomes
            raise ValueError(f"{value[:40]!r} is too large")
        n = int(amount)
    else:
        raise ValueError(f"expected a size like \"20MB\", got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"{value!r} must not be negative")
    return n


def decode_public_key(text: str) -> bytes:
    """Return the 32 raw bytes of a base64 Ed25519 public key; raises ValueError."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes; an Ed25519 public key has 32")
    return raw


def is_loopback_host(host: str) -> bool:
    """True when host is a loopback IP literal or the name localhost."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Queries:
    active_clients: str = "SELECT COUNT(*) FROM clients WHERE status = 'active'"
    total_users: str = "SELECT COUNT(*) FROM users"
    servers_total: str = "SELECT COUNT(*) FROM servers"
    version: str = "SELECT value FROM settings WHERE name = 'version'"
    servers: str = "SELECT hostname, ip_address FROM servers"
    networks: str = "SELECT cidr FROM network_ranges"


@dataclass(frozen=True)
class InstanceConfig:
    bound_domain: str = ""
    state_dir: Path = Path("/var/lib/fluxagent")
    license_file: Path = Path("/etc/fluxagent/license.json")


@dataclass(frozen=True)
class ServerConfig:
    url: str = "https://licensing.fluxbilling.example"
    vendor_keys: tuple[bytes, ...] = ()
    ca_bundle: Path | None = None
    proxy: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_response_bytes: int = 1048576

    @property
    def audience(self) -> str:
        """The server host the payload `aud` names (lowercase, no port)."""
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def request_deadline(self) -> float:
        """Seconds one request may take in all: connect, then read, plus slack for TLS and the body."""
        return self.connect_timeout + self.read_timeout + REQUEST_SLACK


@dataclass(frozen=True)
class ScheduleConfig:
    heartbeat: float = 3600.0
    license_check: float = 6 * 3600.0
    digest: float = 24 * 3600.0
    jitter: float = 600.0
    offline_grace: float = 14 * 86400.0


@dataclass(frozen=True)
class PlatformConfig:
    # repr=False: a server URL may carry a password, and a dataclass repr ends up in logs and tracebacks
    database: str = field(default="sqlite:////var/lib/fluxbilling/fluxbilling.db", repr=False)
    version: str = ""
    hostname: str = ""
    queries: Queries = field(default_factory=Queries)
    password_file: Path | None = None  # first line is the database password; must be mode 0600
    connect_timeout: float = 10.0
    statement_timeout: float = 60.0


@dataclass(frozen=True)
class HostConfig:
    include_interfaces: bool = True
    exclude_interfaces: tuple[str, ...] = ("lo", "docker*", "veth*", "br-*")


@dataclass(frozen=True)
class SpoolConfig:
    max_messages: int = 2000
    max_bytes: int = 20_000_000


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class UpdatesConfig:
    apt_auth_file: Path = Path("/etc/apt/auth.conf.d/fluxagent.conf")
    min_remaining: float = 10.0


@dataclass(frozen=True)
class Config:
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    host: HostConfig = field(default_factory=HostConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    log: LogConfig = field(default_factory=LogConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    source: Path | None = None


# ---- value parsers: each returns the parsed value or raises ValueError with a message ----

Parser = Callable[[Any], Any]


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def _nonempty_str(v: Any) -> str:
    s = _str(v).strip()
    if not s:
        raise ValueError("must not be empty")
    return s


def _path(v: Any) -> Path:
    return Path(_nonempty_str(v))


def _opt_path(v: Any) -> Path | None:
    s = _str(v).strip()
    return Path(s) if s else None


def _opt_str(v: Any) -> str | None:
    s = _str(v).strip()
    return s or None


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _int_range(lo: int, hi: int) -> Parser:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range ({lo} to {hi})")
        return v
    return parse


def _size_range(lo: int, hi: int) -> Parser:
    def parse(v: Any) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise ValueError(f"{v!r} is out of range ({lo} to {hi} bytes)")
        return n
    return parse


def _duration_range(lo: float, hi: float) -> Parser:
    def parse(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError(f"{v!r} is out of range ({lo:g}s to {hi:g}s)")
        return s
    return parse


def _one_of(*choices: str) -> Parser:
    def parse(v: Any) -> str:
        s = _str(v).strip().lower()
        if s not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return s
    return parse


def _domain(v: Any) -> str:
    from fluxagent.identifiers import canonical_hostname

    s = _nonempty_str(v)
    if canonical_hostname(s) is None:
        raise ValueError(f"{s!r} is not a valid DNS name")
    return s


def _opt_hostname(v: Any) -> str:
    s = _str(v).strip()
    return _domain(s) if s else ""


def _server_url(v: Any) -> str:
    s = _nonempty_str(v)
    parts = urlsplit(s)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{s!r} must be an https:// URL with a host")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{s!r}: http:// is only allowed for loopback addresses; use https://")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{s!r} must not carry a query, fragment or credentials")
    _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    return s.rstrip("/")


def _vendor_keys(v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of base64 Ed25519 public keys, got {type(v).__name__}")
    keys: list[bytes] = []
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise ValueError(f"[{i}] expected a string, got {type(item).__name__}")
        try:
            keys.append(decode_public_key(item))
        except ValueError as exc:
            raise ValueError(f"[{i}] {exc}") from None
    if len(set(keys)) != len(keys):
        raise ValueError("lists the same key twice")
    return tuple(keys)


def _proxy(v: Any) -> str | None:
    s = _opt_str(v)
    if s is None:
        return None
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ValueError("must be a proxy URL like http://proxy.example:3128")
    return s


def _database(v: Any) -> str:
    s = _nonempty_str(v)
    scheme = s.split(":", 1)[0].lower() if ":" in s else ""
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql", "mariadb"):
        raise ValueError("must start with sqlite:///, postgresql:// or mysql://")
    if scheme == "sqlite" and not s.startswith("sqlite:///"):
        raise ValueError("sqlite URLs look like sqlite:////absolute/path.db or sqlite:///relative.db")
    return s


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


_SQL = _nonempty_str

SCHEMA: dict[str, dict[str, Parser]] = {
    "instance": {"bound_domain": _domain, "state_dir": _path, "license_file": _path},
    "server": {
        "url": _server_url,
        "vendor_keys": _vendor_keys,
        "ca_bundle": _opt_path,
        "proxy": _proxy,
        "connect_timeout": _duration_range(0.1, 300),
        "read_timeout": _duration_range(0.1, 600),
        "max_response_bytes": _size_range(1024, 64 * 2**20),
    },
    "schedule": {
        "heartbeat": _duration_range(60, 7 * 86400),
        "license_check": _duration_range(60, 30 * 86400),
        "digest": _duration_range(60, 30 * 86400),
        "jitter": _duration_range(0, 86400),
        "offline_grace": _duration_range(3600, 365 * 86400),
    },
    "platform": {
        "database": _database,
        "version": _str,
        "hostname": _opt_hostname,
        "password_file": _opt_path,
        "connect_timeout": _duration_range(1, 300),
        "statement_timeout": _duration_range(1, 3600),
    },
    "platform.queries": {f.name: _SQL for f in fields(Queries)},
    "host": {"include_interfaces": _bool, "exclude_interfaces": _str_list},
    "spool": {"max_messages": _int_range(10, 1_000_000), "max_bytes": _size_range(64 * 1024, 10 * 2**30)},
    "log": {"format": _one_of("auto", "json", "console"), "level": _one_of("debug", "info", "warning", "error")},
    "updates": {"apt_auth_file": _path, "min_remaining": _duration_range(0, 3600)},
}
_REQUIRED = {("instance", "bound_domain")}


def from_mapping(doc: Mapping[str, Any], source: Path | None = None) -> Config:
    """Build a Config from a parsed TOML mapping; raises ConfigError listing every problem."""
    where = f"{source}: " if source else ""
    problems: list[str] = []
    values: dict[str, dict[str, Any]] = {name: {} for name in SCHEMA}

    for top, sub in doc.items():
        if top not in ("instance", "server", "schedule", "platform", "host", "spool", "log", "updates"):
            problems.append(f"{where}{top}: unknown section")
            continue
        if not isinstance(sub, Mapping):
            problems.append(f"{where}{top}: expected a table [{top}], got {type(sub).__name__}")
            continue
        for key, value in sub.items():
            section = top
            if top == "platform" and key == "queries":
                if not isinstance(value, Mapping):
                    problems.append(f"{where}platform.queries: expected a table, got {type(value).__name__}")
                    continue
                for qkey, qval in value.items():
                    _take(values, problems, where, "platform.queries", qkey, qval)
                continue
            _take(values, problems, where, section, key, value)
    for section, key in _REQUIRED:
        if key not in values[section] and not any(p.startswith(f"{where}{section}.{key}:") for p in problems):
            problems.append(f"{where}{section}.{key}: is required")
    if problems:
        raise ConfigError(problems)
    queries = Queries(**values.pop("platform.queries"))
    return Config(
        instance=InstanceConfig(**values["instance"]),
        server=ServerConfig(**values["server"]),
        schedule=ScheduleConfig(**values["schedule"]),
        platform=PlatformConfig(queries=queries, **values["platform"]),
        host=HostConfig(**values["host"]),
        spool=SpoolConfig(**values["spool"]),
        log=LogConfig(**values["log"]),
        updates=UpdatesConfig(**values["updates"]),
        source=source,
    )


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
    """Return the TOML-ready mapping of cfg (the inverse of from_mapping, for `init`)."""
    s, sch, p = cfg.server, cfg.schedule, cfg.platform
    return {
        "instance": {
            "bound_domain": cfg.instance.bound_domain,
            "state_dir": str(cfg.instance.state_dir),
            "license_file": str(cfg.instance.license_file),
        },
        "server": {
            "url": s.url,
            "vendor_keys": [base64.b64encode(k).decode() for k in s.vendor_keys],
            "ca_bundle": str(s.ca_bundle) if s.ca_bundle else "",
            "proxy": s.proxy or "",
            "connect_timeout": format_duration(s.connect_timeout),
            "read_timeout": format_duration(s.read_timeout),
            "max_response_bytes": s.max_response_bytes,
        },
        "schedule": {k.name: format_duration(getattr(sch, k.name)) for k in fields(ScheduleConfig)},
        "platform": {
            "database": p.database,
            "version": p.version,
            "hostname": p.hostname,
            "password_file": str(p.password_file) if p.password_file else "",
            "connect_timeout": format_duration(p.connect_timeout),
            "statement_timeout": format_duration(p.statement_timeout),
        },
        "host": {
            "include_interfaces": cfg.host.include_interfaces,
            "exclude_interfaces": list(cfg.host.exclude_interfaces),
        },
        "spool": {"max_messages": cfg.spool.max_messages, "max_bytes": cfg.spool.max_bytes},
        "log": {"format": cfg.log.format, "level": cfg.log.level},
        "updates": {
            "apt_auth_file": str(cfg.updates.apt_auth_file),
            "min_remaining": format_duration(cfg.updates.min_remaining),
        },
    }


def format_duration(seconds: float) -> str:
    """Return the shortest exact duration string for seconds ("6h", "90s", "250ms")."""
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    n = int(seconds)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}s"
