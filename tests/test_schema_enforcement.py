"""Nothing wider than the approved schema version leaves the machine: the agent against the reference
server over real loopback HTTP, with the registry versions passed in as values (tests/schemakit.py)."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from agentkit import ledger_entries, make_agent, payload_of, wire
from conftest import fixed_world, run_cli
from schemakit import DELTA_FIELDS, OPEN_INVOICES, UP_TO_V2, V1, V2, V3_OPTIONAL, V3_REQUIRED, loader
from support.capture import LogCapture
from support.clock import Clock

from fluxagent import collect
from fluxagent.daemon import metrics
from fluxagent.errors import AllowlistError, SchemaHeld
from fluxagent.facts import Counts
from fluxagent.report.preview import preview_json, preview_text
from fluxagent.report.status import status_text
from fluxagent.schema.approval import approval_path, approve, load_policy, write_approval
from fluxagent.schema.policy import Policy
from fluxagent.schema.shipped import shipped
from fluxagent.schema.versions import Catalog
from fluxagent.statedir import identity
from fluxagent.status import collect_status
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace
from fluxagent.validate.check import exit_code
from fluxagent.validate.run import check_schema
from fluxagent.wire import messages

T0 = 1_790_000_000.0
KINDS = ["license", "heartbeat", "digest"]
V2_ONLY = [f.path for f in DELTA_FIELDS]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Workspace, ReferenceServer, Clock]]:
    clock = Clock(T0)
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    with ReferenceServer(signing_keys=keys, clock=clock) as server:
        ws = wire(tmp_path / "ws", server, keys, now=T0)
        # an instance installed when v1 was the newest: its operator approved v1
        write_approval(approval_path(ws.root / "fluxagent.toml"), V1, by="root", via="fluxagent init", now=int(T0))
        yield ws, server, clock


def cycle(ws: Workspace, clock: Clock, catalog: Catalog, log: LogCapture | None = None) -> int:
    """One `run --once` cycle with the registry versions of catalog (its newest is the one running)."""
    agent = make_agent(ws.cfg, clock, approval=loader(catalog))
    agent.engine.deps.world = fixed_world()
    try:
        return agent.once()
    finally:
        agent.close()


def wire_payload(raw: bytes) -> bytes:
    return base64.b64decode(json.loads(raw)["payload"])


def body_paths(obj: dict[str, Any], base: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in obj.items():
        out.add(base + k)
        if isinstance(v, dict):
            out |= body_paths(v, f"{base}{k}.")
    return out


def assert_only_v1_on_the_wire(server: ReferenceServer) -> None:
    allowed = {f.path for f in V1.fields if f.kind != "*"}
    for r in server.received:
        raw = wire_payload(r.body)
        for path in V2_ONLY:
            assert f'"{path}"'.encode() not in raw, (r.endpoint, path)
        body = payload_of(r)["body"]
        assert body_paths(body) <= allowed
        if r.endpoint == "/v1/digest":  # full, or unchanged (no lists): never a delta
            assert (body["full"] and {"servers", "networks"} <= set(body)) or (
                not body["full"] and set(body) == {"key_id", "root", "full"})


def test_v1_approved_v2_running_run_once_sends_no_v2_field_and_digests_full_or_unchanged(site: Any) -> None:
    ws, server, clock = site
    log = LogCapture()
    assert cycle(ws, clock, UP_TO_V2, log) == 0
    clock.now += 25 * 3600  # every kind due again; the digest is unchanged
    assert cycle(ws, clock, UP_TO_V2, log) == 0
    digests = [payload_of(r)["body"] for r in server.received if r.endpoint == "/v1/digest"]
    assert [d["full"] for d in digests] == [True, False]
    assert_only_v1_on_the_wire(server)
    pending = log.events("schema.approval_pending")
    assert len(pending) == 1 and pending[0]["approved"] == "v1" and pending[0]["running"] == "v2"
    assert sorted(pending[0]["withheld"]) == sorted(f"digest {p}" for p in V2_ONLY)


def test_v1_approved_v2_running_preview_marks_the_pending_approval(site: Any) -> None:
    ws, _server, _clock = site
    p = collect.preview(ws.cfg, KINDS, world=fixed_world(), now=T0, policy=load_policy(ws.cfg, UP_TO_V2))
    assert p.failures == [] and p.policy.pending
    text = preview_text(p.sealed, ws.cfg.server.url, withheld=p.withheld, policy=p.policy)
    assert text.startswith("schema: running v2 is wider than the approved v1: 5 field(s) are WITHHELD")
    doc = json.loads(b"".join(preview_json(p.sealed, ws.cfg.server.url, withheld=p.withheld, policy=p.policy)))
    assert all(m["schema_pending"] for m in doc)
    for s in p.sealed:
        assert not any(f'"{path}"'.encode() in s.payload for path in V2_ONLY)


def add_server(ws: Workspace, n: int) -> None:
    """Add one server to the workspace's platform database (a small inventory change)."""
    with sqlite3.connect(ws.cfg.platform.database.removeprefix("sqlite:///")) as db:
        db.execute("INSERT INTO servers (hostname, ip_address, location, status) VALUES (?, ?, 'rack 9', 'active')",
                   (f"added-{n}.example.net", f"198.51.100.{n}"))


