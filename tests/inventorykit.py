"""A platform source with a generated inventory of any size, and an Engine wired to it (no database)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agentkit import no_env_transport
from support.clock import Clock

from fluxagent import collect, logs
from fluxagent.config import Config
from fluxagent.delivery import Deps, Engine
from fluxagent.facts import Counts, HostFacts
from fluxagent.statedir import identity

# this host, fixed: its machine id is one more server token, its two networks two more ranges
HOST = HostFacts("billing-01.example.com", "5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f", (), ("10.20.0.0/16", "fd00:1234::/64"))


class BigPlatform:
    """n servers (IPv4 addresses from `first`) and n /24 ranges; counts how often the inventory is read."""

    scans = 0

    def __init__(self, n: int, first: int = 0) -> None:
        self.n, self.first = n, first

    def version(self) -> str:
        return "4.12.3"

    def counts(self) -> Counts:
        return Counts(10, 20, self.n)

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        BigPlatform.scans += 1
        return ((None, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(self.first, self.first + self.n))

    def iter_networks(self) -> Iterator[object]:
        return (f"{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}.0/24" for i in range(self.first, self.first + self.n))

    def close(self) -> None:
        pass


def engine_for(cfg: Config, clock: Clock, platform: Any) -> Engine:
    """Return an Engine on cfg whose platform database is `platform`, logging through structlog."""
    world = collect.World(open_platform=lambda _p: platform, read_host=lambda _c: HOST)
    return Engine(cfg, identity.load(cfg.instance.state_dir),
                  Deps(no_env_transport(cfg), clock, world=world, log=logs.get()))
