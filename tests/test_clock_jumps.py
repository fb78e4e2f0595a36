"""Clock jumps between runs (±1 day, +1 year, +800 days, and back), with a faked agent clock against the
reference server keeping the right time: the license state and the schedule recover at the next
trusted receipt, and no jump silences the daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentkit import make_agent, wire
from support.keys import vendor_keys

from fluxagent.config import Config
from fluxagent.delivery import Deps, Engine, interval_of
from fluxagent.kinds import SCHEDULED
from fluxagent.license import record as license_store
from fluxagent.statedir import identity, state
from fluxagent.status import collect_status
from fluxagent.testing.server import Fault, LicensePolicy, ReferenceServer
from fluxagent.testing.workspace import Workspace
from fluxagent.transport import HttpxTransport

T0 = 1_760_000_000
DAY = 86400
LID = "FB-DEMO-0001"  # the workspace's license file
# the server's verdict: valid for 300 days, then 100 days of grace (the license file says 365 days)
POLICY = LicensePolicy(license_id=LID, expires_at=T0 + 300 * DAY, grace_until=T0 + 400 * DAY)


@dataclass
class Rig:
    ws: Workspace
    server: ReferenceServer
    server_now: list[float]  # the server's clock: the right time

    @property
    def cfg(self) -> Config:
        return self.ws.cfg

    def run_once(self, at: float) -> int:
        """`run --once` (a fresh process: new Agent, state from disk) with the agent clock at `at`."""
        agent = make_agent(self.cfg, clock=lambda: at)
        try:
            return agent.once()
        finally:
            agent.close()

    def status(self, at: float) -> dict[str, Any]:
        """What `status` shows with the clock at `at`."""
        return collect_status(self.cfg, now=at)

    def schedule_file(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.cfg.instance.state_dir / state.SCHEDULE_FILE).read_text())
        return doc


@pytest.fixture
def rig(tmp_path: Path, reference_server) -> Iterator[Rig]:
    keys = vendor_keys()
    server_now = [float(T0)]
    server = reference_server(signing_keys=keys, clock=lambda: server_now[0], license=POLICY)
    ws = wire(tmp_path / "ws", server, keys, now=T0, server={"connect_timeout": "2s", "read_timeout": "2s"})
    yield Rig(ws, server, server_now)


def assert_schedule_sane(rig: Rig, now: float) -> None:
    """Every timer lies ahead of now by at most its interval, jitter and the server's interval."""
    sched = state.load_schedule(rig.cfg.instance.state_dir)
    for kind in SCHEDULED:
        ks = sched.kind(kind)
        asked = POLICY.next_check_in if kind == "license" else 0  # the reference server's next_check_in
        limit = interval_of(rig.cfg, kind) + rig.cfg.schedule.jitter + asked
        assert ks.next_due is not None and now < ks.next_due <= now + limit, (kind, ks, now)


@pytest.mark.parametrize("lenient_server", [False, True], ids=["server refuses ts ahead", "server accepts ts ahead"])
@pytest.mark.parametrize(("jump", "while_ahead"), [(365 * DAY, "grace"), (800 * DAY, "expired")],
                         ids=["+365 days", "+800 days"])
def test_a_run_with_the_clock_far_ahead_does_not_spoil_the_license_state_once_the_server_says_valid(
    rig: Rig, jump: int, while_ahead: str, lenient_server: bool,
) -> None:
    if lenient_server:  # as a server would that takes the agent's word for its ts
        rig.server.verifier.max_clock_skew = 1000 * DAY
    assert rig.run_once(T0) == 0
    assert rig.status(T0)["license"]["state"] == "valid"
    rig.server_now[0] = T0 + 600
    rig.run_once(T0 + 600 + jump)  # the clock is `jump` ahead for one run
    assert rig.status(T0 + 600 + jump)["license"]["state"] == while_ahead
    # the clock is right again: until the server answers, the state stands and the jump is flagged
    shown = rig.status(T0 + 1200)
    assert shown["license"]["state"] == while_ahead and shown["clock_skew"] is True
    rig.server_now[0] = T0 + 1200
    assert rig.run_once(T0 + 1200) == 0
    fixed = rig.status(T0 + 1200)
    assert fixed["license"]["state"] == "valid", fixed["license"]["reasons"]
    assert fixed["clock_skew"] is False
    doc = json.loads((rig.cfg.instance.state_dir / license_store.FILE).read_text())
    assert doc["state"] == "valid" and doc["seen_until"] < T0 + 2 * DAY


