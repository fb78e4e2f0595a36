"""Soak: kill -9 `fluxagent run` at random moments, hundreds of times, checking the state after each.

    python bench/soak_kill.py [--trials 500] [--seed N] [--keep DIR]

Each trial queues a backlog (as a run during an outage would), starts `fluxagent run` against a
reference server on 127.0.0.1, kills it (every other trial: the worker running at that moment, then
stops the daemon with SIGTERM) after a random log line or during start-up, then checks
that the spool, the ledger chain, `seq`, the schedule and the license status are all valid. At the
end one `run --once` must deliver everything, and the server must have seen each seq first in
increasing order, resent only as the exact same request. Prints a summary; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nacl.signing  # noqa: E402
from agentkit import clean_env, wire  # noqa: E402
from conftest import run_cli  # noqa: E402
from killkit import Soak, backlog, check_server_side, check_state, kill_trial, reopen  # noqa: E402

from fluxagent.testing.server import ReferenceServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the workspace here")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="fluxagent-soak-"))
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    soak = Soak()
    started = time.monotonic()
    print(f"seed {seed}; workspace {root}", flush=True)
    try:
        with ReferenceServer(signing_keys=keys) as server:
            ws = wire(root / "ws", server, keys)
            cfg_path = ws.root / "fluxagent.toml"
            env = clean_env()
            for i in range(args.trials):
                backlog(ws.cfg, rng, heartbeats=rng.randint(0, 3))
                trial = kill_trial(cfg_path, rng, env, target="worker" if i % 2 else "supervisor")
                soak.trials.append(trial)
                try:
                    summary = check_state(ws.cfg)
                    reopen(ws.cfg)
                except AssertionError as exc:
                    print(f"FAIL trial {i} ({trial}): {exc}")
                    return 1
                if (i + 1) % 50 == 0:
                    print(f"{i + 1} trials, {soak.kills_mid_work()} killed mid-work, state {summary}", flush=True)
            done = run_cli("--config", str(cfg_path), "run", "--once", env=env)
            if done.returncode != 0:
                print(f"FAIL final run --once exited {done.returncode}: {done.stderr}")
                return 1
            try:
                totals = check_server_side(server)
                final = check_state(ws.cfg)
                assert final["spooled"] == 0, "the final run left messages in the spool"
            except AssertionError as exc:
                print(f"FAIL after the trials: {exc}")
                return 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"PASS {args.trials} trials in {time.monotonic() - started:.0f}s; {soak.kills_mid_work()} kills landed "
          f"mid-work; server accepted {totals['messages']} messages in {totals['requests']} requests "
          f"({totals['resent']} at-least-once resends with the same seq and bytes); final state {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
