"""A sample FluxBilling platform in the reference schema, full of realistic personal data.

`generate` is pure (seeded); `write_sqlite` stores it. `personal_data` lists the strings that
must never leave the machine, and `scan` looks for them in what would be or was sent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

FIRST = (
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Sophia",
    "Elijah",
    "Mia",
    "Lucas",
    "Zoë",
    "Mateo",
    "Chloé",
    "Jürgen",
    "Aiko",
    "Søren",
    "Priya",
    "Kwame",
    "Léa",
    "Tomás",
    "Fatima",
    "Dmitri",
    "Ingrid",
    "Rahul",
    "Yuki",
    "Björn",
    "Aoife",
    "Nikolai",
    "Camila",
    "Wei",
)
LAST = (
    "Smith",
    "Johnson",
    "García",
    "Müller",
    "Rossi",
    "Nakamura",
    "Kowalski",
    "O'Brien",
    "Dubois",
    "Andersson",
    "Novák",
    "Haddad",
    "Okafor",
    "Fernández",
    "Lindqvist",
    "Papadopoulos",
    "Schröder",
    "Yılmaz",
    "Van der Berg",
    "Ivanova",
    "Chen",
    "Kaur",
    "Silva",
    "Nguyen",
)
STREETS = (
    "Maple Avenue",
    "Hauptstraße",
    "Rue de Rivoli",
    "Via Roma",
    "King Street",
    "Calle Mayor",
    "Oak Lane",
    "Kungsgatan",
    "Elm Road",
    "Baker Street",
    "Park Place",
    "Sakura-dōri",
)
CITIES = (
    "Springfield",
    "Berlin",
    "Paris",
    "Milano",
    "Toronto",
    "Madrid",
    "Stockholm",
    "Leeds",
    "Osaka",
    "Dublin",
    "Lagos",
    "São Paulo",
)
MAIL = ("example.com", "example.net", "example.org", "mail.example", "inbox.example")
STATUSES = ("active",) * 7 + ("suspended",) * 2 + ("closed",)


@dataclass
class SampleData:
    """Rows of every reference-schema table."""

    clients: list[tuple[int, str, str, str, str, str]] = field(default_factory=list)
    users: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    servers: list[tuple[int, str | None, str | None, str, str]] = field(default_factory=list)
    network_ranges: list[tuple[int, str, int | None, str]] = field(default_factory=list)
    invoices: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def active_clients(self) -> int:
        return sum(1 for c in self.clients if c[5] == "active")


def generate(seed: int = 8, clients: int = 3000, servers: int = 240, version: str = "4.12.3") -> SampleData:
    """Return deterministic synthetic platform data with names, emails, phones and addresses."""
    rng = random.Random(seed)
    d = SampleData(settings=[("version", version), ("company_name", "Example Hosting Ltd")])
    for cid in range(1, clients + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{cid}@{rng.choice(MAIL)}".lower().replace(" ", "").replace("'", "")
        phone = f"+{rng.randint(1, 99)} {rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        address = f"{rng.randint(1, 250)} {rng.choice(STREETS)}, {rng.choice(CITIES)} {rng.randint(10000, 99999)}"
        d.clients.append((cid, f"{first} {last}", email, phone, address, rng.choice(STATUSES)))
        for u in range(rng.choice((1, 1, 1, 2, 3))):
            uid = len(d.users) + 1
            uname = f"{first.lower()}{cid}{'' if u == 0 else u}"
            d.users.append(
                (uid, cid, uname, f"{uname}@{rng.choice(MAIL)}", f"$argon2id$v=19${rng.getrandbits(128):032x}")
            )
        for _ in range(rng.randint(1, 6)):
            iid = len(d.invoices) + 1
            d.invoices.append(
                (
                    iid,
                    cid,
                    f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
                    rng.choice(("EUR", "USD", "GBP")),
                    f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}",
                )
            )
    for sid in range(1, servers + 1):
        ip = f"198.51.{100 + sid // 250}.{sid % 250 + 1}" if sid % 5 else f"2001:db8:{sid:x}::10"
        hostname = (
            None
            if sid % 17 == 0
            else f"node{sid:03d}.{rng.choice(CITIES).lower().replace(' ', '-').replace('ã', 'a')}.dc.example.net"
        )
        d.servers.append((sid, hostname, ip, rng.choice(CITIES), rng.choice(("active", "active", "maintenance"))))
    for nid in range(1, servers // 4 + 1):
        cidr = f"203.0.{nid % 256}.0/24" if nid % 3 else f"2001:db8:{nid + 4096:x}::/48"
        owner = rng.choice(d.clients)
        d.network_ranges.append((nid, cidr, rng.randint(1, servers), f"assigned to {owner[1]} <{owner[2]}>"))
    return d


def ddl(dialect: str = "sqlite") -> str:
    """Return the reference schema DDL shipped with the package for dialect."""
    return resources.files("fluxagent.testing").joinpath(f"schema_{dialect}.sql").read_text(encoding="utf-8")


def write_sqlite(path: Path, data: SampleData) -> Path:
    """Create a SQLite database at path (must not exist) holding data; return path."""
    if path.exists():
        raise FileExistsError(path)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(ddl("sqlite"))
        conn.executemany("INSERT INTO clients VALUES (?,?,?,?,?,?)", data.clients)
        conn.executemany("INSERT INTO users VALUES (?,?,?,?,?)", data.users)
        conn.executemany("INSERT INTO servers VALUES (?,?,?,?,?)", data.servers)
        conn.executemany("INSERT INTO network_ranges VALUES (?,?,?,?)", data.network_ranges)
        conn.executemany("INSERT INTO invoices VALUES (?,?,?,?,?)", data.invoices)
        conn.executemany("INSERT INTO settings VALUES (?,?)", data.settings)
        conn.commit()
    finally:
        conn.close()
    return path


def personal_data(data: SampleData) -> set[str]:
    """Return every string of the sample that must never leave the machine.

    That is all personal data (names, emails, phones, addresses, usernames, password hashes,
    invoice amounts) and the inventory's own identifiers, which may only leave as keyed tokens.
    Strings shorter than 6 characters are left out: they would match by chance.
    """
    out: set[str] = set()
    for _cid, name, email, phone, address, _status in data.clients:
        out.update((name, email, phone, address, email.split("@")[0]))
    for _uid, _cid, username, email, pw in data.users:
        out.update((username, email, pw))
    for _sid, hostname, ip, _loc, _st in data.servers:
        out.update(x for x in (hostname, ip) if x)
    for _nid, cidr, _srv, description in data.network_ranges:
        out.update((cidr, description))
    for _iid, _cid, amount, _cur, issued in data.invoices:
        out.update((f"{amount} ", issued))
    out.discard("Example Hosting Ltd")
    return {s for s in out if len(s) >= 6}


@dataclass(frozen=True)
class Hit:
    where: str
    needle: str


def _views(blob: bytes) -> Iterable[tuple[str, str]]:
    """Yield the text views of a sent blob: raw, and any base64 payload decoded from an envelope."""
    text = blob.decode("utf-8", errors="replace")
    yield "raw", text
    try:
        env = json.loads(blob)
    except ValueError:
        return
    if isinstance(env, dict) and isinstance(env.get("payload"), str):
        with contextlib.suppress(binascii.Error, ValueError):
            yield "payload", base64.b64decode(env["payload"]).decode("utf-8", errors="replace")


def scan(blobs: Iterable[tuple[str, bytes]], needles: set[str]) -> list[Hit]:
    """Return every needle found in any named blob, raw or base64-decoded (case-insensitive)."""
    lowered = {n.lower() for n in needles}
    hits: list[Hit] = []
    for name, blob in blobs:
        for view, text in _views(blob):
            low = text.lower()
            hits.extend(Hit(f"{name} ({view})", n) for n in lowered if n in low)
    return hits
