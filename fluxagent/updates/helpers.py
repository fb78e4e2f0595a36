"""Front ends that hand update credentials over: docker and git credential helpers, apt auth.conf.d.

The protocol functions are pure (text in, text out); `write_apt` and `cleanup_apt` are the only
I/O. The apt entry is the one place credentials touch a disk: mode 0600, written atomically, and
removed once expired; its expiry lives beside it in the state dir (`apt-credentials.json`, no
secret in it), on the monotonic clock of the current boot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from fluxagent.errors import StateError
from fluxagent.statedir import fsutil, state
from fluxagent.timefmt import utc_iso
from fluxagent.updates.aptexpiry import APT_STATE_FILE, Cleanup, boot_id, cleanup_apt
from fluxagent.updates.credentials import Credential

DOCKER_NOT_FOUND = "credentials not found in native keychain"


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


__all__ = ["APT_STATE_FILE", "DOCKER_NOT_FOUND", "Cleanup", "apt_entry", "boot_id", "cleanup_apt", "docker_get",
           "docker_other", "git_get", "host_of", "matches", "parse_git_request", "write_apt"]
