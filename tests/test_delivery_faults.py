"""Each scripted fault of the reference server, met by the delivery engine over real loopback HTTP:
handled as docs/PROTOCOL.md §4 says (retry, or reject and record), without a crash, never trusting a bad receipt."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentkit import delivered, ledger_entries, make_agent, wire
from support.capture import LogCapture
from support.keys import vendor_keys

from fluxagent.daemon.agent import Agent
from fluxagent.statedir import state
from fluxagent.testing.server import Fault, LicensePolicy, ReferenceServer
from fluxagent.testing.server_faults import RECEIPT_MUTATIONS
from fluxagent.wire.receipts import Retry


@dataclass
class Rig:
    server: ReferenceServer
    agent: Agent
    log: LogCapture


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    keys = vendor_keys()
    with ReferenceServer(signing_keys=keys) as server:
        ws = wire(tmp_path_factory.mktemp("faults") / "ws", server, keys,
                  server={"connect_timeout": "2s", "read_timeout": "2s"})
        log = LogCapture()
        with make_agent(ws.cfg) as agent:
            assert agent.once() == 0  # registered, everything delivered
            yield Rig(server, agent, log)


@pytest.fixture
def rig(module_rig: Rig) -> Rig:
    """The shared rig with an empty spool, no queued faults, no outage and the default license policy."""
    r = module_rig
    r.server.faults.clear()
    r.server.license = LicensePolicy()
    for _ in range(5):
        if not r.agent.engine.flush().retry:
            break
    assert r.agent.engine.spool.depth() == 0
    r.log.buf.seek(0)
    r.log.buf.truncate()
    r.server.clear_received()
    return r


def heartbeat(r: Rig) -> int:
    [sealed] = r.agent.engine.produce(["heartbeat"], time.time())
    seq = sealed.obj["seq"]
    assert isinstance(seq, int)
    return seq


def events_of(r: Rig, seq: int) -> list[str]:
    return [e.event for e in ledger_entries(r.agent.cfg) if e.seq == seq]


RETRIED = {
    "503": Fault.status(503),
    "502": Fault.status(502),
    "504": Fault.status(504),
    "429 without Retry-After": Fault.rate_limited(),
    "redirect 301": Fault.redirect("https://elsewhere.example/v1/heartbeat", 301),
    "redirect 302": Fault.redirect("https://elsewhere.example/v1/heartbeat", 302),
    "redirect 307": Fault.redirect("https://elsewhere.example/v1/heartbeat", 307),
    "redirect 308": Fault.redirect("https://elsewhere.example/v1/heartbeat", 308),
    "hang-up before processing": Fault.close(),
    "oversized body": Fault.oversized(2 << 20),
    "oversized chunked body": Fault.oversized(2 << 20, chunked=True),
    "gzip bomb": Fault.bomb(1 << 26),
    "json that is not an envelope": Fault.wrong_shape(),
    "slow drip of zeros": Fault.drip(4000, 1000, 0.02),
    "answer slower than the read timeout": Fault.delay(3.0),
    **{f"receipt {m}": Fault.receipt(m) for m in RECEIPT_MUTATIONS},
}


@pytest.mark.parametrize("fault", RETRIED.values(), ids=RETRIED.keys())
def test_fault_is_retried_keeping_the_message_then_the_same_seq_is_delivered(rig: Rig, fault: Fault) -> None:
    seq = heartbeat(rig)
    rig.server.inject(fault)
    result = rig.agent.engine.flush()
    assert isinstance(result.retry, Retry) and not result.delivered and not result.rejected
    assert [e.seq for e in rig.agent.engine.spool.entries()] == [seq]
    # the attempt is recorded, but never as sent on a bad or missing receipt
    [attempt] = [e for e in ledger_entries(rig.agent.cfg) if e.seq == seq]
    assert (attempt.event, attempt.outcome, attempt.detail) == ("attempt", "retry", result.retry.reason)
    assert attempt.http_status == result.retry.status and attempt.receipt_sha256 is None
    [warning] = rig.log.events("delivery.outage_started")
    assert warning["reason"] == result.retry.reason
    result = rig.agent.engine.flush()
    assert [e.seq for e, _ in result.delivered] == [seq]
    assert events_of(rig, seq) == ["attempt", "sent"]
    # a server that processed the first attempt gets the exact same request again (at-least-once)
    bodies = {r.body for r in rig.server.received if r.payload and r.payload["seq"] == seq}
    assert len(bodies) == 1
    assert delivered(rig.server, "/v1/heartbeat")[-1]["seq"] == seq


@pytest.mark.parametrize("mutation", RECEIPT_MUTATIONS)
def test_bad_license_receipt_is_never_trusted(rig: Rig, mutation: str) -> None:
    status_file = rig.agent.cfg.instance.state_dir / "license-status.json"
    rig.agent.engine.produce(["license"], time.time())
    assert rig.agent.engine.flush().delivered
    before = state.read_json(status_file)
    assert before is not None and before["state"] == "valid"
    rig.server.license = LicensePolicy(state="revoked", license_id="FB-DEMO-0001")  # a trusted receipt would say
    rig.agent.engine.produce(["license"], time.time())
    rig.server.inject(Fault.receipt(mutation))
    result = rig.agent.engine.flush()
    assert result.retry is not None and result.retry.reason.startswith("bad_receipt: ")
    now_doc = state.read_json(status_file)
    assert now_doc is not None and now_doc["receipt"] == before["receipt"]  # the bad verdict is not recorded
    assert now_doc["state"] in ("valid", "offline")  # a failed check, never the receipt's "revoked"
    assert rig.agent.engine.flush().delivered  # a verified receipt is taken
    after = state.read_json(status_file)
    assert after is not None and after["state"] == "revoked"


@pytest.mark.parametrize("retry_after", ["120", "date"])
def test_rate_limit_honours_retry_after_in_seconds_or_as_a_date(rig: Rig, retry_after: str) -> None:
    heartbeat(rig)
    value = "120" if retry_after == "120" else email.utils.formatdate(time.time() + 120, usegmt=True)
    rig.server.inject(Fault.rate_limited(value))
    before = time.time()
    result = rig.agent.engine.flush()
    assert result.retry is not None and result.retry.after is not None
    assert 115 <= result.retry.after <= 121
    assert rig.agent.engine.retry_at >= before + 115


def test_answer_lost_after_processing_is_resent_with_the_same_seq_and_accepted(rig: Rig) -> None:
    seq = heartbeat(rig)
    rig.server.inject(Fault.close(process=True))
    assert rig.agent.engine.flush().retry is not None
    assert rig.agent.engine.flush().delivered
    bodies = [r.body for r in rig.server.received if r.payload and r.payload["seq"] == seq]
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # at-least-once: the exact same request
    assert events_of(rig, seq) == ["attempt", "sent"]


@pytest.mark.parametrize("code", [400, 403, 404, 409, 422, 500, 501])
def test_other_error_status_is_rejected_recorded_and_never_resent(rig: Rig, code: int) -> None:
    seq = heartbeat(rig)
    rig.server.inject(Fault.status(code, body=b'{"error":"scripted refusal"}'))
    result = rig.agent.engine.flush()
    assert result.retry is None and [e.seq for e, _ in result.rejected] == [seq]
    [entry] = [e for e in ledger_entries(rig.agent.cfg) if e.seq == seq]
    assert (entry.event, entry.http_status) == ("rejected", code)
    assert entry.detail == f"http {code}: scripted refusal"
    assert rig.agent.engine.spool.depth() == 0
    rig.agent.engine.flush()
    assert len([r for r in rig.server.received if r.payload and r.payload["seq"] == seq]) == 1


def test_answer_slower_than_usual_but_within_the_timeout_is_delivered(rig: Rig) -> None:
    seq = heartbeat(rig)
    rig.server.inject(Fault.delay(0.2))
    assert [e.seq for e, _ in rig.agent.engine.flush().delivered] == [seq]


def test_receipt_signed_with_the_second_pinned_vendor_key_is_accepted(rig: Rig) -> None:
    seq = heartbeat(rig)
    rig.server.receipt_key_index = 1
    try:
        assert [e.seq for e, _ in rig.agent.engine.flush().delivered] == [seq]
    finally:
        rig.server.receipt_key_index = 0


def test_spool_survives_the_fault_on_disk(rig: Rig, tmp_path: Path) -> None:
    seq = heartbeat(rig)
    rig.server.inject(Fault.status(503))
    rig.agent.engine.flush()
    names = [p.name for p in (rig.agent.cfg.instance.state_dir / "spool" / "new").iterdir()]
    assert names == [f"{seq:020d}-heartbeat.json"]


def test_backoff_and_the_outage_warning_carry_over_to_the_next_process(rig: Rig) -> None:
    # each event runs in a worker process of its own: the next one must resume the backoff and
    # not warn of the same outage again (one warning per outage, then summaries)
    sd = rig.agent.cfg.instance.state_dir
    heartbeat(rig)
    rig.server.inject(Fault.status(503), Fault.status(503))
    assert rig.agent.engine.flush().retry is not None
    retry_at = rig.agent.engine.retry_at
    later = make_agent(rig.agent.cfg)  # a new process would open the state dir like this
    try:
        assert later.engine.retry_at == retry_at and state.load_backoff(sd).failures == 1
        assert later.engine.outage_since == rig.agent.engine.outage_since is not None
        later.engine.flush()
        assert state.load_backoff(sd).failures == 2
        assert len(rig.log.events("delivery.outage_started")) == 1
        assert later.engine.flush().retry is None
        assert [e["attempts"] for e in rig.log.events("delivery.recovered")] == [2]
        held = state.load_backoff(sd)
        assert (held.failures, held.retry_at, held.outage_since) == (0, 0.0, None)
    finally:
        later.close()
