"""PostgreSQL platform databases via psycopg 3 (extra `fluxagent[postgres]`).

Every query runs in its own `BEGIN READ ONLY` transaction on a session whose default is read-only,
with a statement timeout. Queries go over the extended protocol (binary results), which refuses
more than one statement per query, so an override cannot end the transaction and write after it.
Identifiers come from a server-side (named) cursor, fetched in batches: memory stays flat.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import psycopg

from fluxagent.config import PlatformConfig
from fluxagent.errors import (
    SourceAuthFailed,
    SourceDatabaseMissing,
    SourceError,
    SourceQueryFailed,
    SourceUnreachable,
    SourceWriteRefused,
)
from fluxagent.sources.dburl import Target, password_for, scrub
from fluxagent.sources.shaped import BATCH, ShapedSource, check_width, hide_quoted_values

_AUTH_HINTS = ("password authentication failed", "no password supplied", "authentication failed",
               "role \"", "no pg_hba.conf entry", "permission denied for database")


def _first_line(exc: BaseException, secret: str | None) -> str:
    text = scrub(str(exc), secret).strip()
    return text.removeprefix("connection failed: ").splitlines()[0] if text else type(exc).__name__


def connect_error(exc: psycopg.Error, target: Target, secret: str | None) -> SourceError:
    """Translate a failed connect into unreachable / auth failed / database missing."""
    text = _first_line(exc, secret)
    low = str(exc).lower()
    where = f"platform.database {target.shown}"
    if exc.sqlstate == "3D000" or ("database \"" in low and "does not exist" in low):
        return SourceDatabaseMissing(f"{where}: the server has no database {target.database!r} ({text})",
                                     hint="check the database name in platform.database")
    if exc.sqlstate in ("28P01", "28000") or any(h in low for h in _AUTH_HINTS):
        return SourceAuthFailed(f"{where}: authentication failed ({text})",
                                hint="check the user and its password (URL, platform.password_file or ~/.pgpass)")
    return SourceUnreachable(f"{where}: cannot reach the server ({text})",
                             hint="is the database server running and reachable from this host?")


def query_error(name: str, sql: str, exc: psycopg.Error, secret: str | None) -> SourceError:
    """Translate a failed query: refused write, lost server, or any other failure."""
    text = hide_quoted_values(_first_line(exc, secret), sql)  # the database's values, never quoted
    where = f"platform.queries.{name}"
    if exc.sqlstate == "25006":
        return SourceWriteRefused(f"{where} tried to change the database and was refused by the read-only "
                                  f"transaction: {text} (query {sql!r})")
    if exc.sqlstate == "57014":
        return SourceQueryFailed(f"{where} was cancelled by platform.statement_timeout: {text} (query {sql!r})")
    if exc.sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return SourceUnreachable(f"{where}: lost the connection to the database server: {text}")
    return SourceQueryFailed(f"{where} failed: {text} (query {sql!r})")


class PostgresSource(ShapedSource):
    """A PostgreSQL platform database, read-only and shape-checked."""

    def __init__(self, cfg: PlatformConfig, target: Target) -> None:
        self.queries, self.target = cfg.queries, target
        self._secret = password_for(cfg, target)
        extra: dict[str, Any] = {"password": self._secret} if self._secret is not None else {}
        timeout_ms = int(cfg.statement_timeout * 1000)
        try:
            self.conn = psycopg.connect(cfg.database, autocommit=True, application_name="fluxagent",
                                        connect_timeout=max(2, math.ceil(cfg.connect_timeout)), **extra)
        except psycopg.Error as exc:
            raise connect_error(exc, target, self._secret) from exc
        try:
            self.conn.execute(f"SET statement_timeout = {timeout_ms}")
            self.conn.execute("SET default_transaction_read_only = on")
            self.conn.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}")
        except psycopg.Error as exc:
            self.conn.close()
            raise query_error("(session setup)", "SET …", exc, self._secret) from exc
        self.conn.read_only = True  # every transaction() below opens with BEGIN READ ONLY

    def _fetch(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        try:
            with self.conn.transaction(), self.conn.cursor(binary=True) as cur:
                cur.execute(sql)
                if cur.description is None:
                    return []
                return cur.fetchmany(limit)
        except psycopg.Error as exc:
            raise query_error(name, sql, exc, self._secret) from exc

    def _batches(self, name: str, sql: str, width: int) -> Iterator[list[tuple[Any, ...]]]:
        try:
            with self.conn.transaction(), self.conn.cursor(name=f"fluxagent_{name}") as cur:
                cur.execute(sql)
                check_width(name, cur.description, width)
                while rows := cur.fetchmany(BATCH):
                    yield rows
        except psycopg.Error as exc:
            raise query_error(name, sql, exc, self._secret) from exc

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
