"""The apt entry's expiry, which the daemon watches: `apt-credentials.json` beside the state, and
the removal once it has passed. Standard library only: the resident supervisor runs it."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from fluxagent.errors import StateError
from fluxagent.statedir import fsutil

APT_STATE_FILE = "apt-credentials.json"


class Cleanup:
    """What cleanup_apt did: whether it removed the entry, and seconds until it is due otherwise.

    `foreign` is set when the record named another file than the entry: that file is left alone.
    """

    __slots__ = ("due_in", "foreign", "removed")

    def __init__(self, removed: bool, due_in: float | None, foreign: bool = False) -> None:
        self.removed, self.due_in, self.foreign = removed, due_in, foreign

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cleanup) and (self.removed, self.due_in, self.foreign) == (
            other.removed, other.due_in, other.foreign)

    def __hash__(self) -> int:
        return hash((self.removed, self.due_in, self.foreign))

    def __repr__(self) -> str:
        return f"Cleanup(removed={self.removed}, due_in={self.due_in}, foreign={self.foreign})"


def boot_id() -> str:
    """Return this boot's id (a monotonic time means nothing after a reboot), or "" if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _record(path: Path) -> dict[str, object] | None:
    """Return the JSON object at path, None if absent; raises StateError if unreadable or corrupt."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link planted there is refused (ELOOP)
        with os.fdopen(fd, "rb") as f:
            obj = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateError(f"{path} is not valid JSON", hint=f"move {path} aside; fluxagent recreates it") from None
    except OSError as exc:
        raise StateError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="check that the state directory belongs to the user fluxagent runs as",
        ) from exc
    if not isinstance(obj, dict):
        raise StateError(f"{path} does not hold a JSON object", hint=f"move {path} aside; fluxagent recreates it")
    return obj


def cleanup_apt(state_dir: Path, entry: Path, mono_now: float, boot: str) -> Cleanup:
    """Remove `entry` (the configured apt file, never a path read from the state dir) once expired.

    The record in the state dir only says when; it belongs to the service user, so the path it names
    is never removed, and a link at `entry` is not followed. Raises StateError.
    """
    record = _record(state_dir / APT_STATE_FILE)
    if record is None:
        return Cleanup(False, None)
    expires = record.get("expires_boottime")
    if isinstance(expires, int | float) and record.get("boot_id") == boot and mono_now < expires:
        return Cleanup(False, float(expires) - mono_now)
    foreign = record.get("path") != str(entry)
    if not foreign:
        _remove_regular(entry)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / APT_STATE_FILE)  # unlink never follows a link
    except OSError as exc:
        raise StateError(f"cannot remove {state_dir / APT_STATE_FILE}: {exc.strerror or exc}",
                         hint="run `fluxagent credentials apt --cleanup` as root") from None
    return Cleanup(not foreign, None, foreign)


def _remove_regular(entry: Path) -> None:
    """Unlink entry if it is a regular file (absent is fine); a link or anything else is refused."""
    try:
        dir_fd = os.open(entry.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"cannot open {entry.parent}: {exc.strerror or exc}") from None
    try:
        try:
            st = os.lstat(entry.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return  # another cleanup may have been first
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"the apt entry {entry} is not a regular file (a link?); left alone",
                             hint="remove it by hand if fluxagent did not put it there")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.name, dir_fd=dir_fd)
        fsutil.fsync_dir(entry.parent)
    except OSError as exc:
        raise StateError(f"cannot remove the expired apt entry {entry}: {exc.strerror or exc}",
                         hint="run `fluxagent credentials apt --cleanup` as root") from None
    finally:
        os.close(dir_fd)
