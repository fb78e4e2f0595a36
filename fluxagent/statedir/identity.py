"""The instance identity: instance id, Ed25519 signing key, digest key (docs/ARCHITECTURE.md, "State directory").

Files are created atomically with mode 0600 whatever the umask, never replaced, and refused
when group/other can read them or another user owns them.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from fluxagent.errors import IdentityError
from fluxagent.statedir.fsutil import atomic_write, ensure_private_dir, remove_stray_temp, unsafe_permissions
from fluxagent.statedir.owner import foreign_owner, owner_hint, user_name

IDENTITY_FILE = "identity.json"
SIGNING_FILE = "signing.key"
DIGEST_FILE = "digest.key"
KEY_BYTES = 32


@dataclass(frozen=True)
class Identity:
    """The loaded identity. repr() never shows key material."""

    instance_id: str
    signing_key: nacl.signing.SigningKey
    digest_key: bytes

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def __repr__(self) -> str:
        return f"Identity(instance_id={self.instance_id!r}, keys=<redacted>)"


def _missing(state_dir: Path) -> IdentityError:
    return IdentityError(
        f"no instance identity in {state_dir}",
        hint="run `fluxagent init` to create it (with the same --config)",
    )


def _lost(ident_path: Path) -> IdentityError:
    return IdentityError(
        f"{ident_path} is missing, but this state directory has already sent messages",
        hint="restore identity.json from a backup; fluxagent never mints a new instance id for"
        " an instance in use (to start over as a new instance, move the state directory aside)",
    )


def _read_secret(path: Path) -> bytes:
    try:
        why = unsafe_permissions(path)
    except FileNotFoundError:
        raise IdentityError(f"{path} is missing") from None
    if why:
        st = path.stat()
        if st.st_uid != os.geteuid():  # the key is someone else's: run as them, never take it over
            raise IdentityError(f"{path} is not private: {why}", hint=owner_hint(user_name(st.st_uid)))
        raise IdentityError(f"{path} is not private: {why}", hint=f"run `chmod 600 {path}`")
    try:
        data = path.read_bytes()
    except OSError as exc:
        owner = foreign_owner(path.parent)
        raise IdentityError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=owner_hint(owner) if owner else "the state directory must belong to the user fluxagent runs as",
        ) from None
    if len(data) != KEY_BYTES:
        raise IdentityError(
            f"{path} holds {len(data)} bytes, expected {KEY_BYTES}: the file is damaged",
            hint="restore it from a backup; fluxagent never replaces an existing key",
        )
    return data


def load(state_dir: Path) -> Identity:
    """Load and check the identity in state_dir; raises IdentityError (exit 78) saying how to fix it."""
    ident_path = state_dir / IDENTITY_FILE
    owner = foreign_owner(state_dir)
    if owner is not None:  # another user's (the service's) keys: never loaded, never taken over
        raise IdentityError(
            f"the state directory {state_dir} belongs to the user {owner}, not to {user_name(os.geteuid())}"
            " who runs this command",
            hint=owner_hint(owner),
        )
    if not ident_path.exists():
        raise _lost(ident_path) if (state_dir / SIGNING_FILE).exists() and _has_sent(state_dir) else _missing(state_dir)
    try:
        doc = json.loads(ident_path.read_bytes())
        instance_id = str(uuid.UUID(doc["instance_id"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise IdentityError(
            f"{ident_path} is damaged or unreadable",
            hint="restore it from a backup; fluxagent never regenerates an instance identity",
        ) from None
    signing = _read_secret(state_dir / SIGNING_FILE)
    digest = _read_secret(state_dir / DIGEST_FILE)
    return Identity(instance_id, nacl.signing.SigningKey(signing), digest)


def ensure(state_dir: Path, *, now: int) -> tuple[Identity, list[str]]:
    """Create whatever part of the identity is missing; return it and the names created.

    Never replaces a file. Refuses to make a new signing key for an existing instance id.
    Raises IdentityError or OSError.
    """
    created = _create_missing(state_dir, now, None)
    return load(state_dir), created


def ensure_for(state_dir: Path, *, now: int, owner: tuple[int, int]) -> tuple[str, list[str]]:
    """As root: create what is missing of the identity owned by owner (uid, gid); return the instance id
    and the names created. The state dir must be owner's or not exist yet. Raises IdentityError or OSError."""
    if state_dir.exists() and state_dir.stat().st_uid != owner[0]:
        have, want = user_name(state_dir.stat().st_uid), user_name(owner[0])
        raise IdentityError(f"the state directory {state_dir} belongs to {have}, not to the service user {want}",
                            hint=f"hand it to the service user: `chown -R {want}: {state_dir}`, or set"
                            " instance.service_user")
    created = _create_missing(state_dir, now, owner)
    return inspect(state_dir), created


