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
