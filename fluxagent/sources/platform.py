"""The platform database, read-only: counts, version and streamed identifiers (DESIGN §9).

SQLite is built in; PostgreSQL and MySQL/MariaDB come as extras. Every query result is
checked for shape: a count is exactly one non-negative integer, or the source fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from fluxagent.config import PlatformConfig, Queries
from fluxagent.errors import SourceError
from fluxagent.facts import Counts

BATCH = 2000
COUNT_QUERIES = ("active_clients", "total_users", "servers_total")
MAX_COUNT = 2**53 - 1  # the largest integer every JSON reader keeps exact (and the allowlist's bound)


class PlatformSource(Protocol):
    """What the builders need from the platform database."""

    def version(self) -> str: ...
    def counts(self) -> Counts: ...
    def iter_servers(self) -> Iterator[tuple[Any, ...]]: ...
    def iter_networks(self) -> Iterator[object]: ...
    def close(self) -> None: ...


def sqlite_path(url: str) -> Path:
    """Return the file path of a sqlite:/// URL (four slashes: absolute, three: relative)."""
    return Path(url[len("sqlite:///"):])


def open_platform(cfg: PlatformConfig) -> PlatformSource:
    """Open the configured platform database read-only; raises SourceError."""
    scheme = urlsplit(cfg.database).scheme.lower()
    if scheme == "sqlite":
        return SqliteSource(sqlite_path(cfg.database), cfg.queries)
    extra = "postgres" if scheme.startswith("postgres") else "mysql"
    raise SourceError(
        f"platform.database: {scheme}:// databases are not supported by this build",
        hint=f"install the `fluxagent[{extra}]` extra, or use a sqlite:/// database",
    )


def check_count(name: str, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """Return the single non-negative integer a count query produced; raises SourceError otherwise."""
    where = f"platform.queries.{name} ({sql!r})"
    if len(rows) != 1:
        raise SourceError(f"{where} returned {len(rows)} rows; a count must return exactly one")
    if len(rows[0]) != 1:
        raise SourceError(f"{where} returned {len(rows[0])} columns; a count must return exactly one")
    value = rows[0][0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{where} returned {type(value).__name__} {str(value)[:40]!r}, not an integer")
    if value < 0:
        raise SourceError(f"{where} returned {value}; a count must not be negative")
    if value > MAX_COUNT:
        raise SourceError(f"{where} returned {value}; not a plausible count (over 2^53)")
    return value


_READ_ACTIONS = frozenset(
    getattr(sqlite3, name) for name in ("SQLITE_SELECT", "SQLITE_READ", "SQLITE_FUNCTION", "SQLITE_RECURSIVE")
    if hasattr(sqlite3, name)
)


def tolerant_text(raw: bytes) -> str | bytes:
    """Decode a TEXT value as UTF-8, or return its bytes when it is not valid UTF-8.

    The default decoder raises for the whole query (and quotes the bad text in the error); as bytes
    the value is simply not an identifier, so it is skipped and counted.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _read_only_authorizer(action: int, *_args: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


class SqliteSource:
    """A SQLite platform database opened read-only (`mode=ro`); every query shape-checked."""

    def __init__(self, path: Path, queries: Queries) -> None:
        self.path, self.queries = path, queries
        if not path.is_file():
            raise SourceError(f"platform.database: {path} does not exist or is not a file")
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
            self.conn.text_factory = tolerant_text
            self.conn.execute("PRAGMA query_only = ON")
            self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            # mode=ro still lets ATTACH / VACUUM INTO create files elsewhere: allow reads only
            self.conn.set_authorizer(_read_only_authorizer)
        except sqlite3.Error as exc:
            raise SourceError(f"platform.database: cannot open {path} read-only: {exc}") from exc

    def _rows(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(sql)
            rows = cur.fetchmany(limit)
            cur.close()
            return rows
        except sqlite3.Error as exc:
            raise SourceError(f"platform.queries.{name} failed: {exc} (query {sql!r})") from exc

    def counts(self) -> Counts:
        """Return the three aggregate counts; raises SourceError naming the failing query."""
        values = {}
        for name in COUNT_QUERIES:
            sql = getattr(self.queries, name)
            values[name] = check_count(name, sql, self._rows(name, sql, 2))
        return Counts(**values)

    def version(self) -> str:
        """Return the platform version from the settings table; raises SourceError."""
        sql = self.queries.version
        rows = self._rows("version", sql, 2)
        if len(rows) != 1 or len(rows[0]) != 1 or not isinstance(rows[0][0], str):
            raise SourceError(
                f"platform.queries.version ({sql!r}) must return one text value, got {len(rows)} rows",
                hint="set platform.version in the config to state the version explicitly",
            )
        return rows[0][0].strip()

    def _stream(self, name: str, sql: str, width: int) -> Iterator[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(sql)
            if cur.description is None or len(cur.description) != width:
                got = 0 if cur.description is None else len(cur.description)
                raise SourceError(f"platform.queries.{name} must return {width} column(s), got {got}")
            while True:
                rows = cur.fetchmany(BATCH)
                if not rows:
                    break
                yield from rows
            cur.close()
        except sqlite3.Error as exc:
            raise SourceError(f"platform.queries.{name} failed: {exc} (query {sql!r})") from exc

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        """Yield (hostname, ip_address) of every inventory server, streamed."""
        return self._stream("servers", self.queries.servers, 2)  # rows are (hostname, ip) already

    def iter_networks(self) -> Iterator[object]:
        """Yield every inventory CIDR, streamed."""
        for row in self._stream("networks", self.queries.networks, 1):
            yield row[0]

    def close(self) -> None:
        self.conn.close()
