"""Two users (docs/OPERATOR.md, "Two users"): the service user owns the state directory, root operates.

Root never takes the service's keys or files over: commands that need a signature ask the running
daemon, the others refuse with a fix that keeps the service working, and nothing in the state
directory ends up owned by root. Run as root (CI does); the service user is `nobody`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli

from fluxagent.errors import EXIT_CONFIG
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