def test_schedule_a_year_ahead_is_clamped_on_load_so_the_daemon_is_not_silent_for_a_year(rig: Rig) -> None:
    assert rig.run_once(T0) == 0
    rig.run_once(T0 + 365 * DAY)  # leaves every timer a year ahead
    assert all(rig.schedule_file()[k]["next_due"] >= T0 + 365 * DAY for k in SCHEDULED)
    now = T0 + 600
    shown = rig.status(now)["kinds"]  # `status` shows the timers as the next run will see them
    assert all(shown[k]["next_due"] <= now for k in SCHEDULED), shown
    engine = Engine(rig.cfg, identity.load(rig.cfg.instance.state_dir),
                    Deps(HttpxTransport(rig.cfg.server, env={}), lambda: now))
    assert engine.due(now) == list(SCHEDULED)  # a timer no run could have set: due at once
    assert engine.next_wake(now) == now
    assert all(rig.schedule_file()[k]["next_due"] <= now for k in SCHEDULED)  # and written back


def test_a_timer_within_its_interval_jitter_and_server_interval_is_left_alone(rig: Rig) -> None:
    assert rig.run_once(T0) == 0
    before = rig.schedule_file()
    engine = Engine(rig.cfg, identity.load(rig.cfg.instance.state_dir),
                    Deps(HttpxTransport(rig.cfg.server, env={}), lambda: T0 + 1))
    assert engine.due(T0 + 1) == []
    assert rig.schedule_file() == before


@pytest.mark.parametrize("jump", [DAY, -DAY, 365 * DAY, 800 * DAY], ids=["+1 day", "-1 day", "+1 year", "+800 days"])
def test_after_a_clock_jump_and_back_license_state_and_schedule_recover_at_the_next_trusted_receipt(
    rig: Rig, jump: int,
) -> None:
    real = float(T0)
    assert rig.run_once(real) == 0
    assert_schedule_sane(rig, real)
    real += 600
    rig.server_now[0] = real
    rig.run_once(real + jump)  # one run with the clock off by `jump`
    real += 600
    rig.server_now[0] = real
    # the clock is right again and the daemon starts: it must send now, not in `jump` days
    agent = make_agent(rig.cfg, clock=lambda: real)
    try:
        wait = agent.step()
    finally:
        agent.close()
    assert agent.engine.spool.depth() == 0
    assert wait <= max(interval_of(rig.cfg, k) for k in SCHEDULED) + rig.cfg.schedule.jitter
    shown = rig.status(real)
    assert shown["license"]["state"] == "valid", shown["license"]["reasons"]
    assert shown["clock_skew"] is False
    assert_schedule_sane(rig, real)
    # and the next restart at the right time finds nothing due before its interval
    later = real + 60
    engine = Engine(rig.cfg, identity.load(rig.cfg.instance.state_dir),
                    Deps(HttpxTransport(rig.cfg.server, env={}), lambda: later))
    assert engine.due(later) == []


def test_a_backoff_begun_with_the_clock_a_year_ahead_does_not_hold_back_a_restarted_daemon(rig: Rig) -> None:
    assert rig.run_once(T0) == 0
    rig.server.inject(Fault.status(503))
    ahead = T0 + 365 * DAY
    with make_agent(rig.cfg, clock=lambda: ahead) as agent:  # an outage begins with the clock a year ahead
        agent.step()
        assert agent.engine.retry_at > ahead and agent.engine.spool.depth() > 0
    now = T0 + 600
    rig.server_now[0] = now
    heard = len(rig.server.received)
    with make_agent(rig.cfg, clock=lambda: now) as agent:  # the clock is right again; the daemon restarts
        agent.step()
        assert agent.engine.spool.depth() == 0  # sent (or refused by the server), not held back a year
    assert len(rig.server.received) > heard
    assert rig.status(now)["license"]["state"] == "valid"
