"""Budgets of large inventories, measured side by side in one run; prints figures, ratios and PASS/FAIL.

    python bench/bench_inventory.py [--rows 1000000] [--small 250000] [--json]

An inventory of N identifiers (N/2 servers, half host names and half IPv4; N/2 ranges, half IPv4
/24 and half IPv6 /64) in SQLite, the default config, the reference server in its own process
(its memory is not the agent's). The fluxagent package is byte-compiled first, as installed. Each
command runs in a fresh process started from a bare launcher, with the bench's own writes flushed
before it; peak RSS is that process's own (wait4 in the launcher: measured from the bench itself,
a child's ru_maxrss would include the bench's memory at fork), wall time is compared with the import floor
`python -c "import httpx, nacl.signing, psutil, typer, structlog"` measured in the same run.

1. `preview --kind digest`, `preview --kind digest --json`, `run --once`: each ≤ 100 MB peak RSS
   and ≤ 3 µs per identifier of wall time beyond the floor; `run --once` exits 0 with license,
   heartbeat and digest delivered.
2. Memory slope: peak RSS at N minus peak RSS at the small inventory, per added identifier,
   ≤ 40 bytes (each command).
3. Steady state: 1% churn (0.5% removed, 0.5% added), then `run --once` again: the delta payload
   is ≤ 3% of the full payload's bytes (payload sizes from the ledger's digest summaries).
4. `log --verify` after the first `run --once`: peak RSS at N within 1.1× of that at the small
   inventory (a digest is ledgered by its hash and list sizes, so lines do not grow with N).
5. Air-gapped, from a fresh workspace on the same inventory: `export` (the bundle, ~62 MB at 1M)
   and `import` of the server's answer each ≤ 100 MB peak RSS and exit 0 (never a whole digest in
   memory, docs/ARCHITECTURE.md, for the air-gapped path as for `run`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from budgets import Budget, as_installed, emit, run_measured

from fluxagent.testing import sample

PY = sys.executable
FLOOR = [PY, "-c", "import httpx, nacl.signing, psutil, typer, structlog"]
MB = 1_000_000
SERVER = r"""
import json, signal, sys, threading, nacl.signing
from fluxagent.testing.server import ReferenceServer
keys = [nacl.signing.SigningKey(bytes.fromhex(h)) for h in sys.argv[1:]]
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
with ReferenceServer(signing_keys=keys, max_body=1 << 30) as srv:
    print(json.dumps({"url": srv.url}), flush=True)
    done.wait()
