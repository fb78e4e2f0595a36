"""SQLite-specific source tests (files, authorizer, streaming) and this host via psutil.

The engine-independent suite runs on SQLite, PostgreSQL and MariaDB in test_platform_engines.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from fluxagent import collect, config
from fluxagent.config import HostConfig, PlatformConfig, Queries
from fluxagent.errors import SourceError, SourceWriteRefused
from fluxagent.facts import HostFacts
from fluxagent.sources import host
from fluxagent.sources.platform import BATCH, SqliteSource, open_platform
from fluxagent.statedir.identity import ensure
from fluxagent.testing import sample


def _small_db(path: Path, *, servers: int = 3, version: str | None = "4.12.3") -> Path:
    data = sample.generate(seed=3, clients=20, servers=servers)
    if version is None:
        data.settings = []
    else:
        data.settings = [("version", version)]
    return sample.write_sqlite(path, data)


def _fingerprint(db: Path) -> tuple[str, list[str]]:
    conn = sqlite3.connect(db)
    try:
        dump = list(conn.iterdump())
    finally:
        conn.close()
    return hashlib.sha256(db.read_bytes()).hexdigest(), dump


def test_a_failing_count_stops_only_the_heartbeat(tmp_path, write_config):
    db = _small_db(tmp_path / "p.db")
    doc = config.to_mapping(config.Config())
    doc["instance"].update(bound_domain="billing.example.com", state_dir=str(tmp_path / "state"))
    doc["platform"].update(database=f"sqlite:///{db}", hostname="billing-01.example.com")
    cfg = config.load(write_config(doc | {"platform": doc["platform"] | {"queries": {"active_clients": "SELECT -1"}}}))
    ident, _ = ensure(cfg.instance.state_dir, now=1_760_000_000)
    world = collect.World(read_host=lambda _c: HostFacts("billing-01.example.com", None, (), ()),
                          read_license=lambda _p: None)
    built = {b.kind: b for b in collect.gather(cfg, ident, ["heartbeat", "digest", "license"],
                                               now=1_760_000_000, world=world)}
    assert built["heartbeat"].message is None
    assert isinstance(built["heartbeat"].error, SourceError)
    assert "platform.queries.active_clients" in str(built["heartbeat"].error)
    assert built["digest"].message is not None and built["license"].message is not None


@pytest.mark.parametrize(
    "field, sql",
    [
        ("active_clients", "DELETE FROM clients"),
        ("total_users", "UPDATE users SET email = 'x@example.com' RETURNING 1"),
        ("servers_total", "INSERT INTO servers (hostname) VALUES ('evil.example') RETURNING 1"),
        ("active_clients", "DROP TABLE invoices"),
        ("active_clients", "CREATE TABLE loot AS SELECT * FROM clients"),
        ("active_clients", "PRAGMA query_only = OFF"),
        ("active_clients", "PRAGMA journal_mode = WAL"),
        ("active_clients", "VACUUM"),
    ],
)
def test_a_count_query_that_writes_fails_and_the_database_is_unchanged(tmp_path, field, sql):
    db = _small_db(tmp_path / "p.db")
    before = _fingerprint(db)
    src = SqliteSource(db, Queries(**{field: sql}))
    with pytest.raises(SourceWriteRefused, match=f"platform.queries.{field}"):
        src.counts()
    src.close()
    assert _fingerprint(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.db"]


def test_an_identifier_query_that_writes_fails_and_the_database_is_unchanged(tmp_path):
    db = _small_db(tmp_path / "p.db")
    before = _fingerprint(db)
    src = SqliteSource(db, Queries(servers="UPDATE servers SET hostname = 'x' RETURNING hostname, ip_address",
                                   networks="DELETE FROM network_ranges RETURNING cidr"))
    with pytest.raises(SourceError, match="platform.queries.servers"):
        list(src.iter_servers())
    with pytest.raises(SourceError, match="platform.queries.networks"):
        list(src.iter_networks())
    src.close()
    assert _fingerprint(db) == before


@pytest.mark.parametrize("sql", ["ATTACH DATABASE '{dir}/evil.db' AS evil", "VACUUM INTO '{dir}/copy.db'"])
def test_queries_cannot_create_files_next_to_or_away_from_the_database(tmp_path, sql):
    db = _small_db(tmp_path / "p.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = SqliteSource(db, Queries(active_clients=sql.format(dir=elsewhere)))
    with pytest.raises(SourceError):
        src.counts()
    src.close()
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "p.db"]


def test_reading_leaves_no_journal_or_wal_files_behind(tmp_path):
    db = _small_db(tmp_path / "p.db")
    before = _fingerprint(db)
    src = SqliteSource(db, Queries())
    src.counts()
    list(src.iter_servers())
    src.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.db"]
    assert _fingerprint(db) == before


def test_missing_database_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "fluxbilling.db"
    with pytest.raises(SourceError) as info:
        open_platform(PlatformConfig(database=f"sqlite:///{missing}"))
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert info.value.code == "db_missing" and info.value.exit_code == 78
    assert not missing.parent.exists()


def test_a_directory_or_a_non_database_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist or is not a file"):
        SqliteSource(tmp_path, Queries())
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SourceError, match="is not a SQLite database") as info:
        SqliteSource(junk, Queries())
    assert info.value.exit_code == 78  # the setting names the wrong file: a configuration error
    assert junk.read_bytes() == b"this is not a database" * 100


def test_database_path_with_url_special_characters_opens(tmp_path):
    odd = tmp_path / "we?ird #dir %20"
    odd.mkdir()
    db = _small_db(odd / "plat form.db")
    src = open_platform(PlatformConfig(database=f"sqlite:///{db}"))
    try:
        assert src.counts().servers_total == 3
    finally:
        src.close()


def test_version_that_is_not_a_version_number_is_not_sent(tmp_path):
    cfg = config.Config(platform=PlatformConfig(database="sqlite:///unused"))
    src = SqliteSource(_small_db(tmp_path / "p.db", version="4.12.3 licensed to Alice Smith"), Queries())
    try:
        with pytest.raises(SourceError, match="not a version number: 30 characters") as info:
            collect.platform_version(cfg, src)
        assert "Alice" not in str(info.value) and "licensed" not in str(info.value)  # described, never quoted
        override = config.Config(platform=PlatformConfig(database="sqlite:///unused", version="5.0.1"))
        assert collect.platform_version(override, src) == "5.0.1"
    finally:
        src.close()


def _big_db(path: Path, rows: int) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(sample.ddl("sqlite"))
    conn.executemany(
        "INSERT INTO servers (id, hostname, ip_address, location, status) VALUES (?, ?, ?, 'x', 'active')",
        ((i, f"node{i:06d}.rack{i % 97:02d}.dc.example.net" if i % 3 else None,
          str(ipaddress.IPv4Address(0x0A000000 + i))) for i in range(rows)),
    )
    conn.executemany("INSERT INTO network_ranges (id, cidr) VALUES (?, ?)",
                     ((i, f"{ipaddress.IPv4Address(0x64000000 + i * 256)}/24") for i in range(rows)))
    conn.commit()
    conn.close()
    return path


def test_identifiers_of_a_50k_row_database_are_streamed(tmp_path):
    rows = 50_000
    db = _big_db(tmp_path / "big.db", rows)
    src = SqliteSource(db, Queries())
    try:
        tracemalloc.start()
        n = 0
        for _hostname, ip in src.iter_servers():
            n += 1
            assert ip is not None
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        everything = src.conn.execute(Queries().servers).fetchall()
        all_at_once_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == rows == len(everything)
        del everything
        # a streamed read holds one batch of rows, not the whole table
        assert streamed_peak < all_at_once_peak / 4, (streamed_peak, all_at_once_peak)
        assert rows > BATCH

        toks = collect.tokens_for(src, HostFacts("h.example", None, (), ()), b"\x01" * 32)
        assert len(toks.servers) == rows
        assert len(toks.networks) == rows
        assert toks.skipped == {"host_without_machine_id": 1}
    finally:
        src.close()



@pytest.mark.parametrize("bad_row", [0, BATCH - 1, BATCH, 3 * BATCH + 7])
def test_a_value_that_is_not_utf8_deep_in_a_stream_is_skipped_once_and_every_other_row_counted_once(
    tmp_path, bad_row
):
    rows = 4 * BATCH + 11
    db = _big_db(tmp_path / "big.db", rows)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE servers SET hostname = CAST(? AS TEXT), ip_address = NULL WHERE id = ?",
                 (b"node\xff\xfe", bad_row))
    conn.execute("UPDATE network_ranges SET cidr = CAST(? AS TEXT) WHERE id = ?", (b"10.\xff.0.0/16", bad_row))
    conn.commit()
    conn.close()
    src = SqliteSource(db, Queries())
    try:
        seen = list(src.iter_servers())  # the fast decoder fails at the bad row; the rest resumes there
        assert len(seen) == rows
        assert [ip for _h, ip in seen] == [None if i == bad_row else str(ipaddress.IPv4Address(0x0A000000 + i))
                                           for i in range(rows)]
        assert seen[bad_row][0] == b"node\xff\xfe"  # handed over as bytes: not an identifier
        toks = collect.tokens_for(src, HostFacts("h.example", None, (), ()), b"\x01" * 32)
        assert len(toks.servers) == rows - 1 and len(toks.networks) == rows - 1
        assert toks.skipped == {"host_without_machine_id": 1, "server_without_identifier": 1, "network_invalid": 1}
        assert src.conn.text_factory is not str  # the count and version queries keep the tolerant decoder
    finally:
        src.close()

# ---- this host ----


def test_machine_id_is_read_from_the_given_file(tmp_path):
    mid = tmp_path / "machine-id"
    mid.write_text("5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f\n")
    assert host.read_machine_id(mid) == "5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f"
    assert host.read_machine_id(tmp_path / "absent") is None
    (tmp_path / "empty").write_text("")
    assert host.read_machine_id(tmp_path / "empty") is None


def test_host_networks_exclude_loopback_and_excluded_interfaces(tmp_path):
    facts = host.read_host(HostConfig(), machine_id_path=tmp_path / "absent")
    assert facts.machine_id is None
    for net in facts.networks:
        parsed = ipaddress.ip_network(net)
        assert not parsed.network_address.is_loopback and not parsed.network_address.is_link_local
    excluded = host.read_host(HostConfig(exclude_interfaces=("*",)))
    assert excluded.networks == () and excluded.macs == ()


def test_include_interfaces_false_sends_no_networks_but_keeps_macs_for_the_host_token():
    on = host.read_host(HostConfig(include_interfaces=True))
    off = host.read_host(HostConfig(include_interfaces=False))
    assert off.networks == ()
    assert off.macs == on.macs


def test_fqdn_is_a_nonempty_name():
    assert host.fqdn()


def test_a_failing_host_reader_holds_back_heartbeat_and_digest_but_not_the_license(workspace):
    from conftest import fixed_world

    from fluxagent.statedir import identity

    def broken_host(_cfg):
        raise SourceError("cannot list this host's network interfaces: [Errno 97] Address family not supported")

    ident = identity.load(workspace.cfg.instance.state_dir)
    built = {b.kind: b for b in collect.gather(workspace.cfg, ident, ["license", "heartbeat", "digest"],
                                               now=1_790_000_000, world=fixed_world(read_host=broken_host))}
    assert built["license"].message is not None
    for kind in ("heartbeat", "digest"):
        assert built[kind].message is None and "network interfaces" in built[kind].error.message
