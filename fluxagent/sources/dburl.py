"""Platform database server URLs: parsing, redaction for messages, and where the password comes from.

Precedence of the password: the URL, else `platform.password_file` (both at once is an error),
else the driver's own conventions (PGPASSWORD / PGPASSFILE / ~/.pgpass, ~/.my.cnf [client]).
A password never appears in a message: URLs are shown redacted and driver text is scrubbed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from fluxagent.config import PlatformConfig
from fluxagent.errors import SourceConfigError
from fluxagent.statedir.fsutil import unsafe_permissions

SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
MASK = "***"


def redact(url: str) -> str:
    """Return url with any password replaced by *** (the form every message shows)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def without_password(url: str) -> str:
    """Return url with its password (if any) removed, keeping the user."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}"))


def scrub(text: str, secret: str | None) -> str:
    """Return text with every occurrence of secret masked (for driver messages)."""
    return text.replace(secret, MASK) if secret else text


@dataclass(frozen=True)
class Target:
    """A parsed server URL: engine family, address, account and database."""

    engine: str  # "postgresql" or "mysql"
    host: str | None
    port: int | None
    user: str | None
    database: str
    params: dict[str, str]
    shown: str  # redacted URL, for messages
    password: str | None = field(default=None, repr=False)


def parse(url: str) -> Target:
    """Return the Target of a postgresql:// or mysql:// URL; raises SourceConfigError."""
    shown = redact(url)
    parts = urlsplit(url)
    engine = SCHEMES.get(parts.scheme.lower())
    if engine is None:
        raise SourceConfigError(f"platform.database: {shown} is not a postgresql:// or mysql:// URL")
    try:
        port = parts.port
    except ValueError:
        raise SourceConfigError(f"platform.database: {shown} has an invalid port") from None
    database = unquote(parts.path.lstrip("/"))
    if engine == "mysql" and not database:
        raise SourceConfigError(f"platform.database: {shown} names no database",
                                hint="add it as the path: mysql://user@host/fluxbilling")
    return Target(engine, unquote(parts.hostname) if parts.hostname else None, port,
                  unquote(parts.username) if parts.username else None, database,
                  dict(parse_qsl(parts.query)), shown,
                  unquote(parts.password) if parts.password is not None else None)


def read_password_file(path: Path) -> str:
    """Return the first line of a private password file; raises SourceConfigError if unsafe or unreadable."""
    where = f"platform.password_file: {path}"
    try:
        why = unsafe_permissions(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceConfigError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceConfigError(f"{where} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if why:
        raise SourceConfigError(f"{where} is not private: {why}",
                                hint=f"run `chmod 600 {path}` as the user fluxagent runs as")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise SourceConfigError(f"{where} is empty; its first line must be the password")
    return password


def password_for(cfg: PlatformConfig, target: Target) -> str | None:
    """Return the password from the URL or the password file, or None to let the driver find one."""
    if cfg.password_file is None:
        return target.password
    if target.password is not None:
        raise SourceConfigError(
            f"platform.database ({target.shown}) carries a password and platform.password_file is set",
            hint="keep the password in one place: remove it from the URL",
        )
    return read_password_file(cfg.password_file)
