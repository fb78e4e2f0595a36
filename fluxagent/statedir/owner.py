"""Who owns the state directory, and fix hints that keep that user's service working (docs/OPERATOR.md).

In the package the daemon runs as its own user (`fluxagent`) and the operator as root. Root never
takes the service's keys or files over: a hint never says to chown them; it says to run the command
as the owner (`sudo -u fluxagent fluxagent …`) or to ask the running service.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def user_name(uid: int) -> str:
    """Return the login name of uid, or "#uid" (the form sudo -u accepts) when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def foreign_owner(state_dir: Path) -> str | None:
    """Return the name of the user owning state_dir when that is not the user running now, else None.

    None also when state_dir does not exist yet (whoever creates it owns it).
    """
    try:
        uid = state_dir.stat().st_uid
    except OSError:
        return None
    return None if uid == os.geteuid() else user_name(uid)


def as_owner(owner: str, command: str = "…") -> str:
    """Return the command line that runs `fluxagent command` as owner (for hints)."""
    return f"`sudo -u {owner} fluxagent {command}`"


def owner_hint(owner: str, command: str = "…") -> str:
    """Return the hint for a command run against a state directory owner's files by another user."""
    return (f"run it as the user that owns the state directory: {as_owner(owner, command)};"
            " never change the owner of its files: the service could no longer read them")


def identity_owner(service_user: str, state_dir: Path, where: str) -> tuple[int, int, str] | None:
    """Return the (uid, gid, name) `init` creates the identity for, or None for the user running it.

    As root: instance.service_user when set, else the owner of an existing state dir. As anyone else:
    None, after checking that nobody else is meant to own it. `where` names the config file in errors.
    Raises ConfigError (no such user) or IdentityError (the wrong user runs init).
    """
    from fluxagent.errors import ConfigError, IdentityError

    me = user_name(os.geteuid())
    if os.geteuid() != 0:
        if service_user and service_user != me:
            raise IdentityError(f"instance.service_user is {service_user}, but init runs as {me}",
                                hint=f"run init as root (it creates the identity for {service_user}), or as"
                                f" that user: {as_owner(service_user, 'init')}")
        owner = foreign_owner(state_dir)
        if owner is not None:
            raise IdentityError(f"the state directory {state_dir} belongs to {owner}, not to {me}",
                                hint=owner_hint(owner, "init"))
        return None
    if service_user:
        try:
            pw = pwd.getpwnam(service_user)
        except KeyError:
            raise ConfigError([f"{where}: instance.service_user: no user {service_user!r} on this machine"],
                              hint="create that system user (the package creates fluxagent), or leave the key"
                              " empty to create the identity for the state directory's owner") from None
        return None if pw.pw_uid == 0 else (pw.pw_uid, pw.pw_gid, pw.pw_name)
    try:
        st = state_dir.stat()
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid, user_name(st.st_uid))
