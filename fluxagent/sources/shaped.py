"""What every platform database source shares: the default queries' results, checked for shape.

An engine supplies two primitives — `_fetch` (the first few rows of a query) and `_batches`
(every row, batch by batch, after checking the column count) — and gets counts, version and
identifiers with the same checks and messages on SQLite, PostgreSQL and MySQL/MariaDB.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from fluxagent import logs
from fluxagent.config import Queries
from fluxagent.errors import SourceShapeError
from fluxagent.facts import Counts

BATCH = 2000
COUNT_QUERIES = ("active_clients", "total_users", "servers_total")
MAX_COUNT = 2**53 - 1  # the largest integer every JSON reader keeps exact (and the allowlist's bound)
_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
                  ipaddress.IPv4Interface, ipaddress.IPv6Interface)


def check_count(name: str, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """Return the single non-negative integer a count query produced; raises SourceShapeError otherwise.

    An integral Decimal counts as an integer: MySQL's SUM() returns one.
    """
    where = f"platform.queries.{name} ({sql!r})"
    if len(rows) != 1:
        raise SourceShapeError(f"{where} returned {len(rows)} rows; a count must return exactly one")
    if len(rows[0]) != 1:
        raise SourceShapeError(f"{where} returned {len(rows[0])} columns; a count must return exactly one")
    value = rows[0][0]
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    # the value is described, never quoted: a column may hold a phone number or a mail address
    if isinstance(value, str | bytes):
        unit = "characters" if isinstance(value, str) else "bytes"
        what = f"a {type(value).__name__} value of {len(value)} {unit}"
        raise SourceShapeError(f"{where} returned {what}, not an integer")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceShapeError(f"{where} returned a {type(value).__name__}, not an integer")
    if value < 0:
        raise SourceShapeError(f"{where} returned a negative number; a count must not be negative")
    if value > MAX_COUNT:
        raise SourceShapeError(f"{where} returned a number over 2^53; not a plausible count")
    return value


_QUOTED = re.compile(r"""(["'`])(.*?)\1""")


def hide_quoted_values(text: str, sql: str) -> str:
    """Return a database error text with every quoted part the query does not itself contain described.

    Servers quote the offending value in some errors (`invalid input syntax for type integer:
    "jane@…"`); names the query holds (tables, columns, its own literals) stay, so the error still
    says where it went wrong. Pure.
    """
    low = sql.lower()

    def hide(m: re.Match[str]) -> str:
        quote, inner = m.group(1), m.group(2)
        return m.group(0) if inner.lower() in low else f"{quote}<{len(inner)} characters>{quote}"

    return _QUOTED.sub(hide, text)


def check_width(name: str, description: Any, width: int) -> None:
    """Raise SourceShapeError unless a cursor description has exactly width columns."""
    got = 0 if description is None else len(description)
    if got != width:
        raise SourceShapeError(f"platform.queries.{name} must return {width} column(s), got {got}")


def as_text(value: object) -> object:
    """Return address-typed values (PostgreSQL inet/cidr) as text; anything else unchanged."""
    return str(value) if isinstance(value, _ADDRESS_TYPES) else value


class ShapedSource(ABC):
    """Counts, version and streamed identifiers over an engine's `_fetch` and `_stream`.

    Each engine (SQLite, PostgreSQL, MySQL/MariaDB) implements the abstract methods. Rows pass batch
    by batch: flattening them in C (`itertools.chain`) keeps a million-row inventory from paying a
    Python generator step per row.
    """

    queries: Queries

    @abstractmethod
    def _fetch(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        """Return at most limit rows of sql; raises SourceError naming platform.queries.<name>."""

    @abstractmethod
    def _batches(self, name: str, sql: str, width: int) -> Iterator[list[tuple[Any, ...]]]:
        """Yield every row of sql (width columns, checked first) in lists of at most BATCH; raises SourceError."""

    def _rows(self, name: str, sql: str, limit: int) -> list[tuple[Any, ...]]:
        """`_fetch`, with a debug event: the query's name, its row count and time (never a value)."""
        start = time.perf_counter()
        rows = self._fetch(name, sql, limit)
        logs.debug("db.query", name=name, rows=len(rows), ms=round((time.perf_counter() - start) * 1000, 1))
        return rows

    def _rows_streamed(self, name: str, sql: str, width: int) -> Iterator[tuple[Any, ...]]:
        """Every row of `_batches`, with a debug event once they are through: name, row count and time."""
        return itertools.chain.from_iterable(self._counted(name, sql, width))

    def _counted(self, name: str, sql: str, width: int) -> Iterator[list[tuple[Any, ...]]]:
        start, n = time.perf_counter(), 0
        for rows in self._batches(name, sql, width):
            n += len(rows)
            yield rows
        logs.debug("db.query", name=name, rows=n, ms=round((time.perf_counter() - start) * 1000, 1))

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
            raise SourceShapeError(
                f"platform.queries.version ({sql!r}) must return one text value, got {len(rows)} rows",
                hint="set platform.version in the config to state the version explicitly",
            )
        return rows[0][0].strip()

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        """Yield (hostname, ip_address) of every inventory server, streamed."""
        for hostname, ip in self._rows_streamed("servers", self.queries.servers, 2):
            yield hostname, as_text(ip)

    def iter_networks(self) -> Iterator[object]:
        """Yield every inventory CIDR, streamed."""
        for row in self._rows_streamed("networks", self.queries.networks, 1):
            yield as_text(row[0])

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""
