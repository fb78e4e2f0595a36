"""The resident daemon over time: idle costs no wake-ups, reloads cost it no memory.
(Signals and the stop deadline as real processes: tests/test_supervisor.py, tests/test_daemon.py.)"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from agentkit import Daemon, NotifySocket, clean_env, rewrite, wire
from support.keys import vendor_keys


@pytest.mark.slow
def test_idle_daemon_does_not_wake_between_events(tmp_path: Path, reference_server) -> None:
    # Wake-ups, not CPU seconds: a process blocked in one wait is not scheduled at all, while any
    # polling loop shows up as context switches however fast the machine is. (CPU figures are
    # the benchmark's business: bench/bench_delivery.py.)
    keys = vendor_keys()
    notify = NotifySocket()
    srv = reference_server(signing_keys=keys)
    ws = wire(tmp_path / "ws", srv, keys)
    d = Daemon(ws.root / "fluxagent.toml", env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("STATUS", "license valid; spool 0")
        settle(d.proc.pid)  # the first cycle's tail (fsyncs, metrics) may still run on a busy machine
        before = context_switches(d.proc.pid)
        time.sleep(2.0)
        woke = context_switches(d.proc.pid) - before
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()
        notify.close()
    assert woke <= 2, f"idle daemon was scheduled {woke} times in 2 s"


def settle(pid: int, window: float = 0.5, limit: float = 15.0) -> None:
    """Wait until pid spends one window without being scheduled more than once (or limit passes)."""
    end = time.monotonic() + limit
    last = context_switches(pid)
    while time.monotonic() < end:
        time.sleep(window)
        now = context_switches(pid)
        if now - last <= 1:
            return
        last = now


def context_switches(pid: int) -> int:
    """Return the voluntary + involuntary context switches of all threads of pid, from /proc."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_reloads_do_not_grow_the_resident_supervisor(tmp_path: Path, reference_server) -> None:
    # a reload is checked by a worker process: whatever it builds (TLS contexts, the parsed config)
    # dies with it, and the supervisor keeps only the accepted text (the soak once saw RSS creep)
    keys = vendor_keys()
    notify = NotifySocket()
    srv = reference_server(signing_keys=keys)
    ws = wire(tmp_path / "ws", srv, keys)
    cfg_path = ws.root / "fluxagent.toml"
    d = Daemon(cfg_path, env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("STATUS", "license valid; spool 0")
        d.signal(signal.SIGHUP)
        notify.wait_for("READY", "1")
        before = rss_kib(d.proc.pid)
        for level in ("debug", "info") * 5:
            rewrite(cfg_path, log={"level": level})
            d.signal(signal.SIGHUP)
            notify.wait_for("READY", "1")
        grown = rss_kib(d.proc.pid) - before
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()
        notify.close()
    assert len(d.events("config.reloaded")) >= 5
    assert grown <= 256, f"the supervisor grew by {grown} KiB over 10 reloads"
