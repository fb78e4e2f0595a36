"""Large inventories: a digest too large to hold whole is spooled as a stream, sent from the spool file,
ledgered by its payload hash and list sizes (lines stay small), and `preview --json` streams it too."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import nacl.signing
from agentkit import delivered, ledger_entries, wire
from inventorykit import BigPlatform, engine_for
from support.clock import Clock

from fluxagent.delivery import SCHEDULED
from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.server_protocol import digest_root
from fluxagent.wire import envelope, messages

N = 16_000  # servers and as many ranges: an envelope of ~1.5 MB, above messages.STREAM_ABOVE



def test_large_digest_is_sent_from_the_spool_file_and_ledgered_by_hash_and_list_sizes_in_small_lines(
    tmp_path: Path, keys: list[nacl.signing.SigningKey]
) -> None:
    with ReferenceServer(signing_keys=keys) as server:
        ws = wire(tmp_path / "ws", server, keys, now=1_795_000_000)
        clock = Clock(1_795_000_000)
        engine = engine_for(ws.cfg, clock, BigPlatform(N))
        produced = engine.produce(list(SCHEDULED), clock())
        digest = next(s for s in produced if s.kind == "digest")
        assert digest.streamed is not None and digest.envelope_size > messages.STREAM_ABOVE
        (spooled,) = [e for e in engine.spool.entries() if e.kind == "digest"]
        assert spooled.envelope == b"" and spooled.offset > 0  # not held in memory: sent from the file
        result = engine.flush()
        assert [e.kind for e, _ in result.delivered] == ["license", "heartbeat", "digest"]

    (body,) = [p["body"] for p in delivered(server, "/v1/digest")]
    assert len(body["servers"]) == N + 1 and len(body["networks"]) == N + 2
    assert digest_root(body["servers"], body["networks"]) == body["root"]
    entries = ledger_entries(ws.cfg)
    segment = max((ws.cfg.instance.state_dir / "ledger").glob("*.jsonl"))
    assert max(len(line) for line in segment.read_bytes().splitlines()) < 4096
    (sent,) = [e for e in entries if e.kind == "digest" and e.event == "sent"]
    assert sent.payload is None and sent.payload_sha256 == digest.payload_sha256
    assert sent.summary == {"full": True, "key_id": body["key_id"], "root": body["root"],
                            "servers": N + 1, "networks": N + 2, "payload_bytes": digest.payload_size}
    assert engine.ledger.head is not None and engine.ledger.head.payload is None
    assert Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True).verify().ok


def test_ledger_with_whole_payload_lines_from_before_summaries_still_verifies(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    old = b'{"aud":"x.example","body":{"full":true,"networks":[],"servers":[]},"seq":1}'
    ledger.append(now=1, event="sent", kind="digest", outcome="delivered", seq=1, payload=old)
    ledger.append(now=2, event="sent", kind="digest", outcome="delivered", seq=2, payload_sha256="a" * 64,
                  summary={"full": True, "root": "b" * 64, "servers": 1_000_000, "networks": 3})
    lines = (tmp_path / "ledger" / "000000000001.jsonl").read_bytes().splitlines()
    assert b'"summary"' not in lines[0] and b'"summary"' in lines[1]  # the old line keeps its old bytes
    again = Ledger(tmp_path / "ledger", readonly=True)
    assert again.verify().ok and again.verify().checked == 2
    assert [e.summary for e in again.entries()] == [None, {"full": True, "root": "b" * 64, "servers": 1_000_000,
                                                           "networks": 3}]


def test_preview_json_streams_a_large_digest_whose_envelope_verifies_and_carries_the_payload_shown(
    tmp_path: Path, keys: list[nacl.signing.SigningKey]
) -> None:
    import sqlite3

    with ReferenceServer(signing_keys=keys) as server:
        ws = wire(tmp_path / "ws", server, keys)
    db = Path(ws.cfg.platform.database.removeprefix("sqlite:///"))
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO network_ranges (cidr) VALUES (?)",
                     [(f"{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}.0/24",) for i in range(2 * N)])
    conn.commit()
    conn.close()
    out = subprocess.run([sys.executable, "-m", "fluxagent", "--config", str(ws.cfg.source), "preview",
                          "--kind", "digest", "--json"], capture_output=True, check=True)
    (doc,) = json.loads(out.stdout)
    env = doc["envelope"].encode()
    assert len(env) > messages.STREAM_ABOVE
    from fluxagent.statedir import identity

    public = bytes(identity.load(ws.cfg.instance.state_dir).signing_key.verify_key)
    opened = envelope.open_envelope(env, [public], envelope.payload_type("digest"))
    assert opened.obj == doc["payload"]
    assert len(doc["payload"]["body"]["networks"]) >= 2 * N
    assert base64.b64decode(json.loads(env)["payload"]) == opened.payload
