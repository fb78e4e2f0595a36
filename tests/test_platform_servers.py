"""PostgreSQL and MariaDB sources against real servers: connection failures, credentials, timeouts, restarts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import tomli_w
from conftest import base_config, run_cli
from support.capture import Events

from fluxagent import config, status
from fluxagent.config import PlatformConfig, Queries
from fluxagent.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    SourceAuthFailed,
    SourceConfigError,
    SourceDatabaseMissing,
    SourceQueryFailed,
    SourceUnreachable,
)
from fluxagent.report.status import status_text
from fluxagent.sources import dburl
from fluxagent.sources.mysql import MysqlSource
from fluxagent.sources.platform import open_platform
from fluxagent.statedir import identity
from fluxagent.testing import sample
from fluxagent.testing.workspace import approve_running
from tests.support.dbservers import free_port

SLEEP = {"postgresql": "SELECT COUNT(*) FROM pg_sleep(4)", "mariadb": "SELECT SLEEP(4)"}


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def server(request):
    """Each throw-away server in turn."""
    return request.getfixturevalue("pg_server" if request.param == "postgresql" else "mariadb_server")


@pytest.fixture(scope="module")
def small_db(server):
    """Admin URL of a small sample database on the server."""
    from fluxagent.testing.sample_db import write_database

    return write_database(server.create_database(f"fa_srv_{server.engine}"),
                          sample.generate(seed=3, clients=20, servers=3))


def _no_password(url: str) -> str:
    t = dburl.parse(url)
    return url.replace(f":{t.password}@", "@")


def test_a_closed_port_is_server_unreachable_and_the_password_is_not_shown(server):
    url = server.url("fb", port=free_port(), password="s3cret-Pa55word")
    with pytest.raises(SourceUnreachable) as info:
        open_platform(PlatformConfig(database=url, connect_timeout=2))
    text = str(info.value)
    assert "cannot reach the server" in text and "127.0.0.1" in text
    assert "s3cret-Pa55word" not in text and "***" in text
    assert info.value.code == "db_unreachable" and info.value.exit_code == EXIT_UNAVAILABLE


def test_a_server_that_never_answers_times_out_after_connect_timeout(server):
    with socket.socket() as silent:  # accepts connections (via the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = server.url("fb", port=silent.getsockname()[1])
        t0 = time.monotonic()
        with pytest.raises(SourceUnreachable):
            open_platform(PlatformConfig(database=url, connect_timeout=2))
        assert time.monotonic() - t0 < 8


def test_a_wrong_password_is_authentication_failed_and_never_shown(server, small_db):
    url = small_db.replace(server.admin_password, "Wr0ng-Passw0rd-xyz")
    with pytest.raises(SourceAuthFailed) as info:
        open_platform(PlatformConfig(database=url))
    text = str(info.value) + (info.value.hint or "")
    assert "authentication failed" in text and "fa_admin" in text
    assert "Wr0ng-Passw0rd-xyz" not in text and server.admin_password not in text
    assert info.value.code == "db_auth" and info.value.exit_code == EXIT_CONFIG


def test_a_missing_database_is_named(server):
    with pytest.raises(SourceDatabaseMissing) as info:
        open_platform(PlatformConfig(database=server.url("no_such_db")))
    assert "no_such_db" in str(info.value) and server.admin_password not in str(info.value)
    assert info.value.code == "db_missing" and info.value.exit_code == EXIT_CONFIG


def test_the_statement_timeout_cancels_a_slow_query(server, small_db):
    src = open_platform(PlatformConfig(database=small_db, statement_timeout=1,
                                       queries=Queries(total_users=SLEEP[server.engine])))
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceQueryFailed, match="statement_timeout"):
            src.counts()
        assert time.monotonic() - t0 < 3.5
    finally:
        src.close()


def test_the_password_can_come_from_a_private_password_file(server, small_db, tmp_path):
    pw = tmp_path / "db.password"
    pw.write_text(server.admin_password + "\n")
    pw.chmod(0o600)
    src = open_platform(PlatformConfig(database=_no_password(small_db), password_file=pw))
    try:
        assert src.counts().servers_total == 3
    finally:
        src.close()


def test_a_password_file_others_can_read_is_refused(server, small_db, tmp_path):
    pw = tmp_path / "db.password"
    pw.write_text(server.admin_password + "\n")
    pw.chmod(0o644)
    with pytest.raises(SourceConfigError) as info:
        open_platform(PlatformConfig(database=_no_password(small_db), password_file=pw))
    assert "platform.password_file" in str(info.value) and "not private" in str(info.value)
    assert server.admin_password not in str(info.value) and info.value.exit_code == EXIT_CONFIG


def test_a_password_in_both_the_url_and_a_file_is_refused(small_db, tmp_path):
    pw = tmp_path / "db.password"
    pw.write_text("other\n")
    pw.chmod(0o600)
    with pytest.raises(SourceConfigError, match="one place"):
        open_platform(PlatformConfig(database=small_db, password_file=pw))


def test_postgres_reads_the_password_from_pgpassfile(pg_server, tmp_path, monkeypatch):
    from fluxagent.testing.sample_db import write_database

    url = write_database(pg_server.create_database("fa_pgpass"), sample.generate(seed=3, clients=5, servers=2))
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:fa_pgpass:fa_admin:{pg_server.admin_password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    src = open_platform(PlatformConfig(database=_no_password(url)))
    try:
        assert src.counts().servers_total == 2
    finally:
        src.close()


def test_mysql_reads_the_password_from_my_cnf_in_home(mariadb_server, tmp_path):
    from fluxagent.testing.sample_db import write_database

    url = write_database(mariadb_server.create_database("fa_mycnf"), sample.generate(seed=3, clients=5, servers=2))
    (tmp_path / ".my.cnf").write_text(f"[client]\npassword={mariadb_server.admin_password}\n")
    target = dburl.parse(_no_password(url))
    src = MysqlSource(PlatformConfig(database=_no_password(url)), target, home=tmp_path)
    try:
        assert src.counts().servers_total == 2
    finally:
        src.close()
    with pytest.raises(SourceAuthFailed):  # and without it, the server says no
        MysqlSource(PlatformConfig(database=_no_password(url)), target, home=tmp_path / "empty")


def _workspace(tmp_path: Path, database: str) -> Path:
    state = tmp_path / "state"
    identity.ensure(state, now=1_760_000_000)
    path = tmp_path / "fluxagent.toml"
    path.write_text(tomli_w.dumps(base_config(state, database)))
    approve_running(path)
    return path


@pytest.mark.parametrize("scheme, module, extra", [("postgresql", "psycopg", "postgres"),
                                                    ("mariadb", "pymysql", "mysql")])
def test_without_the_driver_preview_names_the_extra_to_install(tmp_path, scheme, module, extra):
    cfg = _workspace(tmp_path, f"{scheme}://fa:Secret-Word-1@127.0.0.1:1/fb")
    code = (f"import sys; sys.modules[{module!r}] = None; "
            f"sys.argv = ['fluxagent', '--config', {str(cfg)!r}, 'preview', '--kind', 'heartbeat']; "
            "from fluxagent.cli.main import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"pip install 'fluxagent[{extra}]'" in proc.stderr and "db_config" in proc.stderr
    assert "Secret-Word-1" not in proc.stderr + proc.stdout


def test_preview_against_a_stopped_server_exits_69_without_showing_the_password(tmp_path, server):
    cfg = _workspace(tmp_path, server.url("fb", port=free_port(), password="Secret-Word-2"))
    proc = run_cli("--config", str(cfg), "preview", "--kind", "heartbeat")
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert "heartbeat would not be sent: db_unreachable" in proc.stderr
    assert "Secret-Word-2" not in proc.stderr + proc.stdout and "***" in proc.stderr


def test_a_database_restarted_under_a_running_agent_is_picked_up_again(tmp_path, server, reference_server):
    from fluxagent.daemon.agent import Agent
    from fluxagent.testing.workspace import make_workspace

    clock = [float(int(time.time()))]
    ref = reference_server(clock=lambda: clock[0])
    ws = make_workspace(tmp_path / "ws", server_url=ref.url, vendor_keys=ref.signing_keys, now=clock[0],
                        database=server.create_database(f"fa_restart_{server.engine}"))
    with Agent(ws.cfg, clock=lambda: clock[0]) as agent:
        log = agent.engine.deps.log = Events()
        cfg = ws.cfg

        def heartbeats() -> int:
            return sum(1 for r in ref.received if r.endpoint == "/v1/heartbeat" and r.status == 200)

        agent.step()
        assert heartbeats() == 1
        stopped = False
        try:
            server.stop()
            stopped = True
            for _ in range(3):  # three hours of heartbeats while the database is down
                clock[0] += 3601
                agent.step()
            assert heartbeats() == 1
            warnings = [e for e in log.seen if e[1] == "heartbeat.not_sent"]
            assert len(warnings) == 1 and warnings[0][2]["code"] == "db_unreachable"  # logged once
            assert "not sent: heartbeat" in agent.status_line()
            st = status.collect_status(cfg, now=clock[0])
            assert st["kinds"]["heartbeat"]["not_sent"]["code"] == "db_unreachable"
            text = status_text(st)
            assert "NOT SENT since" in text and "cannot reach the server" in text
            assert server.admin_password not in text
        finally:
            if stopped:
                server.start()
        clock[0] += 3601
        agent.step()
        assert heartbeats() == 2
        assert any(e[1] == "heartbeat.source_recovered" for e in log.seen)
        assert "not sent" not in agent.status_line()
        assert status.collect_status(cfg, now=clock[0])["kinds"]["heartbeat"]["not_sent"] is None


@pytest.fixture(scope="module")
def big_db(server):
    """A database on the server with 50,000 inventory servers."""
    from fluxagent.testing.sample_db import create_schema, load_rows

    url = server.create_database(f"fa_big_{server.engine}")
    create_schema(url)
    load_rows(url, "servers", ("id", "hostname", "ip_address"),
              ((i, f"node{i}.example.net", f"10.1.{i >> 8 & 255}.{i & 255}") for i in range(50_000)))
    return url


def test_identifiers_stream_through_a_server_side_cursor(server, big_db):
    src = open_platform(PlatformConfig(database=big_db))
    try:
        tracemalloc.start()
        rows = src.iter_servers()
        assert next(rows) is not None
        if server.engine == "postgresql":  # one row read, and the named cursor is still open on the server
            assert ("fluxagent_servers",) in src.conn.execute("SELECT name FROM pg_cursors").fetchall()
        assert sum(1 for _ in rows) == 50_000 - 1
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with src.conn.cursor() as cur:  # the same query through an ordinary, client-side cursor
            cur.execute(Queries().servers)
            everything = cur.fetchall()
        all_at_once_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(everything) == 50_000
        assert streamed_peak < all_at_once_peak / 4, (streamed_peak, all_at_once_peak)
    finally:
        tracemalloc.stop()
        src.close()


def test_demo_fills_a_server_database_and_keeps_the_password_out_of_the_config(server, tmp_path):
    url = server.create_database(f"fa_demo_{server.engine}")
    proc = run_cli("demo", "--workspace", str(tmp_path / "ws"), "--database", url, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "verdict: PASS" in proc.stdout and "heartbeat would not be sent" not in proc.stdout
    cfg_text = (tmp_path / "ws" / "fluxagent.toml").read_text()
    assert server.admin_password not in cfg_text and "password_file" in cfg_text
    assert (tmp_path / "ws" / "db.password").stat().st_mode & 0o777 == 0o600
    assert server.admin_password not in proc.stdout + proc.stderr
    cfg = config.load(tmp_path / "ws" / "fluxagent.toml")
    src = open_platform(cfg.platform)
    try:
        assert src.counts().servers_total == 240
    finally:
        src.close()