def _create_missing(state_dir: Path, now: int, owner: tuple[int, int] | None) -> list[str]:
    """Create the missing identity files (owned by owner when given); return their names."""
    fresh = not state_dir.exists()
    ensure_private_dir(state_dir)
    if owner is not None and fresh:
        os.chown(state_dir, *owner)
    remove_stray_temp(state_dir)
    created: list[str] = []
    ident_path, sign_path, digest_path = (state_dir / n for n in (IDENTITY_FILE, SIGNING_FILE, DIGEST_FILE))
    if ident_path.exists() and not sign_path.exists():
        raise IdentityError(
            f"{ident_path} exists but {sign_path} is missing",
            hint="restore signing.key from a backup; a new key would not match the registered instance",
        )
    if not ident_path.exists() and sign_path.exists() and _has_sent(state_dir):
        # keys without an id are normal after an interrupted first init, not after messages went out
        raise _lost(ident_path)
    for path in (sign_path, digest_path):
        if not path.exists():
            try:
                atomic_write(path, secrets.token_bytes(KEY_BYTES), mode=0o600, exclusive=True, owner=owner)
                created.append(path.name)
            except FileExistsError:
                pass  # another init won the race; use its key
    if not ident_path.exists():
        doc = {"format": 1, "instance_id": str(uuid.uuid4()), "created_at": now}
        try:
            atomic_write(ident_path, (json.dumps(doc, sort_keys=True) + "\n").encode(), mode=0o600,
                         exclusive=True, owner=owner)
            created.append(ident_path.name)
        except FileExistsError:
            pass
    return created


def _has_sent(state_dir: Path) -> bool:
    """True when state_dir shows an instance in use: a message counter or a ledger."""
    return (state_dir / "seq").exists() or (state_dir / "ledger").exists()


def exists(state_dir: Path) -> bool:
    """True when an identity file is present in state_dir (complete or not)."""
    return (state_dir / IDENTITY_FILE).exists() or (state_dir / SIGNING_FILE).exists()


def permission_problems(state_dir: Path) -> list[str]:
    """Return each identity file whose permissions are unsafe, with the reason (for `validate`)."""
    out = []
    for name in (IDENTITY_FILE, SIGNING_FILE, DIGEST_FILE):
        path = state_dir / name
        if path.exists():
            why = unsafe_permissions(path)
            if why and name != IDENTITY_FILE:
                out.append(f"{path}: {why}")
    return out


def inspect(state_dir: Path) -> str:
    """Return the instance id of another user's identity after checking its files, without reading a key.

    For root beside the service (validate): each key file present, 0600 and owned by the state dir's
    owner. Raises IdentityError saying what is wrong.
    """
    ident_path = state_dir / IDENTITY_FILE
    try:
        owner = state_dir.stat().st_uid
        instance_id = str(uuid.UUID(json.loads(ident_path.read_bytes())["instance_id"]))
    except FileNotFoundError:
        raise _missing(state_dir) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise IdentityError(f"{ident_path} is damaged or unreadable",
                            hint="restore it from a backup; fluxagent never regenerates an instance identity") from None
    for name in (SIGNING_FILE, DIGEST_FILE):
        path = state_dir / name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IdentityError(f"{path} is missing", hint="restore it from a backup") from None
        if st.st_mode & 0o077 or st.st_uid != owner:
            raise IdentityError(
                f"{path} is not private to {user_name(owner)}: mode {st.st_mode & 0o777:04o},"
                f" owner {user_name(st.st_uid)}",
                hint=f"as {user_name(owner)}: `sudo -u {user_name(owner)} chmod 600 {path}`")
    return instance_id
