"""Two users (docs/OPERATOR.md, "Two users"): the service user owns the state directory, root operates.

Root never takes the service's keys or files over: commands that need a signature ask the running
daemon, the others refuse with a fix that keeps the service working, and nothing in the state
directory ends up owned by root. Run as root (CI does); the service user is `nobody`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from conftest import run_cli

from fluxagent.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user (CI runs as root)")

SERVICE = "nobody"


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give root and everything under it to uid:gid, links not followed."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def owners(root: Path) -> set[int]:
    """Return the uids owning root and anything under it."""
    found = {root.lstat().st_uid}
    for p in root.rglob("*"):
        found.add(p.lstat().st_uid)
    return found


@pytest.fixture
def service_ws(tmp_path: Path) -> Iterator[Workspace]:
    """A workspace whose state directory belongs to the service user (`nobody`)."""
    ws = make_workspace(tmp_path / "ws")
    pw = pwd.getpwnam(SERVICE)
    chown_tree(ws.cfg.instance.state_dir, pw.pw_uid, pw.pw_gid)
    yield ws


def as_root(ws: Workspace, *args: str) -> tuple[int, str]:
    done = run_cli("--config", str(ws.root / "fluxagent.toml"), *args, env={"NO_PROXY": "127.0.0.1"})
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("command", [["preview"], ["run", "--once"], ["export", "-o", "bundle.json"]])
def test_fix_hints_for_the_service_users_state_keep_the_service_working(service_ws: Workspace,
                                                                        command: list[str]) -> None:
    code, out = as_root(service_ws, *command)
    assert code == EXIT_CONFIG, out
    assert f"sudo -u {SERVICE} fluxagent" in out
    assert "chown" not in out and "Traceback" not in out
    assert owners(service_ws.cfg.instance.state_dir) == {pwd.getpwnam(SERVICE).pw_uid}  # nothing taken over


# ---- update credentials: root asks the service's running daemon, never its keys ----


HELPER_COMMANDS = {
    "credentials": (["credentials"], ""),
    "docker": (["credentials", "docker", "get"], "registry.fluxbilling.example\n"),
    "git": (["credentials", "git", "get"], "protocol=https\nhost=registry.fluxbilling.example\n\n"),
    "apt": (["credentials", "apt", "--path", "{tmp}/fluxagent.conf"], ""),
}


@pytest.mark.parametrize("name", list(HELPER_COMMANDS))
def test_as_root_a_credential_helper_without_the_service_running_says_so_and_how_to_start_it(
    service_ws: Workspace, tmp_path: Path, name: str
) -> None:
    args, stdin = HELPER_COMMANDS[name]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "fluxagent", "--config", str(service_ws.root / "fluxagent.toml"),
                           *args], input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == EXIT_UNAVAILABLE, out
    assert "systemctl start fluxagent" in out and "not running" in out
    assert "chown" not in out and "Traceback" not in out
    assert owners(service_ws.cfg.instance.state_dir) == {pwd.getpwnam(SERVICE).pw_uid}
    assert not (tmp_path / "fluxagent.conf").exists()


def _service_can_run_python() -> str | None:
    """Return why the service user cannot run this interpreter and import fluxagent, or None."""
    if SETPRIV is None:
        return "setpriv (util-linux) is missing"
    probe = subprocess.run([SETPRIV, *AS_SERVICE, sys.executable, "-c", "import fluxagent"], capture_output=True,
                           text=True, cwd="/", check=False)
    return None if probe.returncode == 0 else f"{SERVICE} cannot run {sys.executable}: {probe.stderr.strip()[-200:]}"


SETPRIV = shutil.which("setpriv")
AS_SERVICE = [f"--reuid={SERVICE}", f"--regid={grp.getgrgid(pwd.getpwnam(SERVICE).pw_gid).gr_name}", "--clear-groups"]


@dataclass
class Service:
    """The service user's daemon on a workspace, the reference server it talks to, and root's apt entry path."""

    ws: Workspace
    server: ReferenceServer
    daemon: subprocess.Popen[str]
    apt_entry: Path

    def root(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "127.0.0.1"}
        done = subprocess.run([sys.executable, "-m", "fluxagent", "--config", str(self.ws.root / "fluxagent.toml"),
                               *args], input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
def service() -> Iterator[Service]:
    """The daemon running as the service user (started directly, as systemd would), root beside it."""
    why = _service_can_run_python()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="fluxagent-two-users-"))
    base.chmod(0o755)  # pytest's own tmp dirs are root's only: the service user must reach its files
    try:
        with ReferenceServer(credentials_ttl=600) as srv:
            ws = make_workspace(base / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
            apt_dir = base / "auth.conf.d"  # root's, like /etc/apt/auth.conf.d: the service cannot write there
            apt_dir.mkdir(mode=0o755)
            cfg_path = ws.root / "fluxagent.toml"
            cfg_path.write_text(cfg_path.read_text().replace('"/etc/apt/auth.conf.d/fluxagent.conf"',
                                                             f'"{apt_dir / "fluxagent.conf"}"'))
            pw = pwd.getpwnam(SERVICE)
            chown_tree(ws.cfg.instance.state_dir, pw.pw_uid, pw.pw_gid)
            env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "127.0.0.1"}
            daemon = subprocess.Popen([SETPRIV, *AS_SERVICE, sys.executable, "-m", "fluxagent", "--config",
                                       str(cfg_path), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd="/")
            try:
                sock = ws.cfg.instance.state_dir / "control.sock"
                deadline = time.monotonic() + 30
                while not (sock.exists() and len(srv.received) >= 3) and daemon.poll() is None:
                    assert time.monotonic() < deadline, "the daemon did not come up"
                    time.sleep(0.05)
                assert daemon.poll() is None, daemon.communicate()[1][-2000:]
                yield Service(ws, srv, daemon, apt_dir / "fluxagent.conf")
            finally:
                daemon.send_signal(signal.SIGTERM)
                out, err = daemon.communicate(timeout=30)
            assert daemon.returncode == 0, err[-2000:]
            for cred in srv.issued_credentials:
                assert cred.secret not in out + err
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_as_root_every_helper_gets_credentials_from_the_service_users_daemon_and_takes_over_nothing(
    service: Service,
) -> None:
    code, out, err = service.root("credentials")
    assert code == 0, err
    plain = json.loads(out)
    assert plain["registry"] == "registry.fluxbilling.example" and plain["secret"]
    code, out, err = service.root("credentials", "docker", "get", stdin="https://registry.fluxbilling.example\n")
    assert code == 0, out + err
    assert json.loads(out)["Secret"] == plain["secret"]
    code, out, err = service.root("credentials", "git", "get",
                                  stdin="protocol=https\nhost=registry.fluxbilling.example\n\n")
    assert code == 0 and f"password={plain['secret']}" in out, err
    code, out, err = service.root("credentials", "apt")
    assert code == 0, err
    st = service.apt_entry.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)  # root wrote apt's file
    assert plain["secret"] in service.apt_entry.read_text()
    code, out, err = service.root("credentials", "apt", "--cleanup")
    assert code == 0 and "valid for another" in out, out + err
    assert len(service.server.issued_credentials) == 1  # all from the daemon's memory
    for command in (["status"], ["validate"], ["log", "--verify"]):
        code, out, err = service.root(*command)
        assert code == 0, f"{command}: {out}{err}"
    assert owners(service.ws.cfg.instance.state_dir) == {pwd.getpwnam(SERVICE).pw_uid}
    assert service.daemon.poll() is None


# ---- init: root creates the identity for the service user; the service user gets a clear hint ----


def _init_config(tmp: Path, state: Path, **instance: str) -> Path:
    from conftest import base_config

    doc = base_config(state, tmp / "p.db")
    doc["instance"].update(instance)
    path = tmp / "fluxagent.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def test_init_as_root_creates_the_identity_owned_by_the_configured_service_user_and_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = _init_config(tmp_path, state, service_user=SERVICE)
    done = run_cli("--config", str(cfg), "init")
    assert done.returncode == 0, done.stderr
    uid = pwd.getpwnam(SERVICE).pw_uid
    assert owners(state) == {uid}
    assert {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()} == {
        "identity.json": 0o600, "signing.key": 0o600, "digest.key": 0o600}
    assert state.stat().st_mode & 0o777 == 0o700
    assert f"owned by {SERVICE}" in done.stdout
    again = run_cli("--config", str(cfg), "init")  # nothing to do, nothing taken over
    assert again.returncode == 0 and owners(state) == {uid}, again.stderr


def test_init_as_root_on_the_service_users_state_dir_creates_the_identity_for_its_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    pw = pwd.getpwnam(SERVICE)
    os.chown(state, pw.pw_uid, pw.pw_gid)  # as the package's tmpfiles.d entry leaves it
    done = run_cli("--config", str(_init_config(tmp_path, state)), "init")
    assert done.returncode == 0, done.stderr
    assert owners(state) == {pw.pw_uid}
    assert f"owned by {SERVICE}" in done.stdout


def test_init_with_a_service_user_that_does_not_exist_is_a_configuration_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run_cli("--config", str(_init_config(tmp_path, state, service_user="no-such-user-fx")), "init")
    assert done.returncode == EXIT_CONFIG
    assert "instance.service_user" in done.stderr and "no-such-user-fx" in done.stderr
    assert not state.exists()


def test_init_as_the_service_user_that_cannot_write_the_config_names_the_file_and_the_fix() -> None:
    why = _service_can_run_python()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="fluxagent-init-"))
    try:
        base.chmod(0o755)  # root's, like /etc/fluxagent: the service user cannot write here
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
        done = subprocess.run([SETPRIV, *AS_SERVICE, sys.executable, "-m", "fluxagent", "--config",
                               str(base / "fluxagent.toml"), "init", "--bound-domain", "billing.example.com",
                               "--state-dir", str(base / "state")],
                              capture_output=True, text=True, env=env, cwd="/", timeout=60, check=False)
        out = done.stdout + done.stderr
        assert done.returncode == EXIT_CONFIG, out
        assert str(base / "fluxagent.toml") in out and "Permission denied" in out
        assert ".tmp-" not in out and "Traceback" not in out
        assert "sudo fluxagent init" in out
    finally:
        shutil.rmtree(base, ignore_errors=True)
