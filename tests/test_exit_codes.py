"""One failure, one exit code: the table in docs/OPERATOR.md ("Exit codes"), walked for every command.

Each row sets up one failure on a real workspace (reference server over HTTPS on loopback, SQLite
platform database, identity) and runs each command it concerns in a subprocess. The disk-error row
(74) is walked in test_disk_faults.py, on a real full or read-only file system.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import tomli_w
import trustme
from conftest import base_config
from netutil import closed_port

from fluxagent.schema.approval import approval_path
from fluxagent.statedir import identity
from fluxagent.statedir.lock import instance_lock
from fluxagent.testing.licenses import make_license
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import approve_running

ROOT = Path(__file__).resolve().parent.parent
COMMANDS: dict[str, list[str]] = {
    "preview": ["preview"],
    "validate": ["validate"],
    "run --once": ["run", "--once"],
    "status": ["status"],
    "log": ["log"],
    "credentials": ["credentials"],
    "export": ["export", "-o", "{tmp}/bundle.json"],
}
EVERY = tuple(COMMANDS)


@dataclass
class Site:
    """A healthy instance: config, license, identity, a SQLite platform and the HTTPS reference server."""

    tmp: Path
    doc: dict[str, Any]
    server: ReferenceServer
    config: Path
    env: dict[str, str]
    argv_config: list[str]
    wrap: list[str]
    outside: list[Path]  # directories made outside tmp (for another user to reach), removed after the test

    def write(self) -> None:
        self.config.write_text(tomli_w.dumps(self.doc))

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        args = [a.replace("{tmp}", str(self.tmp)) for a in COMMANDS[command]]
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "*"} | self.env
        return subprocess.run([*self.wrap, sys.executable, "-m", "fluxagent", *self.argv_config, *args],
                              capture_output=True, text=True, env=env, timeout=90, check=False,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture
def site(tmp_path: Path, sample_db: Path, tls: ssl.SSLContext, ca_pem: Path) -> Iterator[Site]:
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    db = tmp_path / "fluxbilling.db"
    shutil.copyfile(sample_db, db)
    with ReferenceServer(ssl_context=tls, signing_keys=keys) as server:
        doc = base_config(tmp_path / "state", db)
        doc["instance"]["license_file"] = str(tmp_path / "license.json")
        doc["server"].update(url=server.url, vendor_keys=server.vendor_keys_b64, ca_bundle=str(ca_pem),
                             connect_timeout="1s", read_timeout="2s")
        now = int(time.time())
        (tmp_path / "license.json").write_bytes(make_license(
            keys[0], license_id="FB-EXIT-0001", bound_domain=doc["instance"]["bound_domain"],
            issued_at=now - 86400, expires_at=now + 365 * 86400))
        config = tmp_path / "fluxagent.toml"
        s = Site(tmp_path, doc, server, config, {}, ["--config", str(config)], [], [])
        s.write()
        identity.ensure(tmp_path / "state", now=now)
        approve_running(config, now=now)
        try:
            yield s
        finally:
            for d in s.outside:
                shutil.rmtree(d, ignore_errors=True)


# ---- the failures: each puts the healthy site into one failure ----


def config_missing(s: Site) -> None:
    s.argv_config = ["--config", str(s.tmp / "absent.toml")]


def _as_nobody(s: Site) -> Path:
    """Run the command as `nobody`; return a copy of the config nobody can reach but not read (0600, root's)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as another user (CI runs as root)")
    wrap = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if subprocess.run([*wrap, sys.executable, "-c", "import fluxagent"], capture_output=True, cwd="/",
                      check=False).returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable}")
    s.wrap = wrap
    outside = Path(tempfile.mkdtemp(prefix="fluxagent-exit-"))
    outside.chmod(0o755)
    s.outside.append(outside)
    shutil.copyfile(s.config, outside / "fluxagent.toml")
    (outside / "fluxagent.toml").chmod(0o600)
    return outside / "fluxagent.toml"


def config_unreadable_for_the_user_by_option(s: Site) -> None:
    s.argv_config = ["--config", str(_as_nobody(s))]


def config_unreadable_for_the_user_by_environment(s: Site) -> None:
    s.argv_config, s.env["FLUXAGENT_CONFIG"] = [], str(_as_nobody(s))


def config_invalid(s: Site) -> None:
    s.doc["schedule"]["heartbeat"] = "often"
    s.write()


def no_identity(s: Site) -> None:
    s.doc["instance"]["state_dir"] = str(s.tmp / "fresh-state")
    s.write()


def no_approval(s: Site) -> None:
    approval_path(s.config).unlink()


def sqlite_missing(s: Site) -> None:
    (s.tmp / "fluxbilling.db").unlink()


