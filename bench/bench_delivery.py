"""Budgets of the daemon, measured side by side in one run; prints figures, ratios, PASS/FAIL.

    python bench/bench_delivery.py [--idle-seconds 60] [--runs 5] [--rows 1000000] [--json]

`fluxagent run` is a resident supervisor (standard library only) and a worker process per event.
Every fluxagent process is started as the service starts it: the `fluxagent` console script of
this install, with the small environment systemd gives a service (PATH, LANG), not the caller's.

1. Idle: `fluxagent run` after its first cycle against a reference server on 127.0.0.1 (no worker
   running), next to Debian's prometheus-node-exporter (scraped once, then left alone), both idling
   for the same window, with the unit's watchdog (WATCHDOG_USEC 5 min) and a NOTIFY_SOCKET.
   CPU = utime+stime from /proc over the window; RSS = VmRSS at its end.
   Budgets: supervisor idle CPU ≤ 10 ms over the window; RSS ≤ 0.8× node-exporter's.
2. Inventory: a second daemon whose platform database holds --rows identifiers (servers and
   networks, bench/bench_core.py's builder): its first worker digests them; the supervisor's idle
   private memory (RssAnon) afterwards. Budget: within ±1 MiB of the small daemon's. (Private
   memory, not VmRSS: the resident pages of the shared interpreter file vary by about a megabyte
   from one process to the next with the page cache — the kernel maps cached neighbours of each
   page it faults in — while what a digest could leave behind in the supervisor is private.)
3. One event: the CPU of the first step's worker (license, heartbeat, digest: start to exit, from
   the supervisor's cutime+cstime), against `fluxagent preview` (all kinds), medians of --runs
   fresh instances. Budget: ≤ 2× preview.
4. A credential from the daemon's memory: `docker-credential-fluxagent get` while the daemon holds
   one, against the import floor `python -c "import httpx, nacl.signing, psutil, typer, structlog"`,
   wall-time medians of interleaved runs. Budget: ≤ 0.5× the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import nacl.signing  # noqa: E402
import tomli_w  # noqa: E402
from agentkit import Daemon, NotifySocket  # noqa: E402
from budgets import Budget, as_installed, emit  # noqa: E402

from fluxagent.testing.server import ReferenceServer  # noqa: E402
from fluxagent.testing.workspace import Workspace, make_workspace  # noqa: E402

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PY = sys.executable
BIN = Path(PY).parent
FLOOR = [PY, "-c", "import httpx, nacl.signing, psutil, typer, structlog"]
REGISTRY = "registry.fluxbilling.example"
WATCHDOG_USEC = "300000000"  # the unit's WatchdogSec=5min


def service_env(**extra: str) -> dict[str, str]:
    """Return the environment systemd gives a service, plus extra."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """Return utime+stime of pid in seconds, from /proc/<pid>/stat."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """Return cutime+cstime of pid: the CPU of the children it has reaped (its workers), in seconds."""
    fields = proc_stat(pid)
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Return VmRSS (or another field, e.g. RssAnon) of pid in KiB."""
    m = re.search(field + r":\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert m is not None
    return int(m[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def child_cpu(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run cmd; return (exit code, user+sys CPU seconds of the child)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


class Service(Daemon):
    """`fluxagent --config PATH run` through the console script, as the unit starts it."""

    def __init__(self, cfg_path: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([str(BIN / "fluxagent"), "--config", str(cfg_path), "run"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        import threading

        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def settle(d: Daemon, timeout: float = 600) -> None:
    """Wait until no worker runs and the supervisor has been quiet for a second."""
    end = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < end and quiet < 10:
        quiet = 0 if d.children() else quiet + 1
        time.sleep(0.1)


def idle(cfg_path: Path, seconds: float) -> dict[str, float]:
    """Measure fluxagent run and node-exporter idling side by side."""
    notify = NotifySocket()
    agent = Service(cfg_path, service_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=WATCHDOG_USEC))
    port = free_port()
    exporter = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify.wait_for("STATUS", "license valid; spool 0", timeout=60)  # first cycle delivered
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        settle(agent)
        time.sleep(1.0)  # let both settle after their one piece of work
        a0, e0 = cpu_seconds(agent.proc.pid), cpu_seconds(exporter.pid)
        time.sleep(seconds)
        a1, e1 = cpu_seconds(agent.proc.pid), cpu_seconds(exporter.pid)
        out = {"agent_cpu": a1 - a0, "exporter_cpu": e1 - e0, "agent_rss": rss_kib(agent.proc.pid),
               "agent_anon": rss_kib(agent.proc.pid, "RssAnon"),
               "exporter_rss": rss_kib(exporter.pid), "workers_during_idle": float(bool(agent.children()))}
        agent.signal(signal.SIGTERM)
        agent.wait()
        return out
    finally:
        agent.stop()
        exporter.terminate()
        exporter.wait()
        notify.close()


def inventory(root: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey], rows: int) -> dict[str, Any]:
    """Start a daemon on a platform database of rows identifiers; return the supervisor's idle RSS after its
    first worker digested them, how long that worker took and what became of the digest."""
    from bench_core import make_db

    ws = make_workspace(root / "big", server_url=server.url, vendor_keys=keys)
    db = root / "big.db"
    make_db(db, rows)
    cfg_path = ws.root / "fluxagent.toml"
    doc = __import__("tomllib").loads(cfg_path.read_text())
    doc["platform"]["database"] = f"sqlite:///{db}"
    cfg_path.write_text(tomli_w.dumps(doc))
    notify = NotifySocket()
    agent = Service(cfg_path, service_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=WATCHDOG_USEC))
    try:
        notify.wait_for("READY", "1", timeout=60)
        t = time.monotonic()
        before = rss_kib(agent.proc.pid)
        peak = before
        record = ws.cfg.instance.state_dir / "supervisor.json"
        while time.monotonic() - t < 900:  # until the first step worker has ended, however it went
            peak = max(peak, rss_kib(agent.proc.pid))
            with contextlib.suppress(OSError, ValueError):
                last = json.loads(record.read_text()).get("last_worker") or {}
                if last.get("mode") == "step":
                    break
            time.sleep(0.2)
        settle(agent)
        took = time.monotonic() - t
        time.sleep(1.0)
        outcome = ", ".join(e["event"] for e in agent.events() if e["event"].startswith("digest.")) or "no digest event"
        out = {"rss": rss_kib(agent.proc.pid), "anon": rss_kib(agent.proc.pid, "RssAnon"),
               "rss_at_ready": before, "peak": peak, "took": took,
               "outcome": outcome}
        agent.signal(signal.SIGTERM)
        agent.wait()
        return out
    finally:
        agent.stop()
        notify.close()


def event_cpu(root: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey], runs: int) -> dict[str, float]:
    """Measure the first step worker's CPU of fresh daemons, and preview's, interleaved; return medians."""
    env = service_env()
    step: list[float] = []
    preview: list[float] = []
    check: list[float] = []
    for i in range(runs):
        ws = make_workspace(root / f"event{i}", server_url=server.url, vendor_keys=keys)
        cfg_path = ws.root / "fluxagent.toml"
        notify = NotifySocket()
        agent = Service(cfg_path, service_env(NOTIFY_SOCKET=str(notify.path)))
        try:
            notify.wait_for("READY", "1", timeout=60)
            c0 = children_cpu(agent.proc.pid)  # the start-up check worker, reaped before READY
            notify.wait_for("STATUS", "license valid; spool 0", timeout=60)
            settle(agent)
            c1 = children_cpu(agent.proc.pid)
            agent.signal(signal.SIGTERM)
            agent.wait()
        finally:
            agent.stop()
            notify.close()
        check.append(c0)
        step.append(c1 - c0)
        code, cpu = child_cpu([str(BIN / "fluxagent"), "--config", str(cfg_path), "preview"], env)
        if code != 0:
            raise SystemExit(f"preview exited {code}")
        preview.append(cpu)
    return {"step": statistics.median(step), "preview": statistics.median(preview), "check": statistics.median(check)}


def timed(cmd: list[str], stdin: str, env: dict[str, str]) -> float:
    """Return the wall time of one run of cmd, in seconds; fails loudly if it fails."""
    t = time.perf_counter()
    subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t


def cached_credential(ws: Workspace, runs: int) -> dict[str, float]:
    """Measure docker-credential-fluxagent get answered from the daemon's memory, against the import floor."""
    cfg_path = ws.root / "fluxagent.toml"
    notify = NotifySocket()
    agent = Service(cfg_path, service_env(NOTIFY_SOCKET=str(notify.path)))
    env = service_env(FLUXAGENT_CONFIG=str(cfg_path))
    helper = [str(BIN / "docker-credential-fluxagent"), "get"]
    try:
        notify.wait_for("STATUS", "license valid; spool 0", timeout=60)
        settle(agent)
        timed(helper, REGISTRY, env)  # the first one has a worker fetch it
        settle(agent)
        c0 = children_cpu(agent.proc.pid)
        times: dict[str, list[float]] = {"get": [], "floor": []}
        for _ in range(runs):
            times["get"].append(timed(helper, REGISTRY, env))
            times["floor"].append(timed(FLOOR, "", env))
        workers = children_cpu(agent.proc.pid) - c0
        agent.signal(signal.SIGTERM)
        agent.wait()
    finally:
        agent.stop()
        notify.close()
    return {"get": statistics.median(times["get"]), "floor": statistics.median(times["floor"]),
            "worker_cpu_meanwhile": workers}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rows", type=int, default=1_000_000, help="identifiers in the inventory daemon's database")
    p.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = p.parse_args()
    as_installed()
    if not Path(NODE_EXPORTER).exists():
        raise SystemExit(f"{NODE_EXPORTER} is missing: apt-get install prometheus-node-exporter")
    root = Path(tempfile.mkdtemp(prefix="fluxagent-bench-"))
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    try:
        with ReferenceServer(signing_keys=keys, credentials_ttl=3600, max_body=1 << 30) as server:  # a 47 MB digest
            ws = make_workspace(root / "ws", server_url=server.url, vendor_keys=keys)
            i = idle(ws.root / "fluxagent.toml", args.idle_seconds)
            big = inventory(root, server, keys, args.rows)
            e = event_cpu(root, server, keys, args.runs)
            c = cached_credential(ws, args.runs * 2 + 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss_ratio = i["agent_rss"] / i["exporter_rss"]
    grown = (big["anon"] - i["agent_anon"]) / 1024
    cpu_ratio = e["step"] / e["preview"]
    cred_ratio = c["get"] / c["floor"]
    results = [
        ("idle CPU", i["agent_cpu"] <= 0.010,
         f"supervisor {i['agent_cpu'] * 1000:.0f} ms, node-exporter {i['exporter_cpu'] * 1000:.0f} ms "
         f"over {args.idle_seconds:g} s (budget ≤ 10 ms)"),
        ("idle RSS", rss_ratio <= 0.8,
         f"supervisor {i['agent_rss'] / 1024:.1f} MiB, node-exporter {i['exporter_rss'] / 1024:.1f} MiB, "
         f"ratio {rss_ratio:.2f}× (budget ≤ 0.8×)"),
        ("inventory", abs(grown) <= 1.0,
         f"supervisor idle {big['rss'] / 1024:.1f} MiB ({big['anon'] / 1024:.2f} MiB private) after its worker "
         f"digested {args.rows} identifiers ({big['outcome']}, {big['took']:.0f} s; supervisor peak "
         f"{big['peak'] / 1024:.1f} MiB); private memory {grown:+.2f} MiB against the small instance's "
         f"{i['agent_anon'] / 1024:.2f} MiB (budget ±1 MiB)"),
        ("event CPU", cpu_ratio <= 2.0,
         f"first step worker {e['step'] * 1000:.0f} ms, preview {e['preview'] * 1000:.0f} ms "
         f"(medians of {args.runs}), ratio {cpu_ratio:.2f}× (budget ≤ 2×); a config check worker "
         f"{e['check'] * 1000:.0f} ms"),
        ("cached get", cred_ratio <= 0.5 and c["worker_cpu_meanwhile"] == 0,
         f"docker helper get from the daemon's memory {c['get'] * 1000:.0f} ms, import floor "
         f"{c['floor'] * 1000:.0f} ms, ratio {cred_ratio:.2f}× (budget ≤ 0.5×); worker CPU meanwhile "
         f"{c['worker_cpu_meanwhile'] * 1000:.0f} ms"),
    ]
    for name, ok, text in results:
        print(f"{verdict(ok)}  {name:<10} {text}")
    ex_cpu = i["exporter_cpu"]
    emit([
        Budget(f"idle CPU over {args.idle_seconds:g} s", f"{i['agent_cpu'] * 1000:.0f} ms",
               f"node-exporter {ex_cpu * 1000:.0f} ms", i["agent_cpu"] / ex_cpu if ex_cpu else None,
               "≤ 10 ms", results[0][1]),
        Budget("idle RSS (supervisor)", f"{i['agent_rss'] / 1024:.1f} MiB",
               f"node-exporter {i['exporter_rss'] / 1024:.1f} MiB", rss_ratio, "≤ 0.8×", results[1][1]),
        Budget(f"idle private RSS after a {args.rows}-identifier digest", f"{big['anon'] / 1024:.2f} MiB",
               f"small instance {i['agent_anon'] / 1024:.2f} MiB", None, "±1 MiB", results[2][1]),
        Budget("one event's CPU (step worker)", f"{e['step'] * 1000:.0f} ms", f"preview {e['preview'] * 1000:.0f} ms",
               cpu_ratio, "≤ 2×", results[3][1]),
        Budget("docker helper get from memory", f"{c['get'] * 1000:.0f} ms",
               f"import floor {c['floor'] * 1000:.0f} ms", cred_ratio, "≤ 0.5×", results[4][1]),
    ], args.json)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
