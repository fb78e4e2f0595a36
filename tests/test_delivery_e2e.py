"""Delivery end to end: the agent against the reference server over real loopback HTTPS, through a
real CONNECT proxy, and across a simulated 72-hour outage (injected clock, no real waiting)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trustme
from agentkit import delivered, ledger_entries, make_agent, payload_of, sent_seqs, tls_server_context, wire
from proxy import ConnectProxy
from support.capture import LogCapture
from support.clock import Clock
from support.keys import vendor_keys

from fluxagent.collect import build_preview
from fluxagent.config import Config
from fluxagent.statedir import state
from fluxagent.statedir.spool import Spool
from fluxagent.testing.server import ReferenceServer

KINDS = ["license", "heartbeat", "digest"]
VOLATILE = ("seq", "ts", "nonce")
HOUR = 3600




@pytest.fixture
def https_server(ca: trustme.CA, keys: list[nacl.signing.SigningKey], reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server(ssl_context=tls_server_context(ca), signing_keys=keys)
    yield srv


def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def once(cfg: Config) -> int:
    with make_agent(cfg) as agent:
        return agent.once()


def test_run_once_over_https_delivers_every_kind_with_verified_receipts_and_records_them(
    tmp_path: Path, ca: trustme.CA, https_server: ReferenceServer, keys: list[nacl.signing.SigningKey]
) -> None:
    ws = wire(tmp_path / "ws", https_server, keys, server={"ca_bundle": ca_bundle(ca, tmp_path)})
    assert ws.cfg.server.url.startswith("https://localhost:")
    assert once(ws.cfg) == 0
    assert [(r.endpoint, r.status) for r in https_server.received] == [
        ("/v1/license", 200), ("/v1/heartbeat", 200), ("/v1/digest", 200)]
    sent = [e for e in ledger_entries(ws.cfg) if e.event == "sent"]
    assert [e.kind for e in sent] == KINDS
    assert all(e.receipt_sha256 and e.http_status == 200 for e in sent)
    # the ledger holds the exact payload bytes the server received; a digest by their hash and list sizes
    payloads = [base64.b64decode(json.loads(r.body)["payload"]) for r in https_server.received]
    assert [(e.payload or "").encode() for e in sent[:2]] == payloads[:2]
    assert sent[2].payload is None and sent[2].payload_sha256 == hashlib.sha256(payloads[2]).hexdigest()
    body = json.loads(payloads[2])["body"]
    assert sent[2].summary == {**body, "servers": len(body["servers"]), "networks": len(body["networks"]),
                               "payload_bytes": len(payloads[2])}
    lic = state.read_json(ws.cfg.instance.state_dir / "license-status.json")
    assert lic is not None and (lic["state"], lic["license_id"]) == ("valid", "FB-DEMO-0001")
    assert Spool(ws.cfg.instance.state_dir / "spool", 10, 10**6).depth() == 0


def test_run_once_through_a_connect_proxy_tunnels_every_request_to_the_server(
    tmp_path: Path, ca: trustme.CA, https_server: ReferenceServer, keys: list[nacl.signing.SigningKey]
) -> None:
    with ConnectProxy("agent", "pw-of-the-proxy") as proxy:
        ws = wire(tmp_path / "ws", https_server, keys,
                  server={"ca_bundle": ca_bundle(ca, tmp_path), "proxy": proxy.url})
        assert once(ws.cfg) == 0
    assert proxy.targets and set(proxy.targets) == {f"localhost:{https_server.port}"}
    assert set(proxy.users) == {"agent"}
    assert [r.status for r in https_server.received] == [200, 200, 200]


def test_body_preview_shows_equals_the_body_the_server_receives_when_sources_are_unchanged(
    tmp_path: Path, ca: trustme.CA, https_server: ReferenceServer, keys: list[nacl.signing.SigningKey]
) -> None:
    ws = wire(tmp_path / "ws", https_server, keys, server={"ca_bundle": ca_bundle(ca, tmp_path)})
    sealed, failures = build_preview(ws.cfg, KINDS)
    assert failures == []
    assert once(ws.cfg) == 0
    received = {r.endpoint: payload_of(r) for r in https_server.received}
    for s in sealed:
        got = received[s.endpoint]
        assert got["body"] == s.obj["body"], s.kind
        assert {k: v for k, v in got.items() if k not in VOLATILE} == {
            k: v for k, v in s.obj.items() if k not in VOLATILE}
    assert len(sealed) == 3


# ---- a 72-hour outage, simulated ----


@dataclass
class Outage:
    cfg: Config
    server: ReferenceServer
    log: LogCapture
    spooled: list[int]  # heartbeat seqs in the order they were spooled
    start: float
    hours: int


def simulate_outage(root: Path, *, hours: int, spool: dict[str, Any] | None = None,
                    deliver_first: bool = True) -> Outage:
    """Deliver once (unless not deliver_first), take the server down for `hours` of injected time,
    bring it back, drain the spool."""
    keys = vendor_keys()
    t0 = float(int(time.time()))
    clock = Clock(t0)
    log = LogCapture()
    server = ReferenceServer(signing_keys=keys, clock=clock).start()
    sections: dict[str, Any] = {"server": {"connect_timeout": "1s", "read_timeout": "2s"}}
    if spool:
        sections["spool"] = spool
    ws = wire(root, server, keys, now=t0, **sections)
    with make_agent(ws.cfg, clock) as agent:
        if deliver_first:
            clock.now += agent.step()  # everything delivered while the server is up
            assert agent.engine.spool.depth() == 0
        server.stop()
        while clock.now < t0 + hours * HOUR:
            clock.now += max(1.0, agent.step())
        server.start()  # same port, same registry: the vendor is back
        for _ in range(50):
            clock.now += max(1.0, agent.step())
            if agent.engine.spool.depth() == 0:
                break
        server.stop()
    spooled = [e["seq"] for e in log.events("heartbeat.spooled")]
    return Outage(ws.cfg, server, log, spooled, t0, hours)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Outage:
    return simulate_outage(tmp_path_factory.mktemp("outage") / "ws", hours=72)


def test_outage_of_72_hours_then_back_delivers_every_heartbeat_of_the_period_in_order(outage: Outage) -> None:
    beats = delivered(outage.server, "/v1/heartbeat")
    seqs = [p["seq"] for p in beats]
    assert len(outage.spooled) >= 72 * 60 // 70  # hourly with up to 10 min jitter
    assert seqs == outage.spooled  # every one, in the order it was made
    assert seqs == sorted(seqs)
    stamps = [p["ts"] for p in beats]
    assert stamps[0] == outage.start and stamps[-1] >= outage.start + 71 * HOUR
    assert all(0 < b - a <= 70 * 60 for a, b in itertools.pairwise(stamps))


def test_outage_loses_nothing_within_the_spool_bound_and_duplicates_nothing_in_the_ledger(outage: Outage) -> None:
    sent = sent_seqs(outage.cfg)
    assert len(sent) == len(set(sent))
    assert sent_seqs(outage.cfg, "heartbeat") == outage.spooled
    counters = Spool(outage.cfg.instance.state_dir / "spool", 2000, 10**8).counters()
    assert counters["dropped_overflow"] == 0
    assert not [e for e in ledger_entries(outage.cfg) if e.event in ("dropped", "rejected")]
    # newer license and digest messages replaced unsent older ones instead of piling up
    kinds = [e.kind for e in ledger_entries(outage.cfg) if e.event == "superseded"]
    assert kinds.count("license") >= 72 // 7 and kinds.count("digest") >= 1


def test_outage_logs_one_warning_when_it_starts_then_a_summary_every_few_hours(outage: Outage) -> None:
    warnings = outage.log.events(level="warning")
    names = [w["event"] for w in warnings]
    assert names.count("delivery.outage_started") == 1
    summaries = names.count("delivery.outage_continues")
    assert 72 // 6 - 2 <= summaries <= 72 // 6
    assert set(names) == {"delivery.outage_started", "delivery.outage_continues"}
    [recovered] = outage.log.events("delivery.recovered")
    assert recovered["outage_seconds"] >= 70 * HOUR and recovered["attempts"] > summaries


def test_outage_longer_than_the_spool_bound_drops_the_oldest_heartbeats_and_counts_them(tmp_path: Path) -> None:
    out = simulate_outage(tmp_path / "ws", hours=30, spool={"max_messages": 12})
    got = [p["seq"] for p in delivered(out.server, "/v1/heartbeat")]
    dropped = [e.seq for e in ledger_entries(out.cfg) if e.event == "dropped"]
    assert dropped and set(dropped).isdisjoint(got)
    assert sorted(dropped + got) == out.spooled  # each heartbeat either delivered or dropped and recorded
    assert got[0] == out.spooled[0]  # delivered before the outage
    assert got[1:] == out.spooled[-len(got) + 1:]  # of the outage's heartbeats the newest survive, in order
    assert Spool(out.cfg.instance.state_dir / "spool", 12, 10**8).counters()["dropped_overflow"] == len(dropped)


def test_outage_from_the_first_start_keeps_the_first_license_first_so_nothing_is_refused(tmp_path: Path) -> None:
    out = simulate_outage(tmp_path / "ws", hours=20, deliver_first=False)
    statuses = [(r.endpoint, r.status) for r in out.server.received if r.status]
    assert statuses[0] == ("/v1/license", 200)  # registers the instance before anything else
    assert {s for _, s in statuses} == {200}
    assert [p["seq"] for p in delivered(out.server, "/v1/heartbeat")] == out.spooled
    assert out.log.events("license.registration_pending")