def sqlite_unreadable(s: Site) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop the capabilities that bypass file modes (CI runs as root)")
    (s.tmp / "fluxbilling.db").chmod(0o000)
    s.wrap = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def ca_untrusted(s: Site) -> None:
    other = s.tmp / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    s.doc["server"]["ca_bundle"] = str(other)
    s.write()


def server_unreachable(s: Site) -> None:
    s.doc["server"]["url"] = f"https://localhost:{closed_port()}"
    s.write()


def state_dir_writable_by_others(s: Site) -> None:
    (s.tmp / "state").chmod(0o770)


LOCKS: list[Any] = []


def lock_held(s: Site) -> None:
    lock = instance_lock(s.tmp / "state")
    lock.__enter__()  # released when the test's process ends the fixture (see `walk`)
    LOCKS.append(lock)


# failure → (the exit code, the commands it concerns)
TABLE: dict[str, tuple[Callable[[Site], None], int, tuple[str, ...]]] = {
    "config file missing": (config_missing, 78, EVERY),
    "config not readable by the user (--config)": (config_unreadable_for_the_user_by_option, 78, EVERY),
    "config not readable by the user (FLUXAGENT_CONFIG)": (config_unreadable_for_the_user_by_environment, 78,
                                                           EVERY),
    "config invalid": (config_invalid, 78, EVERY),
    "no identity": (no_identity, 78, ("preview", "validate", "run --once", "credentials", "export")),
    "no approved schema version": (no_approval, 78, ("preview", "validate", "run --once", "export")),
    "SQLite file missing": (sqlite_missing, 78, ("preview", "validate", "run --once")),
    "SQLite file unreadable": (sqlite_unreadable, 78, ("preview", "validate", "run --once")),
    "server certificate not trusted (wrong CA)": (ca_untrusted, 78, ("validate", "run --once", "credentials")),
    "server unreachable": (server_unreachable, 69, ("validate", "run --once", "credentials")),
    "another instance holds the lock": (lock_held, 75, ("run --once", "export")),
    "state directory writable by group or others": (state_dir_writable_by_others, 78,
                                                    ("validate", "run --once", "credentials", "export")),
}
CASES = [(failure, command) for failure, (_, _, commands) in TABLE.items() for command in commands]


@pytest.mark.parametrize(("failure", "command"), CASES, ids=[f"{f} / {c}" for f, c in CASES])
def test_each_failure_exits_with_its_code_from_the_table_in_every_command(site: Site, failure: str,
                                                                          command: str) -> None:
    setup, code, _ = TABLE[failure]
    setup(site)
    try:
        done = site.run(command)
    finally:
        while LOCKS:
            LOCKS.pop().__exit__(None, None, None)
    out = done.stdout + done.stderr
    assert done.returncode == code, f"{failure} / {command}: exit {done.returncode}, expected {code}\n{out}"
    assert "Traceback" not in out


def test_the_operator_guide_lists_every_failure_of_the_table_with_its_code() -> None:
    guide = (ROOT / "docs" / "OPERATOR.md").read_text(encoding="utf-8")
    section = guide.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {m[0].strip(): int(m[1]) for m in re.findall(r"^\| ([^|]+?) \| (\d+) \|", section, re.M)}
    for failure, (_, code, _) in TABLE.items():
        assert rows.get(failure) == code, f"docs/OPERATOR.md, Exit codes: no row {failure!r} with {code}"


# ---- the daemon meets an untrusted server certificate: said once, as a configuration error, retried slowly ----


def test_daemon_says_an_untrusted_server_certificate_once_as_a_config_error_and_retries_slowly(
    tmp_path: Path, sample_db: Path, tls: ssl.SSLContext
) -> None:
    from hostile import engine_config, make_engine
    from support.capture import Events
    from support.clock import Clock

    from fluxagent.delivery import CONFIG_ERROR_RETRY

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with ReferenceServer(ssl_context=tls) as server:
        cfg = engine_config(tmp_path / "state", sample_db, server, ca_bundle=str(other))
        events, clock = Events(), Clock()
        engine = make_engine(cfg, events, clock)
        engine.produce(["license", "heartbeat"], clock())
        for _ in range(3):
            result = engine.flush()
            assert result.retry is not None and result.retry.config
            assert engine.retry_at >= clock() + CONFIG_ERROR_RETRY  # slowly, not on the 30 s backoff
            clock.advance(CONFIG_ERROR_RETRY + 1)
        assert len(events.named("delivery.config_error")) == 1  # said once
        (said,) = events.named("delivery.config_error")
        assert "server.ca_bundle" in said["hint"] and "not trusted" in said["reason"]
        assert "delivery.outage_started" not in events.names()
        assert engine.spool.depth() == 2  # kept: delivered once the config is fixed
