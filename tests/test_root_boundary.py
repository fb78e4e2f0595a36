"""The root / service-user boundary: nothing in the state dir makes root touch a file outside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.updates.helpers import APT_STATE_FILE
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the root side of the boundary needs root")


def _stale_record(path: str) -> dict[str, object]:
    """An apt record the cleanup judges expired (written in another boot)."""
    return {"path": path, "expires_boottime": 1.0, "boot_id": "another-boot",
            "expires_at": "2020-01-01T00:00:00Z"}


@pytest.fixture
def apt_ws(tmp_path: Path) -> tuple[Workspace, Path]:
    """A workspace whose config names tmp/auth.conf.d/fluxagent.conf as updates.apt_auth_file."""
    w = make_workspace(tmp_path / "ws")
    entry = tmp_path / "auth.conf.d" / "fluxagent.conf"
    entry.parent.mkdir()
    cfg = w.root / "fluxagent.toml"
    cfg.write_text(cfg.read_text().replace('apt_auth_file = "/etc/apt/auth.conf.d/fluxagent.conf"',
                                           f'apt_auth_file = "{entry}"'))
    assert str(entry) in cfg.read_text()
    return w, entry


def test_apt_cleanup_as_root_never_removes_a_path_named_by_the_state_dir(apt_ws: tuple[Workspace, Path],
                                                                         tmp_path: Path) -> None:
    w, entry = apt_ws
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    entry.write_text("machine r login u password p\n")
    (w.cfg.instance.state_dir / APT_STATE_FILE).write_text(json.dumps(_stale_record(str(victim))))
    done = run_cli("--config", str(w.root / "fluxagent.toml"), "credentials", "apt", "--cleanup")
    assert victim.read_text() == "root's file\n", done.stdout + done.stderr
    assert str(victim) not in done.stdout + done.stderr  # a path from the state dir is not echoed either
    assert done.returncode == 0, done.stderr
    assert "left alone" in done.stdout
    assert entry.exists()  # the record was not about the configured entry: its expiry says nothing of it


def test_apt_cleanup_as_root_does_not_follow_a_link_at_the_configured_path(apt_ws: tuple[Workspace, Path],
                                                                          tmp_path: Path) -> None:
    w, entry = apt_ws
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    entry.symlink_to(victim)
    (w.cfg.instance.state_dir / APT_STATE_FILE).write_text(json.dumps(_stale_record(str(entry))))
    done = run_cli("--config", str(w.root / "fluxagent.toml"), "credentials", "apt", "--cleanup")
    assert victim.read_text() == "root's file\n"
    assert entry.is_symlink()  # not ours: left alone, and said so
    assert done.returncode != 0 and "not a regular file" in done.stderr, done.stdout + done.stderr


def test_apt_cleanup_as_root_does_not_follow_a_link_planted_as_the_record(apt_ws: tuple[Workspace, Path],
                                                                         tmp_path: Path) -> None:
    w, entry = apt_ws
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(_stale_record("x") | {"token": "do-not-show"}))
    (w.cfg.instance.state_dir / APT_STATE_FILE).symlink_to(secret)
    entry.write_text("machine r login u password p\n")
    done = run_cli("--config", str(w.root / "fluxagent.toml"), "credentials", "apt", "--cleanup")
    assert secret.exists() and "do-not-show" not in done.stdout + done.stderr
    assert entry.exists()  # a record read through a link is not believed
    assert done.returncode != 0, done.stdout


# ---- who owns the state dir (docs/ARCHITECTURE.md): refused with a hint that keeps the service working ----

NOBODY = 65534


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _run_once(w: Workspace, *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "fluxagent", "--config",
                           str(w.root / "fluxagent.toml"), "run", "--once"],
                          capture_output=True, text=True, env=env, timeout=120, check=False, cwd="/")


@pytest.fixture
def open_ws() -> Iterator[Workspace]:
    """A workspace under a directory any user can traverse (pytest's own tmp dir is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="fluxagent-boundary-"))
    base.chmod(0o755)
    try:
        w = make_workspace(base / "ws")
        for p in (w.root, *w.root.iterdir()):
            if p.is_file():
                p.chmod(0o644)
        w.root.chmod(0o755)
        yield w
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_state_dir_owned_by_root_is_refused_for_the_service_user_with_a_chown_to_that_user(
        open_ws: Workspace) -> None:
    sd = open_ws.cfg.instance.state_dir
    sd.chmod(0o755)  # root made it; the service user can look but must not use it
    done = _run_once(open_ws, prefix=AS_NOBODY)
    assert done.returncode == 78, done.stderr
    assert "owned by root" in done.stderr and f"chown -R nobody: {sd} && chmod 0700 {sd}" in done.stderr


def test_a_state_dir_owned_by_the_service_user_is_refused_for_root_with_a_hint_to_run_as_that_user(
        open_ws: Workspace, tmp_path: Path) -> None:
    sd = open_ws.cfg.instance.state_dir
    for p in (sd, *sd.rglob("*")):
        os.lchown(p, NOBODY, NOBODY)
    done = _run_once(open_ws)
    assert done.returncode == 78, done.stderr
    assert "owned by nobody" in done.stderr and "sudo -u nobody fluxagent" in done.stderr
    assert "chown" not in done.stderr  # never hand the service's files to root
    assert all(p.stat().st_uid == NOBODY for p in (sd, *sd.rglob("*")))  # root created nothing in there


def test_a_state_dir_writable_by_group_or_others_is_refused(workspace: Workspace) -> None:
    sd = workspace.cfg.instance.state_dir
    for mode in (0o770, 0o702, 0o1777):
        sd.chmod(mode)
        done = _run_once(workspace)
        assert done.returncode == 78, done.stderr
        assert "writable by group or others" in done.stderr and f"chmod 0700 {sd}" in done.stderr
        assert sd.stat().st_mode & 0o7777 == mode  # refused, not silently changed


# ---- every state file is created O_CREAT|O_EXCL|O_NOFOLLOW: a planted link clobbers nothing ----


def test_a_link_planted_at_a_spool_temp_name_is_not_followed(tmp_path: Path) -> None:
    from fluxagent.statedir.spool import Spool
    from fluxagent.wire import messages

    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    spool = Spool(tmp_path / "spool", 100, 1 << 20)
    msg = messages.build_credentials()
    key = nacl.signing.SigningKey.generate()
    for seq in (1, 2, 3):  # every name a temp file could predictably take
        for kind in ("credentials", "license", "heartbeat", "digest"):
            (tmp_path / "spool" / "tmp" / f"{seq:020d}-{kind}.json").symlink_to(victim)
    sealed = messages.seal(msg, signing_key=key, iid=str(uuid.uuid4()), aud="a", seq=1, now=1, nonce=bytes(16))
    spool.put(sealed, 1)
    assert victim.read_text() == "root's file\n"
    assert [e.seq for e in spool.entries()] == [1]


def test_a_link_planted_at_the_next_ledger_segment_or_the_lock_is_not_followed(tmp_path: Path) -> None:
    from fluxagent.errors import FluxError
    from fluxagent.statedir.ledger import Ledger
    from fluxagent.statedir.lock import instance_lock

    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    sd = tmp_path / "state"
    sd.mkdir(mode=0o700)
    (sd / "lock").symlink_to(victim)
    with pytest.raises(FluxError), instance_lock(sd):
        pass
    (sd / "ledger").mkdir(mode=0o700)
    (sd / "ledger" / "000000000001.jsonl").symlink_to(victim)
    ledger = Ledger(sd / "ledger")
    with pytest.raises(FluxError):
        ledger.append(now=1, event="sent", kind="heartbeat", outcome="delivered")
    assert victim.read_text() == "root's file\n"


def test_atomic_writes_never_follow_a_link_at_their_temp_name(tmp_path: Path) -> None:
    from fluxagent.statedir import fsutil

    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    target = tmp_path / "schedule.json"
    target.symlink_to(victim)  # the final name is replaced, not written through
    fsutil.atomic_write(target, b"{}\n")
    assert victim.read_text() == "root's file\n" and not target.is_symlink()
    assert target.read_text() == "{}\n"
