"""Atomic, permission-exact file writes and the checks that go with them (docs/ARCHITECTURE.md, "State directory")."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

from fluxagent.errors import StateDirUnsafe

TMP_MARK = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Fsync a directory so a rename inside it is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Return an unpredictable temp-file name beside path (removed at start if left by a kill)."""
    # os.urandom, not secrets: secrets pulls in random and hashlib, megabytes the supervisor does not need
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(8).hex()}"


def create_new(path: Path, mode: int = 0o600, flags: int = os.O_WRONLY) -> int:
    """Open a new file at path (O_CREAT|O_EXCL|O_NOFOLLOW: never an existing file or a link); raises OSError."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def _named(exc: OSError, path: Path) -> OSError:
    """Return exc as the same kind of OSError naming path (people know that file, not our temp file)."""
    return OSError(exc.errno, exc.strerror, str(path))


def atomic_write(path: Path, data: bytes | Iterable[bytes | memoryview], *, mode: int = 0o600,
                 exclusive: bool = False, owner: tuple[int, int] | None = None) -> None:
    """Write data (bytes, or its pieces) to path atomically with exactly `mode` (umask ignored); raises
    OSError naming path.

    With exclusive=True the final rename refuses to replace an existing file (FileExistsError).
    owner (uid, gid), for root only: the file belongs to that user from its first byte (the service
    user's files stay the service's, docs/OPERATOR.md "Two users").
    """
    directory = path.parent
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        if owner is not None:
            os.fchown(fd, *owner)
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
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _named(exc, path) from None
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


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_state_dir(directory: Path) -> None:
    """Refuse a state dir another user owns or group/others may write to; raises StateDirUnsafe.

    A missing directory is fine (it is created 0700). The hint keeps the service working: root is told
    to run as the owner, never to take the directory over (docs/ARCHITECTURE.md, "State directory").
    """
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateDirUnsafe(f"cannot inspect the state directory {directory}: {exc.strerror or exc}",
                             hint="run fluxagent as the user the state directory belongs to") from None
    me, owner = os.geteuid(), st.st_uid
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirUnsafe(f"the state directory {directory} is not a directory (a link?)",
                             hint="set instance.state_dir to the real directory")
    if owner != me:
        who = _user(owner)
        if me == 0:
            hint = (f"run fluxagent as {who}, the user the directory belongs to (sudo -u {who} fluxagent …);"
                    " do not take it over as root: the service would stop working")
        elif owner == 0:
            hint = f"as root: chown -R {_user(me)}: {directory} && chmod 0700 {directory}"
        else:
            hint = f"run fluxagent as {who} (sudo -u {who} fluxagent …), the user the directory belongs to"
        raise StateDirUnsafe(
            f"the state directory {directory} is owned by {who}, not by {_user(me)} who runs this command", hint=hint)
    if st.st_mode & 0o022:
        raise StateDirUnsafe(
            f"the state directory {directory} is writable by group or others (mode {st.st_mode & 0o7777:04o})",
            hint=f"as {_user(me)}: chmod 0700 {directory}, then check that nobody else put files in it")
