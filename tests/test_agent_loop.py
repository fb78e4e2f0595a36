"""The daemon loop in this process: interruptible waits, the stop deadline, idle costs no CPU."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from agentkit import Daemon, NotifySocket, clean_env, ledger_entries, make_agent, rewrite, wire
from support.capture import LogCapture
from support.keys import vendor_keys

from fluxagent.daemon.agent import Signals
from fluxagent.testing.server import Fault


def kill_self_later(delay: float, sig: int) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), sig))
    timer.start()
    return timer


def test_wait_returns_as_soon_as_a_signal_arrives_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGHUP)
    sig = Signals()
    sig.install()
    try:
        kill_self_later(0.2, signal.SIGHUP)
        t = time.monotonic()
        sig.wait(30)
        assert time.monotonic() - t < 2 and sig.reload and not sig.stop
    finally:
        sig.uninstall()
    assert signal.getsignal(signal.SIGHUP) is before


def test_wait_after_a_signal_that_came_before_it_does_not_block() -> None:
    sig = Signals()
    sig.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        t = time.monotonic()
        sig.wait(30)
        assert time.monotonic() - t < 1 and sig.stop
    finally:
        sig.uninstall()


def test_sigterm_during_a_stalled_request_stops_at_the_stop_deadline_keeping_the_message(
    tmp_path: Path, reference_server
) -> None:
    keys = vendor_keys()
    log = LogCapture()
    srv = reference_server(signing_keys=keys)
    ws = wire(tmp_path / "ws", srv, keys, server={"read_timeout": "60s"})
    srv.inject(Fault.delay(60, endpoint="license"))  # the server never answers in time
    with make_agent(ws.cfg, stop_deadline=0.5) as agent:
        kill_self_later(0.5, signal.SIGTERM)
        t = time.monotonic()
        assert agent.loop(ws.root / "fluxagent.toml") == 0
        elapsed = time.monotonic() - t
    assert 0.9 <= elapsed < 5
    [stopping] = log.events("agent.stopping")
    assert stopping["level"] == "warning" and "stop deadline" in stopping["forced"] and stopping["spool"] == 3
    assert [e for e in ledger_entries(ws.cfg) if e.event == "sent"] == []  # resent by the next run


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



def test_reload_keeps_the_transport_unless_the_server_section_or_its_ca_file_changes(tmp_path: Path) -> None:
    # each new transport builds a TLS context whose native memory the allocator keeps: a reload
    # that changes only, say, the log level must not pay for one (the soak showed RSS creeping)
    import trustme

    from fluxagent import config
    from fluxagent.daemon.agent import Agent
    from fluxagent.testing.workspace import make_workspace
    from fluxagent.transport import HttpxTransport

    ws = make_workspace(tmp_path / "ws")
    cfg_path = ws.root / "fluxagent.toml"
    built: list[HttpxTransport] = []

    def factory(c: config.Config) -> HttpxTransport:
        built.append(HttpxTransport(c.server, env={}))
        return built[-1]

    with Agent(ws.cfg, transport_factory=factory) as agent:
        rewrite(cfg_path, log={"level": "debug"})
        agent.reload(cfg_path)
        assert len(built) == 1 and agent.transport is built[0] and agent.cfg.log.level == "debug"
        ca = tmp_path / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca))
        rewrite(cfg_path, server={"ca_bundle": str(ca)})
        agent.reload(cfg_path)
        assert len(built) == 2 and agent.transport is built[1]
        agent.reload(cfg_path)
        assert len(built) == 2  # same section, same file
        trustme.CA().cert_pem.write_to_path(str(ca))
        agent.reload(cfg_path)
        assert len(built) == 3 and agent.transport is built[2]  # the operator replaced the CA file
