"""Registry versions, fingerprints and the approval file (`fluxagent schema`, docs/OPERATOR.md)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli
from schemakit import DELTA_FIELDS, UP_TO_V2, V1, V2, V3_OPTIONAL

from fluxagent.errors import ConfigError
from fluxagent.report.schema import diff_doc, diff_text, schema_doc, schema_text
from fluxagent.schema import shipped as shipped_mod
from fluxagent.schema.approval import FILE, approval_path, approve, read_approval, write_approval
from fluxagent.schema.shipped import shipped
from fluxagent.schema.versions import Catalog, Version, diff, fingerprint_of, version_from_json
from fluxagent.testing.workspace import Workspace
from fluxagent.wire.messages import DIGEST, HEARTBEAT, REGISTRY

SCHEMA_DIR = Path(shipped_mod.__file__).resolve().parent
# Golden values: a change here means every operator has to approve again. Never edit them to make a
# test pass; add a new version file instead (python -m fluxagent.schema.shipped).
V1_FINGERPRINT = "sha256:b215a009700a41d1dba622a9640e3c16f5795032293c86ef566c32806a58f1d0"
V2_FINGERPRINT = "sha256:9120fd9d592ef64a09da72aeb118b8ce8f5894dea9bdf2b3bc806a9e91a3bfc1"


def test_shipped_v1_has_its_golden_fingerprint() -> None:
    assert shipped().versions[0].number == 1
    assert shipped().versions[0].fingerprint == V1_FINGERPRINT


def test_shipped_v2_is_v1_plus_the_delta_digest_fields_with_its_golden_fingerprint() -> None:
    v2 = shipped().find("v2")
    assert v2 is not None and v2 == V2 and v2.fingerprint == V2_FINGERPRINT
    # the fingerprint depends on kind, path, type and item only: the same fields, worded otherwise, match
    assert Version(2, (*V1.fields, *DELTA_FIELDS)).fingerprint == V2_FINGERPRINT


def test_the_running_registry_is_the_newest_version_file_or_the_test_says_how_to_add_one() -> None:
    newest = shipped().newest
    current = Version(newest.number, REGISTRY)
    assert current.fingerprint == newest.fingerprint, (
        "the registry differs from the newest fluxagent/schema/v*.json in a field's kind, path, type or clause "
        "item: run `python -m fluxagent.schema.shipped` to add the next version file (operators must approve it)")
    path = SCHEMA_DIR / f"v{newest.number}.json"
    assert current.to_json() == path.read_bytes(), (
        f"only the wording differs from {path.name}: run `python -m fluxagent.schema.shipped` to refresh it")


def test_every_shipped_version_verifies_and_differs_from_the_one_before() -> None:
    versions = shipped().versions
    for v in versions:
        path = SCHEMA_DIR / f"v{v.number}.json"
        assert version_from_json(path.read_bytes(), path.name) == v
    assert len({v.fingerprint for v in versions}) == len(versions)


def test_fingerprint_changes_with_a_type_or_clause_item_not_with_meaning_or_order() -> None:
    fields = list(REGISTRY)
    base = fingerprint_of(fields)
    i = next(n for n, f in enumerate(fields) if f.path == "counts.total_users")
    assert fingerprint_of([*fields[:i], replace(fields[i], type="bool"), *fields[i + 1:]]) != base
    assert fingerprint_of([*fields[:i], replace(fields[i], item=DIGEST), *fields[i + 1:]]) != base
    assert fingerprint_of([*fields[:i], replace(fields[i], meaning="how many users"), *fields[i + 1:]]) == base
    assert fingerprint_of([*fields[:i], replace(fields[i], required=True), *fields[i + 1:]]) == base
    assert fingerprint_of(reversed(fields)) == base
    assert fingerprint_of(fields[:-1]) != base


def test_a_version_file_whose_stored_fingerprint_does_not_match_is_refused() -> None:
    doc = json.loads((SCHEMA_DIR / "v1.json").read_bytes())
    doc["fields"][0]["type"] = "uint"
    with pytest.raises(ValueError, match="stored fingerprint"):
        version_from_json(json.dumps(doc).encode(), "v1.json")


def test_generate_adds_a_version_only_for_a_fingerprint_change_and_rewords_in_place(tmp_path: Path) -> None:
    for f in SCHEMA_DIR.glob("v*.json"):
        shutil.copy(f, tmp_path / f.name)
    n = shipped().newest.number
    assert shipped_mod.generate(tmp_path) is None
    newest = tmp_path / f"v{n}.json"
    reworded = Version(n, tuple(replace(f, meaning=f.meaning + "!") for f in REGISTRY))
    newest.write_bytes(reworded.to_json())
    assert shipped_mod.generate(tmp_path) == newest  # same fingerprint: the file is refreshed, no new version
    assert newest.read_bytes() == Version(n, REGISTRY).to_json()
    narrower = Version(n, REGISTRY[:-1])
    newest.write_bytes(narrower.to_json())
    assert shipped_mod.generate(tmp_path) == tmp_path / f"v{n + 1}.json"


def test_catalog_finds_a_version_by_name_number_or_fingerprint() -> None:
    cat = UP_TO_V2
    assert cat.find("v2") == cat.find("2") == cat.find(V2.fingerprint) == V2
    assert cat.find("v3") is None and cat.find("sha256:" + "0" * 64) is None
    with pytest.raises(ValueError):
        Catalog((V2,))


def test_diff_lists_the_fields_added_and_removed_with_their_clause_item() -> None:
    d = diff(V1, V2)
    assert d.widens and {f.canonical for f in d.added} == {f.canonical for f in DELTA_FIELDS} and d.removed == ()
    text = diff_text(d)
    assert "+  digest" in text and "body.added_servers" in text and "Infrastructure digest" in text
    back = diff_doc(diff(V2, V1))
    assert not back["widens"] and {f["path"] for f in back["removed"]} == {f"body.{f.path}" for f in DELTA_FIELDS}
    assert "no approval needed" in diff_text(diff(V2, V1))
    changed = Version(4, tuple(replace(f, item=HEARTBEAT) if f.path == "root" else f for f in V1.fields))
    d2 = diff(V1, changed)
    assert [(f.path, f.item) for f in d2.added] == [("root", HEARTBEAT)]
    assert [(f.path, f.item) for f in d2.removed] == [("root", DIGEST)]


def test_schema_text_marks_the_fields_withheld_while_a_wider_version_awaits_approval(tmp_path: Path) -> None:
    appr = write_approval(tmp_path / FILE, V1, by="alice", via="test", now=1_790_000_000)
    doc = schema_doc(UP_TO_V2, V2, appr, approval_file=str(tmp_path / FILE))
    assert doc["pending"] and doc["approved"]["name"] == "v1" and doc["running"]["name"] == "v2"
    assert {f["path"] for f in doc["fields"] if not f["sent"]} == {f"body.{f.path}" for f in DELTA_FIELDS}
    text = schema_text(doc)
    assert "PENDING" in text and "by alice" in text
    assert next(ln for ln in text.splitlines() if "body.base" in ln).endswith("WITHHELD")


# ---- the approval file ----


def _break(path: Path, case: str) -> None:
    if case == "missing":
        path.unlink()
    elif case == "garbage":
        path.write_bytes(b"\x00not json{")
    elif case == "no_fingerprint":
        path.write_text(json.dumps({"approved": "v2"}))
    elif case == "world_writable":
        path.chmod(0o666)
    elif case == "unknown_fingerprint":
        path.write_text(json.dumps({"approved": "sha256:" + "ab" * 32, "version": 9}))
    elif case == "symlink":
        target = path.with_name("elsewhere")
        path.rename(target)
        path.symlink_to(target)


CASES = {
    "missing": "no approved schema version",
    "garbage": "not the JSON",
    "no_fingerprint": "holds no approved fingerprint",
    "world_writable": "writable by group or others (mode 0666)",
    "unknown_fingerprint": "no schema version this fluxagent knows",
    "symlink": "cannot read the approved schema version",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_approval_file_is_a_configuration_error_naming_the_file_and_the_fix(
    workspace: Workspace, case: str
) -> None:
    path = approval_path(workspace.root / "fluxagent.toml")
    _break(path, case)
    with pytest.raises(ConfigError) as info:
        read_approval(path, shipped())
    assert info.value.exit_code == 78
    assert CASES[case] in str(info.value) and str(path) in str(info.value)
    assert info.value.hint and "fluxagent schema" in info.value.hint


@pytest.mark.parametrize("case", ["missing", "garbage", "world_writable", "unknown_fingerprint"])
@pytest.mark.parametrize("command", [("preview",), ("run", "--once")])
def test_commands_that_send_exit_78_on_a_bad_approval_and_send_nothing(
    workspace: Workspace, case: str, command: tuple[str, ...]
) -> None:
    _break(approval_path(workspace.root / "fluxagent.toml"), case)
    proc = run_cli("--config", str(workspace.root / "fluxagent.toml"), *command)
    assert proc.returncode == 78, proc.stderr
    assert CASES[case] in proc.stderr and "hint:" in proc.stderr
    assert not (workspace.cfg.instance.state_dir / "ledger").exists()


def test_an_approval_not_owned_by_root_is_refused_when_running_as_root(workspace: Workspace) -> None:
    path = approval_path(workspace.root / "fluxagent.toml")
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=r"owned by uid \d+, not root") as info:
        read_approval(path, shipped(), euid=0)
    assert "chown root:root" in (info.value.hint or "")
    assert read_approval(path, shipped(), euid=path.stat().st_uid).version == shipped().newest


def test_approve_writes_a_0644_file_naming_the_fingerprint_who_and_when(tmp_path: Path) -> None:
    path = tmp_path / FILE
    done = approve(path, UP_TO_V2, None, via="fluxagent schema --approve", now=1_790_000_000, by="root")
    assert done is not None and done.version == V2
    assert path.stat().st_mode & 0o777 == 0o644
    doc = json.loads(path.read_text())
    assert doc["approved"] == V2.fingerprint and doc["by"] == "root" and doc["at"] == 1_790_000_000
    assert read_approval(path, UP_TO_V2).version == V2
    assert approve(path, UP_TO_V2, "v1", via="t", now=1, if_missing=True) is None  # kept
    assert read_approval(path, UP_TO_V2).version == V2
    with pytest.raises(ValueError, match="v7"):
        approve(path, UP_TO_V2, "v7", via="t", now=1)


# ---- the command ----


def test_init_approves_the_version_it_installs_with_and_schema_shows_it(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "fluxagent.toml"
    proc = run_cli("--config", str(cfg), "init", "--bound-domain", "billing.example.com",
                   "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0, proc.stderr
    assert f"schema: approved v{shipped().newest.number}" in proc.stdout
    doc = json.loads(run_cli("--config", str(cfg), "schema", "--json").stdout)
    assert doc["approved"]["fingerprint"] == doc["running"]["fingerprint"] == shipped().newest.fingerprint
    assert doc["approved"]["via"] == "fluxagent init" and doc["pending"] is False
    again = run_cli("--config", str(cfg), "init")
    assert again.returncode == 0 and "left untouched" in again.stdout
    text = run_cli("--config", str(cfg), "schema")
    assert text.returncode == 0 and "body.counts.total_users" in text.stdout and "Heartbeat metrics" in text.stdout


def test_schema_without_an_approval_shows_the_registry_and_exits_78(tmp_path: Path) -> None:
    proc = run_cli("--config", str(tmp_path / "fluxagent.toml"), "schema")
    assert proc.returncode == 78
    assert "approved:  NONE" in proc.stdout and "schema --approve" in proc.stdout


def test_schema_approve_and_diff_from_the_command_line(tmp_path: Path) -> None:
    cfg = str(tmp_path / "fluxagent.toml")
    bad = run_cli("--config", cfg, "schema", "--approve", "v99")
    assert bad.returncode == 2 and "v99" in bad.stderr
    ok = run_cli("--config", cfg, "schema", "--approve", V1_FINGERPRINT, "--note", "CHG-1")
    assert ok.returncode == 0 and f"approved v1 ({V1_FINGERPRINT})" in ok.stdout
    assert json.loads((tmp_path / FILE).read_text())["via"] == "fluxagent schema --approve: CHG-1"
    kept = run_cli("--config", cfg, "schema", "--approve", "--if-missing")
    assert kept.returncode == 0 and "left untouched" in kept.stdout
    d = json.loads(run_cli("--config", cfg, "schema", "--diff", "v1", "v1", "--json").stdout)
    assert d["added"] == [] and d["removed"] == [] and d["from"]["fingerprint"] == V1_FINGERPRINT
    notice = run_cli("--config", cfg, "schema", "--notice")
    assert notice.returncode == 0 and "schema v2 sends 5 more field(s) than the approved v1" in notice.stdout
    shown = run_cli("--config", cfg, "schema")
    assert shown.returncode == 0 and "PENDING" in shown.stdout
    assert next(ln for ln in shown.stdout.splitlines() if "body.added_servers" in ln).endswith("WITHHELD")
    d = json.loads(run_cli("--config", cfg, "schema", "--diff", "--json").stdout)  # approved -> running
    assert (d["from"]["name"], d["to"]["name"], d["widens"]) == ("v1", "v2", True)
    assert {f["path"] for f in d["added"]} == {f"body.{f.path}" for f in DELTA_FIELDS}
    assert all(f["item"] == "Infrastructure digest" for f in d["added"])
    assert run_cli("--config", cfg, "schema", "--approve").returncode == 0  # the newest
    after = json.loads(run_cli("--config", cfg, "schema", "--json").stdout)
    assert after["approved"]["name"] == "v2" and after["pending"] is False
    assert run_cli("--config", cfg, "schema", "--notice").stdout == ""  # nothing wider awaits approval


def test_v3_is_a_test_only_value_not_a_shipped_file() -> None:
    assert shipped().find(V3_OPTIONAL.fingerprint) is None


# ---- the Debian maintainer script ----

POSTINST = Path(__file__).resolve().parent.parent / "packaging" / "debian" / "postinst"


def _postinst_schema_block(tmp_path: Path, config: Path) -> Path:
    """Return a script holding the postinst's schema block, its fluxagent pointed at config."""
    text = POSTINST.read_text()
    start = text.index("    # What may be sent")
    end = text.index("\n    fi\n", start) + len("\n    fi\n")
    wrapper = tmp_path / "fluxagent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fluxagent --config "{config}" "$@"\n')
    wrapper.chmod(0o755)
    script = tmp_path / "postinst-schema.sh"
    script.write_text("set -e\n" + text[start:end].replace("/usr/bin/fluxagent", str(wrapper)))
    return script


