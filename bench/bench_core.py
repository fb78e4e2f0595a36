"""Budgets of the core issue, measured side by side in one run; prints figures and ratios.

    python bench/bench_core.py [--runs 15] [--rows 1000000] [--json]

1. Start-up: `fluxagent preview` on the sample database and `fluxagent --help`, against the
   import floor `python -c "import httpx, nacl.signing, psutil, typer, structlog"`, interleaved
   runs, medians compared.  Budgets: preview ≤ 1.2×, --help ≤ 0.8× the floor.
2. Tokenizing N identifiers (half server hostnames/IPs, half CIDRs) streamed from SQLite,
   end to end, in a fresh process: µs per identifier and peak RSS.  Budgets: ≤ 3 µs, ≤ 100 MB.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from budgets import Budget, as_installed, emit

PY = sys.executable
FLOOR = [PY, "-c", "import httpx, nacl.signing, psutil, typer, structlog"]

TOKENIZE = r"""
import resource, sys, time, json
from pathlib import Path
from fluxagent.config import Queries
from fluxagent.sources.platform import SqliteSource
from fluxagent.facts import HostFacts
from fluxagent.collect import tokens_for
key = bytes(range(32))
t0 = time.perf_counter()
src = SqliteSource(Path(sys.argv[1]), Queries())
toks = tokens_for(src, HostFacts("h.example", "0123456789abcdef0123456789abcdef", (), ()), key)
root = toks.root
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "servers": len(toks.servers), "networks": len(toks.networks),
                  "skipped": sum(toks.skipped.values()),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def startup(runs: int, work: Path) -> list[tuple[str, float, float, float]]:
    from fluxagent.testing.workspace import make_workspace

    ws = make_workspace(work / "ws")
    cfg = str(ws.cfg.source)
    cmds = {
        "floor": FLOOR,
        "--help": [PY, "-m", "fluxagent", "--help"],
        "preview": [PY, "-m", "fluxagent", "--config", cfg, "preview"],
    }
    for c in cmds.values():  # warm the page cache
        timed(c)
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, c in cmds.items():
            samples[k].append(timed(c))
    floor = statistics.median(samples["floor"])
    return [(k, statistics.median(v), statistics.median(v) / floor, b)
            for k, v, b in (("--help", samples["--help"], 0.8), ("preview", samples["preview"], 1.2))] + [
        ("floor", floor, 1.0, 0.0)]


def make_db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE servers (id INTEGER PRIMARY KEY, hostname TEXT, ip_address TEXT, location TEXT, status TEXT);"
        "CREATE TABLE network_ranges (id INTEGER PRIMARY KEY, cidr TEXT, server_id INTEGER, description TEXT);")
    half = rows // 2

    def servers():
        for i in range(half):
            if i % 2:
                yield (i, f"node{i}.rack{i % 97}.dc.example.net", None)
            else:
                yield (i, None, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
                       if i % 4 else f"2001:db8::{i >> 16:x}:{i & 0xffff:x}")

    def nets():
        for i in range(half):
            yield (i, f"{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24" if i % 3
                   else f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64")

    conn.executemany("INSERT INTO servers (id, hostname, ip_address) VALUES (?,?,?)", servers())
    conn.executemany("INSERT INTO network_ranges (id, cidr) VALUES (?,?)", nets())
    conn.commit()
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = ap.parse_args()
    as_installed()
    ok = True
    rows: list[Budget] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"== start-up, median of {args.runs} interleaved runs")
        measured = startup(args.runs, work)
        floor_ms = measured[-1][1] * 1000
        for name, secs, ratio, budget in measured:
            if budget:
                rows.append(Budget(f"start-up: {name}", f"{secs * 1000:.0f} ms", f"import floor {floor_ms:.0f} ms",
                                   ratio, f"≤ {budget}×", ratio <= budget))
            verdict = "" if not budget else ("meets" if ratio <= budget else "MISSES") + f" budget ≤ {budget}×"
            ok &= not budget or ratio <= budget
            print(f"  {name:<8} {secs * 1000:7.1f} ms  {ratio:5.2f}× floor  {verdict}")
        db = work / "ids.db"
        make_db(db, args.rows)
        out = subprocess.run([PY, "-c", TOKENIZE, str(db)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout)
        us = r["seconds"] / args.rows * 1e6
        mb = r["maxrss_kb"] / 1024
        print(f"== tokenizing {args.rows} identifiers from SQLite (end to end, fresh process)")
        print(f"  {us:.2f} µs/identifier ({r['seconds']:.2f} s), {r['servers']} server + {r['networks']} "
              f"network tokens, {r['skipped']} skipped")
        print(f"  peak RSS {mb:.1f} MB")
        verdict_us, verdict_mb = ("meets" if us <= 3 else "MISSES"), ("meets" if mb <= 100 else "MISSES")
        print(f"  {verdict_us} budget ≤ 3 µs; {verdict_mb} budget ≤ 100 MB")
        ok &= us <= 3 and mb <= 100
        rows.append(Budget(f"tokenize {args.rows} ids: time", f"{us:.2f} µs/id", "", None, "≤ 3 µs", us <= 3))
        rows.append(Budget(f"tokenize {args.rows} ids: peak RSS", f"{mb:.1f} MB", "", None, "≤ 100 MB", mb <= 100))
    print("ALL BUDGETS MET" if ok else "SOME BUDGETS MISSED")
    emit(rows, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
