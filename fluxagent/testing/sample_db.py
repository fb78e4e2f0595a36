"""Store sample platform data in SQLite, PostgreSQL or MariaDB/MySQL, using the shipped reference DDL.

The same `SampleData` gives the same counts and the same identifiers on every engine. Server
databases must exist and be empty; the URL's account needs CREATE and INSERT (this is the test
kit's writer, not the agent's read-only source).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from fluxagent.sources import dburl
from fluxagent.sources.platform import sqlite_path
from fluxagent.testing.sample import SampleData, ddl, write_sqlite

COLUMNS = {
    "clients": ("id", "name", "email", "phone", "address", "status"),
    "users": ("id", "client_id", "username", "email", "password_hash"),
    "servers": ("id", "hostname", "ip_address", "location", "status"),
    "network_ranges": ("id", "cidr", "server_id", "description"),
    "invoices": ("id", "client_id", "amount", "currency", "issued_at"),
    "settings": ("name", "value"),
}
CHUNK = 5000


def dialect_of(url: str) -> str:
    """Return the DDL dialect of a database URL: sqlite, postgresql or mariadb."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    return "postgresql" if dburl.SCHEMES.get(scheme) == "postgresql" else "mariadb"


def _statements(script: str) -> list[str]:
    body = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _mysql_connect(url: str) -> Any:
    import pymysql

    t = dburl.parse(url)
    kw: dict[str, Any] = {"user": t.user, "password": t.password or "", "database": t.database,
                          "charset": "utf8mb4", "autocommit": False}
    if t.params.get("unix_socket"):
        kw["unix_socket"] = t.params["unix_socket"]
    else:
        kw.update(host=t.host or "localhost", port=t.port or 3306)
    return pymysql.connect(**kw)


def _chunks(rows: Iterable[Sequence[object]], size: int) -> Iterator[list[Sequence[object]]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def create_schema(url: str) -> None:
    """Create the reference schema in the empty server database at url."""
    statements = _statements(ddl(dialect_of(url)))
    if dialect_of(url) == "postgresql":
        import psycopg

        with psycopg.connect(url) as conn:
            for s in statements:
                conn.execute(s.encode())
        return
    conn = _mysql_connect(url)
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
        conn.commit()
    finally:
        conn.close()


def load_rows(url: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Append rows to table of the server database at url: COPY on PostgreSQL, multi-row INSERTs on MySQL."""
    cols = ", ".join(columns)
    if dialect_of(url) == "postgresql":
        import psycopg

        with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        return
    conn = _mysql_connect(url)
    try:
        with conn.cursor() as cur:
            sql = f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})"
            for chunk in _chunks(rows, CHUNK):
                cur.executemany(sql, chunk)  # PyMySQL sends one multi-row INSERT per chunk
        conn.commit()
    finally:
        conn.close()


def write_database(url: str, data: SampleData) -> str:
    """Store data in the database at url (a new SQLite file, or an empty server database); return url."""
    if dialect_of(url) == "sqlite":
        write_sqlite(sqlite_path(url), data)
        return url
    create_schema(url)
    for table, columns in COLUMNS.items():
        load_rows(url, table, columns, getattr(data, table))
    return url
