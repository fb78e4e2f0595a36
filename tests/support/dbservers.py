"""Throw-away PostgreSQL and MariaDB servers on loopback, in a temp directory (tests, benchmarks, demo).

Each server listens on 127.0.0.1 on a free port and on a unix socket in its own directory, with
an admin account protected by a random password. Run as root, the server runs as the `postgres`
or `mysql` system user (initdb and mariadbd refuse root). Nothing outside the directory is touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ADMIN = "fa_admin"
START_TIMEOUT = 60.0


class ServerUnavailableError(RuntimeError):
    """The server binaries are not installed, or the server did not start."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def postgres_bindir() -> Path | None:
    """Return the directory of the newest installed PostgreSQL server binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def mariadb_binaries() -> tuple[Path, Path] | None:
    """Return (mariadb-install-db, mariadbd) when both are installed, else None."""
    install = shutil.which("mariadb-install-db")
    server = shutil.which("mariadbd") or next((p for p in ("/usr/sbin/mariadbd",) if os.path.exists(p)), None)
    return (Path(install), Path(server)) if install and server else None


def _system_user(name: str) -> pwd.struct_passwd | None:
    """Return the account servers run as when we are root (None when not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServerUnavailableError(f"running as root needs the system user {name!r} to run the server") from None


def _as(user: pwd.struct_passwd | None, cmd: list[str]) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user.pw_name, "--", *cmd]


def _run(cmd: list[str], what: str, timeout: float = START_TIMEOUT) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ServerUnavailableError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")


def _make_root(prefix: str, user: pwd.struct_passwd | None) -> Path:
    # as root the server runs as a system user, which must reach the directory: not under a private $TMPDIR
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if user is not None else None))
    root.chmod(0o700)
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


@dataclass
class DbServer:
    """A running throw-away server; `url()` builds platform database URLs for it."""

    engine: str  # "postgresql" or "mariadb"
    root: Path
    port: int
    socket_dir: Path
    admin_password: str = field(repr=False)
    user: pwd.struct_passwd | None = field(repr=False, default=None)
    proc: subprocess.Popen[bytes] | None = field(repr=False, default=None)
    host: str = "127.0.0.1"

    def url(self, database: str, *, user: str = ADMIN, password: str | None = None, port: int | None = None) -> str:
        """Return a `postgresql://` or `mariadb://` URL of database over TCP (password from the admin by default)."""
        pw = self.admin_password if password is None else password
        cred = quote(user, safe="") + (f":{quote(pw, safe='')}" if pw else "")
        return f"{self.engine}://{cred}@{self.host}:{port or self.port}/{database}"

    def start(self) -> None:
        """(Re)start the server on its port; raises ServerUnavailableError."""
        (_start_postgres if self.engine == "postgresql" else _start_mariadb)(self)

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (clean shutdown, or at once when its data is thrown away); `start` brings it back."""
        if self.engine == "postgresql":
            bindir = postgres_bindir()
            assert bindir is not None
            mode = "immediate" if immediate else "fast"
            _run(_as(self.user, [str(bindir / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", mode, "-w"]),
                 "pg_ctl stop")
        elif self.proc is not None:
            if immediate:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def admin_sql(self, *statements: str) -> None:
        """Run statements as the admin on the server's maintenance database (autocommit)."""
        if self.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                for s in statements:
                    conn.execute(s.encode())
            return
        import pymysql

        my = pymysql.connect(host=self.host, port=self.port, user=ADMIN, password=self.admin_password,
                             autocommit=True)
        try:
            with my.cursor() as cur:
                for s in statements:
                    cur.execute(s)
        finally:
            my.close()

    def create_database(self, name: str) -> str:
        """Create an empty database name (dropping any old one) and return its admin URL."""
        self.admin_sql(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        with contextlib.suppress(ServerUnavailableError, subprocess.SubprocessError, OSError):
            self.stop(immediate=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise ServerUnavailableError(f"server exited with {proc.returncode}: {tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerUnavailableError(f"server did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f}s")


def start_postgres() -> DbServer:
    """Initialise and start a PostgreSQL server in a temp dir; raises ServerUnavailableError."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ServerUnavailableError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    user = _system_user("postgres")
    root = _make_root("fluxagent-pg-", user)
    srv = DbServer("postgresql", root, free_port(), root, secrets.token_urlsafe(18), user)
    pwfile = root / "pw"
    pwfile.write_text(srv.admin_password + "\n")
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        _run(_as(user, [str(bindir / "initdb"), "-D", str(root / "data"), "-U", ADMIN, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"]),
             "initdb")
        pwfile.unlink()
        srv.start()
    except BaseException:
        srv.destroy()
        raise
    return srv


def _start_postgres(srv: DbServer) -> None:
    bindir = postgres_bindir()
    assert bindir is not None
    opts = (f"-c listen_addresses=127.0.0.1 -c port={srv.port} -c unix_socket_directories={srv.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB "
            "-c max_connections=40 -c max_wal_size=1GB -c log_min_messages=warning")
    _run(_as(srv.user, [str(bindir / "pg_ctl"), "start", "-D", str(srv.root / "data"), "-w", "-t", "60",
                        "-l", str(srv.root / "server.log"), "-o", opts]), "pg_ctl start")


def start_mariadb() -> DbServer:
    """Initialise and start a MariaDB server in a temp dir; raises ServerUnavailableError."""
    bins = mariadb_binaries()
    if bins is None:
        raise ServerUnavailableError("MariaDB server binaries (mariadb-install-db, mariadbd) are not installed")
    install, _server = bins
    user = _system_user("mysql")
    root = _make_root("fluxagent-my-", user)
    srv = DbServer("mariadb", root, free_port(), root, secrets.token_urlsafe(18), user)
    try:
        cmd = [str(install), "--no-defaults", f"--datadir={root / 'data'}", "--auth-root-authentication-method=normal",
               "--skip-test-db", "--skip-name-resolve"]
        if user is not None:
            cmd.append(f"--user={user.pw_name}")
        _run(cmd, "mariadb-install-db")
        srv.start()
        import pymysql

        conn = pymysql.connect(unix_socket=str(root / "mysqld.sock"), user="root", connect_timeout=10)
        with conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"CREATE USER '{ADMIN}'@'{host}' IDENTIFIED BY %s", (srv.admin_password,))
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'{host}' WITH GRANT OPTION")
        conn.close()
    except BaseException:
        srv.destroy()
        raise
    return srv


def _start_mariadb(srv: DbServer) -> None:
    bins = mariadb_binaries()
    assert bins is not None
    log = srv.root / "server.log"
    cmd = [str(bins[1]), "--no-defaults", f"--datadir={srv.root / 'data'}", f"--socket={srv.root / 'mysqld.sock'}",
           f"--port={srv.port}", "--bind-address=127.0.0.1", f"--pid-file={srv.root / 'mysqld.pid'}",
           f"--log-error={log}", "--skip-log-bin", "--skip-name-resolve", "--local-infile=1",
           "--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
           "--performance-schema=0", "--max-connections=40", "--character-set-server=utf8mb4",
           "--collation-server=utf8mb4_bin"]
    if srv.user is not None:
        cmd.append(f"--user={srv.user.pw_name}")
    srv.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(srv.port, time.monotonic() + START_TIMEOUT, srv.proc, log)


def start(engine: str) -> DbServer:
    """Start a throw-away server of engine ("postgresql" or "mariadb"); raises ServerUnavailableError."""
    return start_postgres() if engine == "postgresql" else start_mariadb()
