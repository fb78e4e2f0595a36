"""The soak's two halves: the agent child (the real `Agent.loop` on an accelerated clock) and the
fault script the parent plays against it. See bench/soak.py for why time is accelerated this way."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from fluxagent import config, logs
from fluxagent.daemon import control
from fluxagent.daemon.agent import Agent, Signals
from fluxagent.statedir.lock import instance_lock
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.server_faults import RECEIPT_MUTATIONS
from fluxagent.transport import HttpxTransport

HOUR = 3600.0


class VirtualClock:
    """Wall time that jumps: epoch0 + real time elapsed since mono0 + every wait skipped so far.

    Both processes compute it the same way (CLOCK_MONOTONIC is system-wide); the child tells the
    parent `skipped` at every wait, and nothing else reads the clock between two waits' reports.
    """

    def __init__(self, mono0: float, epoch0: float) -> None:
        self.mono0, self.epoch0, self.skipped = mono0, epoch0, 0.0

    def __call__(self) -> float:
        return self.epoch0 + (time.monotonic() - self.mono0) + self.skipped


class AcceleratedSignals(Signals):
    """The daemon's signal handling, except that a wait skips its timeout on the clock instead of
    sleeping: it reports to the parent and blocks until the parent says go. Real signals sent
    meanwhile (SIGHUP, SIGTERM) set the same flags the loop reads after any wait."""

    def __init__(self, chan: socket.socket, clock: VirtualClock) -> None:
        super().__init__()
        self.chan, self.clock = chan, clock
        self.reader = chan.makefile("rb")

    def wait(self, timeout: float) -> None:
        super().wait(0)  # take wake-up bytes of signals already delivered
        if self.stop or self.reload:
            return
        self.clock.skipped += max(0.0, timeout)
        self.chan.sendall(json.dumps({"skipped": self.clock.skipped, "wait": timeout}).encode() + b"\n")
        if not self.reader.readline():
            self.stop = True  # the parent is gone: stop as on SIGTERM
        super().wait(0)


def child_main(cfg_path: Path, fd: int, mono0: float, epoch0: float, log_path: Path) -> int:
    """Run the real daemon loop on cfg_path with the accelerated clock; return its exit code."""
    chan = socket.socket(fileno=fd)
    clock = VirtualClock(mono0, epoch0)
    cfg = config.load(cfg_path)
    with open(log_path, "a", encoding="utf-8") as log_stream:
        logs.configure("json", cfg.log.level, stream=log_stream, env={})
        with instance_lock(cfg.instance.state_dir):
            # env={}: proxy variables of the caller must not route loopback traffic elsewhere
            agent = Agent(cfg, clock=clock, transport_factory=lambda c: HttpxTransport(c.server, env={}))
            agent.signals = AcceleratedSignals(chan, clock)
            try:
                return agent.loop(cfg_path)
            finally:
                agent.close()


@dataclass
class Target:
    """What the fault script acts on."""

    server: ReferenceServer
    pid: int
    cfg_path: Path
    db_path: Path
    state_dir: Path
    good_config: str
    now: Callable[[], float]
    undo: list[tuple[float, Callable[[], object]]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def later(self, hours: float, fn: Callable[[], object]) -> None:
        """Run fn once the virtual clock is hours further on."""
        self.undo.append((self.now() + hours * HOUR, fn))

    def due_undos(self) -> None:
        """Run the undo actions whose time has come."""
        now = self.now()
        for item in [u for u in self.undo if u[0] <= now]:
            self.undo.remove(item)
            item[1]()

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def storm_503(t: Target) -> None:
    t.server.inject(*[Fault.status(503) for _ in range(8)])


def storm_503_retry_after(t: Target) -> None:
    t.server.inject(*[Fault.status(503, retry_after="120") for _ in range(5)])


def storm_429_absurd(t: Target) -> None:
    t.server.inject(Fault.rate_limited("99999999999"), Fault.rate_limited("-5"), Fault.rate_limited("0"))


def storm_429_date(t: Target) -> None:
    when = formatdate(t.now() + 900, usegmt=True)
    t.server.inject(*[Fault.rate_limited(when) for _ in range(3)])


def slow(t: Target) -> None:
    t.server.inject(*[Fault.delay(0.4) for _ in range(3)])


def bad_receipts(t: Target) -> None:
    t.server.inject(*[Fault.receipt(m) for m in RECEIPT_MUTATIONS])


def hangups(t: Target) -> None:
    t.server.inject(Fault.close(process=True), Fault.close(), Fault.wrong_shape())


def server_down(t: Target) -> None:
    t.server.stop()  # connections refused until it starts again on the same port
    t.later(2, t.server.start)


def reload_ok(t: Target) -> None:
    text = t.good_config
    flip = ('heartbeat = "1h"', 'heartbeat = "90m"') if 'heartbeat = "1h"' in text else ('heartbeat = "90m"',
                                                                                      'heartbeat = "1h"')
    t.good_config = text.replace(*flip)
    t.cfg_path.write_text(t.good_config)
    os.kill(t.pid, signal.SIGHUP)


def reload_bad(t: Target) -> None:
    t.cfg_path.write_text(t.good_config + '\n[schedule_typo]\nheartbeat = "1h"\n')
    os.kill(t.pid, signal.SIGHUP)
    t.later(0.5, lambda: t.cfg_path.write_text(t.good_config))


def credentials(t: Target) -> None:
    for _ in range(3):
        try:
            answer = control.ask(t.state_dir, "credentials", timeout=30)
            assert answer["username"] and answer["secret"], "credentials answer without a credential"
            t.count("credentials answered")
        except control.RemoteError:  # e.g. the server still backing off: refused clearly, counted
            t.count("credentials refused")


def database_down(t: Target) -> None:
    away = t.db_path.with_name(t.db_path.name + ".away")
    t.db_path.rename(away)

    def back() -> None:
        away.rename(t.db_path)

    t.later(3, back)


FAULTS: list[tuple[str, Callable[[Target], None]]] = [
    ("503 storm", storm_503), ("503 + Retry-After", storm_503_retry_after),
    ("429 absurd Retry-After", storm_429_absurd), ("429 HTTP-date", storm_429_date), ("slow answers", slow),
    ("bad receipts", bad_receipts), ("hang-ups / junk", hangups), ("server stopped", server_down),
    ("SIGHUP reload", reload_ok), ("SIGHUP bad config", reload_bad), ("credentials over socket", credentials),
    ("database unavailable", database_down),
]
