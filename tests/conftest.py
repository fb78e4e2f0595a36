"""Shared fixtures: a demo workspace, a sample platform database, and a config writer."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import tomli_w
import trustme
from support.keys import vendor_keys

from fluxagent import config
from fluxagent.collect import World
from fluxagent.facts import HostFacts
from fluxagent.testing import sample
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace

BOUND_DOMAIN = "billing.example.com"
HOSTNAME = "billing-01.example.com"
# a fixed view of "this host", so tests do not depend on the machine running them
FIXED_HOST = HostFacts(
    fqdn=HOSTNAME,
    machine_id="5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f",
    macs=("52:54:00:12:34:56",),
    networks=("10.20.0.0/16", "fd00:1234::/64"),
)


def fixed_world(**overrides: Any) -> World:
    """Return a World whose host reader returns FIXED_HOST and whose other readers are the real ones."""
    w = World(read_host=lambda _cfg: FIXED_HOST)
    for name, fn in overrides.items():
        setattr(w, name, fn)
    return w


@pytest.fixture
def keys() -> list[nacl.signing.SigningKey]:
    """Two fresh vendor keys: the reference server signs with them, configs pin them."""
    return vendor_keys()


@pytest.fixture
def reference_server() -> Iterator[Callable[..., ReferenceServer]]:
    """Start reference license servers on loopback (any ReferenceServer options); each stops when the test ends."""
    started: list[ReferenceServer] = []

    def start(**options: Any) -> ReferenceServer:
        server = ReferenceServer(**options)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Daemons a test starts (agentkit.Daemon); each is stopped when the test ends, whatever happened."""
    started: list[Any] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A complete demo workspace: sample SQLite platform db, signed license, config, identity."""
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test certificate authority for the HTTPS tests (its certificates are for loopback names)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file, for server.ca_bundle."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def sample_data() -> sample.SampleData:
    """The default sample platform data (3000 clients, 240 servers)."""
    return sample.generate()


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory: pytest.TempPathFactory, sample_data: sample.SampleData) -> Path:
    """A SQLite database in the reference schema holding sample_data. Treat it as read-only."""
    path = tmp_path_factory.mktemp("sampledb") / "fluxbilling.db"
    sample.write_sqlite(path, sample_data)
    path.chmod(0o444)
    return path


def base_config(state_dir: Path, database: Path | str, **sections: dict[str, Any]) -> dict[str, Any]:
    """Return a valid config mapping for state_dir and database; `sections` update its tables."""
    doc = config.to_mapping(config.Config())
    doc["instance"].update(bound_domain=BOUND_DOMAIN, state_dir=str(state_dir),
                           license_file=str(state_dir.parent / "no-license.json"))
    db = database if isinstance(database, str) else f"sqlite:///{database}"
    doc["platform"].update(database=db, hostname=HOSTNAME)
    doc["server"].update(url="https://licensing.example.net",
                         vendor_keys=[base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2)])
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Return write(content, name="fluxagent.toml") → path; content is TOML text or a mapping."""

    def write(content: str | dict[str, Any], name: str = "fluxagent.toml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else tomli_w.dumps(content)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m fluxagent ARGS` in a subprocess; return the completed process (text)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fluxagent", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, check=False)


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """Restore the process umask after a test that changes it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


# ---- platform databases on every engine: SQLite, and throw-away PostgreSQL / MariaDB servers ----

ENGINES = ("sqlite", "postgresql", "mariadb")


def _server(engine: str) -> Iterator[Any]:
    """Start a throw-away server for the session; skip without its binaries, but fail under CI."""
    from support import dbservers

    try:
        srv = dbservers.start(engine)
    except dbservers.ServerUnavailableError as exc:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set, so a missing {engine} server is a failure, not a skip: {exc}")
        pytest.skip(f"no {engine} server on this machine: {exc}")
    try:
        yield srv
    finally:
        srv.destroy()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A throw-away PostgreSQL server on 127.0.0.1 for the whole session."""
    yield from _server("postgresql")


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Any]:
    """A throw-away MariaDB server on 127.0.0.1 for the whole session."""
    yield from _server("mariadb")


class PlatformKit:
    """Makes platform databases on one engine and fingerprints them to prove nothing changed."""

    def __init__(self, engine: str, server: Any, tmp: Path) -> None:
        self.engine, self.server, self.tmp, self.n = engine, server, tmp, 0

    def make(self, data: sample.SampleData) -> str:
        """Return the URL of a new database holding data."""
        from fluxagent.testing.sample_db import write_database

        self.n += 1
        if self.server is None:
            return write_database(f"sqlite:///{self.tmp / f'p{self.n}.db'}", data)
        return write_database(self.server.create_database(f"fa_{os.getpid()}_{self.n}"), data)

    def fingerprint(self, url: str) -> list[Any]:
        """Return every table name and every row of the database at url, sorted."""
        from fluxagent.sources import dburl

        if self.server is None:
            import sqlite3

            path = Path(url[len("sqlite:///"):])
            conn = sqlite3.connect(path)
            try:
                return [path.read_bytes(), sorted(conn.iterdump())]
            finally:
                conn.close()
        target = dburl.parse(url)
        if self.engine == "postgresql":
            import psycopg

            with psycopg.connect(url) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
                return [tables] + [sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables]
        import pymysql

        conn = pymysql.connect(host=target.host, port=target.port, user=target.user, password=target.password,
                               database=target.database)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW TABLES")
                tables = sorted(r[0] for r in cur.fetchall())
                out: list[Any] = [tables]
                for t in tables:
                    cur.execute(f"SELECT * FROM {t}")
                    out.append(sorted(map(repr, cur.fetchall())))
                return out
        finally:
            conn.close()


@pytest.fixture(scope="session", params=ENGINES)
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PlatformKit:
    """A PlatformKit per engine: the same tests run on SQLite, PostgreSQL and MariaDB."""
    engine = request.param
    server = None if engine == "sqlite" else request.getfixturevalue(
        "pg_server" if engine == "postgresql" else "mariadb_server")
    return PlatformKit(engine, server, tmp_path_factory.mktemp(f"platform-{engine}"))


@pytest.fixture(scope="session")
def platform_sample(platform: PlatformKit, sample_data: sample.SampleData) -> str:
    """URL of a database on the engine holding the default sample data. Treat it as read-only."""
    return platform.make(sample_data)


@pytest.fixture(scope="session")
def platform_small(platform: PlatformKit) -> str:
    """URL of a small database (20 clients, 3 servers) on the engine; tests prove they leave it unchanged."""
    data = sample.generate(seed=3, clients=20, servers=3)
    data.settings = [("version", "4.12.3")]
    return platform.make(data)
