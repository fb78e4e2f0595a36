"""The platform database, read-only: counts, version and streamed identifiers (docs/OPERATOR.md, "Platform databases").

SQLite is built in; PostgreSQL and MySQL/MariaDB come as extras. Every query result is
checked for shape: a count is exactly one non-negative integer, or the source fails.
"""

from __future__ import annotations

import importlib
import operator
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote, urlsplit

from fluxagent.config import PlatformConfig, Queries
from fluxagent.errors import (
    SourceConfigError,
    SourceDatabaseMissing,
    SourceError,
    SourceQueryFailed,
    SourceWriteRefused,
)
from fluxagent.facts import Counts
from fluxagent.sources.shaped import (
    BATCH,
    COUNT_QUERIES,
    ShapedSource,
    check_count,
    check_width,
    hide_quoted_values,
)

__all__ = ["BATCH", "COUNT_QUERIES", "PlatformSource", "SqliteSource", "check_count", "open_platform"]


class PlatformSource(Protocol):
    """What the builders need from the platform database."""

    def version(self) -> str: ...
    def counts(self) -> Counts: ...
    def iter_servers(self) -> Iterator[tuple[Any, ...]]: ...
    def iter_networks(self) -> Iterator[object]: ...
    def close(self) -> None: ...


def sqlite_path(url: str) -> Path:
    """Return the file path of a sqlite:/// URL (config load refuses relative ones: four slashes, absolute)."""
    return Path(url[len("sqlite:///"):])


DRIVERS = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql")}  # engine: (module, extra)


def driver_missing(shown: str, module: str, extra: str, why: str) -> SourceConfigError:
    """Return the error for a database driver that cannot be imported (why: the ImportError's text).

    psycopg without its binary extra (the Debian package's) loads the system's libpq: when that is
    what is missing, installing the Python extra would not help.
    """
    if module == "psycopg" and "libpq" in why:
        return SourceConfigError(
            f"platform.database: {shown} needs libpq, the PostgreSQL client library, which psycopg cannot find",
            hint="install it: apt install libpq5 (Debian and Ubuntu)")
    return SourceConfigError(f"platform.database: {shown} needs the {module} driver, which is not installed",
                             hint=f"install the extra: pip install 'fluxagent[{extra}]'")


def open_platform(cfg: PlatformConfig) -> PlatformSource:
    """Open the configured platform database read-only; raises SourceError (a subclass naming the cause)."""
    scheme = urlsplit(cfg.database).scheme.lower()
    if scheme == "sqlite":
        return SqliteSource(sqlite_path(cfg.database), cfg.queries)
    from fluxagent.sources import dburl

    target = dburl.parse(cfg.database)
    module, extra = DRIVERS[target.engine]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise driver_missing(target.shown, module, extra, str(exc)) from None
    if target.engine == "postgresql":
        from fluxagent.sources.postgres import PostgresSource

        return PostgresSource(cfg, target)
    from fluxagent.sources.mysql import MysqlSource

    return MysqlSource(cfg, target)


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


def _sqlite_error(name: str, sql: str, exc: sqlite3.Error) -> SourceError:
    """Translate a query's sqlite3 error: refused writes apart from other failures."""
    text = hide_quoted_values(str(exc), sql)  # the database's values, never quoted
    if "not authorized" in text or "authorization denied" in text or "readonly database" in text:
        return SourceWriteRefused(f"platform.queries.{name} tried to change the database and was refused "
                                  f"(read-only): {text} (query {sql!r})")
    return SourceQueryFailed(f"platform.queries.{name} failed: {text} (query {sql!r})")


class SqliteSource(ShapedSource):
    """A SQLite platform database opened read-only (`mode=ro`); every query shape-checked."""

    def __init__(self, path: Path, queries: Queries) -> None:
        self.path, self.queries = path, queries
        if not path.is_file():
            raise SourceDatabaseMissing(f"platform.database: {path} does not exist or is not a file")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:  # a setup problem like a missing file (78), not a failing query (1)
            raise SourceConfigError(
                f"platform.database: cannot read {path}: {exc.strerror or exc}",
                hint="let the user fluxagent runs as read it: add that user to the group owning the file") from exc
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
            self.conn.text_factory = tolerant_text
            self.conn.execute("PRAGMA query_only = ON")
            self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            # mode=ro still lets ATTACH / VACUUM INTO create files elsewhere: allow reads only
            self.conn.set_authorizer(_read_only_authorizer)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):  # the configured file is something else: fix the setting
                raise SourceConfigError(f"platform.database: {path} is not a SQLite database") from exc
            raise SourceError(f"platform.database: cannot open {path} read-only: {exc}") from exc
        except sqlite3.Error as exc:
            raise SourceError(f"platform.database: cannot open {path} read-only: {exc}") from exc

    def _fetch(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(sql)
            rows = cur.fetchmany(limit)
            cur.close()
            return rows
        except sqlite3.Error as exc:
            raise _sqlite_error(name, sql, exc) from exc

    def _batches(self, name: str, sql: str, width: int) -> Iterator[list[tuple[Any, ...]]]:
        # Rows decode with the C decoder (`str`); a value that is not UTF-8 makes it raise for the
        # whole query, so the query runs again from the row it stopped at with `tolerant_text`,
        # which hands such a value over as bytes (skipped and counted). The connection keeps
        # `tolerant_text` between batches for the other queries.
        done, factory = 0, cast("Callable[[bytes], object]", str)
        while True:
            try:
                cur = self.conn.execute(sql)
                check_width(name, cur.description, width)
                skip = done
                while True:
                    self.conn.text_factory = factory
                    try:
                        rows = cur.fetchmany(BATCH)
                    finally:
                        self.conn.text_factory = tolerant_text
                    if not rows:
                        break
                    if skip:  # handed out before the restart
                        rows, skip = rows[skip:], max(0, skip - len(rows))
                        if not rows:
                            continue
                    done += len(rows)
                    yield rows
                cur.close()
                return
            except sqlite3.OperationalError as exc:
                if factory is str and str(exc).startswith("Could not decode to UTF-8"):  # the text is not shown
                    factory = tolerant_text
                    continue
                raise _sqlite_error(name, sql, exc) from exc
            except sqlite3.Error as exc:
                raise _sqlite_error(name, sql, exc) from exc

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        """Yield (hostname, ip_address) of every inventory server, streamed (SQLite has no address types)."""
        return self._rows_streamed("servers", self.queries.servers, 2)

    def iter_networks(self) -> Iterator[object]:
        """Yield every inventory CIDR, streamed (SQLite has no address types: no per-row conversion)."""
        return map(operator.itemgetter(0), self._rows_streamed("networks", self.queries.networks, 1))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
