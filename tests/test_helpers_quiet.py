"""Credential helpers as docker and git run them: protocol only on stdout, nothing on stderr but errors,
and "not found" at once for a host that is not the vendor's registry (real subprocesses, reference server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxagent.daemon.agent import Agent
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.lock import instance_lock
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.updates.credentials import REGISTRY_FILE, known_registry, remember_registry
from fluxagent.updates.helpers import foreign

BIN = Path(sys.executable).parent
REGISTRY = "registry.fluxbilling.example"
DOCKER = ["docker-credential-fluxagent", "get"]
GIT = ["fluxagent", "credentials", "git", "get"]


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(credentials_ttl=600) as srv:
        yield srv


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer) -> Workspace:
    """A workspace registered with the server (one `run --once` in process)."""
    w = make_workspace(tmp_path / "ws", server_url=server.url, vendor_keys=server.signing_keys)
    with instance_lock(w.cfg.instance.state_dir), Agent(w.cfg) as agent:
        assert agent.once() == 0
    return w


def helper(ws: Workspace, argv: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    """Run a console script of this install as docker or git would: config from the environment."""
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    env["FLUXAGENT_CONFIG"] = str(ws.root / "fluxagent.toml")
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def ledger_size(ws: Workspace) -> int:
    return sum(1 for _ in Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True).entries())


def test_helpers_print_only_their_protocol_on_stdout_and_nothing_on_stderr(ws: Workspace) -> None:
    docker = helper(ws, DOCKER, f"https://{REGISTRY}\n")
    assert docker.returncode == 0, docker.stdout + docker.stderr
    assert set(json.loads(docker.stdout)) == {"ServerURL", "Username", "Secret"}
    assert docker.stderr == ""
    git = helper(ws, GIT, f"protocol=https\nhost={REGISTRY}\n\n")
    assert git.returncode == 0, git.stderr
    assert [line.split("=")[0] for line in git.stdout.splitlines()] == ["username", "password", "password_expiry_utc"]
    assert git.stderr == ""


def test_another_host_is_not_found_at_once_without_contacting_the_vendor(ws: Workspace,
                                                                          server: ReferenceServer) -> None:
    assert helper(ws, DOCKER, f"https://{REGISTRY}\n").returncode == 0  # the registry is learned from a receipt
    server.clear_received()
    entries = ledger_size(ws)
    docker = helper(ws, DOCKER, "https://index.docker.io/v1/\n")
    assert (docker.returncode, docker.stdout.strip(), docker.stderr) == (
        1, "credentials not found in native keychain", "")
    git = helper(ws, GIT, "protocol=https\nhost=github.com\n\n")
    assert (git.returncode, git.stdout, git.stderr) == (0, "", "")
    assert server.received == []  # not one request to the vendor
    assert ledger_size(ws) == entries  # nothing was sent or recorded
    assert server.issued_credentials and len(server.issued_credentials) == 1


def test_the_registry_is_learned_from_the_first_issued_credentials(ws: Workspace, server: ReferenceServer) -> None:
    sd = ws.cfg.instance.state_dir
    assert known_registry(sd) is None
    first = helper(ws, DOCKER, "https://index.docker.io/v1/\n")  # unknown yet: the vendor is asked once
    assert (first.returncode, first.stderr) == (1, "")
    assert len(server.issued_credentials) == 1
    assert known_registry(sd) == REGISTRY
    assert json.loads((sd / REGISTRY_FILE).read_text()) == {"v": 1, "registry": REGISTRY}  # no secret in it
    helper(ws, DOCKER, "https://quay.io\n")
    assert len(server.issued_credentials) == 1


def test_foreign_means_known_and_not_matching(tmp_path: Path) -> None:
    assert not foreign("quay.io", None)
    assert foreign("quay.io", REGISTRY)
    assert not foreign(f"https://{REGISTRY}/v2/", REGISTRY)
    remember_registry(tmp_path, REGISTRY)
    assert known_registry(tmp_path) == REGISTRY
    (tmp_path / REGISTRY_FILE).write_text("{not json")
    assert known_registry(tmp_path) is None  # a damaged record means asking, never refusing the vendor's host


def test_a_configured_registry_answers_other_hosts_before_any_issuance(ws: Workspace, server: ReferenceServer) -> None:
    import tomllib

    import tomli_w

    path = ws.root / "fluxagent.toml"
    doc = tomllib.loads(path.read_text())
    doc.setdefault("updates", {})["registry"] = REGISTRY
    path.write_text(tomli_w.dumps(doc))
    server.clear_received()
    docker = helper(ws, DOCKER, "https://index.docker.io/v1/\n")
    assert (docker.returncode, docker.stdout.strip(), docker.stderr) == (
        1, "credentials not found in native keychain", "")
    assert server.received == [] and server.issued_credentials == []
    assert known_registry(ws.cfg.instance.state_dir) is None  # nothing learned: the config alone decided
    ours = helper(ws, DOCKER, f"https://{REGISTRY}\n")
    assert ours.returncode == 0 and len(server.issued_credentials) == 1
