"""Shared fixtures: a demo workspace, a sample platform database, and a config writer."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fluxagent import config
from fluxagent.collect import World
from fluxagent.demo import Workspace, make_workspace
from fluxagent.facts import HostFacts
from fluxagent.testing import sample

BOUND_DOMAIN = "billing.example.com"
HOSTNAME = "billing-01.example.com"
# a fixed view of "this host", so tests do not depend on the machine running them
FIXED_HOST = HostFacts(
    fqdn=HOSTNAME,
    machine_id="5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f",
    macs=("52:54:00:12:34:56",),
    networks=("10.20.0.0/16", "fd00:1234::/64"),
)


def fixed_world(**overrides: Any) -> World:
    """Return a World whose host reader returns FIXED_HOST and whose other readers are the real ones."""
    w = World(read_host=lambda _cfg: FIXED_HOST)
    for name, fn in overrides.items():
        setattr(w, name, fn)
    return w


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A complete demo workspace: sample SQLite platform db, signed license, config, identity."""
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def sample_data() -> sample.SampleData:
    """The default sample platform data (3000 clients, 240 servers)."""
    return sample.generate()


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory: pytest.TempPathFactory, sample_data: sample.SampleData) -> Path:
    """A SQLite database in the reference schema holding sample_data. Treat it as read-only."""
    path = tmp_path_factory.mktemp("sampledb") / "fluxbilling.db"
    sample.write_sqlite(path, sample_data)
    path.chmod(0o444)
    return path


def base_config(state_dir: Path, database: Path | str, **sections: dict[str, Any]) -> dict[str, Any]:
    """Return a valid config mapping for state_dir and database; `sections` update its tables."""
    doc = config.to_mapping(config.Config())
    doc["instance"].update(bound_domain=BOUND_DOMAIN, state_dir=str(state_dir),
                           license_file=str(state_dir.parent / "no-license.json"))
    db = database if isinstance(database, str) else f"sqlite:///{database}"
    doc["platform"].update(database=db, hostname=HOSTNAME)
    doc["server"].update(url="https://licensing.example.net",
                         vendor_keys=[base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2)])
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Return write(content, name="fluxagent.toml") → path; content is TOML text or a mapping."""

    def write(content: str | dict[str, Any], name: str = "fluxagent.toml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else tomli_w.dumps(content)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m fluxagent ARGS` in a subprocess; return the completed process (text)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fluxagent", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, check=False)


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """Restore the process umask after a test that changes it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)
