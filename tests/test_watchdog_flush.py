"""The watchdog is fed while a long flush makes progress, so WatchdogSec= cannot kill a healthy catch-up."""

from __future__ import annotations

import time
from pathlib import Path

from agentkit import NotifySocket
from conftest import fixed_world

from fluxagent.daemon.agent import Agent
from fluxagent.daemon.notify import Notifier
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import make_workspace


def test_each_message_of_a_flush_feeds_the_watchdog(tmp_path: Path) -> None:
    now = [time.time()]
    sock = NotifySocket()
    try:
        with ReferenceServer(clock=lambda: now[0]) as srv:
            ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
            notifier = Notifier(env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "300000000"})
            with Agent(ws.cfg, notifier=notifier, clock=lambda: now[0]) as agent:
                agent.engine.deps.world = fixed_world()
                srv.inject(Fault.status(503))
                agent.step()  # the server is down: license, heartbeat and digest wait in the spool
                assert agent.engine.spool.depth() == 3
                sock.sock.settimeout(0.2)
                while True:  # forget what the first step sent
                    try:
                        sock.sock.recv(4096)
                    except TimeoutError:
                        break
                now[0] = agent.engine.retry_at + 1
                agent.step()  # one flush delivers all three
                assert agent.engine.spool.depth() == 0
        pings = 0
        while True:
            try:
                if b"WATCHDOG=1" in sock.sock.recv(4096):
                    pings += 1
            except TimeoutError:
                break
        assert pings >= 3
    finally:
        sock.close()
