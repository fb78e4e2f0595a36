"""kill -9 of `fluxagent run` at random moments, aimed at the supervisor or at the worker running then:
afterwards spool, ledger chain, seq and state files are valid, seq never goes backwards, resends carry
the same seq and bytes, the daemon outlives a killed worker, and the next run resumes.
More trials by hand: `python bench/soak_kill.py --trials 500`."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

import pytest
from agentkit import clean_env, ledger_entries, wire
from conftest import run_cli
from killkit import Soak, backlog, check_server_side, check_state, kill_trial, reopen
from support.keys import vendor_keys

from fluxagent.statedir.ledger import Ledger

TRIALS = int(os.environ.get("FLUXAGENT_KILL_TRIALS", "50"))


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_valid_state_and_the_next_run_resumes(tmp_path: Path, reference_server) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    keys = vendor_keys()
    soak = Soak()
    server = reference_server(signing_keys=keys)
    ws = wire(tmp_path / "ws", server, keys)
    cfg_path = ws.root / "fluxagent.toml"
    env = clean_env()
    for i in range(TRIALS):
        backlog(ws.cfg, rng, heartbeats=rng.randint(0, 3))
        trial = kill_trial(cfg_path, rng, env, target="worker" if i % 2 else "supervisor")
        soak.trials.append(trial)
        if trial.target == "worker":
            assert trial.exit_code == 0, f"seed {seed}, trial {i}: the daemon ended with its worker: {trial}"
        try:
            check_state(ws.cfg)
            reopen(ws.cfg)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, trial {i} ({trial}): {exc}") from exc
    done = run_cli("--config", str(cfg_path), "run", "--once", env=env)
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    totals = check_server_side(server)
    assert check_state(ws.cfg)["spooled"] == 0
    assert Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True).verify().ok
    # a message the ledger records as sent more than once was the same message each time
    payloads: dict[int, set[str | None]] = defaultdict(set)
    for e in ledger_entries(ws.cfg):
        if e.event == "sent" and e.seq is not None:
            payloads[e.seq].add(e.payload)
    assert all(len(p) == 1 for p in payloads.values())
    assert totals["messages"] >= TRIALS  # every trial's backlog got out in the end
    assert soak.kills_mid_work() >= TRIALS // 3, f"seed {seed}: too few kills landed mid-work: {soak.trials}"
    assert sum(t.worker_killed for t in soak.trials) >= TRIALS // 6, f"seed {seed}: too few workers killed"
