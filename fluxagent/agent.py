"""The daemon: one main loop, interruptible waits, flock, signals and sd_notify (DESIGN §8)."""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fluxagent import config as config_mod
from fluxagent import identity, logs
from fluxagent.config import Config
from fluxagent.delivery import SCHEDULED, Deps, Engine, FlushResult
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNAVAILABLE, FluxError, LockHeld, StateError
from fluxagent.fsutil import ensure_private_dir
from fluxagent.notify import Notifier
from fluxagent.transport import HttpxTransport, Transport

STATE_ERROR_PAUSE = 60.0  # after a state-dir failure (ENOSPC…): wait, then try again; never crash-loop
STOP_DEADLINE = 20.0


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[int]:
    """Hold an exclusive flock on `<state_dir>/lock`; raises LockHeld (exit 75) if another holds it."""
    path = state_dir / "lock"
    try:
        ensure_private_dir(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # read-only or foreign state dir: a state problem, not a crash
        raise StateError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                         hint="the state directory must be writable by the user fluxagent runs as") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another fluxagent holds {state_dir / 'lock'}",
                           hint="only one agent may run per state directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield fd
    finally:
        os.close(fd)


def once_exit_code(result: FlushResult, source_failures: int) -> int:
    """Return `run --once`'s exit code: 0 all delivered, 69 server unavailable, 1 rejected or not built."""
    if result.retry is not None:
        return EXIT_UNAVAILABLE
    if result.rejected or source_failures:
        return EXIT_CHECK_FAILED
    return EXIT_OK


@dataclass
class Signals:
    """Signal flags set by handlers; `wake` interrupts the main loop's wait."""

    wake: threading.Event = field(default_factory=threading.Event)
    stop: bool = False
    reload: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        self.stop = True
        self.wake.set()

    def _on_reload(self, _sig: int, _frame: FrameType | None) -> None:
        self.reload = True
        self.wake.set()


class Agent:
    """The running agent: config, engine, notifier; `loop` is the daemon, `once` a single cycle."""

    def __init__(self, cfg: Config, *, transport_factory: Callable[[Config], Transport] | None = None,
                 clock: Callable[[], float] = time.time, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.log = logs.get()
        self.transport_factory = transport_factory or (lambda c: HttpxTransport(c.server))
        self.ident = identity.load(cfg.instance.state_dir)
        self.transport = self.transport_factory(cfg)
        self.engine = Engine(cfg, self.ident, Deps(self.transport, clock, log=self.log))
        self.signals = Signals()

    def close(self) -> None:
        closer = getattr(self.transport, "close", None)
        if callable(closer):
            closer()

    def once(self) -> int:
        """Run one full cycle (license, heartbeat, digest, spool flush); return the exit code."""
        result = self.engine.cycle(self.clock(), SCHEDULED)
        code = once_exit_code(result, len(self.engine.source_errors))
        self.log.info("run.once_done", delivered=len(result.delivered), rejected=len(result.rejected),
                      pending=self.engine.spool.depth(), exit_code=code)
        return code

    def status_line(self) -> str:
        lic = self.engine.read_license_status().get("state", "unknown")
        depth = self.engine.spool.depth()
        outage = " (server unreachable)" if self.engine.outage_since is not None else ""
        return f"license {lic}; spool {depth}{outage}"

    def step(self) -> float:
        """Do whatever is due now; return seconds until the next wake-up."""
        now = self.clock()
        try:
            due = self.engine.due(now)
            if due:
                self.engine.produce(due, now)
            if self.engine.spool.depth() and now >= self.engine.retry_at:
                self.engine.flush()
        except FluxError as exc:
            self.log.error("agent.step_failed", error=exc.message, retry_in=int(STATE_ERROR_PAUSE))
            return STATE_ERROR_PAUSE
        self.notifier.status(self.status_line())
        return max(0.0, self.engine.next_wake(self.clock()) - self.clock())

    def reload(self, config_path: Path) -> None:
        """Re-read the config; a bad one is logged and the old one keeps running."""
        self.notifier.reloading()
        try:
            new = config_mod.load(config_path)
            if new.instance.state_dir != self.cfg.instance.state_dir:
                raise FluxError("instance.state_dir cannot change while running; restart instead")
        except FluxError as exc:
            self.log.error("config.reload_failed", error=str(exc), keeping="previous configuration")
        else:
            self.close()
            self.cfg = new
            self.transport = self.transport_factory(new)
            deps = self.engine.deps
            deps.transport = self.transport
            self.engine.cfg = new
            self.log.info("config.reloaded", path=str(config_path))
        self.notifier.ready(self.status_line())

    def loop(self, config_path: Path) -> int:
        """Run until SIGTERM/SIGINT; return 0 after a graceful stop."""
        self.signals.install()
        self.notifier.ready(self.status_line())
        self.log.info("agent.started", pid=os.getpid(), state_dir=str(self.cfg.instance.state_dir))
        wd = self.notifier.watchdog_interval
        while not self.signals.stop:
            wait = self.step()
            if wd:
                self.notifier.watchdog()  # only a healthy loop gets here
                wait = min(wait, wd / 2)
            if self.signals.stop:
                break
            self.signals.wake.wait(wait)
            self.signals.wake.clear()
            if self.signals.reload:
                self.signals.reload = False
                self.reload(config_path)
        self.notifier.stopping()
        self.log.info("agent.stopping", spool=self.engine.spool.depth())
        self.close()
        return EXIT_OK


def run(config_path: Path, *, once: bool, log_stream: Any = None) -> int:
    """Load config and identity, take the lock, and run the daemon or one cycle; return the exit code."""
    faulthandler.enable()
    cfg = config_mod.load(config_path)
    logs.configure(cfg.log.format, cfg.log.level, stream=log_stream)
    identity.load(cfg.instance.state_dir)  # fail with 78 before taking the lock
    with instance_lock(cfg.instance.state_dir):
        agent = Agent(cfg)
        try:
            return agent.once() if once else agent.loop(config_path)
        finally:
            agent.close()


__all__ = ["STOP_DEADLINE", "Agent", "instance_lock", "once_exit_code", "run"]
_ = Any
