"""The root / service-user boundary: nothing in the state dir makes root touch a file outside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
