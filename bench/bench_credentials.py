"""Budgets of the credential helpers, measured side by side in one run; prints figures and ratios.

    python bench/bench_credentials.py [--runs 11] [--json]

docker and git call a credential helper as a fresh process for every pull/fetch, so its start-up
is what the operator feels. Interleaved runs, medians compared with the import floor
`python -c "import httpx, nacl.signing, psutil, typer, structlog"`:

1. `docker-credential-fluxagent list` (answers locally).  Budget: ≤ 0.8× the floor.
2. `docker-credential-fluxagent get`: request, verified receipt, answer, against the reference
   server on loopback (an instance registered first): TLS context, key load, state open, one
   round trip, receipt verification.  Budget: ≤ 2.0× the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from budgets import Budget, as_installed, emit

PY = sys.executable
FLOOR = [PY, "-c", "import httpx, nacl.signing, psutil, typer, structlog"]
HELPER = str(Path(PY).parent / "docker-credential-fluxagent")


def timed(cmd: list[str], stdin: str, env: dict[str, str]) -> float:
    """Return the wall time of one run of cmd, in seconds; fails loudly if it fails."""
    t = time.perf_counter()
    subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = p.parse_args()
    as_installed()
    from fluxagent.daemon.agent import Agent
    from fluxagent.statedir.lock import instance_lock
    from fluxagent.testing.server import ReferenceServer
    from fluxagent.testing.workspace import make_workspace

    with tempfile.TemporaryDirectory() as tmp, ReferenceServer(credentials_ttl=3600) as srv:
        ws = make_workspace(Path(tmp) / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        with instance_lock(ws.cfg.instance.state_dir):
            agent = Agent(ws.cfg)
            agent.once()
            agent.close()
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
        env["FLUXAGENT_CONFIG"] = str(ws.root / "fluxagent.toml")
        cases = {
            "floor": (FLOOR, ""),
            "list": ([HELPER, "list"], ""),
            "get": ([HELPER, "get"], "registry.fluxbilling.example"),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for name, (cmd, stdin) in cases.items():
                times[name].append(timed(cmd, stdin, env))
        issued = len(srv.issued_credentials)
    med = {k: statistics.median(v) for k, v in times.items()}
    budgets = {"list": 0.8, "get": 2.0}
    ok = True
    rows: list[Budget] = []
    print(f"== credential helper start-up, median of {args.runs} interleaved runs ({issued} credentials issued)")
    for name in ("list", "get", "floor"):
        ratio = med[name] / med["floor"]
        verdict = ""
        if name in budgets:
            good = ratio <= budgets[name]
            ok &= good
            verdict = f"{'meets' if good else 'MISSES'} budget ≤ {budgets[name]}×"
            rows.append(Budget(f"docker credential helper `{name}` start-up", f"{med[name] * 1000:.0f} ms",
                               f"import floor {med['floor'] * 1000:.0f} ms", ratio, f"≤ {budgets[name]}×", good))
        print(f"  {name:6} {med[name] * 1000:7.1f} ms  {ratio:5.2f}× floor  {verdict}")
    print("ALL BUDGETS MET" if ok else "SOME BUDGETS MISSED")
    emit(rows, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
