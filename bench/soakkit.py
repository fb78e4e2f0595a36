"""The soak's two halves: the agent child (the daemon's events on an accelerated clock, a fresh
Agent for each as a worker process has) and the fault script the parent plays against it.
See bench/soak.py for why time is accelerated this way."""

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
from fluxagent.daemon.agent import Agent
from fluxagent.errors import FluxError
from fluxagent.statedir.lock import instance_lock
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.server_faults import RECEIPT_MUTATIONS
from fluxagent.transport import HttpxTransport, Plain
from fluxagent.updates.credentials import CredentialCache, fetch, monotonic

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


class AcceleratedWait:
    """The supervisor's wait between events, except that it skips its timeout on the clock instead
    of sleeping: it reports to the parent and blocks until the parent says go. Real signals sent
    meanwhile set flags read after the wait: SIGHUP reload, SIGTERM stop, SIGUSR1 credentials."""

    def __init__(self, chan: socket.socket, clock: VirtualClock) -> None:
        self.chan, self.clock = chan, clock
        self.reader = chan.makefile("rb")
        self.stop = self.reload = self.credentials = False
        signal.signal(signal.SIGTERM, self._flag("stop"))
        signal.signal(signal.SIGINT, self._flag("stop"))
        signal.signal(signal.SIGHUP, self._flag("reload"))
        signal.signal(signal.SIGUSR1, self._flag("credentials"))

    def _flag(self, name: str) -> Callable[[int, object], None]:
        def handler(_sig: int, _frame: object) -> None:
            setattr(self, name, True)
        return handler

    def wait(self, timeout: float) -> None:
        if self.stop or self.reload or self.credentials:
            return
        self.clock.skipped += max(0.0, timeout)
        self.chan.sendall(json.dumps({"skipped": self.clock.skipped, "wait": timeout}).encode() + b"\n")
        if not self.reader.readline():
            self.stop = True  # the parent is gone: stop as on SIGTERM


def reload(cfg: config.Config, cfg_path: Path) -> config.Config:
    """What a reload's check worker does: a bad file is logged and the previous config stays."""
    log = logs.get()
    try:
        new = config.load(cfg_path)
    except FluxError as exc:
        log.error("config.reload_failed", path=str(cfg_path), error=str(exc), keeping="previous configuration")
        return cfg
    log.info("config.reloaded", path=str(cfg_path))
    return new


def child_main(cfg_path: Path, fd: int, mono0: float, epoch0: float, log_path: Path) -> int:
    """Run the daemon's events on cfg_path with the accelerated clock, a fresh Agent per event as
    each worker process has; return the exit code.

    One transport serves every event here (a worker process builds its own and exits): this process
    lives for the whole soak, and what it measures is the per-event code, not TLS set-up.
    """
    chan = socket.socket(fileno=fd)
    clock = VirtualClock(mono0, epoch0)
    cfg = config.load(cfg_path)
    transport = HttpxTransport(cfg.server, env={})  # env={}: the caller's proxy variables stay out

    shared = Plain(transport)  # an Agent's close() leaves it open: closing a Plain does nothing
    with open(log_path, "a", encoding="utf-8") as log_stream:
        logs.configure("json", cfg.log.level, stream=log_stream, env={})
        log = logs.get()
        with instance_lock(cfg.instance.state_dir):
            w = AcceleratedWait(chan, clock)
            first = True
            log.info("agent.started", pid=os.getpid(), state_dir=str(cfg.instance.state_dir))
            while not w.stop:
                with Agent(cfg, clock=clock, transport_factory=lambda _c: shared, quiet_open=not first) as agent:
                    wait = agent.step(should_stop=lambda: w.stop)
                    if w.credentials:
                        w.credentials = False
                        cache = CredentialCache(lambda: fetch(agent.engine, monotonic), monotonic,
                                                cfg.updates.min_remaining)
                        try:
                            cache.get()
                        except FluxError as exc:  # e.g. the server still backing off: refused clearly
                            log.warning("credentials.refused", error=exc.message)
                first = False
                w.wait(wait)
                if w.reload and not w.stop:
                    w.reload = False
                    cfg = reload(cfg, cfg_path)
            log.info("agent.stopping")
    transport.close()
    return 0


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
    os.kill(t.pid, signal.SIGUSR1)  # as a helper's request the daemon's memory cannot answer
    t.count("credentials requested")


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
    ("SIGHUP reload", reload_ok), ("SIGHUP bad config", reload_bad), ("credentials request", credentials),
    ("database unavailable", database_down),
]
