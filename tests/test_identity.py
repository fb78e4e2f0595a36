"""The instance identity: created private whatever the umask, never replaced, refused when unsafe."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from conftest import base_config, run_cli

from fluxagent.errors import EXIT_CONFIG, IdentityError
from fluxagent.statedir import identity
from fluxagent.statedir.fsutil import TMP_MARK

NOW = 1_760_000_000


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir()) if p.is_file()}


def test_identity_files_are_0600_and_state_dir_0700_even_with_umask_000(tmp_path, restore_umask):
    state = tmp_path / "var" / "lib" / "fluxagent"
    os.umask(0)
    ident, created = identity.ensure(state, now=NOW)
    assert sorted(created) == ["digest.key", "identity.json", "signing.key"]
    assert _mode(state) == 0o700
    for name in ("identity.json", "signing.key", "digest.key"):
        assert _mode(state / name) == 0o600, name
    assert uuid.UUID(ident.instance_id).version == 4


def test_existing_state_dir_with_loose_mode_is_tightened(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    identity.ensure(state, now=NOW)
    assert _mode(state) == 0o700


def test_keys_are_32_random_bytes_and_differ_between_instances(tmp_path):
    a, _ = identity.ensure(tmp_path / "a", now=NOW)
    b, _ = identity.ensure(tmp_path / "b", now=NOW)
    assert len(a.digest_key) == 32 and len(a.public_key) == 32
    assert a.digest_key != b.digest_key
    assert a.public_key != b.public_key
    assert a.instance_id != b.instance_id


def test_identity_json_records_the_creation_time_and_instance_id(tmp_path):
    ident, _ = identity.ensure(tmp_path / "s", now=NOW)
    doc = json.loads((tmp_path / "s" / "identity.json").read_text())
    assert doc["instance_id"] == ident.instance_id
    assert doc["created_at"] == NOW


def test_ensure_twice_changes_nothing(tmp_path):
    state = tmp_path / "state"
    first, _ = identity.ensure(state, now=NOW)
    before = _snapshot(state)
    second, created = identity.ensure(state, now=NOW + 50)
    assert created == []
    assert _snapshot(state) == before
    assert second.instance_id == first.instance_id
    assert second.public_key == first.public_key
    assert second.digest_key == first.digest_key


def test_load_returns_what_ensure_created(tmp_path):
    made, _ = identity.ensure(tmp_path / "s", now=NOW)
    loaded = identity.load(tmp_path / "s")
    assert (loaded.instance_id, loaded.public_key, loaded.digest_key) == (
        made.instance_id, made.public_key, made.digest_key)


def test_repr_never_shows_key_material(tmp_path):
    ident, _ = identity.ensure(tmp_path / "s", now=NOW)
    text = repr(ident) + str(ident)
    assert ident.digest_key.hex() not in text
    assert bytes(ident.signing_key).hex() not in text
    assert "redacted" in text


@pytest.mark.parametrize("name", ["signing.key", "digest.key"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_group_or_others_is_refused_with_chmod_600_advice(tmp_path, name, mode):
    state = tmp_path / "s"
    identity.ensure(state, now=NOW)
    (state / name).chmod(mode)
    with pytest.raises(IdentityError) as info:
        identity.load(state)
    assert info.value.exit_code == EXIT_CONFIG
    assert f"chmod 600 {state / name}" in str(info.value)
    assert identity.permission_problems(state) == [f"{state / name}: mode {mode:04o} lets group or others read it"]


def test_damaged_identity_json_is_refused_and_not_regenerated(tmp_path):
    state = tmp_path / "s"
    identity.ensure(state, now=NOW)
    (state / "identity.json").write_text('{"instance_id": "not-a-uuid"')
    before = _snapshot(state)
    for attempt in (lambda: identity.load(state), lambda: identity.ensure(state, now=NOW)):
        with pytest.raises(IdentityError) as info:
            attempt()
        assert "damaged" in str(info.value)
    assert _snapshot(state) == before


@pytest.mark.parametrize("content", [b"", b"[]", b'{"format": 1}', b'{"instance_id": 5}', b"\xff\xfe"])
def test_identity_json_of_the_wrong_shape_is_refused(tmp_path, content):
    state = tmp_path / "s"
    identity.ensure(state, now=NOW)
    (state / "identity.json").write_bytes(content)
    with pytest.raises(IdentityError):
        identity.load(state)


def test_truncated_key_is_refused_as_damaged(tmp_path):
    state = tmp_path / "s"
    identity.ensure(state, now=NOW)
    key = state / "signing.key"
    key.write_bytes(key.read_bytes()[:31])
    with pytest.raises(IdentityError, match="damaged"):
        identity.load(state)


def test_missing_signing_key_with_existing_identity_is_refused_not_recreated(tmp_path):
    state = tmp_path / "s"
    identity.ensure(state, now=NOW)
    (state / "signing.key").unlink()
    with pytest.raises(IdentityError, match="signing.key is missing"):
        identity.ensure(state, now=NOW)
    assert not (state / "signing.key").exists()
    with pytest.raises(IdentityError, match="missing"):
        identity.load(state)


def test_missing_identity_says_to_run_init(tmp_path):
    with pytest.raises(IdentityError) as info:
        identity.load(tmp_path / "empty")
    assert "fluxagent init" in str(info.value)
    assert info.value.exit_code == EXIT_CONFIG


def test_stray_temp_files_from_an_interrupted_write_are_removed(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    stray = state / f".signing.key{TMP_MARK}123-abcd"
    stray.write_bytes(b"half")
    identity.ensure(state, now=NOW)
    assert not stray.exists()


def test_init_twice_never_replaces_config_or_identity(tmp_path):
    cfg_path = tmp_path / "etc" / "fluxagent.toml"
    state = tmp_path / "state"
    args = ("--config", str(cfg_path), "init", "--bound-domain", "billing.example.com",
            "--state-dir", str(state), "--database", f"sqlite:///{tmp_path / 'p.db'}")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    config_bytes = cfg_path.read_bytes()
    keys = _snapshot(state)
    iid = json.loads(keys["identity.json"])["instance_id"]
    assert iid in first.stdout

    second = run_cli(*args[:3], "--bound-domain", "other.example")
    assert second.returncode == 0, second.stderr
    assert "left untouched" in second.stdout
    assert "nothing" in second.stdout
    assert cfg_path.read_bytes() == config_bytes
    assert _snapshot(state) == keys


def test_init_with_existing_config_creates_only_the_missing_identity(tmp_path, write_config):
    state = tmp_path / "state"
    cfg_path = write_config(base_config(state, tmp_path / "p.db"))
    before = cfg_path.read_bytes()
    proc = run_cli("--config", str(cfg_path), "init")
    assert proc.returncode == 0, proc.stderr
    assert cfg_path.read_bytes() == before
    assert identity.load(state).instance_id in proc.stdout


def test_commands_needing_the_identity_exit_78_saying_to_run_init(tmp_path, write_config):
    cfg_path = write_config(base_config(tmp_path / "no-state", tmp_path / "p.db"))
    proc = run_cli("--config", str(cfg_path), "preview")
    assert proc.returncode == 78
    assert "fluxagent init" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "no-state").exists()


def test_preview_refuses_a_world_readable_key_with_exit_78(workspace):
    key = workspace.cfg.instance.state_dir / "digest.key"
    key.chmod(0o644)
    proc = run_cli("--config", str(workspace.root / "fluxagent.toml"), "preview")
    assert proc.returncode == 78
    assert f"chmod 600 {key}" in proc.stderr