@pytest.mark.parametrize(("old", "approved_via"), [("", "package install"), ("0.1.0", "package upgrade from 0.1.0")])
def test_postinst_approves_once_v1_on_upgrade_the_installed_version_on_install_and_never_prompts(
    tmp_path: Path, old: str, approved_via: str
) -> None:
    config = tmp_path / "etc" / "fluxagent.toml"
    config.parent.mkdir()
    script = _postinst_schema_block(tmp_path, config)
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    done = subprocess.run(["sh", str(script), "configure", old], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads((config.parent / FILE).read_text())
    expected = shipped().versions[0] if old else shipped().newest
    assert doc["approved"] == expected.fingerprint and approved_via in doc["via"]
    if expected == shipped().newest:
        assert done.stdout == ""  # nothing wider awaits approval
    else:  # an upgrade to a wider release says so, without asking
        assert "withheld until you approve" in done.stdout and "fluxagent schema --diff" in done.stdout
    (config.parent / FILE).write_text(json.dumps({**doc, "by": "the operator"}))
    again = subprocess.run(["sh", str(script), "configure", "0.2.0"], capture_output=True, text=True, env=env,
                           stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert again.returncode == 0 and json.loads((config.parent / FILE).read_text())["by"] == "the operator"


def test_the_version_files_are_package_data_so_an_installed_fluxagent_knows_them() -> None:
    pyproject = tomllib.loads((SCHEMA_DIR.parent.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["fluxagent"]
    for f in SCHEMA_DIR.glob("v*.json"):
        rel = f.relative_to(SCHEMA_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} would not ship: add it to package-data"
