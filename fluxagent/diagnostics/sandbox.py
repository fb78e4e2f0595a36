"""The unit's seccomp sandbox as data: SystemCallFilter groups expanded, MemoryDenyWriteExecute and
RestrictAddressFamilies turned into the filters systemd loads (pure; `systemd_groups` runs the tool).

Group members come from `systemd-analyze syscall-filter`, the same table systemd uses, so the
self-test and the unit cannot drift apart.
"""

from __future__ import annotations

import errno
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from fluxagent.diagnostics.seccomp import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    CMP_EQ,
    CMP_GE,
    CMP_MASKED_EQ,
    Filter,
    Rule,
    act_errno,
)

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_MAX = 46  # Linux's AF_MAX: families from here on do not exist yet
# systemd allows these whatever the list says (systemd.exec(5)); @default is added to every allow list
IMPLICIT = ("@default", "execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn")


@dataclass(frozen=True)
class Sandbox:
    """What the unit's seccomp-based settings allow."""

    allow_list: bool  # True: `syscalls` are the only ones allowed; False: `syscalls` are denied
    syscalls: frozenset[str]
    error_number: int | None  # SystemCallErrorNumber=; None: a filtered call kills the process
    deny_write_execute: bool
    address_families: tuple[str, ...] | None  # None: any family


def parse_groups(text: str) -> dict[str, list[str]]:
    """Return {"@group": [members]} from `systemd-analyze syscall-filter` output (members may be @groups)."""
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith((" ", "\t")) and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(items: list[str], groups: Mapping[str, list[str]]) -> set[str]:
    """Return the syscall names items stand for, groups expanded recursively; raises KeyError on an unknown group."""
    out: set[str] = set()
    seen: set[str] = set()
    todo = list(items)
    while todo:
        item = todo.pop()
        if not item.startswith("@"):
            out.add(item.split(":", 1)[0])  # "name:EPERM" carries its own errno; the name is what matters
        elif item not in seen:
            seen.add(item)
            todo.extend(groups[item])
    return out


def _settings(unit_text: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def unit_sandbox(unit_text: str, groups: Mapping[str, list[str]]) -> Sandbox:
    """Return the Sandbox a unit's settings describe, with systemd's merge rules; raises KeyError, ValueError."""
    allow_list: bool | None = None
    names: set[str] = set()
    error_number: int | None = None
    mdwe = False
    families: tuple[str, ...] | None = None
    for key, value in _settings(unit_text):
        if key == "SystemCallFilter":
            if not value:
                allow_list, names = None, set()
                continue
            invert = value.startswith("~")
            listed = expand(value.lstrip("~").split(), groups)
            if allow_list is None:  # the first assignment decides the default action
                allow_list = not invert
                names = listed | (expand(list(IMPLICIT), groups) if allow_list else set())
            elif allow_list != invert:
                names |= listed
            else:
                names -= listed
        elif key == "SystemCallErrorNumber":
            error_number = getattr(errno, value) if not value.isdigit() else int(value)
        elif key == "MemoryDenyWriteExecute":
            mdwe = value.lower() in ("yes", "true", "1", "on")
        elif key == "RestrictAddressFamilies":
            families = tuple(value.split()) if value and not value.startswith("~") else None
    return Sandbox(bool(allow_list), frozenset(names), error_number, mdwe, families)


def filters(sb: Sandbox) -> list[Filter]:
    """Return the filters systemd would load for sb, one per feature; raises AttributeError (unknown family)."""
    fail = act_errno(sb.error_number) if sb.error_number is not None else ACT_KILL_PROCESS
    out: list[Filter] = []
    if sb.deny_write_execute:  # systemd's seccomp_memory_deny_write_execute()
        eperm = act_errno(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        out.append(Filter(ACT_ALLOW, (
            Rule("mmap", eperm, ((2, CMP_MASKED_EQ, wx, wx),)),
            Rule("mprotect", eperm, ((2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC),)),
            Rule("pkey_mprotect", eperm, ((2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC),)),
            Rule("shmat", eperm, ((2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC),)),
        )))
    if sb.address_families is not None:
        allowed = {int(getattr(socket, f)) for f in sb.address_families}
        refuse = act_errno(errno.EAFNOSUPPORT)
        rules = [Rule("socket", refuse, ((0, CMP_EQ, af, 0),)) for af in range(AF_MAX) if af not in allowed]
        rules.append(Rule("socket", refuse, ((0, CMP_GE, AF_MAX, 0),)))
        out.append(Filter(ACT_ALLOW, tuple(rules)))
    # the syscall filter goes last: once loaded, it may itself forbid loading another filter
    if sb.allow_list:
        out.append(Filter(fail, tuple(Rule(n, ACT_ALLOW) for n in sorted(sb.syscalls))))
    elif sb.syscalls:
        out.append(Filter(ACT_ALLOW, tuple(Rule(n, fail) for n in sorted(sb.syscalls))))
    return out


def systemd_groups(tool: str = "systemd-analyze") -> dict[str, list[str]]:
    """Return systemd's syscall groups as `tool syscall-filter` prints them; raises OSError, CalledProcessError."""
    res = subprocess.run([tool, "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True,
                         timeout=60)
    return parse_groups(res.stdout)
