"""Atomic, permission-exact file writes and the checks that go with them (DESIGN §6)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

TMP_MARK = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Fsync a directory so a rename inside it is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes | Iterable[bytes | memoryview], *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Write data (bytes, or its pieces) to path atomically with exactly `mode` (umask ignored); raises OSError.

    With exclusive=True the final rename refuses to replace an existing file (FileExistsError).
    """
    directory = path.parent
    tmp = directory / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        for piece in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
            view = memoryview(piece)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def remove_stray_temp(directory: Path) -> int:
    """Delete temp files left by an interrupted atomic_write in directory; return how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") and TMP_MARK in entry.name and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def ensure_private_dir(directory: Path, mode: int = 0o700) -> None:
    """Create directory (and parents) if missing and set the mode of the leaf; raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != mode:
        os.chmod(directory, mode)


def unsafe_permissions(path: Path) -> str | None:
    """Return why path is unsafe for a secret (group/other bits, foreign owner), or None."""
    st = path.stat()
    if st.st_mode & 0o077:
        return f"mode {st.st_mode & 0o777:04o} lets group or others read it"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by the current user (uid {os.geteuid()})"
    return None
