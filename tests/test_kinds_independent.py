"""Kinds are independent: a digest that cannot be queued never holds back the license and heartbeat.

Default config (the workspace writes no [spool] table), an inventory whose full digest is larger than
`spool.max_bytes`, the reference server over loopback HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
from agentkit import delivered, ledger_entries, no_env_transport, wire
from support.capture import LogCapture
from support.clock import Clock

from fluxagent import collect, logs
from fluxagent.config import Config, PlatformConfig
from fluxagent.delivery import SCHEDULED, Deps, Engine
from fluxagent.facts import Counts

ENVELOPE_BYTES_PER_TOKEN = 46  # 32 hex + quotes and comma, base64 (4/3)


class BigPlatform:
    """A platform source with n servers (IPv4) and n ranges, counting how often the inventory is read."""

    scans = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def version(self) -> str:
        return "4.12.3"

    def counts(self) -> Counts:
        return Counts(10, 20, self.n)

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        BigPlatform.scans += 1
        return ((None, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(self.n))

    def iter_networks(self) -> Iterator[object]:
        return (f"{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}.0/24" for i in range(self.n))

    def close(self) -> None:
        pass




def engine_for(cfg: Config, clock: Clock, n: int) -> Engine:
    world = collect.World(open_platform=lambda _p: BigPlatform(n))  # type: ignore[arg-type,return-value]
    return Engine(cfg, collect_ident(cfg), Deps(no_env_transport(cfg), clock, world=world, log=logs.get()))


def collect_ident(cfg: Config) -> Any:
    from fluxagent.statedir import identity

    return identity.load(cfg.instance.state_dir)


def test_digest_too_big_for_the_default_spool_bound_is_reported_once_and_license_and_heartbeat_are_delivered(
    tmp_path: Path, keys: list[nacl.signing.SigningKey], reference_server
) -> None:
    server = reference_server(signing_keys=keys)
    ws = wire(tmp_path / "ws", server, keys, now=1_795_000_000)
    cfg = ws.cfg
    assert cfg.spool.max_bytes == Config().spool.max_bytes  # the default bound
    assert isinstance(cfg.platform, PlatformConfig)
    n = cfg.spool.max_bytes // (2 * ENVELOPE_BYTES_PER_TOKEN) + 5000  # servers + ranges: just too big
    clock = Clock(1_795_000_000)
    capture = LogCapture()
    BigPlatform.scans = 0
    engine = engine_for(cfg, clock, n)
    engine.cycle(clock(), SCHEDULED)

    assert len(delivered(server, "/v1/license")) == 1
    assert len(delivered(server, "/v1/heartbeat")) == 1
    assert delivered(server, "/v1/digest") == []
    told = capture.events("digest.too_big_for_spool")
    assert len(told) == 1
    assert "spool.max_bytes" in told[0]["hint"] and "spool.max_bytes" in told[0]["reason"]
    assert engine.spool.depth() == 0

    # two hours later: the heartbeat is due, the digest is not rebuilt (no rescan), nothing is told again
    clock.now += 2 * 3600
    engine.cycle(clock(), engine.due(clock()))
    assert len(delivered(server, "/v1/heartbeat")) == 2
    assert BigPlatform.scans == 1

    # a day later the digest is tried once more: one scan, still no second warning
    clock.now += 26 * 3600
    engine.cycle(clock(), engine.due(clock()))
    assert BigPlatform.scans == 2
    assert len(capture.events("digest.too_big_for_spool")) == 1

    # no seq was burnt on the digest that could not be queued: what was sent is 1, 2, 3, ...
    seqs = [e.seq for e in ledger_entries(cfg) if e.event == "sent"]
    assert seqs == list(range(1, len(seqs) + 1))
    assert engine.source_status["digest"]["code"] == "spool_too_small"
