"""Budget of the database issue, measured side by side in one run; prints figures, ratios, PASS/FAIL.

    python bench/bench_databases.py [--rows 1000000] [--runs 3] [--json]

The same N identifier rows (half servers — hostnames or IPs —, half CIDRs) are stored in SQLite,
in a throw-away PostgreSQL and in a throw-away MariaDB server on 127.0.0.1. Each engine is read
end to end (`open_platform` → streamed identifiers → keyed tokens, as the daemon's digest does)
in a fresh process, interleaved, `--runs` times; medians are compared.
Budgets: peak RSS ≤ 100 MB per engine; PostgreSQL and MariaDB throughput within 2× of SQLite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from budgets import Budget, as_installed, emit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluxagent.testing.sample_db import create_schema, load_rows
from tests.support import dbservers

PY = sys.executable
RSS_BUDGET_MB = 100.0
RATIO_BUDGET = 2.0

READ = r"""
import resource, sys, time, json
from fluxagent.config import PlatformConfig
from fluxagent.sources.platform import open_platform
from fluxagent.facts import HostFacts
from fluxagent.collect import tokens_for
key = bytes(range(32))
t0 = time.perf_counter()
src = open_platform(PlatformConfig(database=sys.argv[1], statement_timeout=600))
toks = tokens_for(src, HostFacts("h.example", "0123456789abcdef0123456789abcdef", (), ()), key)
src.close()
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "tokens": len(toks.servers) + len(toks.networks), "root": toks.root,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def servers(half: int) -> Iterator[tuple[int, str | None, str | None]]:
    for i in range(half):
        if i % 2:
            yield i, f"node{i}.rack{i % 97}.dc.example.net", None
        else:
            yield i, None, (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if i % 4
                            else f"2001:db8::{i >> 16:x}:{i & 0xffff:x}")


def networks(half: int) -> Iterator[tuple[int, str]]:
    for i in range(half):
        yield i, (f"{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24" if i % 3
                  else f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64")


def fill(url: str, rows: int) -> float:
    """Create the reference schema at url and load the identifier rows; return seconds taken."""
    t0 = time.perf_counter()
    if url.startswith("sqlite:"):
        import sqlite3

        from fluxagent.testing.sample import ddl

        conn = sqlite3.connect(url[len("sqlite:///"):])
        conn.executescript(ddl("sqlite"))
        conn.executemany("INSERT INTO servers (id, hostname, ip_address) VALUES (?,?,?)", servers(rows // 2))
        conn.executemany("INSERT INTO network_ranges (id, cidr) VALUES (?,?)", networks(rows // 2))
        conn.commit()
        conn.close()
    else:
        create_schema(url)
        load_rows(url, "servers", ("id", "hostname", "ip_address"), servers(rows // 2))
        load_rows(url, "network_ranges", ("id", "cidr"), networks(rows // 2))
    return time.perf_counter() - t0


def read(url: str) -> dict[str, float]:
    out = subprocess.run([PY, "-c", READ, url], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = ap.parse_args()
    as_installed()
    budgets: list[Budget] = []
    started: list[dbservers.DbServer] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = {"sqlite": f"sqlite:///{Path(tmp) / 'ids.db'}"}
            for engine in ("postgresql", "mariadb"):
                srv = dbservers.start(engine)
                started.append(srv)
                urls[engine] = srv.create_database("fa_bench")
            print(f"== {args.rows} identifier rows per engine (load time, not budgeted)")
            for engine, url in urls.items():
                print(f"  {engine:<10} loaded in {fill(url, args.rows):6.1f} s")
            samples: dict[str, list[dict[str, float]]] = {e: [] for e in urls}
            for _ in range(args.runs):
                for engine, url in urls.items():  # interleaved, so drift hits every engine alike
                    samples[engine].append(read(url))
        finally:
            for srv in started:
                srv.destroy()
    base = statistics.median(s["seconds"] for s in samples["sqlite"])
    roots = {s["root"] for runs in samples.values() for s in runs}
    ok = len(roots) == 1
    print(f"== read end to end (open → stream → tokens), fresh process, median of {args.runs} interleaved runs")
    for engine, runs in samples.items():
        secs = statistics.median(s["seconds"] for s in runs)
        rss = max(s["maxrss_kb"] for s in runs) / 1024
        ratio = secs / base
        rate = args.rows / secs / 1000
        rss_ok = rss <= RSS_BUDGET_MB
        ratio_ok = engine == "sqlite" or ratio <= RATIO_BUDGET
        ok &= rss_ok and ratio_ok
        budgets.append(Budget(f"{engine} stream {args.rows} ids: peak RSS", f"{rss:.1f} MB", "", None,
                              f"≤ {RSS_BUDGET_MB:.0f} MB", rss_ok))
        if engine != "sqlite":
            budgets.append(Budget(f"{engine} stream {args.rows} ids: throughput", f"{rate:.0f}k rows/s",
                                  f"SQLite {args.rows / base / 1000:.0f}k rows/s", ratio,
                                  f"time ≤ {RATIO_BUDGET:g}×", ratio_ok))
        print(f"  {engine:<10} {secs:6.2f} s  {rate:6.0f}k rows/s  {ratio:4.2f}× SQLite  peak RSS {rss:5.1f} MB  "
              f"RSS {'PASS' if rss_ok else 'FAIL'} (≤ {RSS_BUDGET_MB:.0f} MB)"
              + ("" if engine == "sqlite" else f"  speed {'PASS' if ratio_ok else 'FAIL'} (≤ {RATIO_BUDGET:g}×)"))
    print(f"  token roots identical across engines: {'PASS' if len(roots) == 1 else 'FAIL'}")
    budgets.append(Budget("token roots identical across engines", f"{len(roots)} distinct", "", None, "1",
                          len(roots) == 1))
    print("ALL BUDGETS MET" if ok else "SOME BUDGETS MISSED")
    emit(budgets, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