"""


def measure(cmd: list[str], out: Path | None = None) -> tuple[float, float, int]:
    """Run cmd; return (wall seconds, peak RSS in MB of that process alone, exit code)."""
    return run_measured(cmd, out)


def make_db(path: Path, n: int, churn: float = 0.0) -> None:
    """Write an inventory of n identifiers; with churn, that fraction replaced (half removed, half new)."""
    half, quarter = n // 2, n // 4
    drop = int(n * churn / 4)  # per quarter: 0.5% removed and 0.5% added in all

    def servers() -> Any:
        for i in range(drop, half + drop):
            if i % 2:
                yield (f"node{i}.rack{i % 97}.dc.example.net", None)
            else:
                yield (None, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")

    def nets() -> Any:
        for i in range(drop, quarter + drop):
            yield (f"{(i >> 16) + 11}.{(i >> 8) & 255}.{i & 255}.0/24",)
            yield (f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64",)

    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(sample.ddl("sqlite"))
    conn.execute("INSERT INTO settings VALUES ('version', '4.12.3')")
    conn.executemany("INSERT INTO servers (hostname, ip_address) VALUES (?,?)", servers())
    conn.executemany("INSERT INTO network_ranges (cidr) VALUES (?)", nets())
    conn.commit()
    conn.close()


def workspace(root: Path, url: str, seeds: list[bytes], db: Path) -> Path:
    """Return the config path of a fresh workspace at root talking to url, reading db (default config)."""
    import tomllib

    import nacl.signing
    import tomli_w

    from fluxagent.testing.workspace import make_workspace

    ws = make_workspace(root, server_url=url, vendor_keys=[nacl.signing.SigningKey(s) for s in seeds])
    doc = tomllib.loads(ws.cfg.source.read_text())
    doc["platform"]["database"] = f"sqlite:///{db}"
    ws.cfg.source.write_text(tomli_w.dumps(doc))
    return ws.cfg.source


def digests(state_dir: Path) -> list[dict[str, Any]]:
    """Return the summaries of the delivered digests in the ledger, oldest first."""
    from fluxagent.statedir.ledger import Ledger

    return [e.summary or {} for e in Ledger(state_dir / "ledger", readonly=True).entries()
            if e.kind == "digest" and e.event == "sent"]


def delivered_kinds(state_dir: Path) -> set[str]:
    from fluxagent.statedir.ledger import Ledger

    return {e.kind for e in Ledger(state_dir / "ledger", readonly=True).entries() if e.event == "sent"}


def commands(cfg: Path) -> dict[str, list[str]]:
    base = [PY, "-m", "fluxagent", "--config", str(cfg)]
    return {"preview --kind digest": [*base, "preview", "--kind", "digest"],
            "preview --kind digest --json": [*base, "preview", "--kind", "digest", "--json"],
            "run --once": [*base, "run", "--once"]}


def run_size(work: Path, name: str, n: int, url: str, seeds: list[bytes]) -> tuple[dict[str, tuple[float, float, int]],
                                                                                   Path, Path]:
    """Measure the three commands on an inventory of n; return {command: (wall, MB, exit)}, state dir, db."""
    db = work / f"{name}.db"
    make_db(db, n)
    cfg = workspace(work / name, url, seeds, db)
    out: dict[str, tuple[float, float, int]] = {}
    for label, cmd in commands(cfg).items():
        out[label] = measure(cmd)
    out["log --verify"] = measure([PY, "-m", "fluxagent", "--config", str(cfg), "log", "--verify"])
    return out, work / name / "state", db


def offline_round_trip(work: Path, url: str, seeds: list[bytes], db: Path) -> dict[str, tuple[float, float, int]]:
    """Air-gapped: `export` the inventory of db from a fresh workspace, have the server answer the bundle
    (over HTTP, in its own process), `import` the answer; return {command: (wall, MB, exit)}."""
    import httpx

    from fluxagent.testing.server_offline import OFFLINE_ENDPOINT

    cfg = workspace(work / "offline", url, seeds, db)
    base = [PY, "-m", "fluxagent", "--config", str(cfg)]
    bundle, answer = work / "bundle.json", work / "answer.json"
    out = {"export": measure([*base, "export", "--output", str(bundle)])}
    with httpx.Client(timeout=120) as client:
        answer.write_bytes(client.post(url + OFFLINE_ENDPOINT, content=bundle.read_bytes()).content)
    out["import"] = measure([*base, "import", str(answer)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=250_000)
    ap.add_argument("--floor-runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = ap.parse_args()
    as_installed()
    rows: list[Budget] = []
    seeds = [os.urandom(32), os.urandom(32)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = subprocess.Popen([PY, "-c", SERVER, *(s.hex() for s in seeds)], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            url = json.loads(server.stdout.readline())["url"]
            floor = statistics.median(measure(FLOOR)[0] for _ in range(args.floor_runs))
            small, _, _ = run_size(work, "small", args.small, url, seeds)
            big, state_dir, db = run_size(work, "big", args.rows, url, seeds)
            kinds = delivered_kinds(state_dir)
            offline = offline_round_trip(work, url, seeds, db)
            make_db(db, args.rows, churn=0.01)
            second = measure(commands(work / "big" / "fluxagent.toml")["run --once"])
            sent = digests(state_dir)
        finally:
            server.terminate()
            server.wait()
    print(f"== {args.rows} identifiers (and {args.small} for the slope); import floor {floor * 1000:.0f} ms")
    print(f"  {'command':<30} {'wall':>8} {'µs/id':>7} {'peak RSS':>9} {'at small':>9} {'slope B/id':>10}")
    for label in [k for k in big if k != "log --verify"]:
        wall, mb, code = big[label]
        us = max(0.0, wall - floor) / args.rows * 1e6
        slope = (mb - small[label][1]) * MB / (args.rows - args.small)
        print(f"  {label:<30} {wall:7.2f}s {us:7.2f} {mb:7.1f}MB {small[label][1]:7.1f}MB {slope:10.1f}"
              f"  exit {code}")
        rows.append(Budget(f"{label}: peak RSS", f"{mb:.1f} MB", "", None, "≤ 100 MB", mb <= 100 and code == 0))
        rows.append(Budget(f"{label}: time", f"{us:.2f} µs/id", f"floor {floor * 1000:.0f} ms",
                           wall / floor, "≤ 3 µs/id beyond the floor", us <= 3))
        rows.append(Budget(f"{label}: memory slope", f"{slope:.1f} B/id", f"{small[label][1]:.1f} MB at {args.small}",
                           None, "≤ 40 B/id", slope <= 40))
    (lw, lmb, lcode), (sw, smb, _) = big["log --verify"], small["log --verify"]
    print(f"  log --verify after run --once: {lw:.2f}s {lmb:.1f}MB at {args.rows}, {sw:.2f}s {smb:.1f}MB at"
          f" {args.small}; exit {lcode}")
    rows.append(Budget("log --verify: peak RSS at N vs small", f"{lmb:.1f} MB", f"{smb:.1f} MB", lmb / smb,
                       "≤ 1.1× (ledger lines do not grow with the inventory)", lmb <= 1.1 * smb and lcode == 0))
    for label, (wall, mb, code) in offline.items():
        us = max(0.0, wall - floor) / args.rows * 1e6
        print(f"  air-gapped {label:<19} {wall:7.2f}s {us:7.2f} {mb:7.1f}MB  exit {code}")
        rows.append(Budget(f"air-gapped {label}: peak RSS", f"{mb:.1f} MB", f"{us:.2f} µs/id", None,
                           "≤ 100 MB, exit 0 (memory bounded as for run)", mb <= 100 and code == 0))
    every = {"license", "heartbeat", "digest"} <= kinds and big["run --once"][2] == 0
    print(f"  run --once delivered: {', '.join(sorted(kinds))}; exit {big['run --once'][2]}")
    rows.append(Budget("run --once: every kind delivered", ", ".join(sorted(kinds)), "", None,
                       "license, heartbeat, digest; exit 0", every))
    full = next((d for d in sent if d.get("full")), {})
    delta = sent[-1] if len(sent) > 1 else {}
    ratio = delta.get("payload_bytes", 0) / max(1, full.get("payload_bytes", 0))
    is_delta = "base" in delta and second[2] == 0
    print(f"  1% churn: delta payload {delta.get('payload_bytes')} bytes, full {full.get('payload_bytes')} bytes,"
          f" {ratio * 100:.2f}%; second run --once {second[0]:.2f}s, {second[1]:.1f} MB, exit {second[2]}")
    rows.append(Budget("1% churn: delta payload", f"{delta.get('payload_bytes')} bytes",
                       f"full {full.get('payload_bytes')} bytes", ratio, "≤ 3% of full", is_delta and ratio <= 0.03))
    ok = all(r.ok for r in rows)
    for r in rows:
        print(f"  {'PASS' if r.ok else 'FAIL'}  {r.name}: {r.figure} (limit {r.limit})")
    print("ALL BUDGETS MET" if ok else "SOME BUDGETS MISSED")
    emit(rows, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
