"""Front ends that hand update credentials over: docker and git credential helpers, apt auth.conf.d.

The protocol functions are pure (text in, text out); `write_apt` and `cleanup_apt` are the only
I/O. The apt entry is the one place credentials touch a disk: mode 0600, written atomically, and
removed once expired; its expiry lives beside it in the state dir (`apt-credentials.json`, no
secret in it), on the monotonic clock of the current boot.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fluxagent.errors import StateError
from fluxagent.statedir import fsutil, state
from fluxagent.timefmt import utc_iso
from fluxagent.updates.credentials import Credential

DOCKER_NOT_FOUND = "credentials not found in native keychain"
APT_STATE_FILE = "apt-credentials.json"


def host_of(text: str) -> str:
    """Return the lowercase host[:port] a registry URL or name designates ("" if none)."""
    t = text.strip()
    if "://" not in t:
        t = "//" + t
    try:
        parts = urlsplit(t)
        host, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return ""
    return f"{host}:{port}" if port else host


def matches(requested: str, registry: str) -> bool:
    """Return whether a requested server/host designates the registry the credentials are for."""
    want, have = host_of(requested), host_of(registry)
    if not want or not have:
        return False
    return want == have or (":" not in have and want.split(":")[0] == have)


def foreign(requested: str, known: str | None) -> bool:
    """Return whether requested is surely not the vendor's registry (False while the registry is unknown)."""
    return known is not None and not matches(requested, known)


# ---- docker credential helper: `get` reads the server URL on stdin ----


def docker_get(stdin: str, cred: Credential) -> tuple[str, int]:
    """Return (stdout, exit code) of `get`; a server other than the registry is "not found"."""
    server = stdin.strip()
    if not matches(server, cred.registry):
        return DOCKER_NOT_FOUND, 1
    return json.dumps({"ServerURL": server, "Username": cred.username, "Secret": cred.secret}), 0


def docker_other(action: str) -> tuple[str, int]:
    """Return (stdout, exit code) of store/erase/list: nothing is stored, so nothing to change or list."""
    if action == "list":
        return "{}", 0
    if action == "erase":
        return "", 0
    if action == "store":
        return "fluxagent issues short-lived update credentials itself and stores none", 1
    return f"unknown credential helper action {action!r}: use get, store, erase or list", 1


# ---- git credential helper: key=value lines on stdin ----


def parse_git_request(lines: Iterable[str]) -> dict[str, str]:
    """Return the attributes of a git credential request (up to the first blank line)."""
    out: dict[str, str] = {}
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def git_get(request: dict[str, str], cred: Credential) -> str:
    """Return the `get` answer: username/password/password_expiry_utc, or nothing for another host."""
    if not matches(request.get("host", ""), cred.registry):
        return ""
    return (f"username={cred.username}\npassword={cred.secret}\n"
            f"password_expiry_utc={cred.expires_utc}\n")


# ---- apt auth.conf.d ----


def apt_entry(cred: Credential) -> bytes:
    """Return the netrc-like auth.conf line for the registry."""
    return f"machine {cred.registry} login {cred.username} password {cred.secret}\n".encode()


def boot_id() -> str:
    """Return this boot's id (a monotonic time means nothing after a reboot), or "" if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_apt(path: Path, cred: Credential, state_dir: Path, boot: str) -> None:
    """Record the entry's expiry in the state dir, then write the 0600 entry atomically; raises StateError.

    Root writing for the service user's state dir (the package) records it as that user's file, so the
    daemon can read it and remove the entry when it expires where it may.
    """
    try:
        st = state_dir.stat()
        owner = (st.st_uid, st.st_gid) if st.st_uid != os.geteuid() else None
    except OSError:
        owner = None  # write_json says what is wrong with the state dir
    state.write_json(state_dir / APT_STATE_FILE, {
        "v": 1, "path": str(path), "expires_boottime": cred.expires_mono, "boot_id": boot,
        "expires_at": utc_iso(cred.expires_utc)}, owner=owner)
    try:
        fsutil.atomic_write(path, apt_entry(cred), mode=0o600)
    except OSError as exc:
        raise StateError(f"cannot write the apt entry {path}: {exc.strerror or exc}",
                         hint="run as root, or set updates.apt_auth_file") from exc


@dataclass(frozen=True)
class Cleanup:
    """What cleanup_apt did: whether it removed the entry, and seconds until it is due otherwise.

    `foreign` is set when the record named another file than the entry: that file is left alone.
    """

    removed: bool
    due_in: float | None
    foreign: bool = False


def cleanup_apt(state_dir: Path, entry: Path, mono_now: float, boot: str) -> Cleanup:
    """Remove `entry` (the configured apt file, never a path read from the state dir) once expired.

    The record in the state dir only says when; it belongs to the service user, so the path it names
    is never removed, and a link at `entry` is not followed. Raises StateError.
    """
    record = state.read_json(state_dir / APT_STATE_FILE)
    if record is None:
        return Cleanup(False, None)
    expires = record.get("expires_boottime")
    stale = not isinstance(expires, int | float) or record.get("boot_id") != boot or mono_now >= expires
    if not stale:
        assert isinstance(expires, int | float)
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
