"""The apt entry's expiry, which the daemon watches: `apt-credentials.json` beside the state, and
the removal once it has passed. Standard library only: the resident supervisor runs it."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from fluxagent.errors import StateError

APT_STATE_FILE = "apt-credentials.json"


class Cleanup:
    """What cleanup_apt did: whether it removed the entry, and seconds until it is due otherwise."""

    __slots__ = ("due_in", "removed")

    def __init__(self, removed: bool, due_in: float | None) -> None:
        self.removed, self.due_in = removed, due_in

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cleanup) and (self.removed, self.due_in) == (other.removed, other.due_in)

    def __repr__(self) -> str:
        return f"Cleanup(removed={self.removed}, due_in={self.due_in})"


def boot_id() -> str:
    """Return this boot's id (a monotonic time means nothing after a reboot), or "" if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _record(path: Path) -> dict[str, object] | None:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateError(f"{path} is not valid JSON", hint=f"move {path} aside; fluxagent recreates it") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return obj if isinstance(obj, dict) else {}


def cleanup_apt(state_dir: Path, mono_now: float, boot: str) -> Cleanup:
    """Remove the apt entry once expired (or written before this boot); raises StateError."""
    record = _record(state_dir / APT_STATE_FILE)
    if record is None:
        return Cleanup(False, None)
    expires = record.get("expires_boottime")
    path = record.get("path")
    if isinstance(expires, int | float) and record.get("boot_id") == boot and mono_now < expires:
        return Cleanup(False, float(expires) - mono_now)
    try:
        with contextlib.suppress(FileNotFoundError):  # another cleanup may have been first
            if isinstance(path, str):
                os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / APT_STATE_FILE)
    except OSError as exc:
        raise StateError(f"cannot remove the expired apt entry {path}: {exc.strerror or exc}",
                         hint="run `fluxagent credentials apt --cleanup` as root") from None
    return Cleanup(True, None)
