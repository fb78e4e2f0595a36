"""Value shapes with one definition each: versions, host names; database values described, never quoted."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import tomli_w

from fluxagent import config
from fluxagent.collect import gather
from fluxagent.errors import AllowlistError, ConfigError
from fluxagent.facts import Counts
from fluxagent.statedir import identity
from fluxagent.testing.workspace import Workspace
from fluxagent.wire import messages
from tests.conftest import fixed_world, run_cli

RELEASE_TAGS = ["4.12.3", "4.12", "10", "4.12.3-rc2", "4.12.3+build.17", "4.12.3~deb12u1", "4.12.3-1+deb12u1",
                "4.12.3-beta.1", "4.12.3-1ubuntu2", "4.12.3+g1a2b3c4", "2.0.0-alpha", "4.12.3-2.el9"]
NOT_VERSIONS = ["4.12.3+jane.doe.gmail.com", "4.12.3-jane.doe", "4.12.3+billing.example.com", "4.12.3-johnsmith",
                "4.12.3+mail.example", "4.12.3-jane@doe", "4.12.3+" + "1" * 40, "v4.12.3",
                "4.12.3+a.b.c.d.e", "+49 30 1234567", ""]


def _seal_heartbeat(version: str) -> messages.Sealed:
    msg = messages.build_heartbeat(version, "billing.example.com", Counts(1, 2, 3))
    return messages.seal(msg, signing_key=nacl.signing.SigningKey.generate(), iid=str(uuid.uuid4()),
                         aud="licensing.example", seq=1, now=1, nonce=bytes(16))


def _config_with_version(ws: Workspace, version: str) -> dict[str, Any]:
    doc = config.to_mapping(ws.cfg)
    doc["platform"]["version"] = version
    return doc


@pytest.mark.parametrize("version", RELEASE_TAGS)
def test_a_version_may_carry_a_short_release_tag(workspace: Workspace, version: str) -> None:
    assert _seal_heartbeat(version).obj["body"]["platform_version"] == version
    assert config.from_mapping(_config_with_version(workspace, version)).platform.version == version


@pytest.mark.parametrize("version", [v for v in NOT_VERSIONS if v])
def test_a_version_shaped_like_a_name_email_or_host_name_is_refused_by_config_and_allowlist(
        workspace: Workspace, version: str) -> None:
    with pytest.raises(AllowlistError):
        _seal_heartbeat(version)
    with pytest.raises(ConfigError, match="platform.version"):
        config.from_mapping(_config_with_version(workspace, version))


def _set_db_version(ws: Workspace, value: str) -> None:
    db = Path(ws.cfg.platform.database[len("sqlite:///"):])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE settings SET value = ? WHERE name = 'version'", (value,))


@pytest.mark.parametrize("version", ["4.12.3+jane.doe.gmail.com", "4.12.3-johnsmith"])
def test_a_database_version_shaped_like_a_name_withholds_the_heartbeat(workspace: Workspace, version: str) -> None:
    _set_db_version(workspace, version)
    ident = identity.load(workspace.cfg.instance.state_dir)
    built = gather(workspace.cfg, ident, ["heartbeat"], now=time.time(), world=fixed_world())
    assert built[0].message is None and built[0].error is not None
    _set_db_version(workspace, "4.12.3~deb12u1")
    built = gather(workspace.cfg, ident, ["heartbeat"], now=time.time(), world=fixed_world())
    assert built[0].message is not None and built[0].message.body["platform_version"] == "4.12.3~deb12u1"


def test_written_config_round_trips_a_tagged_version(workspace: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(_config_with_version(workspace, "4.12.3+build.17")))
    assert config.load(path).platform.version == "4.12.3+build.17"


# ---- database values are described, never quoted (journal, source-errors.json, status) ----

PHONE = "+49 30 1234567"


def test_a_bad_database_version_is_described_not_quoted_in_journal_source_errors_and_status(
        workspace: Workspace) -> None:
    _set_db_version(workspace, f"4.12.3 call {PHONE}")
    cfg = str(workspace.root / "fluxagent.toml")
    ran = run_cli("--config", cfg, "run", "--once")
    shown = run_cli("--config", cfg, "status").stdout + run_cli("--config", cfg, "status", "--json").stdout
    errors = (workspace.cfg.instance.state_dir / "source-errors.json").read_text()
    assert "not a version number: 26 characters" in errors
    for text in (ran.stdout + ran.stderr, errors, shown):
        assert "1234567" not in text and "call" not in text


def test_a_count_query_returning_text_is_described_not_quoted(tmp_path: Path) -> None:
    from fluxagent.errors import SourceShapeError
    from fluxagent.sources.shaped import check_count

    with pytest.raises(SourceShapeError) as info:
        check_count("active_clients", "SELECT phone FROM clients", [("jane.doe@mail.example",)])
    assert "jane" not in str(info.value) and "str value of 21 characters" in str(info.value)
    for value, what in ((-4930123456, "negative"), (2**60 + 7, "over 2^53")):
        with pytest.raises(SourceShapeError) as info:
            check_count("active_clients", "SELECT phone FROM clients", [(value,)])
        assert str(abs(value)) not in str(info.value) and what in str(info.value)


# ---- one canonical path for host names, whatever their case ----


@pytest.mark.parametrize("name", ["xn--zz.example", "xn--bcher-kva.example", "billing-01.example.com",
                                  "xn--a.example", "xn--nxasmq6b.example"])
def test_case_variants_of_a_host_name_take_the_same_path(name: str) -> None:
    from fluxagent.identifiers import TokenSet, add_servers, canonical_hostname

    outcomes = []
    for variant in (name, name.upper(), name.title(), name.swapcase(), name + "."):
        assert canonical_hostname(variant) == canonical_hostname(name), variant
        tokens = TokenSet()
        add_servers(tokens, [(variant, None)], bytes(32))
        outcomes.append((tokens.finish().root, dict(tokens.skipped)))
    assert all(o == outcomes[0] for o in outcomes), outcomes
    assert outcomes[0][1] == ({} if canonical_hostname(name) else {"server_hostname_invalid": 1})