def test_with_v1_approved_a_changed_inventory_goes_full_and_after_approving_v2_as_a_delta(site: Any) -> None:
    ws, server, clock = site
    agent_cycle = lambda: cycle(ws, clock, shipped())  # noqa: E731  the shipped versions, the real approval file
    assert agent_cycle() == 0
    for n in (1, 2):  # v1 approved: a small change still goes as a full digest, never a delta
        add_server(ws, n)
        clock.now += 25 * 3600
        assert agent_cycle() == 0
    assert_only_v1_on_the_wire(server)
    proc = run_cli("--config", str(ws.root / "fluxagent.toml"), "schema", "--approve", "v2")
    assert proc.returncode == 0, proc.stderr
    add_server(ws, 3)
    clock.now += 25 * 3600
    assert agent_cycle() == 0
    digests = [payload_of(r)["body"] for r in server.received if r.endpoint == "/v1/digest"]
    assert [d["full"] for d in digests] == [True, True, True, False]
    delta = digests[-1]
    assert delta["base"] == digests[-2]["root"] and len(delta["added_servers"]) == 1
    assert delta["removed_servers"] == delta["added_networks"] == delta["removed_networks"] == []
    assert all(r.status == 200 for r in server.received)  # the reference server applied the delta
    approvals = [e.detail for e in ledger_entries(ws.cfg) if e.event == "schema_approved"]
    assert [d.split()[0] for d in approvals if d] == ["v1", "v2"]


def test_after_approving_v2_the_approval_is_ledgered_once_and_nothing_is_pending(site: Any) -> None:
    ws, server, clock = site
    assert cycle(ws, clock, UP_TO_V2) == 0
    approve(approval_path(ws.root / "fluxagent.toml"), UP_TO_V2, "v2", via="fluxagent schema --approve",
            now=int(clock.now), by="root")
    log = LogCapture()
    clock.now += 25 * 3600
    assert cycle(ws, clock, UP_TO_V2, log) == 0
    clock.now += 25 * 3600
    assert cycle(ws, clock, UP_TO_V2, log) == 0
    approvals = [e for e in ledger_entries(ws.cfg) if e.event == "schema_approved"]
    assert [e.detail.split()[0] for e in approvals if e.detail] == ["v1", "v2"]
    assert V2.fingerprint in (approvals[1].detail or "") and "by root" in (approvals[1].detail or "")
    assert len(log.events("schema.approved")) == 1 and log.events("schema.approval_pending") == []
    st = collect_status(ws.cfg, clock.now, policy_of=loader(UP_TO_V2))
    assert st["schema"]["pending"] is False and st["schema"]["approved"] == "v2"
    assert [r.status for r in server.received] == [200] * 9


