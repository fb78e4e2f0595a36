"""Signals that reach `fluxagent run` while it starts (imports, config, lock): kept, not fatal.

Until the daemon installs its own handlers, SIGTERM would kill the process outright: systemd
stopping or restarting the service right after a start (or a reload just after it) would end it
mid-start instead of gracefully. `arm` is called first thing by the console entry point and
only records; the daemon collects what arrived with `take` when it installs its real handlers.
Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_CONFIG = "/etc/fluxagent/fluxagent.toml"

_pending: set[int] = set()


def daemon_config(argv: Sequence[str], env: Mapping[str, str]) -> Path | None:
    """Return the config path when argv is exactly `[--config PATH | -c PATH] [-v | -q] run` (the daemon), else None."""
    config: str | None = None
    args = list(argv)
    while args and args[0] != "run":
        opt = args.pop(0)
        if opt in ("--config", "-c") and args:
            config = args.pop(0)
        elif opt.startswith("--config="):
            config = opt.partition("=")[2]
        elif opt in ("-v", "--verbose", "-q", "--quiet"):
            continue
        else:
            return None
    if args != ["run"]:
        return None
    return Path(config or env.get("FLUXAGENT_CONFIG", "").strip() or DEFAULT_CONFIG)


def _remember(sig: int, _frame: FrameType | None) -> None:
    _pending.add(sig)  # only a flag: nothing that could deadlock the code it interrupts


def arm() -> None:
    """Record SIGTERM, SIGINT and SIGHUP from now on instead of dying (main thread only)."""
    for sig in SIGNALS:
        signal.signal(sig, _remember)


def arm_for(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> bool:
    """Arm when argv starts the daemon; return whether it did."""
    if daemon_config(argv, env) is None:
        return False
    arm()
    return True


def pending() -> frozenset[int]:
    """Return the signals recorded since arm(), keeping them for take()."""
    return frozenset(_pending)


def take() -> frozenset[int]:
    """Return the signals recorded since arm() and forget them."""
    got = frozenset(_pending)
    _pending.clear()
    return got


__all__ = ["SIGNALS", "arm", "arm_for", "daemon_config", "pending", "take"]
