"""One step of the daemon's work, and `run --once`: the Engine with its transport, the STATUS line
and metrics.prom (docs/ARCHITECTURE.md). A worker process (worker.py) runs one step per event; the
resident supervisor (supervisor.py) decides when.
"""

from __future__ import annotations

import faulthandler
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from fluxagent import config as config_mod
from fluxagent import logs
from fluxagent.config import Config
from fluxagent.daemon.metrics import MetricsWriter
from fluxagent.delivery import Deps, Engine, FlushResult
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_IOERR, EXIT_OK, EXIT_UNAVAILABLE, FluxError
from fluxagent.kinds import SCHEDULED
from fluxagent.license import record as license_store
from fluxagent.schema.approval import load_policy
from fluxagent.schema.policy import Policy
from fluxagent.statedir import fsutil, identity, state
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


def spool_depth(state_dir: Path) -> int:
    """Return how many messages wait in the spool (read-only: counts the files)."""
    try:
        return sum(1 for name in (state_dir / "spool" / "new").iterdir() if name.suffix == ".json")
    except OSError:
        return 0


def status_line(cfg: Config, now: float, read: Callable[[Path], bytes | None] | None = None) -> str:
    """Return the systemd STATUS text, read-only from the state dir: license state derived now,
    spool depth, an outage, and the kinds a failing source keeps back."""
    sd = cfg.instance.state_dir
    try:
        lic = (license_store.current(cfg, now) if read is None else license_store.current(cfg, now, read=read))[0]
        shown = lic.state + (" (unconfirmed)" if lic.state == "valid" and lic.confirmed_at is None else "")
        shown += " (clock skew)" if lic.clock_skew else ""
    except FluxError:
        shown = "unknown"
    outage = " (server unreachable)" if state.load_backoff(sd).outage_since is not None else ""
    held = ", ".join(sorted(state.load_source_errors(sd)))
    sources = f"; not sent: {held} (source failing, see status)" if held else ""
    return f"license {shown}; spool {spool_depth(sd)}{outage}{sources}"


class Agent:
    """The agent's work on one state dir (under its lock): `step` does what is due, `once` a full cycle."""

    def __init__(self, cfg: Config, *, transport_factory: Callable[[Config], Transport] | None = None,
                 clock: Callable[[], float] = time.time, quiet_open: bool = False,
                 approval: Callable[[Config], Policy] | None = None) -> None:
        """quiet_open: do not log opening the state (a worker after the first one of a daemon);
        approval: the registry versions as values (tests); default: the approval file."""
        self.cfg = cfg
        self.clock = clock
        self.log = logs.get()
        self.ident = identity.load(cfg.instance.state_dir)
        self.transport = (transport_factory or (lambda c: HttpxTransport(c.server)))(cfg)
        deps = Deps(self.transport, clock, log=None if quiet_open else self.log)
        if approval is not None:
            deps.approval = approval
        self.engine = Engine(cfg, self.ident, deps)
        self.engine.deps.log = self.log
        opened = self.engine.spool.opened
        if quiet_open and (self.engine.ledger.torn_bytes or opened.quarantined or self.engine.schedule.reset_reason):
            # a later worker of a daemon stays quiet about opening the state, unless it repaired something
            self.log.info("agent.state_opened", spool=self.engine.spool.depth(),
                          torn_ledger_bytes=self.engine.ledger.torn_bytes or None,
                          quarantined=len(opened.quarantined) or None, schedule_reset=self.engine.schedule.reset_reason)
        self.metrics = MetricsWriter(self.log)

    def close(self) -> None:
        """Close the transport (pooled connections, TLS context)."""
        self.transport.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
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
        """Return the systemd STATUS text for this agent's state dir, now (and a schema awaiting approval)."""
        policy = self.engine.policy
        pending = f"; schema {policy.running.name} awaits approval" if policy is not None and policy.pending else ""
        return status_line(self.cfg, self.clock(), self.engine.deps.world.read_license) + pending

    def step(self, should_stop: Callable[[], bool] = lambda: False) -> float:
        """Do whatever is due now; return seconds until the next wake-up.

        should_stop is asked before each message: a stop request, or the worker's time budget.
        """
        now = self.clock()
        try:
            due = self.engine.due(now)
            if due and not should_stop():
                self.engine.produce(due, now)
            if self.engine.spool.depth() and now >= self.engine.retry_at and not should_stop():
                self.engine.flush(should_stop=should_stop)
            lic = self.engine.refresh_license(self.clock())  # time passing and license file changes
        except FluxError as exc:
            self.log.error("agent.step_failed", error=exc.message, retry_in=int(STATE_ERROR_PAUSE))
            return STATE_ERROR_PAUSE
        self.metrics.write(self.cfg, self.clock())  # for node_exporter's textfile collector
        now = self.clock()
        wake = min(self.engine.next_wake(now), now + LICENSE_FILE_POLL, lic.next_change or math.inf)
        return max(0.0, wake - now)


def reload_config(old: Config, path: Path, raw: bytes | None, log: Any) -> Config | None:
    """Check the config file at path (its content raw, None when unreadable) against the running one:
    log `config.reloaded` with what changed and return the new Config, or log `config.reload_failed`
    and return None (the old one keeps running)."""
    try:
        new = config_mod.load(path) if raw is None else config_mod.parse(raw, path)
        if new.instance.state_dir != old.instance.state_dir:
            raise FluxError("instance.state_dir cannot change while running; restart instead")
    except FluxError as exc:
        log.error("config.reload_failed", path=str(path), error=str(exc), keeping="previous configuration")
        return None
    old_doc, new_doc = config_mod.to_mapping(old), config_mod.to_mapping(new)
    changed = sorted(k for k in new_doc if new_doc[k] != old_doc.get(k))
    log.info("config.reloaded", path=str(path), changed=changed)
    return new


def run(config_path: Path, *, once: bool, log_stream: Any = None) -> int:
    """`run --once`: load config and identity, take the lock, run one cycle; `run`: the supervisor."""
    if not once:
        from fluxagent.daemon import supervisor

        return supervisor.run(config_path)
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
            return agent.once()


__all__ = ["LICENSE_FILE_POLL", "STATE_ERROR_PAUSE", "STOP_DEADLINE", "Agent", "once_exit_code", "reload_config",
           "run", "status_line"]