def test_a_v3_heartbeat_field_is_withheld_until_v3_is_approved(site: Any) -> None:
    ws, _server, _clock = site
    ident = identity.load(ws.cfg.instance.state_dir)
    hb = messages.build_heartbeat("4.12.3", "billing-01.example.com", Counts(5, 9, 2))
    wider = messages.Message("heartbeat", {**hb.body, "counts": {**hb.body["counts"], "open_invoices": 17}})

    def seal(policy: Policy) -> messages.Sealed:
        msg, withheld = policy.apply(wider)
        sealed = messages.seal(msg, signing_key=ident.signing_key, iid=ident.instance_id, aud="127.0.0.1", seq=1,
                               now=int(T0), nonce=b"\x01" * 16, fields=policy.allowed)
        assert withheld == (() if policy.approved == V3_OPTIONAL else ("body.counts.open_invoices",))
        return sealed

    for approved in (V1, V2):
        assert b"open_invoices" not in seal(Policy(V3_OPTIONAL, approved)).payload
    assert seal(Policy(V3_OPTIONAL, V3_OPTIONAL)).obj["body"]["counts"]["open_invoices"] == 17
    # belt and braces: a field the approved version lacks cannot be sealed even if a builder emitted it
    with pytest.raises(AllowlistError, match="counts.open_invoices: not in the allowlist"):
        messages.seal(wider, signing_key=ident.signing_key, iid=ident.instance_id, aud="127.0.0.1", seq=1,
                      now=int(T0), nonce=b"\x01" * 16, fields=Policy(V3_OPTIONAL, V2).allowed)
    rendered = preview_text([seal(Policy(V3_OPTIONAL, V2))], "http://x", withheld={"heartbeat": (
        f"body.{OPEN_INVOICES.path}",)}, policy=Policy(V3_OPTIONAL, V2))
    assert "body.counts.open_invoices" in rendered and "WITHHELD" in rendered


def test_a_v3_that_requires_a_new_heartbeat_field_holds_heartbeat_back_with_one_event(site: Any) -> None:
    ws, server, clock = site
    v3 = Catalog((V1, V2, V3_REQUIRED))
    log = LogCapture()
    assert cycle(ws, clock, v3, log) == 1  # not every kind was sent
    clock.now += 3 * 3600
    cycle(ws, clock, v3, log)
    assert {r.endpoint for r in server.received} == {"/v1/license", "/v1/digest"}
    assert all(r.status == 200 for r in server.received)
    held = log.events("heartbeat.not_sent")
    assert len(held) == 1 and held[0]["code"] == "schema"
    assert "held back" in held[0]["reason"] and "body.counts.open_invoices" in held[0]["reason"]
    st = collect_status(ws.cfg, clock.now, policy_of=loader(v3))
    assert st["kinds"]["heartbeat"]["not_sent"]["code"] == "schema"
    assert st["schema"]["held_back"] == ["heartbeat"]
    assert "held back: heartbeat" in status_text(st)
    built = collect.gather(ws.cfg, identity.load(ws.cfg.instance.state_dir), KINDS, now=T0, world=fixed_world(),
                           policy=load_policy(ws.cfg, v3))
    assert [(b.kind, type(b.error)) for b in built] == [
        ("license", type(None)), ("heartbeat", SchemaHeld), ("digest", type(None))]


def test_status_validate_and_metrics_show_a_pending_approval(site: Any) -> None:
    ws, _server, clock = site
    st = collect_status(ws.cfg, clock.now, policy_of=loader(UP_TO_V2))
    assert st["schema"]["pending"] is True
    assert sorted(st["schema"]["withheld"]) == sorted(f"digest body.{p}" for p in V2_ONLY)
    assert "APPROVAL PENDING, 5 field(s) withheld" in status_text(st)
    assert "fluxagent_schema_pending 1" in metrics.render(st).splitlines()
    check, policy = check_schema(ws.cfg, loader(UP_TO_V2))
    assert check.level == "warn" and "wider than approved v1" in check.reason and policy is not None
    assert exit_code([check]) == 0  # a warning, not a failure
    approve(approval_path(ws.root / "fluxagent.toml"), UP_TO_V2, "v2", via="test", now=int(clock.now))
    now_ok = collect_status(ws.cfg, clock.now)
    assert now_ok["schema"]["pending"] is False and "fluxagent_schema_pending 0" in metrics.render(now_ok)
    approval_path(ws.root / "fluxagent.toml").unlink()
    broken = collect_status(ws.cfg, clock.now)
    assert broken["schema"]["error"] and "fluxagent_schema_approval_error 1" in metrics.render(broken)
    assert "NO USABLE APPROVAL" in status_text(broken)
    assert check_schema(ws.cfg)[0].exit_code == 78


def test_an_approval_broken_while_running_keeps_the_last_good_one_and_says_so_once(site: Any) -> None:
    ws, server, clock = site
    log = LogCapture()
    agent = make_agent(ws.cfg, clock, approval=loader(UP_TO_V2))
    agent.engine.deps.world = fixed_world()
    try:
        assert agent.once() == 0
        approval_path(ws.root / "fluxagent.toml").write_text("{}")
        for _ in range(2):
            clock.now += 2 * 3600
            agent.once()
    finally:
        agent.close()
    assert len(log.events("schema.approval_unreadable")) == 1
    assert_only_v1_on_the_wire(server)
