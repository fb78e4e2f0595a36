"""The value types of config keys: how each TOML value is parsed, written back and described.

A `ValueType` bundles the three, so a key's parser, its form in a written config and its entry in
docs/CONFIG.md cannot disagree. Parsers raise ValueError with a message naming what is wrong; the
config loader adds the file and the dotted path.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fluxagent.facts import VERSION_SHAPE, is_version

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


def format_duration(seconds: float) -> str:
    """Return the shortest exact duration string for seconds ("6h", "90s", "250ms")."""
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    n = int(seconds)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}s"


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


def format_size(n: int) -> str | int:
    """Return the shortest exact size string for n bytes ("20MB", "1MiB"), or n itself when none is exact."""
    for unit in ("GiB", "GB", "MiB", "MB", "KiB", "KB"):
        size = _SIZE_UNITS[unit.upper()]
        if n and n % size == 0:
            return f"{n // size}{unit}"
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


def _same(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class ValueType:
    """One kind of config value: `parse` (TOML → field, raises ValueError), `render` (field → TOML), `name`."""

    name: str  # the type column of docs/CONFIG.md
    parse: Callable[[Any], Any]
    render: Callable[[Any], Any] = _same


# ---- parsers: each returns the parsed value or raises ValueError with a message ----


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


def _opt_str(v: Any) -> str | None:
    s = _str(v).strip()
    return s or None


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _domain(v: Any) -> str:
    from fluxagent.identifiers import canonical_hostname

    s = _nonempty_str(v)
    if canonical_hostname(s) is None:
        raise ValueError(f"{s!r} is not a valid DNS name")
    return s


def _user_name(v: Any) -> str:
    s = _str(v).strip()
    if s and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", s):
        raise ValueError(f"{s[:40]!r} is not a user name (lowercase letters, digits, '_' or '-')")
    return s


def _opt_hostname(v: Any) -> str:
    s = _str(v).strip()
    return _domain(s) if s else ""


def _opt_version(v: Any) -> str:
    s = _str(v).strip()
    if s and not is_version(s):
        raise ValueError(f"{s[:40]!r} is not a version number: expected {VERSION_SHAPE}")
    return s


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
        raise ValueError("sqlite URLs look like sqlite:////absolute/path.db (four slashes)")
    if scheme == "sqlite" and not s.startswith("sqlite:////"):
        # a relative path resolves against the working directory: `/` for the service, anything for a person
        rel = s[len("sqlite:///"):]
        raise ValueError(f"{s!r} is a relative path ({rel!r}), which depends on the working directory;"
                         f" write the absolute path with four slashes: 'sqlite:////{rel}'")
    return s


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


# ---- the value types config.py's keys are made of ----

STRING = ValueType("string", _str)
USER_NAME = ValueType("user name, or empty", _user_name)
SQL = ValueType("SQL query", _nonempty_str)
BOOL = ValueType("boolean", _bool)
PATH = ValueType("path", lambda v: Path(_nonempty_str(v)), str)
OPT_PATH = ValueType("path, or empty", lambda v: Path(s) if (s := _str(v).strip()) else None,
                     lambda p: str(p) if p else "")
DOMAIN = ValueType("DNS name", _domain)
OPT_HOSTNAME = ValueType("DNS name, or empty", _opt_hostname)
OPT_VERSION = ValueType("version number, or empty", _opt_version)
SERVER_URL = ValueType("https:// URL", _server_url)
VENDOR_KEYS = ValueType("list of base64 Ed25519 public keys", _vendor_keys,
                        lambda keys: [base64.b64encode(k).decode() for k in keys])
PROXY_URL = ValueType("proxy URL, or empty", _proxy, lambda p: p or "")
DATABASE_URL = ValueType("database URL", _database)
STRING_LIST = ValueType("list of strings", _str_list, list)


def int_range(lo: int, hi: int) -> ValueType:
    """Return the type of an integer between lo and hi."""
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range ({lo} to {hi})")
        return v
    return ValueType(f"integer, {lo} to {hi}", parse)


def size_range(lo: int, hi: int) -> ValueType:
    """Return the type of a size ("20MB", "512KiB" or bytes) between lo and hi bytes."""
    def parse(v: Any) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise ValueError(f"{v!r} is out of range ({lo} to {hi} bytes)")
        return n
    return ValueType(f"size, {format_size(lo)} to {format_size(hi)}", parse, format_size)


def duration_range(lo: float, hi: float) -> ValueType:
    """Return the type of a duration ("90s", "6h", "1h30m") between lo and hi seconds."""
    def parse(v: Any) -> float:
        s = parse_duration(v)
        if not lo <= s <= hi:
            raise ValueError(f"{v!r} is out of range ({lo:g}s to {hi:g}s)")
        return s
    return ValueType(f"duration, {format_duration(lo)} to {format_duration(hi)}", parse, format_duration)


def one_of(*choices: str) -> ValueType:
    """Return the type of a string that must be one of choices (case-insensitive)."""
    def parse(v: Any) -> str:
        s = _str(v).strip().lower()
        if s not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return s
    return ValueType("one of " + ", ".join(choices), parse)
