"""Shared pieces of the hostile-input suites: a log recorder, a settable clock, an engine builder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from conftest import base_config, fixed_world
from support.capture import Events
from support.clock import Clock

from fluxagent import config
from fluxagent.config import Config
from fluxagent.delivery import Deps, Engine
from fluxagent.schema.approval import running_approved
from fluxagent.statedir import identity
from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.server import ReferenceServer
from fluxagent.transport import HttpxTransport, Transport


def engine_config(state_dir: Path, db: Path, server: ReferenceServer, **server_cfg: Any) -> Config:
    """Return a Config whose state is state_dir, platform db, and server the reference server."""
    values = {"url": server.url, "vendor_keys": server.vendor_keys_b64, "connect_timeout": "1s",
              "read_timeout": "1s", **server_cfg}
    return config.from_mapping(base_config(state_dir, db, server=values))


def make_engine(cfg: Config, events: Events, clock: Clock, transport: Transport | None = None) -> Engine:
    """Return an Engine over cfg's state dir (identity created if missing) with a real transport."""
    ident, _ = identity.ensure(cfg.instance.state_dir, now=int(clock()))
    t = transport or HttpxTransport(cfg.server, env={})
    return Engine(cfg, ident, Deps(t, clock, rng=random.Random(7), world=fixed_world(), log=events,
                                    approval=running_approved))


def ledger_events(state_dir: Path) -> list[str]:
    """Return the event of every ledger entry, oldest first."""
    return [e.event for e in Ledger(state_dir / "ledger", readonly=True).entries()]
