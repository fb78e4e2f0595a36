"""Soak: the real daemon loop against the reference server for --minutes, under a rotation of
faults, sampling the agent process's RSS, open fds, threads and CPU from /proc. Flat = pass.

    python bench/soak.py [--minutes 3] [--rows 24] [--fault-every 3] [--seed N] [--keep DIR]

How time is accelerated (no production knob): the schedule's intervals stay as configured (1 h
heartbeat, 6 h license check, 24 h digest — the config refuses less than 60 s). The agent runs in
a child process as the daemon's events: for each one a fresh `Agent` takes its step (engine, spool,
ledger, license, metrics), as each worker process of `fluxagent run` does, and the wait between
events skips its timeout on the injected clock instead of sleeping (bench/soakkit.py). So each wait
jumps to the next wake-up, and a 3-minute run covers months of heartbeats, license checks, digests
and backoffs over real loopback HTTP, real files and real signals. The reference server (this
process, 127.0.0.1) reads the same clock, so receipts carry consistent times. Work inside a step
(HTTP, fsync, slow answers) takes real time. (The resident supervisor itself, which cannot grow
with the work, is measured by bench/bench_delivery.py; its process model by tests/test_supervisor.py.)

--fault-every virtual hours after the last fault has played out (its scripted answers consumed,
the server or database back), the next fault of a rotation is played while the agent waits:
503 storms with and without Retry-After, 429 with absurd and HTTP-date Retry-After, slow answers,
each kind of bad receipt, hang-ups and junk bodies, the server stopped (connections refused) for
2 h, a SIGHUP reload (heartbeat 1 h ↔ 90 m), a SIGHUP with a bad config (the old one must stay),
credential requests (SIGUSR1 to the child: a fetch as a credentials worker does), the SQLite
platform database gone for 3 h. At the end the faults stop, the agent must drain its spool, then
it gets SIGTERM and must exit 0.

Pass criteria (exit 1 otherwise), over the samples after a warm-up (one whole fault rotation and
a tenth of the run), split into thirds, the first and last third compared:
  RSS (median) grows ≤ 2 MiB — Python's allocator keeps freed arenas and glibc trims lazily, so a flat
      process wanders by an arena or two; a leak of even a few hundred bytes per wake-up over the
      tens of thousands of wake-ups of one run exceeds it (the summary prints the bound per wake-up);
  open fds and threads (highest count) do not grow at all — one leaked per cycle shows at once;
  CPU per wake-up (median) grows ≤ 1.5× — a cost that grows with the ledger or spool would show here;
and invariants: ledger chain valid, spool readable with nothing quarantined, seq first seen by the
server in increasing order and resent only as the same bytes, every message the ledger calls sent
accepted by the server, nothing rejected, the daemon never crashed (no traceback, exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_delivery import cpu_seconds, rss_kib  # noqa: E402
from soakkit import FAULTS, HOUR, Target, VirtualClock, child_main  # noqa: E402

RSS_GROWTH_MIB = 2.0
CPU_GROWTH = 1.5


def proc_sample(pid: int) -> dict[str, float]:
    """Return RSS (MiB), open fds, threads and CPU seconds of pid, from /proc."""
    threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Threads:"))
    return {"rss": rss_kib(pid) / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads,
            "cpu": cpu_seconds(pid)}


class SeqRecord:
    """What the server accepted, checked as it arrives: first-seen seqs increase, resends are the same bytes."""

    def __init__(self) -> None:
        self.bodies: dict[int, bytes] = {}
        self.last_first = 0
        self.requests = self.resent = 0
        self.problems: list[str] = []

    def take(self, received: list[Any]) -> None:
        for r in received:
            self.requests += 1
            if r.status != 200 or r.payload is None:
                continue
            seq = r.payload["seq"]
            if seq in self.bodies:
                self.resent += 1
                if self.bodies[seq] != r.body:
                    self.problems.append(f"seq {seq} resent with different bytes")
            else:
                if seq <= self.last_first:
                    self.problems.append(f"seq {seq} first seen after seq {self.last_first}")
                self.last_first = seq
                self.bodies[seq] = r.body


def growth(samples: list[dict[str, float]], warmup: int) -> dict[str, tuple[float, float]]:
    """Return (first third, last third) per figure over samples[warmup:]: medians of RSS and CPU per
    wake-up, highest counts of fds and threads (a keep-alive connection comes and goes; a leak stays)."""
    window = samples[warmup:]
    third = max(1, len(window) // 3)
    first, last = window[:third], window[-third:]
    out = {}
    for k in ("rss", "cpu_per_tick"):
        out[k] = (statistics.median(s[k] for s in first), statistics.median(s[k] for s in last))
    for k in ("fds", "threads"):
        out[k] = (max(s[k] for s in first), max(s[k] for s in last))
    return out


def parent(args: argparse.Namespace) -> int:
    import nacl.signing
    from killkit import check_state, reopen

    from fluxagent.statedir.ledger import Ledger
    from fluxagent.testing.server import ReferenceServer
    from fluxagent.testing.workspace import make_workspace

    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="fluxagent-soak-"))
    mono0, epoch0 = time.monotonic(), time.time()
    clock = VirtualClock(mono0, epoch0)
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    faults = [f for f in FAULTS if args.faults is None or f[0] in args.faults]
    rng.shuffle(faults)
    problems: list[str] = []
    with ReferenceServer(signing_keys=keys, clock=clock) as server:
        ws = make_workspace(root / "ws", server_url=server.url, vendor_keys=keys, now=epoch0)
        cfg_path, log_path = ws.root / "fluxagent.toml", ws.root / "agent.log"
        mine, theirs = socket.socketpair()
        with open(ws.root / "child.stderr", "wb") as err:
            child = subprocess.Popen(
                [sys.executable, __file__, "--child", str(cfg_path), str(theirs.fileno()), repr(mono0), repr(epoch0),
                 str(log_path)], pass_fds=(theirs.fileno(),), stdout=err, stderr=err)
        theirs.close()
        t = Target(server, child.pid, cfg_path, Path(ws.cfg.platform.database[len("sqlite:///"):]),
                   ws.cfg.instance.state_dir, cfg_path.read_text(), clock)
        record = SeqRecord()
        reader = mine.makefile("rb")
        start = time.monotonic()
        end = start + args.minutes * 60
        every = args.minutes * 60 / args.rows
        next_sample, next_fault = start + every, epoch0 + args.fault_every * HOUR
        played = ticks = 0
        samples: list[dict[str, float]] = []
        prev = proc_sample(child.pid) | {"at": start, "ticks": 0}
        settle_from: float | None = None
        warmup = 0
        print(f"seed {args.seed}; {len(faults)} faults, one every {args.fault_every:g} virtual h; workspace {root}")
        print(f"{'real s':>6} {'virt d':>7} {'wakeups':>8} {'accepted':>8} {'RSS MiB':>8} {'fds':>4} {'thr':>4} "
              f"{'CPU %':>6} {'CPU µs/wake':>11}", flush=True)
        while True:
            line = reader.readline()
            if not line:
                problems.append(f"the daemon ended unasked (exit {child.wait()})")
                break
            clock.skipped = json.loads(line)["skipped"]
            ticks += 1
            t.due_undos()
            now_real = time.monotonic()
            # the next fault once the last has played out: faults queued faster than the agent's backoff
            # lets it consume them would hold it in one endless outage, a test of the fault script only
            quiet = not len(server.faults) and not t.undo
            if settle_from is None and now_real < end and clock() >= next_fault and faults and quiet:
                name, fn = faults[played % len(faults)]
                fn(t)
                t.count(name)
                played += 1
                next_fault = clock() + args.fault_every * HOUR
            record.take(server.received)
            server.clear_received()
            if now_real >= next_sample and settle_from is None:
                s = proc_sample(child.pid) | {"at": now_real, "ticks": ticks}
                dt, dn = s["at"] - prev["at"], max(1, s["ticks"] - prev["ticks"])
                s["cpu_per_tick"] = (s["cpu"] - prev["cpu"]) / dn * 1e6
                samples.append(s)
                if not warmup and played >= len(faults) and now_real - start >= args.minutes * 6:
                    warmup = len(samples)
                print(f"{now_real - start:6.0f} {(clock() - epoch0) / 86400:7.1f} {ticks:8d} {len(record.bodies):8d} "
                      f"{s['rss']:8.1f} {s['fds']:4.0f} {s['threads']:4.0f} {(s['cpu'] - prev['cpu']) / dt * 100:6.1f} "
                      f"{s['cpu_per_tick']:11.0f}", flush=True)
                prev, next_sample = s, next_sample + every
            if settle_from is None and now_real >= end:
                settle_from = clock()
                for _, undo in sorted(t.undo, key=lambda u: u[0]):
                    undo()  # the server back, the database back, the good config in place
                t.undo.clear()
                server.faults.clear()
            if settle_from is not None:
                spooled = list((ws.cfg.instance.state_dir / "spool" / "new").iterdir())
                if (not spooled and clock() - settle_from >= 2 * HOUR) or clock() - settle_from >= 3 * 86400:
                    if spooled:
                        problems.append(f"{len(spooled)} messages still spooled 3 virtual days after the faults")
                    child.send_signal(signal.SIGTERM)
                    mine.sendall(b"go\n")
                    break
            mine.sendall(b"go\n")
        code = child.wait(60)
        mine.close()
        record.take(server.received)
    problems += record.problems
    if code != 0:
        problems.append(f"the daemon exited {code} after SIGTERM")
    stderr = (ws.root / "child.stderr").read_text(errors="replace")
    if "Traceback" in stderr:
        problems.append("the daemon printed a traceback:\n" + stderr[-2000:])
    try:
        final = check_state(ws.cfg)  # ledger chain, seq file, spool entries, schedule, license status
        reopen(ws.cfg)
    except AssertionError as exc:
        problems.append(f"state check: {exc}")
        final = {}
    entries = list(Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True).entries())
    sent = {e.seq for e in entries if e.event == "sent" and e.seq is not None}
    rejected = [e for e in entries if e.event == "rejected"]
    if rejected:
        problems.append(f"{len(rejected)} messages rejected, e.g. {rejected[0]}")
    missing = sorted(sent - set(record.bodies))
    if missing:
        problems.append(f"the ledger says sent, the server never accepted: seq {missing[:10]}")
    events: dict[str, int] = {}
    for text in log_path.read_text().splitlines():
        e = json.loads(text)
        if e["level"] in ("warning", "error") or e["event"] in ("config.reloaded", "delivery.recovered"):
            events[e["event"]] = events.get(e["event"], 0) + 1
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return summary(args, samples, warmup, ticks, clock() - epoch0, record, t.counts, events, final, problems)


def summary(args: argparse.Namespace, samples: list[dict[str, float]], warmup: int, ticks: int, virtual: float,
            record: SeqRecord, counts: dict[str, int], events: dict[str, int], final: dict[str, Any],
            problems: list[str]) -> int:
    """Print the summary and the verdict; return the exit code."""
    print(f"== {ticks} wake-ups over {virtual / 86400:.1f} virtual days; server: {len(record.bodies)} messages "
          f"accepted in {record.requests} requests ({record.resent} resends of the same bytes); final state {final}")
    print("== faults played: " + ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())))
    print("== agent log (warnings, errors, reloads, recoveries): "
          + ", ".join(f"{k} ×{v}" for k, v in sorted(events.items())))
    if len(samples) - warmup < 3:
        problems.append(f"too few samples after the warm-up ({len(samples)} in all, warm-up {warmup}): run longer")
    else:
        g = growth(samples, warmup)
        span = samples[-1]["ticks"] - samples[warmup]["ticks"]
        rss0, rss1 = g["rss"]
        print(f"== growth, first vs last third of {len(samples) - warmup} samples after {warmup} warm-up samples:")
        checks = [
            ("RSS", f"{rss0:.1f} → {rss1:.1f} MiB ({rss1 - rss0:+.2f}); limit +{RSS_GROWTH_MIB:g} MiB, i.e. "
                    f"{RSS_GROWTH_MIB * 2**20 / max(1, span * 2 / 3):.0f} bytes per wake-up",
             rss1 - rss0 <= RSS_GROWTH_MIB),
            ("fds", f"{g['fds'][0]:.0f} → {g['fds'][1]:.0f}; limit no growth", g["fds"][1] <= g["fds"][0]),
            ("threads", f"{g['threads'][0]:.0f} → {g['threads'][1]:.0f}; limit no growth",
             g["threads"][1] <= g["threads"][0]),
            ("CPU/wake-up", f"{g['cpu_per_tick'][0]:.0f} → {g['cpu_per_tick'][1]:.0f} µs; limit ×{CPU_GROWTH:g}",
             g["cpu_per_tick"][1] <= CPU_GROWTH * g["cpu_per_tick"][0]),
        ]
        for name, text, ok in checks:
            print(f"  {'flat' if ok else 'GROWS'}  {name:<11} {text}")
            if not ok:
                problems.append(f"{name} grows: {text}")
    for p in problems:
        print(f"FAIL {p}")
    print("PASS: flat, invariants hold" if not problems else f"FAIL: {len(problems)} problem(s)")
    return 1 if problems else 0


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        cfg, fd, mono0, epoch0, log = sys.argv[2:7]
        return child_main(Path(cfg), int(fd), float(mono0), float(epoch0), Path(log))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="real minutes of faults (default 3; hours by hand)")
    p.add_argument("--rows", type=int, default=24, help="curve rows (samples) over the run")
    p.add_argument("--fault-every", type=float, default=3.0, help="virtual hours between faults")
    p.add_argument("--faults", type=lambda v: [n.strip() for n in v.split(",") if n.strip()], default=None,
                   help="play only these faults (comma-separated names, as the summary prints them; '' for none)")
    p.add_argument("--seed", type=int, default=None, help="order of the fault rotation")
    p.add_argument("--keep", type=Path, default=None, help="keep the workspace here")
    args = p.parse_args()
    unknown = set(args.faults or ()) - {name for name, _ in FAULTS}
    if unknown:
        p.error(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(name for name, _ in FAULTS)}")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
