"""A worker: one event of the daemon in a process of its own, with the whole library stack
(docs/ARCHITECTURE.md). The supervisor starts it, it reports over a pipe and exits.

    python -m fluxagent.daemon.worker MODE --config PATH --parent PID --in-fd N --report-fd N [--lock-fd N]

MODE is `check` (validate the config file: at start-up, or on SIGHUP against the previous text),
`step` (do what is due: the code of `run --once`, for the kinds that are due) or `credentials`
(fetch update credentials). The request comes in on --in-fd as one JSON object; every report is
one JSON object per line on --report-fd. A step or credentials worker runs under the supervisor's
instance lock, inherited as --lock-fd, so no other process can take it while the worker lives.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fluxagent import config as config_mod
from fluxagent import logs
from fluxagent.config import Config
from fluxagent.daemon.agent import Agent, reload_config, status_line
from fluxagent.errors import EXIT_LOCKED, EXIT_OK, FluxError, LockHeld

PR_SET_PDEATHSIG = 1
REQUEST_MARGIN = 5.0  # on top of connect + read timeout: what one request may take at most


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when the supervisor dies; exit if it already has.

    SIGKILL, not SIGTERM: the worker holds the instance lock, which the next supervisor needs at
    once, and every state file is written so that a kill at any moment leaves it valid.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the supervisor died before the request above
        os._exit(EXIT_OK)


def hold_lock(fd: int) -> None:
    """Check that fd is the supervisor's instance lock (the same open file, so flock succeeds); raises LockHeld."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise LockHeld("the worker was not handed the instance lock") from None


def values(cfg: Config) -> dict[str, Any]:
    """Return the few config values the supervisor needs (it never parses the config itself)."""
    return {"state_dir": str(cfg.instance.state_dir), "log_format": cfg.log.format, "log_level": cfg.log.level,
            "min_remaining": cfg.updates.min_remaining, "apt_auth_file": str(cfg.updates.apt_auth_file),
            "request_deadline": cfg.server.connect_timeout + cfg.server.read_timeout + REQUEST_MARGIN}


class Reporter:
    """Writes report lines to the supervisor's pipe."""

    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", encoding="utf-8", closefd=True)

    def __call__(self, kind: str, **fields: Any) -> None:
        self.out.write(json.dumps({"t": kind, **fields}, default=str) + "\n")
        self.out.flush()


class Stop:
    """SIGTERM/SIGINT ask the worker to stop before its next message; the time budget does too."""

    def __init__(self, budget: float) -> None:
        self.requested = False
        self.end = time.monotonic() + budget
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's business

    def _on_signal(self, _sig: int, _frame: object) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested or time.monotonic() >= self.end


def check(path: Path, previous: str | None, report: Reporter) -> int:
    """Validate the config file at path; report its text and values. On reload (previous given) a
    bad file is logged and refused, and the previous configuration stays."""
    raw: bytes | None
    try:
        with path.open("rb") as f:
            raw = f.read(config_mod.MAX_CONFIG_BYTES + 1)
    except OSError:
        raw = None  # config_mod.load says what is wrong, as `run` always has
    if previous is None:
        cfg = config_mod.load(path) if raw is None else config_mod.parse(raw, path)  # raises ConfigError: 78
        logs.configure(cfg.log.format, cfg.log.level)
        from fluxagent.statedir import identity
        from fluxagent.statedir.fsutil import check_state_dir

        check_state_dir(cfg.instance.state_dir)  # before reading keys: whose directory it is comes first
        identity.load(cfg.instance.state_dir)  # fail with 78 before the supervisor takes the lock
        from fluxagent.schema.approval import load_policy

        load_policy(cfg)  # and without an approved schema version: nothing could be sent
        assert raw is not None
        report("config", ok=True, text=raw.decode("utf-8"), values=values(cfg),
               status=status_line(cfg, time.time()))
        return EXIT_OK
    old = config_mod.parse(previous.encode("utf-8"), path)
    logs.configure(old.log.format, old.log.level)  # the reload is logged before a new level hides it
    new = reload_config(old, path, raw, logs.get())
    if new is None or raw is None:
        report("config", ok=False)
        return EXIT_OK
    report("config", ok=True, text=raw.decode("utf-8"), values=values(new), status=status_line(new, time.time()))
    return EXIT_OK


def work(mode: str, cfg: Config, first: bool, stop: Stop, report: Reporter) -> int:
    """Run one step, credentials request or live license check under the inherited lock; report, return 0."""
    from fluxagent.updates.credentials import CredentialCache, fetch, monotonic

    logs.configure(cfg.log.format, cfg.log.level)
    with Agent(cfg, quiet_open=not first) as agent:
        if mode == "credentials":
            cache = CredentialCache(lambda: fetch(agent.engine, monotonic), monotonic, cfg.updates.min_remaining)
            try:
                cred = cache.get()
                answer: dict[str, Any] = {
                    "ok": True, "username": cred.username, "secret": cred.secret, "registry": cred.registry,
                    "expires_mono": cred.expires_mono, "expires_utc": cred.expires_utc}
            except FluxError as exc:
                answer = {"ok": False, "code": exc.code, "exit_code": exc.exit_code, "message": exc.message}
            report("credentials", answer=answer)
            now = agent.clock()
            next_wake = agent.engine.next_wake(now)
        elif mode == "license":  # `validate` beside the running daemon: one fresh, signed license check
            from fluxagent.validate.run import license_check

            report("license", answer={"ok": True, "check": license_check(agent.engine, agent.clock).as_dict()})
            next_wake = agent.engine.next_wake(agent.clock())
        else:
            next_wake = agent.clock() + agent.step(should_stop=stop)
        sched = agent.engine.schedule
        kinds = {k: {"next_due": sched.kind(k).next_due, "failures": sched.kind(k).consecutive_failures}
                 for k in ("license", "heartbeat", "digest")}
        report("done", next_wake=next_wake, status=agent.status_line(), kinds=kinds,
               spool=agent.engine.spool.depth())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run one worker; return its exit code (a FluxError's code, printed for people on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m fluxagent.daemon.worker")
    ap.add_argument("mode", choices=("check", "step", "credentials", "license"))
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--in-fd", type=int, required=True)
    ap.add_argument("--report-fd", type=int, required=True)
    ap.add_argument("--lock-fd", type=int)
    ap.add_argument("--budget", type=float, default=240.0)
    ap.add_argument("--first", action="store_true")
    args = ap.parse_args(argv)
    die_with_parent(args.parent)
    stop = Stop(args.budget / 2)  # start no new message after half the deadline: the last one may take the rest
    with os.fdopen(args.in_fd, "rb") as f:
        request = json.loads(f.read() or b"{}")
    report = Reporter(args.report_fd)
    try:
        if args.mode == "check":
            return check(args.config, request.get("previous"), report)
        if args.lock_fd is None:
            raise LockHeld("a step worker needs the instance lock (--lock-fd)")
        hold_lock(args.lock_fd)
        cfg = config_mod.parse(str(request["config"]).encode("utf-8"), args.config)
        return work(args.mode, cfg, args.first, stop, report)
    except FluxError as exc:
        print(f"fluxagent: {exc.code} error: {exc}", file=sys.stderr)
        return EXIT_LOCKED if isinstance(exc, LockHeld) else exc.exit_code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter teardown: it restores the default signal handlers first, and the supervisor's
    # SIGTERM (a stop) arriving then would turn a finished, reported step into a killed one
    os._exit(code)
