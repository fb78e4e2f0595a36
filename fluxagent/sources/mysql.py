"""MySQL and MariaDB platform databases via PyMySQL (extra `fluxagent[mysql]`).

The session is read-only (`SET SESSION TRANSACTION READ ONLY`) and every query runs in its own
`START TRANSACTION READ ONLY`, with a statement timeout (MariaDB `max_statement_time`, MySQL
`max_execution_time`) and socket timeouts. Multi-statement queries are off (PyMySQL's default),
so an override cannot commit and write after it. Identifiers stream through an `SSCursor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from fluxagent.config import PlatformConfig
from fluxagent.errors import (
    SourceAuthFailed,
    SourceConfigError,
    SourceDatabaseMissing,
    SourceError,
    SourceQueryFailed,
    SourceUnreachable,
    SourceWriteRefused,
)
from fluxagent.sources.dburl import Target, password_for, scrub
from fluxagent.sources.shaped import BATCH, ShapedSource, check_width, hide_quoted_values

AUTH_CODES = {1044, 1045, 1698, 1251}  # access denied (db / user), unix_socket plugin, auth protocol
MISSING_CODES = {1049}  # unknown database
GONE_CODES = {2002, 2003, 2005, 2006, 2013, 2055}  # cannot connect, unknown host, server gone, lost
READ_ONLY_CODES = {1792}  # cannot execute statement in a READ ONLY transaction
TIMEOUT_CODES = {1969, 3024}  # MariaDB max_statement_time, MySQL max_execution_time


def _code_text(exc: pymysql.Error, secret: str | None) -> tuple[int | None, str]:
    args = exc.args
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(args[1]) if len(args) > 1 else str(exc) or type(exc).__name__
    return code, scrub(text, secret)


def connect_error(exc: pymysql.Error, target: Target, secret: str | None) -> SourceError:
    """Translate a failed connect into unreachable / auth failed / database missing."""
    code, text = _code_text(exc, secret)
    where = f"platform.database {target.shown}"
    if code in MISSING_CODES:
        return SourceDatabaseMissing(f"{where}: the server has no database {target.database!r} ({code}: {text})",
                                     hint="check the database name in platform.database")
    if code in AUTH_CODES:
        return SourceAuthFailed(f"{where}: authentication failed ({code}: {text})",
                                hint="check the user and its password (URL, platform.password_file or ~/.my.cnf)")
    return SourceUnreachable(f"{where}: cannot reach the server ({code}: {text})",
                             hint="is the database server running and reachable from this host?")


def query_error(name: str, sql: str, exc: pymysql.Error, secret: str | None) -> SourceError:
    """Translate a failed query: refused write, lost server, timeout, or any other failure."""
    code, text = _code_text(exc, secret)
    text = hide_quoted_values(text, sql)  # the database's values, never quoted
    where = f"platform.queries.{name}"
    if code in READ_ONLY_CODES:
        return SourceWriteRefused(f"{where} tried to change the database and was refused by the read-only "
                                  f"transaction: {code}: {text} (query {sql!r})")
    if code in TIMEOUT_CODES:
        return SourceQueryFailed(f"{where} was cancelled by platform.statement_timeout: {text} (query {sql!r})")
    if code in GONE_CODES or isinstance(exc, pymysql.err.InterfaceError):
        return SourceUnreachable(f"{where}: lost the connection to the database server: {code}: {text}")
    return SourceQueryFailed(f"{where} failed: {code}: {text} (query {sql!r})")


def connect_args(cfg: PlatformConfig, target: Target, secret: str | None, home: Path) -> dict[str, Any]:
    """Return PyMySQL connect() arguments for target (pure: home is where ~/.my.cnf is looked for)."""
    args: dict[str, Any] = {
        "user": target.user, "database": target.database, "charset": "utf8mb4", "autocommit": True,
        # PyMySQL reads the server greeting with read_timeout: bound the handshake by connect_timeout
        "connect_timeout": cfg.connect_timeout, "read_timeout": cfg.connect_timeout,
        "write_timeout": cfg.connect_timeout, "local_infile": False,
    }
    socket = target.params.get("unix_socket") or target.params.get("socket")
    if socket:
        args["unix_socket"] = socket
    else:
        args["host"], args["port"] = target.host or "localhost", target.port or 3306
    if secret is not None:
        args["password"] = secret
    elif (home / ".my.cnf").is_file():
        args["read_default_file"] = str(home / ".my.cnf")  # the [client] section: password, user, …
    unknown = set(target.params) - {"unix_socket", "socket"}
    if unknown:
        raise SourceConfigError(f"platform.database {target.shown}: unknown parameter {sorted(unknown)[0]!r}",
                                hint="mysql:// URLs take only ?unix_socket=/path/to/mysqld.sock")
    return args


class MysqlSource(ShapedSource):
    """A MySQL or MariaDB platform database, read-only and shape-checked."""

    def __init__(self, cfg: PlatformConfig, target: Target, home: Path | None = None) -> None:
        self.queries, self.target = cfg.queries, target
        self._secret = password_for(cfg, target)
        args = connect_args(cfg, target, self._secret, Path.home() if home is None else home)
        try:
            self.conn = pymysql.connect(**args)
        except pymysql.Error as exc:
            raise connect_error(exc, target, self._secret) from exc
        # then give queries the statement timeout plus a margin (the server cancels them first);
        # PyMySQL has no public setter, and reads this attribute before every socket read
        conn: Any = self.conn
        conn._read_timeout = conn._write_timeout = cfg.statement_timeout + 10
        self.mariadb = "mariadb" in str(conn.get_server_info()).lower()
        timeout = (f"SET SESSION max_statement_time = {cfg.statement_timeout:g}" if self.mariadb
                   else f"SET SESSION max_execution_time = {int(cfg.statement_timeout * 1000)}")
        try:
            with self.conn.cursor() as cur:
                cur.execute(timeout)
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        except pymysql.Error as exc:
            self.conn.close()
            raise query_error("(session setup)", timeout, exc, self._secret) from exc

    def _begin(self, cur: Any) -> None:
        # the session default again, in case a query changed it, then this query's own transaction
        cur.execute("SET SESSION TRANSACTION READ ONLY")
        cur.execute("START TRANSACTION READ ONLY")

    def _rollback(self) -> None:
        """End this query's transaction after a failure, if the connection still allows it."""
        with contextlib.suppress(pymysql.Error):
            self.conn.rollback()

    def _fetch(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                self._begin(cur)
                cur.execute(sql)
                rows = list(cur.fetchmany(limit)) if cur.description is not None else []
                cur.execute("ROLLBACK")
                return rows
        except pymysql.Error as exc:
            self._rollback()
            raise query_error(name, sql, exc, self._secret) from exc

    def _batches(self, name: str, sql: str, width: int) -> Iterator[list[tuple[Any, ...]]]:
        try:
            with self.conn.cursor() as cur:
                self._begin(cur)
            with self.conn.cursor(pymysql.cursors.SSCursor) as ss:
                ss.execute(sql)
                check_width(name, ss.description, width)
                while rows := ss.fetchmany(BATCH):
                    yield list(rows)
            with self.conn.cursor() as cur:
                cur.execute("ROLLBACK")
        except pymysql.Error as exc:
            self._rollback()
            raise query_error(name, sql, exc, self._secret) from exc

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        """Yield (hostname, ip_address) of every inventory server, streamed (MySQL has no address types)."""
        return self._rows_streamed("servers", self.queries.servers, 2)

    def close(self) -> None:
        """Close the connection."""
        if self.conn.open:
            self.conn.close()
