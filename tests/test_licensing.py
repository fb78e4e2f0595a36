"""The license state machine, driven by receipts from the reference server over loopback HTTP and an
injected clock; license-status.json, `status` and the systemd STATUS line all show the derived state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import pytest
import tomli_w
from conftest import BOUND_DOMAIN, base_config, fixed_world
from netutil import closed_port
from support.keys import vendor_keys

from fluxagent import config
from fluxagent.config import Config
from fluxagent.daemon.agent import Agent
from fluxagent.delivery import Deps, Engine
from fluxagent.license import record as license_store
from fluxagent.statedir import identity
from fluxagent.status import collect_status
from fluxagent.testing.licenses import make_license
from fluxagent.testing.server import Fault, LicensePolicy, ReferenceServer
from fluxagent.testing.workspace import approve_running
from fluxagent.transport import HttpxTransport

T0 = 1_760_000_000
DAY = 86400
GRACE = 14 * DAY  # offline_grace in these configs
LID = "FB-TEST-0042"


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.server_now: float | None = None  # set: the server's clock parts from the agent's

    def __call__(self) -> float:
        return self.now

    def server(self) -> float:
        return self.now if self.server_now is None else self.server_now


@dataclass
class Setup:
    cfg: Config
    server: ReferenceServer
    clock: Clock
    key: nacl.signing.SigningKey
    root: Path

    def write_license(self, *, expires_at: int, domain: str = BOUND_DOMAIN, license_id: str = LID) -> None:
        self.cfg.instance.license_file.write_bytes(make_license(
            self.key, license_id=license_id, bound_domain=domain, issued_at=T0 - 30 * DAY, expires_at=expires_at))

    def engine(self, url: str | None = None) -> Engine:
        """A fresh engine, as after a restart; url overrides the server URL (e.g. a closed port)."""
        cfg = self.cfg
        if url is not None:
            doc = config.to_mapping(cfg)
            doc["server"]["url"] = url
            cfg = config.from_mapping(doc, cfg.source)  # the same file: the approval beside it applies
        return Engine(cfg, identity.load(cfg.instance.state_dir),
                      Deps(HttpxTransport(cfg.server), self.clock, world=fixed_world()))

    def check(self, engine: Engine, at: float) -> None:
        """Produce and send one license check at time at."""
        self.clock.now = at
        engine.produce(["license"], at)
        engine.flush()

    def status_doc(self) -> dict[str, object]:
        return json.loads((self.cfg.instance.state_dir / license_store.FILE).read_text())


@pytest.fixture
def setup(tmp_path: Path, sample_db: Path, reference_server) -> Iterator[Setup]:
    clock = Clock()
    keys = vendor_keys()
    policy = LicensePolicy(license_id=LID, expires_at=T0 + 365 * DAY, grace_until=T0 + 379 * DAY)
    server = reference_server(signing_keys=keys, clock=clock.server, license=policy)
    doc = base_config(tmp_path / "state", sample_db)
    doc["instance"]["license_file"] = str(tmp_path / "license.json")
    doc["server"].update(url=server.url, vendor_keys=server.vendor_keys_b64, read_timeout="2s",
                         connect_timeout="2s")
    doc["schedule"]["offline_grace"] = "14d"
    path = tmp_path / "fluxagent.toml"
    path.write_text(tomli_w.dumps(doc))
    cfg = config.load(path)
    identity.ensure(cfg.instance.state_dir, now=T0)
    approve_running(path, now=T0)
    s = Setup(cfg, server, clock, keys[0], tmp_path)
    s.write_license(expires_at=T0 + 365 * DAY)
    yield s


def closed_port_url() -> str:
    return f"http://127.0.0.1:{closed_port()}"


def test_valid_receipt_gives_valid_written_atomically_with_mode_0640(setup: Setup) -> None:
    e = setup.engine()
    setup.check(e, T0)
    path = setup.cfg.instance.state_dir / license_store.FILE
    assert path.stat().st_mode & 0o777 == 0o640
    doc = setup.status_doc()
    assert doc["state"] == "valid" and doc["license_id"] == LID and doc["checked_at"] == T0
    assert doc["receipt"]["state"] == "valid" and doc["contact"]["outcome"] == "delivered"  # type: ignore[index]
    assert doc["clock_skew"] is False


def test_reboot_with_a_cached_valid_past_its_expiry_is_grace_then_expired_never_valid(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="auto", license_id=LID, expires_at=T0 + DAY,
                                         grace_until=T0 + 8 * DAY)
    setup.write_license(expires_at=T0 + DAY)
    setup.check(setup.engine(), T0)
    assert setup.status_doc()["state"] == "valid"
    # the machine was off for two days: the file still says "valid", the time says otherwise
    rebooted = setup.engine(closed_port_url())
    assert setup.status_doc()["state"] == "valid"
    st = rebooted.refresh_license(T0 + 2 * DAY)
    assert st.state == "grace" and setup.status_doc()["state"] == "grace"
    assert collect_status(setup.cfg, now=T0 + 2 * DAY)["license"]["state"] == "grace"
    assert rebooted.refresh_license(T0 + 9 * DAY).state == "expired"
    assert setup.status_doc()["state"] == "expired"


def test_server_unreachable_for_less_than_offline_grace_is_offline(setup: Setup) -> None:
    setup.check(setup.engine(), T0)
    down = setup.engine(closed_port_url())
    setup.check(down, T0 + 6 * 3600)
    doc = setup.status_doc()
    assert doc["state"] == "offline"
    assert doc["contact"]["outcome"] == "unreachable"  # type: ignore[index]
    assert doc["next_change"] == T0 + GRACE
    assert down.refresh_license(T0 + GRACE - 60).state == "offline"


def test_server_unreachable_for_more_than_offline_grace_is_grace_then_back_to_valid(setup: Setup) -> None:
    setup.check(setup.engine(), T0)
    down = setup.engine(closed_port_url())
    setup.check(down, T0 + DAY)
    assert down.refresh_license(T0 + GRACE + 1).state == "grace"
    assert setup.status_doc()["state"] == "grace"
    assert "not confirmed" in " ".join(setup.status_doc()["reasons"])  # type: ignore[arg-type]
    setup.check(setup.engine(), T0 + GRACE + 3600)  # the server is back
    assert setup.status_doc()["state"] == "valid"


def test_never_confirmed_and_unreachable_counts_offline_grace_from_the_first_failure(setup: Setup) -> None:
    down = setup.engine(closed_port_url())
    setup.check(down, T0)
    assert setup.status_doc()["state"] == "offline"
    assert down.refresh_license(T0 + GRACE + 1).state == "grace"


def test_server_granted_grace_holds_while_the_license_file_says_expired(setup: Setup) -> None:
    setup.write_license(expires_at=T0 - DAY)
    setup.server.license = LicensePolicy(state="grace", license_id=LID, expires_at=T0 - DAY,
                                         grace_until=T0 + 7 * DAY)
    e = setup.engine()
    setup.check(e, T0)
    doc = setup.status_doc()
    assert doc["file"]["state"] == "expired"  # type: ignore[index]
    assert doc["state"] == "grace" and doc["grace_until"] == T0 + 7 * DAY
    assert e.refresh_license(T0 + 6 * DAY).state == "grace"
    assert e.refresh_license(T0 + 7 * DAY).state == "expired"


def test_expired_license_file_without_server_grace_is_expired(setup: Setup) -> None:
    setup.write_license(expires_at=T0 - DAY)
    setup.server.license = LicensePolicy(state="expired", license_id=LID, expires_at=T0 - DAY,
                                         grace_until=T0 - DAY)
    setup.check(setup.engine(), T0)
    assert setup.status_doc()["state"] == "expired"


def test_revocation_is_shown_and_outlives_an_outage(setup: Setup) -> None:
    setup.check(setup.engine(), T0)
    setup.server.license = LicensePolicy(state="revoked", license_id=LID)
    setup.check(setup.engine(), T0 + 3600)
    assert setup.status_doc()["state"] == "revoked"
    down = setup.engine(closed_port_url())
    setup.check(down, T0 + 7200)
    assert setup.status_doc()["state"] == "revoked"
    assert down.refresh_license(T0 + 30 * DAY).state == "revoked"


def test_server_verdict_invalid_is_invalid(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="invalid", license_id=LID)
    setup.check(setup.engine(), T0)
    assert setup.status_doc()["state"] == "invalid"


def test_local_clock_moved_back_a_day_sets_clock_skew_and_does_not_revive_an_expired_state(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="auto", license_id=LID, expires_at=T0 + 100,
                                         grace_until=T0 + 200)
    e = setup.engine()
    setup.check(e, T0)
    assert e.refresh_license(T0 + 300).state == "expired"
    st = e.refresh_license(T0 + 300 - DAY)  # someone sets the clock back a day
    assert st.clock_skew and st.state == "expired"
    doc = setup.status_doc()
    assert doc["clock_skew"] is True and doc["state"] == "expired"
    assert collect_status(setup.cfg, now=T0 + 300 - DAY)["clock_skew"] is True


def test_agent_clock_a_day_behind_the_server_is_flagged_at_the_receipt(setup: Setup) -> None:
    setup.clock.server_now = T0
    setup.check(setup.engine(), T0 - DAY)
    doc = setup.status_doc()
    assert doc["state"] == "valid" and doc["clock_skew"] is True
    assert any("behind" in r for r in doc["reasons"])  # type: ignore[union-attr]


def test_verdict_on_a_replaced_license_file_does_not_decide_the_state_of_the_new_one(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="expired", license_id=LID, expires_at=T0 - DAY,
                                         grace_until=T0 - DAY)
    e = setup.engine()
    setup.check(e, T0)
    assert setup.status_doc()["state"] == "expired"
    setup.write_license(expires_at=T0 + 365 * DAY, license_id="FB-RENEWED-0002")  # the renewal arrives
    assert e.refresh_license(T0 + 60).state == "valid"
    doc = setup.status_doc()
    assert doc["license_id"] == "FB-RENEWED-0002" and doc["source"] == "file"
    assert any("FB-RENEWED-0002" in r for r in doc["reasons"])  # type: ignore[union-attr]
    assert e.schedule.kind("license").next_due == T0 + 60  # the server hears about it at once


def test_receipt_naming_another_license_id_still_decides_while_the_file_is_unchanged(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="revoked", license_id="FB-OTHER-0001")
    setup.check(setup.engine(), T0)
    doc = setup.status_doc()
    assert doc["state"] == "revoked" and doc["license_id"] == LID
    assert doc["receipt"]["license_id"] == "FB-OTHER-0001"  # type: ignore[index]


def test_tampered_license_file_is_invalid_even_when_the_server_says_valid(setup: Setup) -> None:
    lic = setup.cfg.instance.license_file
    lic.write_bytes(lic.read_bytes().replace(b'"payload":"', b'"payload":"e', 1))
    setup.check(setup.engine(), T0)
    doc = setup.status_doc()
    assert doc["state"] == "invalid" and doc["file"]["code"] == "signature"  # type: ignore[index]


def test_missing_license_file_is_unlicensed(setup: Setup) -> None:
    setup.cfg.instance.license_file.unlink()
    assert setup.engine().refresh_license(T0).state == "unlicensed"
    assert setup.status_doc()["state"] == "unlicensed"


def test_daemon_rewrites_status_when_the_license_file_changes_and_checks_at_once(setup: Setup) -> None:
    with Agent(setup.cfg, clock=setup.clock) as agent:
        setup.clock.now = T0
        assert agent.status_line().startswith("license valid (unconfirmed);")  # the file alone, at READY
        agent.step()
        assert setup.status_doc()["state"] == "valid"
        assert "license valid" in agent.status_line()
        setup.write_license(expires_at=T0 + 365 * DAY, domain="other.example.org")
        setup.clock.now = T0 + 60
        agent.step()
        assert setup.status_doc()["state"] == "invalid"
        assert "license invalid" in agent.status_line()
        assert agent.engine.schedule.kind("license").next_due == T0 + 60  # the new license goes out now


def test_systemd_status_shows_offline_when_the_server_goes_away(setup: Setup) -> None:
    # the worker reports status_line() after each step and the supervisor sends it as STATUS=
    # (the relay on a real socket: tests/test_daemon.py)
    agent = Agent(setup.cfg, clock=setup.clock)
    try:
        agent.step()
        assert agent.status_line().startswith("license valid;")
        setup.server.stop()
        setup.clock.now = T0 + 7 * 3600
        agent.engine.make_due("license", T0)
        agent.step()
        assert agent.status_line().startswith("license offline;")
        assert setup.status_doc()["state"] == "offline"
        assert collect_status(setup.cfg, now=setup.clock.now)["license"]["state"] == "offline"
        setup.clock.now = T0 + GRACE - 10
        assert agent.step() <= 10  # the loop wakes when offline_grace runs out
        setup.clock.now = T0 + GRACE
        agent.step()
        assert agent.status_line().startswith("license grace;")
        assert setup.status_doc()["state"] == "grace"
    finally:
        agent.close()


def test_reference_server_auto_policy_follows_its_own_clock_through_valid_grace_expired(setup: Setup) -> None:
    setup.server.license = LicensePolicy(state="auto", license_id=LID, expires_at=T0 + DAY,
                                         grace_until=T0 + 2 * DAY)
    e = setup.engine()
    seen = []
    for at in (T0, T0 + DAY + 60, T0 + 2 * DAY + 60):
        setup.check(e, at)
        seen.append(setup.status_doc()["receipt"]["state"])  # type: ignore[index]
    assert seen == ["valid", "grace", "expired"]
    assert setup.status_doc()["state"] == "expired"


def test_rejected_license_check_turns_valid_into_offline_with_the_reason(setup: Setup) -> None:
    e = setup.engine()
    setup.check(e, T0)
    setup.server.inject(Fault.status(403, endpoint="license"))
    setup.check(e, T0 + 6 * 3600)
    doc = setup.status_doc()
    assert doc["state"] == "offline" and doc["contact"]["outcome"] == "rejected"  # type: ignore[index]
    assert "rejecting license checks since" in doc["reasons"][0]  # type: ignore[index]
    assert "HTTP 403" in doc["reasons"][0]  # type: ignore[index]
    setup.check(e, T0 + 12 * 3600)  # accepted again
    assert setup.status_doc()["state"] == "valid"


def test_503_from_the_server_counts_as_unreachable(setup: Setup) -> None:
    e = setup.engine()
    setup.check(e, T0)
    setup.server.inject(Fault.status(503, endpoint="license"))
    setup.check(e, T0 + 3600)
    assert setup.status_doc()["state"] == "offline"
    assert setup.status_doc()["contact"]["since"] == T0 + 3600  # type: ignore[index]


def test_corrupt_license_status_file_is_derived_again_and_rewritten(setup: Setup) -> None:
    path = setup.cfg.instance.state_dir / license_store.FILE
    path.write_text("{not json")
    assert collect_status(setup.cfg, now=T0)["license"]["state"] == "valid"
    assert setup.engine().refresh_license(T0).state == "valid"
    assert setup.status_doc()["state"] == "valid"
