"""The approval file beside the config (`<config dir>/approved-schema`): read, checked, written.

The file is root's statement of which registry version this instance may send (docs/OPERATOR.md,
"Approving a wider schema"). It holds the approved fingerprint and who approved it, when and how.
Anything wrong with it is a configuration error (exit 78) that says how to fix it: a missing,
damaged or unknown approval never falls back to sending more.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
import time
from pathlib import Path

from fluxagent.config import Config
from fluxagent.errors import ConfigError
from fluxagent.schema.policy import Approved, Policy
from fluxagent.schema.shipped import running, shipped
from fluxagent.schema.versions import Catalog, Version, is_fingerprint
from fluxagent.statedir.fsutil import atomic_write

FILE = "approved-schema"
MAX_BYTES = 4096
REVIEW = "review what each version sends with `fluxagent schema` (and `fluxagent schema --diff`)"


def approval_path(config_path: Path) -> Path:
    """Return the approval file of the config at config_path: `approved-schema` in the same directory."""
    return config_path.absolute().parent / FILE


def path_of(cfg: Config) -> Path:
    """Return cfg's approval file; raises ConfigError when cfg was not read from a file."""
    if cfg.source is None:
        raise ConfigError(["the configuration was not read from a file, so it has no approved-schema beside it"])
    return approval_path(cfg.source)


def _problem(path: Path, what: str, fix: str) -> ConfigError:
    return ConfigError([f"{path}: {what}"], hint=fix)


def read_approval(path: Path, catalog: Catalog, *, euid: int | None = None) -> Approved:
    """Return the approval in path, checked against catalog; raises ConfigError (78) saying the fix.

    Refused: missing, unreadable, writable by group or others, not root's (when running as root;
    otherwise root's or this user's), not the JSON `fluxagent schema --approve` writes, or naming a
    fingerprint no shipped version has.
    """
    uid = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _problem(path, "no approved schema version: nothing is sent until one is approved",
                       f"{REVIEW}, then run `sudo fluxagent schema --approve`") from None
    except OSError as exc:
        why = "a symbolic link; it must be a regular file" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise _problem(path, f"cannot read the approved schema version: {why}",
                       f"{REVIEW}, then rewrite it with `sudo fluxagent schema --approve` (a regular file root "
                       "owns, mode 0644)") from None
    try:
        st = os.fstat(fd)
        data = os.read(fd, MAX_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    rewrite = f"{REVIEW}, then rewrite it with `sudo fluxagent schema --approve`"
    if not stat.S_ISREG(st.st_mode):
        raise _problem(path, "not a regular file", rewrite)
    if st.st_mode & 0o022:
        raise _problem(path, f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): anyone could "
                       "widen what is sent", f"`sudo chmod 0644 {path}`, then check its content with "
                       "`fluxagent schema`")
    if st.st_uid != 0 and (uid == 0 or st.st_uid != uid):
        raise _problem(path, f"owned by uid {st.st_uid}, not root", f"`sudo chown root:root {path}` if you trust "
                       "its content (`fluxagent schema` shows it), or rewrite it with "
                       "`sudo fluxagent schema --approve`")
    if len(data) > MAX_BYTES:
        raise _problem(path, f"larger than {MAX_BYTES} bytes: not an approval file", rewrite)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _problem(path, "not the JSON `fluxagent schema --approve` writes", rewrite) from None
    fp = doc.get("approved") if isinstance(doc, dict) else None
    if not isinstance(fp, str) or not is_fingerprint(fp):
        raise _problem(path, "holds no approved fingerprint (`\"approved\": \"sha256:…\"`)", rewrite)
    version = catalog.find(fp)
    if version is None:
        known = ", ".join(f"{v.name} {v.fingerprint}" for v in catalog.versions)
        raise _problem(path, f"approves {fp}, which is no schema version this fluxagent knows (it knows {known}); "
                       "a downgrade or an edited file", f"{REVIEW}, then approve one it knows: "
                       "`sudo fluxagent schema --approve v1` or the newest with `--approve`")
    by, at, via = doc.get("by"), doc.get("at"), doc.get("via")
    return Approved(version, by if isinstance(by, str) else "unknown",
                    at if isinstance(at, int) and not isinstance(at, bool) else 0,
                    via if isinstance(via, str) else "unknown")


def approval_bytes(version: Version, *, by: str, via: str, now: int) -> bytes:
    """Return the approval file's content for version (pure)."""
    doc = {"approved": version.fingerprint, "version": version.number, "by": by[:80], "via": via[:120], "at": now,
           "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_approval(path: Path, version: Version, *, by: str, via: str, now: int) -> Approved:
    """Write the approval of version to path atomically (mode 0644); return it; raises OSError."""
    atomic_write(path, approval_bytes(version, by=by, via=via, now=now), mode=0o644)
    return Approved(version, by[:80], now, via[:120])


def who() -> str:
    """Return who is approving: this user's name, and the sudo user behind root when there is one."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = f"uid {os.geteuid()}"
    sudo = os.environ.get("SUDO_USER", "").strip()
    return f"{name} (sudo by {sudo})" if sudo and sudo != name and sudo.isprintable() else name


def load_policy(cfg: Config, catalog: Catalog | None = None, running_version: Version | None = None) -> Policy:
    """Return what cfg's instance may send: the running registry narrowed to its approval; raises ConfigError.

    catalog / running_version: the known versions and the running one (default: the shipped ones
    and the running REGISTRY); tests pass their own.
    """
    cat = catalog or shipped()
    run = running_version or (cat.newest if catalog is not None else running())
    approved = read_approval(path_of(cfg), cat)
    return Policy(run, approved.version, approved)


def approve(path: Path, catalog: Catalog, ref: str | None, *, via: str, now: int, if_missing: bool = False,
            by: str | None = None) -> Approved | None:
    """Approve the version ref names (default: the newest) in path; return it (None: kept, with if_missing).

    Raises ValueError for a ref no version has, OSError when the file cannot be written.
    """
    if if_missing and os.path.lexists(path):
        return None
    version = catalog.newest if not ref else catalog.find(ref)
    if version is None:
        known = ", ".join(f"{v.name} ({v.fingerprint})" for v in catalog.versions)
        raise ValueError(f"{ref!r} names no schema version this fluxagent knows; it knows {known}")
    return write_approval(path, version, by=by or who(), via=via, now=now)


def running_approved(_cfg: Config) -> Policy:
    """Return the running registry as approved, ignoring any file: for a Config built in code (tests, tools)."""
    return Policy.of(running())
