"""The daemon: one main loop, interruptible waits, flock, signals and sd_notify (docs/OPERATOR.md, "The daemon")."""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from fluxagent import config as config_mod
from fluxagent import logs
from fluxagent.config import Config
from fluxagent.daemon import early
from fluxagent.daemon.control import DaemonUpdates
from fluxagent.daemon.metrics import MetricsWriter
from fluxagent.daemon.notify import Notifier
from fluxagent.delivery import Deps, Engine, FlushResult
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_IOERR, EXIT_OK, EXIT_UNAVAILABLE, FluxError
from fluxagent.kinds import SCHEDULED
from fluxagent.schema.approval import load_policy
from fluxagent.schema.policy import Policy
from fluxagent.statedir import fsutil, identity
from fluxagent.statedir.fsutil import check_state_dir
from fluxagent.statedir.lock import instance_lock
from fluxagent.transport import HttpxTransport, Transport

STATE_ERROR_PAUSE = 60.0  # after a state-dir failure (ENOSPC…): wait, then try again; never crash-loop
STOP_DEADLINE = 20.0
LICENSE_FILE_POLL = 300.0  # a replaced license file shows in license-status.json within this




def once_exit_code(result: FlushResult, source_codes: Iterable[int]) -> int:
    """Return `run --once`'s exit code: 0 all delivered; else the worst of the failures' own codes
    (docs/OPERATOR.md, "Exit codes"): 78, 74, then 69 server unavailable, then 1 rejected or not built."""
    codes = set(source_codes)
    if result.retry is not None:
        codes.add(EXIT_CONFIG if result.retry.config else EXIT_UNAVAILABLE)
    if result.rejected:
        codes.add(EXIT_CHECK_FAILED)
    for code in (EXIT_CONFIG, EXIT_IOERR, EXIT_UNAVAILABLE):
        if code in codes:
            return code
    return EXIT_CHECK_FAILED if codes else EXIT_OK


class StopDeadline(BaseException):
    """Raised by SIGALRM when a graceful stop overran its deadline (BaseException: nothing swallows it)."""


