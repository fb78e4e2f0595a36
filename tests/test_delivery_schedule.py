"""Timers and time: server intervals only lengthen local ones, timers survive a restart, backoff
stays within its full-jitter bounds, and a server clock far from ours is reported."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from agentkit import make_agent, wire
from support.capture import LogCapture
from support.clock import Clock
from support.keys import vendor_keys

from fluxagent.delivery import BACKOFF_CAP, backoff
from fluxagent.statedir import state
from fluxagent.status import collect_status
from fluxagent.testing.server import LicensePolicy

HOUR = 3600


@pytest.mark.parametrize("next_in,expected_min", [(3 * HOUR, 3 * HOUR), (60, HOUR)])
def test_server_interval_lengthens_the_heartbeat_timer_but_never_shortens_it(
    tmp_path: Path, next_in: int, expected_min: int, reference_server
) -> None:
    k = vendor_keys()
    t0 = float(int(time.time()))
    srv = reference_server(signing_keys=k, heartbeat_next_in=next_in, clock=Clock(t0))
    ws = wire(tmp_path / "ws", srv, k, now=t0)
    with make_agent(ws.cfg, Clock(t0)) as agent:
        assert agent.once() == 0
    due = state.load_schedule(ws.cfg.instance.state_dir).heartbeat.next_due
    assert due is not None and due - t0 >= expected_min
    if next_in < HOUR:
        assert due - t0 <= HOUR + ws.cfg.schedule.jitter  # the local interval with its jitter


def test_license_check_interval_follows_a_longer_next_check_in(tmp_path: Path, reference_server) -> None:
    k = vendor_keys()
    t0 = float(int(time.time()))
    srv = reference_server(signing_keys=k, license=LicensePolicy(next_check_in=24 * HOUR), clock=Clock(t0))
    ws = wire(tmp_path / "ws", srv, k, now=t0)
    with make_agent(ws.cfg, Clock(t0)) as agent:
        assert agent.once() == 0
    assert state.load_schedule(ws.cfg.instance.state_dir).license.next_due == t0 + 24 * HOUR


def test_timers_persist_so_a_restart_sends_nothing_that_is_not_due(tmp_path: Path, reference_server) -> None:
    k = vendor_keys()
    srv = reference_server(signing_keys=k)
    ws = wire(tmp_path / "ws", srv, k)
    first = make_agent(ws.cfg)
    try:
        first.step()
    finally:
        first.close()
    assert len(srv.received) == 3
    again = make_agent(ws.cfg)  # a restart: same state dir, fresh process state
    try:
        assert again.step() > 0
        now = time.time()
        next_send = again.engine.next_wake(now) - now
    finally:
        again.close()
    assert len(srv.received) == 3
    assert HOUR - 60 <= next_send <= HOUR + ws.cfg.schedule.jitter


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    rng = random.Random(7)
    for failures in range(0, 40):
        ceiling = min(BACKOFF_CAP, 30 * 2**failures)
        samples = [backoff(failures, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # spread over the whole range, not clustered
    assert max(backoff(1000, rng) for _ in range(100)) <= BACKOFF_CAP


def test_server_clock_far_ahead_is_reported_as_clock_skew(tmp_path: Path, reference_server) -> None:
    k = vendor_keys()
    log = LogCapture()
    srv = reference_server(signing_keys=k, clock=lambda: time.time() + 3600)
    ws = wire(tmp_path / "ws", srv, k)
    with make_agent(ws.cfg) as agent:
        assert agent.once() == 0
    lic = state.read_json(ws.cfg.instance.state_dir / "license-status.json")
    assert lic is not None and lic["clock_skew"] is True
    assert collect_status(ws.cfg)["clock_skew"] is True
    assert {round(e["seconds"] / 100) for e in log.events("clock.skew")} == {36}
