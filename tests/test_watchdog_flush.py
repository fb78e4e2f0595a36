"""The watchdog is fed while a long flush makes progress, so WatchdogSec= cannot kill a healthy catch-up:
the supervisor pings while its worker sends, and the worker's deadline is not the watchdog's."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from agentkit import Daemon, NotifySocket, clean_env, wire
from killkit import backlog

from fluxagent.testing.server import Fault, ReferenceServer


def test_a_flush_longer_than_the_watchdog_interval_is_pinged_through_and_completes(tmp_path: Path) -> None:
    sock = NotifySocket()
    try:
        with ReferenceServer() as srv:
            ws = wire(tmp_path / "ws", srv, srv.signing_keys)
            backlog(ws.cfg, random.Random(1), heartbeats=5)  # 8 messages wait in the spool
            srv.inject(*[Fault.delay(0.4)] * 9)  # each answer takes 0.4 s: the flush takes over 3 s
            d = Daemon(ws.root / "fluxagent.toml", env=clean_env(NOTIFY_SOCKET=str(sock.path), WATCHDOG_USEC="1000000"))
            try:
                sock.wait_for("READY", "1")
                start = len(sock.messages)
                d.wait_event("digest.spooled", timeout=30)
                t = time.monotonic()
                sock.wait_for("STATUS", "license valid; spool 0", timeout=60)
                took = time.monotonic() - t
                pings = sum(1 for m in sock.messages[start:] if m.get("WATCHDOG") == "1")
                d.signal(signal.SIGTERM)
                assert d.wait() == 0
            finally:
                d.stop()
        assert took > 2.0, f"the flush took only {took:.1f}s: no catch-up to ping through"
        assert pings >= int(took / 0.5) - 1  # one every half interval, all the while
        assert not d.events("worker.overran") and not d.events("worker.failed")
        assert len(d.events("heartbeat.sent")) >= 6
    finally:
        sock.close()