class Signals:
    """Signal flags set by handlers; a self-pipe (`signal.set_wakeup_fd`) wakes the main loop's wait.

    Handlers only set flags: no locks are taken in them (Event.set from a handler can deadlock the
    thread it interrupts). A SIGTERM that arrives while a step is busy arms a SIGALRM after the stop
    deadline, whose handler aborts the step; a message in flight then stays spooled (at-least-once).
    """

    def __init__(self, stop_deadline: float = STOP_DEADLINE) -> None:
        self.stop = False
        self.reload = False
        self.busy = False
        self.stop_deadline = stop_deadline
        self._r = self._w = -1
        self._saved: list[tuple[int, Any]] = []
        self._saved_fd = -1

    def install(self) -> None:
        """Install the handlers (main thread only); uninstall() restores the previous ones."""
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig, fn in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                        (signal.SIGHUP, self._on_reload), (signal.SIGALRM, self._on_alarm)):
            self._saved.append((sig, signal.signal(sig, fn)))
        self._saved_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        caught = early.take()  # what arrived while `run` was starting: a stop then is a graceful stop now
        self.stop = self.stop or bool(caught & {signal.SIGTERM, signal.SIGINT})
        self.reload = self.reload or signal.SIGHUP in caught

    def uninstall(self) -> None:
        """Cancel a pending alarm, restore the previous handlers and close the pipe."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.set_wakeup_fd(self._saved_fd)
        for sig, old in reversed(self._saved):
            signal.signal(sig, old)
        self._saved.clear()
        os.close(self._r)
        os.close(self._w)

    def wait(self, timeout: float) -> None:
        """Block until a signal arrives or timeout seconds pass; uses no CPU meanwhile."""
        if not (self.stop or self.reload):
            select.select([self._r], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass

    def _on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        if self.busy and not self.stop:
            signal.setitimer(signal.ITIMER_REAL, self.stop_deadline)
        self.stop = True

    def _on_reload(self, _sig: int, _frame: FrameType | None) -> None:
        self.reload = True

    def _on_alarm(self, _sig: int, _frame: FrameType | None) -> None:
        if self.busy:
            raise StopDeadline()


def ca_stamp(cfg: Config) -> tuple[int, int, int] | None:
    """Return (inode, size, mtime) of the configured CA bundle, so a reload notices a replaced file."""
    if not cfg.server.ca_bundle:
        return None
    try:
        st = os.stat(cfg.server.ca_bundle)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Agent:
    """The running agent: config, engine, notifier; `loop` is the daemon, `once` a single cycle."""

    def __init__(self, cfg: Config, *, transport_factory: Callable[[Config], Transport] | None = None,
                 clock: Callable[[], float] = time.time, notifier: Notifier | None = None,
                 stop_deadline: float = STOP_DEADLINE, approval: Callable[[Config], Policy] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.log = logs.get()
        self.transport_factory = transport_factory or (lambda c: HttpxTransport(c.server))
        self.ident = identity.load(cfg.instance.state_dir)
        self.transport = self.transport_factory(cfg)
        self.ca_stamp = ca_stamp(cfg)
        deps = Deps(self.transport, clock, log=self.log)
        if approval is not None:  # the registry versions as values (tests); default: the approval file
            deps.approval = approval
        self.engine = Engine(cfg, self.ident, deps)
        self.signals = Signals(stop_deadline)
        self.engine_lock = threading.RLock()  # the control socket's credential requests use the engine too
        self.updates: DaemonUpdates | None = None
        self.metrics = MetricsWriter(self.log)

    def close(self) -> None:
        """Close the transport (pooled connections, TLS context)."""
        self.transport.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def once(self) -> int:
        """Run one full cycle (license, heartbeat, digest, spool flush); return the exit code."""
        result = self.engine.cycle(self.clock(), SCHEDULED)
        code = once_exit_code(result, self.engine.source_exit_codes)
        self.metrics.write(self.cfg, self.clock())  # a cron-driven `run --once` keeps metrics.prom current too
        self.log.info("run.once_done", delivered=len(result.delivered), rejected=len(result.rejected),
                      pending=self.engine.spool.depth(), exit_code=code)
        return code

    def status_line(self) -> str:
        """Return the systemd STATUS text: the license state derived now, spool depth, outage."""
        try:
            lic = self.engine.license_status(self.clock())
            shown = lic.state + (" (unconfirmed)" if lic.state == "valid" and lic.confirmed_at is None else "")
            shown += " (clock skew)" if lic.clock_skew else ""
        except FluxError:
            shown = "unknown"
        depth = self.engine.spool.depth()
        outage = " (server unreachable)" if self.engine.outage_since is not None else ""
        held = ", ".join(sorted(self.engine.source_errors))
        sources = f"; not sent: {held} (source failing, see status)" if held else ""
        policy = self.engine.policy
        pending = f"; schema {policy.running.name} awaits approval" if policy is not None and policy.pending else ""
        return f"license {shown}; spool {depth}{outage}{sources}{pending}"

    def _between_messages(self) -> bool:
        """Called before each message of a flush: it is progress, so feed the watchdog; return whether to stop."""
        if self.notifier.watchdog_interval:
            self.notifier.watchdog()  # a long flush (many spooled messages) must not trip WatchdogSec
        return self.signals.stop

    def step(self) -> float:
        """Do whatever is due now; return seconds until the next wake-up."""
        now = self.clock()
        try:
            with self.engine_lock:
                due = self.engine.due(now)
                if due and not self.signals.stop:
                    self.engine.produce(due, now)
                if self.engine.spool.depth() and now >= self.engine.retry_at and not self.signals.stop:
                    self.engine.flush(should_stop=self._between_messages)
                lic = self.engine.refresh_license(self.clock())  # time passing and license file changes
        except FluxError as exc:
            self.log.error("agent.step_failed", error=exc.message, retry_in=int(STATE_ERROR_PAUSE))
            return STATE_ERROR_PAUSE
        self.notifier.status(self.status_line())
        self.metrics.write(self.cfg, self.clock())  # for node_exporter's textfile collector
        now = self.clock()
        wake = min(self.engine.next_wake(now), now + LICENSE_FILE_POLL, lic.next_change or math.inf)
        return max(0.0, wake - now)

    def reload(self, config_path: Path) -> None:
        """Re-read the config; a bad one is logged and the old one keeps running."""
        self.notifier.reloading()
        try:
            new = config_mod.load(config_path)
            if new.instance.state_dir != self.cfg.instance.state_dir:
                raise FluxError("instance.state_dir cannot change while running; restart instead")
            keep = new.server == self.cfg.server and ca_stamp(new) == self.ca_stamp
            transport = self.transport if keep else self.transport_factory(new)
        except FluxError as exc:
            self.log.error("config.reload_failed", path=str(config_path), error=str(exc),
                           keeping="previous configuration")
        else:
            old_doc, new_doc = config_mod.to_mapping(self.cfg), config_mod.to_mapping(new)
            changed = sorted(k for k in new_doc if new_doc[k] != old_doc.get(k))
            with self.engine_lock:  # not while the control socket's credentials request uses the transport
                # a new TLS context only when [server] or the CA file changed: each one costs native memory
                if transport is not self.transport:
                    self.close()
                self.cfg, self.transport, self.ca_stamp = new, transport, ca_stamp(new)
                self.engine.reconfigure(new, transport)
            self.log.info("config.reloaded", path=str(config_path), changed=changed)  # before a new level hides it
            logs.configure(new.log.format, new.log.level, stream=logs.current_stream())
            self.log = self.engine.deps.log = logs.get()
        self.notifier.ready(self.status_line())

    def loop(self, config_path: Path) -> int:
        """Run until SIGTERM/SIGINT; return 0 after a graceful stop."""
        self.signals.install()
        self.updates = DaemonUpdates(self.engine, self.engine_lock, lambda: self.cfg, lambda: self.log)
        try:
            return self._loop(config_path)
        finally:
            self.updates.close()
            self.signals.uninstall()

    def _loop(self, config_path: Path) -> int:
        self.notifier.ready(self.status_line())
        self.log.info("agent.started", pid=os.getpid(), state_dir=str(self.cfg.instance.state_dir))
        wd = self.notifier.watchdog_interval
        sig = self.signals
        forced = False
        while not sig.stop:
            sig.busy = True
            try:
                wait = self.step()
            except StopDeadline:
                forced = True
                break
            finally:
                sig.busy = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            if wd:
                self.notifier.watchdog()  # only a healthy loop gets here
                wait = min(wait, wd / 2)
            sig.wait(wait)
            if sig.reload and not sig.stop:
                sig.reload = False
                self.reload(config_path)
        self.notifier.stopping()
        if forced:
            self.log.warning("agent.stopping", spool=self.engine.spool.depth(),
                             forced=f"a step overran the {sig.stop_deadline:g}s stop deadline")
        else:
            self.log.info("agent.stopping", spool=self.engine.spool.depth())
        return EXIT_OK


def run(config_path: Path, *, once: bool, log_stream: Any = None) -> int:
    """Load config and identity, take the lock, and run the daemon or one cycle; return the exit code."""
    faulthandler.enable()
    cfg = config_mod.load(config_path)
    logs.configure(cfg.log.format, cfg.log.level, stream=log_stream)
    check_state_dir(cfg.instance.state_dir)  # before reading keys: whose directory it is comes first
    identity.load(cfg.instance.state_dir)  # fail with 78 before taking the lock
    load_policy(cfg)  # and without an approved schema version: nothing could be sent
    with instance_lock(cfg.instance.state_dir):
        # temp files a kill left behind; nothing else writes the state dir while the lock is held
        stray = fsutil.remove_stray_temp(cfg.instance.state_dir)
        if stray:
            logs.get().info("state.stray_temp_removed", files=stray)
        with Agent(cfg) as agent:
            return agent.once() if once else agent.loop(config_path)


__all__ = ["STOP_DEADLINE", "Agent", "StopDeadline", "once_exit_code", "run"]
