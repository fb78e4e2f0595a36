"""Every budget of the project, measured in one run; prints one table and exits 1 if any budget fails.

    python bench/run_all.py [--quick] [--skip NAME ...]

Runs the budget scripts one after another, each with `--json`; each script measures its figure
and its reference side by side (interleaved runs, medians), so the ratios hold on a busy machine:

  core         bench_core.py         preview and `--help` against the import floor; tokenizing
                                     1M identifiers (µs/identifier, peak RSS)
  delivery     bench_delivery.py     the daemon: its resident supervisor's idle CPU and RSS against
                                     prometheus-node-exporter, its RSS after a worker digested 1M
                                     identifiers, one event's worker CPU against preview's, a
                                     credential from its memory against the import floor
  databases    bench_databases.py    SQLite, PostgreSQL and MariaDB streaming throughput and RSS
  credentials  bench_credentials.py  the docker credential helper's start-up against the floor
  inventory    bench_inventory.py    1M identifiers: preview, preview --json, run --once (peak RSS,
                                     µs/identifier beyond the floor, memory slope), delta size

`--quick` shortens every script (fewer runs, 200k rows instead of 1M, a 10 s idle window): a
check that the budgets are not far off, in under a minute; the full run takes a few minutes.
Not part of the test run: `python -m pytest` never starts it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from budgets import Budget, parse

HERE = Path(__file__).resolve().parent
PY = sys.executable

SCRIPTS: dict[str, tuple[str, list[str], list[str]]] = {  # name: (script, full args, quick args)
    "core": ("bench_core.py", [], ["--runs", "5", "--rows", "200000"]),
    "delivery": ("bench_delivery.py", [], ["--idle-seconds", "10", "--runs", "3", "--rows", "200000"]),
    "databases": ("bench_databases.py", [], ["--rows", "200000", "--runs", "1"]),
    "credentials": ("bench_credentials.py", [], ["--runs", "5"]),
    "inventory": ("bench_inventory.py", [], ["--rows", "200000", "--small", "50000", "--floor-runs", "3"]),
}


def run_script(name: str, quick: bool) -> tuple[list[Budget], float]:
    """Run one budget script with --json, echo its human output; return its rows and seconds taken."""
    script, full, short = SCRIPTS[name]
    cmd = [PY, str(HERE / script), *(short if quick else full), "--json"]
    print(f"### {name}: {' '.join(Path(c).name if c.startswith('/') else c for c in cmd)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    took = time.monotonic() - t0
    lines = proc.stdout.rstrip("\n").splitlines()
    for line in lines[:-1]:
        print(f"    {line}")
    try:
        rows = parse(proc.stdout)
    except (ValueError, TypeError) as exc:
        for line in (lines[-1:] + proc.stderr.splitlines())[-15:]:
            print(f"    {line}")
        why = f"script failed: exit {proc.returncode}" if proc.returncode else f"unreadable --json output: {exc}"
        return [Budget(f"{name}: {script}", why, "", None, "runs", False)], took
    if proc.returncode not in (0, 1):  # 1 = a budget missed, which the rows say; anything else is a crash
        rows.append(Budget(f"{name}: {script}", f"exit {proc.returncode}", "", None, "exit 0 or 1", False))
    return rows, took


def table(rows: list[Budget]) -> list[str]:
    """Return the lines of the budget table."""
    head = ("budget", "figure", "reference", "ratio", "limit", "verdict")
    cells = [(r.name, r.figure, r.reference or "—", "—" if r.ratio is None else f"{r.ratio:.2f}×", r.limit,
              "PASS" if r.ok else "FAIL") for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in cells)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer runs, fewer rows, a shorter idle window")
    p.add_argument("--skip", action="append", default=[], choices=sorted(SCRIPTS), help="leave a script out")
    args = p.parse_args()
    rows: list[Budget] = []
    started = time.monotonic()
    for name in SCRIPTS:
        if name in args.skip:
            continue
        got, took = run_script(name, args.quick)
        print(f"    ({took:.0f} s)", flush=True)
        rows += got
    print(f"\n== budgets ({'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s)")
    for line in table(rows):
        print(line)
    failed = sum(not r.ok for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} budgets met" + (f"; {failed} FAILED" if failed else ""))
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
