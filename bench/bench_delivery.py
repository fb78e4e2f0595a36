"""Budgets of the delivery issue, measured side by side in one run; prints figures, ratios, PASS/FAIL.

    python bench/bench_delivery.py [--idle-seconds 60] [--runs 5] [--json]

1. Idle: `fluxagent run` after its first cycle against a reference server on 127.0.0.1, next to
   Debian's prometheus-node-exporter (scraped once, then left alone) on 127.0.0.1, both idling for
   the same window. CPU = utime+stime from /proc over the window; RSS = VmRSS at its end.
   Budgets: fluxagent idle CPU ≤ 10 ms over the window; fluxagent RSS ≤ 1.5× node-exporter's.
2. One full cycle: `fluxagent run --once` (license, heartbeat, digest, spool flush) against the
   reference server, and `fluxagent preview`, interleaved, CPU (user+sys from wait4) medians.
   Budget: run --once ≤ 2× preview.

Every fluxagent process gets the small environment systemd gives a service (PATH, LANG), not the
caller's: variables such as SSL_CERT_FILE change what the process loads.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nacl.signing  # noqa: E402
from agentkit import Daemon, NotifySocket  # noqa: E402
from budgets import Budget, emit  # noqa: E402

from fluxagent.testing.server import ReferenceServer  # noqa: E402
from fluxagent.testing.workspace import make_workspace  # noqa: E402

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PY = sys.executable
# what any process holding the required libraries costs, for context next to the RSS figure
FLOOR = [PY, "-c", "import sys; sys.modules['rich'] = None; "
         "import ssl, httpx, nacl.signing, structlog; sys.stdin.read()"]


def service_env(**extra: str) -> dict[str, str]:
    """Return the environment systemd gives a service, plus extra."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float:
    """Return utime+stime of pid in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Return VmRSS of pid in KiB."""
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
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


def idle(cfg_path: Path, seconds: float) -> dict[str, float]:
    """Measure fluxagent run and node-exporter idling side by side."""
    notify = NotifySocket()
    agent = Daemon(cfg_path, env=service_env(NOTIFY_SOCKET=str(notify.path)))
    port = free_port()
    exporter = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify.wait_for("STATUS", "license valid; spool 0", timeout=30)  # first cycle delivered
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)  # let both settle after their one piece of work
        a0, e0 = cpu_seconds(agent.proc.pid), cpu_seconds(exporter.pid)
        time.sleep(seconds)
        a1, e1 = cpu_seconds(agent.proc.pid), cpu_seconds(exporter.pid)
        floor = subprocess.Popen(FLOOR, stdin=subprocess.PIPE, env=service_env())
        time.sleep(1.0)
        out = {"agent_cpu": a1 - a0, "exporter_cpu": e1 - e0, "floor_rss": rss_kib(floor.pid),
               "agent_rss": rss_kib(agent.proc.pid), "exporter_rss": rss_kib(exporter.pid)}
        floor.communicate(b"")
        agent.signal(signal.SIGTERM)
        agent.wait()
        return out
    finally:
        agent.stop()
        exporter.terminate()
        exporter.wait()
        notify.close()


def cycle(cfg_path: Path, runs: int) -> dict[str, float]:
    """Measure run --once and preview CPU, interleaved; return medians."""
    env = service_env()
    base = [PY, "-m", "fluxagent", "--config", str(cfg_path)]
    once: list[float] = []
    preview: list[float] = []
    for _ in range(runs):
        code, cpu = child_cpu([*base, "run", "--once"], env)
        if code != 0:
            raise SystemExit(f"run --once exited {code}")
        once.append(cpu)
        code, cpu = child_cpu([*base, "preview"], env)
        if code != 0:
            raise SystemExit(f"preview exited {code}")
        preview.append(cpu)
    return {"once": statistics.median(once), "preview": statistics.median(preview)}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true", help="also print the budgets as one JSON line at the end")
    args = p.parse_args()
    if not Path(NODE_EXPORTER).exists():
        raise SystemExit(f"{NODE_EXPORTER} is missing: apt-get install prometheus-node-exporter")
    root = Path(tempfile.mkdtemp(prefix="fluxagent-bench-"))
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    try:
        with ReferenceServer(signing_keys=keys) as server:
            ws = make_workspace(root / "ws", server_url=server.url, vendor_keys=keys)
            cfg_path = ws.root / "fluxagent.toml"
            i = idle(cfg_path, args.idle_seconds)
            c = cycle(cfg_path, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss_ratio = i["agent_rss"] / i["exporter_rss"]
    cpu_ratio = c["once"] / c["preview"]
    results = [
        ("idle CPU", i["agent_cpu"] <= 0.010,
         f"fluxagent {i['agent_cpu'] * 1000:.0f} ms, node-exporter {i['exporter_cpu'] * 1000:.0f} ms "
         f"over {args.idle_seconds:g} s (budget ≤ 10 ms)"),
        ("idle RSS", rss_ratio <= 1.5,
         f"fluxagent {i['agent_rss'] / 1024:.1f} MiB, node-exporter {i['exporter_rss'] / 1024:.1f} MiB, "
         f"ratio {rss_ratio:.2f}× (budget ≤ 1.5×); import floor of python + ssl, httpx, nacl, structlog "
         f"{i['floor_rss'] / 1024:.1f} MiB = {i['floor_rss'] / i['exporter_rss']:.2f}×"),
        ("cycle CPU", cpu_ratio <= 2.0,
         f"run --once {c['once'] * 1000:.0f} ms, preview {c['preview'] * 1000:.0f} ms "
         f"(medians of {args.runs}), ratio {cpu_ratio:.2f}× (budget ≤ 2×)"),
    ]
    for name, ok, text in results:
        print(f"{verdict(ok)}  {name:<10} {text}")
    ex_cpu = i["exporter_cpu"]
    emit([
        Budget(f"idle CPU over {args.idle_seconds:g} s", f"{i['agent_cpu'] * 1000:.0f} ms",
               f"node-exporter {ex_cpu * 1000:.0f} ms", i["agent_cpu"] / ex_cpu if ex_cpu else None,
               "≤ 10 ms", results[0][1]),
        Budget("idle RSS", f"{i['agent_rss'] / 1024:.1f} MiB", f"node-exporter {i['exporter_rss'] / 1024:.1f} MiB",
               rss_ratio, "≤ 1.5×", results[1][1]),
        Budget("full cycle CPU (run --once)", f"{c['once'] * 1000:.0f} ms", f"preview {c['preview'] * 1000:.0f} ms",
               cpu_ratio, "≤ 2×", results[2][1]),
    ], args.json)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
