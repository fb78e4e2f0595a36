"""The instance lock: an exclusive flock on `<state_dir>/lock`, held by whoever owns the state."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fluxagent.errors import LockHeld, StateError
from fluxagent.statedir.fsutil import check_state_dir, ensure_private_dir


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[int]:
    """Hold an exclusive flock on `<state_dir>/lock`; raises LockHeld (exit 75) if another holds it."""
    path = state_dir / "lock"
    check_state_dir(state_dir)  # whoever holds the lock writes here: it must be ours alone
    try:
        ensure_private_dir(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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
