"""Kinds are independent: a digest that cannot be queued never holds back the license and heartbeat.

Default config (the workspace writes no [spool] table), an inventory whose full digest is larger than
`spool.max_bytes`, the reference server over loopback HTTP.
"""

from __future__ import annotations

from pathlib import Path

import nacl.signing
from agentkit import delivered, ledger_entries, wire
from inventorykit import BigPlatform, engine_for
from support.capture import LogCapture
from support.clock import Clock

from fluxagent.config import Config
from fluxagent.delivery import SCHEDULED
from fluxagent.testing.server import ReferenceServer

ENVELOPE_BYTES_PER_TOKEN = 46  # 32 hex + quotes and comma, base64 (4/3)


def test_digest_too_big_for_the_default_spool_bound_is_reported_once_and_license_and_heartbeat_are_delivered(
    tmp_path: Path, keys: list[nacl.signing.SigningKey]
) -> None:
    with ReferenceServer(signing_keys=keys) as server:
        ws = wire(tmp_path / "ws", server, keys, now=1_795_000_000)
        cfg = ws.cfg
        assert cfg.spool.max_bytes == Config().spool.max_bytes  # the default bound
        n = cfg.spool.max_bytes // (2 * ENVELOPE_BYTES_PER_TOKEN) + 5000  # servers + ranges: just too big
        clock = Clock(1_795_000_000)
        capture = LogCapture()
        BigPlatform.scans = 0
        engine = engine_for(cfg, clock, BigPlatform(n))
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
